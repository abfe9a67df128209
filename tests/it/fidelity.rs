//! Graph fidelity: every Graph quirk the reset must survive, through the broker
//! (enqueue → RabbitMQ → worker → graph-sim over HTTP → outcome on the stream), asserting
//! both the recorded outcome and what the simulator now holds.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use graph_sim::tenant::{
    upn_for_index, MOBILE_PHONE_ID, RESET_PENDING_GROUP_ID, UNKNOWN_METHOD_TYPE,
};
use graph_sim::{FaultPatch, Fixture, GenOptions, SimConfig, SimStats};
use mfa_reset::batch::BatchView;
use mfa_reset::broker::topology::{RK_OUTCOME, RK_REQUEST};
use mfa_reset::broker::{OutMessage, Publisher};
use mfa_reset::cli::RestoreArgs;
use mfa_reset::commands::{self, dlq, enqueue::Enqueued};
use mfa_reset::config::MethodSelection;
use mfa_reset::domain::{
    BatchManifest, Outcome, Record, ResetRequest, Status, UserRef, REQUEST_VERSION,
};
use serde_json::{json, Value};

use crate::common::env::{enqueue_args, TestEnv};

const ADELE: &str = "adele.vance@contoso.com";
const GUEST: &str = "megan.bowen_fabrikam.com#EXT#@contoso.onmicrosoft.com";
const DOLLAR: &str = "$admin@contoso.com";
/// The fixture's `o'neil+mfa&co@contoso.com`, renamed to characters Entra allows (the intake
/// refuses `+` and `&`): a quote, a `#`, a `^` and a `~` still need encoding on the way.
const QUOTE_PLUS_AMP: &str = "o'neil#mfa^co~@contoso.com";
/// The fixture's original UPN of that user.
const FIXTURE_QUOTE_PLUS_AMP: &str = "o'neil+mfa&co@contoso.com";
const BREAKGLASS: &str = "breakglass@contoso.com";
const GLOBAL_ADMIN: &str = "global.admin@contoso.com";
const FUTURE: &str = "future.user@contoso.com";
const EVERY_METHOD: &str = "every.method@contoso.com";

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The shared fixture tenant (`tests/fixtures/tenant.json`), its `+`/`&` user renamed to
/// [`QUOTE_PLUS_AMP`] (a CSV naming the original would be refused at intake).
pub(crate) fn fixture_tenant() -> SimConfig {
    let mut fixture = Fixture::load(fixture_path("tenant.json").as_ref()).expect("fixture loads");
    for user in &mut fixture.users {
        if user.user_principal_name == FIXTURE_QUOTE_PLUS_AMP {
            user.user_principal_name = QUOTE_PLUS_AMP.to_string();
        }
    }
    for group in &mut fixture.groups {
        for member in &mut group.members {
            if member == FIXTURE_QUOTE_PLUS_AMP {
                *member = QUOTE_PLUS_AMP.to_string();
            }
        }
    }
    SimConfig {
        fixture: Some(fixture),
        ..SimConfig::default()
    }
}

/// A tenant built in the test from Graph-shaped JSON.
pub(crate) fn tenant_of(users: Value) -> SimConfig {
    let fixture: Fixture =
        serde_json::from_value(json!({ "users": users })).expect("a valid fixture");
    SimConfig {
        fixture: Some(fixture),
        ..SimConfig::default()
    }
}

pub(crate) fn phone(phone_type: &str, number: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.phoneAuthenticationMethod", "phoneNumber": number, "phoneType": phone_type})
}

pub(crate) fn typed(stem: &str, id: &str) -> Value {
    json!({"@odata.type": format!("#microsoft.graph.{stem}AuthenticationMethod"), "id": id, "displayName": format!("{stem} {id}")})
}

/// Enqueue `users` (a CSV written for the test), optionally as a dry run.
pub(crate) async fn enqueue(env: &TestEnv, users: &[&str], dry_run: bool) -> Enqueued {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("users.csv");
    let mut csv = String::from("userPrincipalName\n");
    for u in users {
        csv.push_str(u);
        csv.push('\n');
    }
    std::fs::write(&path, csv).expect("csv written");
    let mut args = enqueue_args(Some(path), None);
    args.dry_run = dry_run;
    commands::enqueue::run(&env.settings, &args)
        .await
        .expect("enqueued")
}

/// Enqueue `users`, run one worker until the batch is complete, return the batch.
pub(crate) async fn reset(env: &mut TestEnv, users: &[&str]) -> BatchView {
    let enqueued = enqueue(env, users, false).await;
    env.start_worker(4);
    env.wait_batch(&enqueued.batch, 60).await
}

pub(crate) fn outcome<'a>(view: &'a BatchView, user: &str) -> &'a Outcome {
    let key = user.to_lowercase();
    view.outcomes()
        .find(|o| o.user.key() == key)
        .unwrap_or_else(|| panic!("no outcome for {user}"))
}

pub(crate) fn kinds(records: &[mfa_reset::domain::MethodRecord]) -> Vec<&str> {
    records.iter().map(|r| r.kind.as_str()).collect()
}

/// Stems of the methods the simulator still holds for `upn` (password included).
pub(crate) fn sim_stems(env: &TestEnv, upn: &str) -> Vec<String> {
    env.sim
        .user(upn)
        .expect("user in the simulator")
        .methods
        .iter()
        .map(|m| {
            let t = m["@odata.type"].as_str().unwrap_or_default();
            t.strip_prefix("#microsoft.graph.")
                .and_then(|s| s.strip_suffix("AuthenticationMethod"))
                .unwrap_or(t)
                .to_string()
        })
        .collect()
}

/// Answers to requests of one HTTP method, per status, over every endpoint.
pub(crate) fn by_status(stats: &SimStats, method: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (endpoint, statuses) in &stats.requests_by_endpoint {
        if endpoint.starts_with(&format!("{method} ")) {
            for (status, n) in statuses {
                *out.entry(status.clone()).or_default() += n;
            }
        }
    }
    out
}

/// Answers to requests of endpoints containing `fragment`, summed.
pub(crate) fn calls_to(stats: &SimStats, fragment: &str) -> u64 {
    stats
        .requests_by_endpoint
        .iter()
        .filter(|(e, _)| e.contains(fragment))
        .flat_map(|(_, s)| s.values())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_user_is_reset_through_the_encoded_upn() {
    let mut env = TestEnv::new("fid-guest", fixture_tenant()).await;

    let view = reset(&mut env, &[GUEST, QUOTE_PLUS_AMP]).await;

    let o = outcome(&view, GUEST);
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(kinds(&o.methods_removed), ["phone"]);
    assert_eq!(
        o.methods_removed[0].masked.as_deref(),
        Some("+44 ******0123")
    );
    assert_eq!(o.methods_removed[0].backup_sealed, None);
    assert!(o.methods_remaining.is_empty());
    assert_eq!(outcome(&view, QUOTE_PLUS_AMP).status, Status::Reset);
    assert_eq!(sim_stems(&env, GUEST), ["password"]);
    assert_eq!(sim_stems(&env, QUOTE_PLUS_AMP), ["password"]);
    let stats = env.sim.stats();
    assert_eq!(
        stats.requests_by_status.get("404"),
        None,
        "no request lost the user after a '#': {stats:?}"
    );
    assert_eq!(
        calls_to(&stats, "signInPreferences"),
        0,
        "one method each: no default to read"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_upn_is_reset_through_the_parenthesised_form() {
    let mut env = TestEnv::new("fid-dollar", fixture_tenant()).await;

    let view = reset(&mut env, &[DOLLAR]).await;

    let o = outcome(&view, DOLLAR);
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(kinds(&o.methods_removed), ["softwareOath"]);
    assert_eq!(sim_stems(&env, DOLLAR), ["password"]);
    let stats = env.sim.stats();
    assert_eq!(stats.requests_by_status.get("400"), None, "{stats:?}");
    assert_eq!(stats.methods_deleted, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_method_is_deleted_last_and_no_delete_is_refused() {
    let mut env = TestEnv::new("fid-default", fixture_tenant()).await;
    let adele_default = env.sim.user(ADELE).unwrap().default_method_id;
    let every_default = env.sim.user(EVERY_METHOD).unwrap().default_method_id;
    assert_eq!(adele_default.as_deref(), Some(MOBILE_PHONE_ID));
    assert_eq!(every_default.as_deref(), Some(MOBILE_PHONE_ID));

    let view = reset(&mut env, &[ADELE, EVERY_METHOD]).await;

    for upn in [ADELE, EVERY_METHOD] {
        let o = outcome(&view, upn);
        assert_eq!(o.status, Status::Reset, "{o:?}");
        assert!(o.methods_remaining.is_empty());
        assert_eq!(
            o.methods_removed.last().map(|m| m.id.as_str()),
            Some(MOBILE_PHONE_ID),
            "{upn}: the default is removed last"
        );
        let user = env.sim.user(upn).unwrap();
        assert_eq!(sim_stems(&env, upn), ["password"]);
        assert_eq!(
            user.deleted_methods.last().and_then(|m| m["id"].as_str()),
            Some(MOBILE_PHONE_ID),
            "{upn}: Graph saw the default deleted last"
        );
    }
    assert_eq!(outcome(&view, EVERY_METHOD).methods_removed.len(), 12);
    let stats = env.sim.stats();
    assert_eq!(
        by_status(&stats, "DELETE").get("400"),
        None,
        "no DELETE was refused: {stats:?}"
    );
    assert_eq!(
        calls_to(&stats, "signInPreferences"),
        2,
        "one default read per user"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alternate_mobile_default_is_moved_to_the_mobile_so_both_phones_go() {
    // Graph refuses the mobile while an alternate exists, and the alternate while it is the
    // default and the mobile exists: no order of DELETEs alone gets both.
    let users = json!([{
        "userPrincipalName": "alt.default@contoso.com",
        "defaultMethod": "voiceAlternateMobile",
        "methods": [
            phone("mobile", "+1 5555550401"),
            phone("alternateMobile", "+1 5555550402"),
            typed("fido2", "f1d0f1d0-0000-4000-8000-000000000401"),
        ]
    }]);
    let mut env = TestEnv::new("fid-alt-default", tenant_of(users)).await;

    let view = reset(&mut env, &["alt.default@contoso.com"]).await;

    let o = outcome(&view, "alt.default@contoso.com");
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(o.methods_removed.len(), 3);
    assert_eq!(
        o.methods_removed.last().map(|m| m.id.as_str()),
        Some(MOBILE_PHONE_ID)
    );
    assert_eq!(sim_stems(&env, "alt.default@contoso.com"), ["password"]);
    let stats = env.sim.stats();
    assert_eq!(by_status(&stats, "DELETE").get("400"), None, "{stats:?}");
    assert_eq!(by_status(&stats, "PATCH").get("204"), Some(&1), "{stats:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sign_in_preferences_the_refused_default_is_retried_after_the_others() {
    // The default is the Authenticator app, which a plan without the default read deletes
    // before the phones.
    let users = json!([{
        "userPrincipalName": "push.default@contoso.com",
        "defaultMethod": "push",
        "methods": [
            phone("mobile", "+1 5555550101"),
            typed("microsoftAuthenticator", "a1a1a1a1-0000-4000-8000-000000000101"),
            phone("office", "+1 5555550102"),
        ]
    }]);
    let mut env = TestEnv::new("fid-two-pass", tenant_of(users)).await;
    // The beta root is out of reach (as when the app may not read signInPreferences):
    // list from v1.0 and point beta somewhere Graph answers 404.
    env.settings.graph.list_methods_from_beta = false;
    env.settings.graph.beta_url = format!("{}/no-beta", env.sim.url());

    let view = reset(&mut env, &["push.default@contoso.com"]).await;

    let o = outcome(&view, "push.default@contoso.com");
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(o.methods_removed.len(), 3);
    assert_eq!(
        o.methods_removed.last().map(|m| m.kind.as_str()),
        Some("microsoftAuthenticator"),
        "the refused default is removed in the second pass"
    );
    assert_eq!(sim_stems(&env, "push.default@contoso.com"), ["password"]);
    let stats = env.sim.stats();
    let authenticator = stats
        .requests_by_endpoint
        .iter()
        .find(|(e, _)| e.starts_with("DELETE") && e.contains("microsoftAuthenticatorMethods"))
        .map(|(_, s)| s.clone())
        .expect("authenticator deleted");
    assert_eq!(authenticator.get("400"), Some(&1), "{authenticator:?}");
    assert_eq!(authenticator.get("204"), Some(&1), "{authenticator:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_success_counts_as_removed() {
    // One method, so exactly one DELETE: applied by Graph, answered 429 or 503.
    let mut env = TestEnv::new("fid-ghost", fixture_tenant()).await;
    env.sim.set_faults(FaultPatch {
        ghost_rate: Some(1.0),
        ..FaultPatch::default()
    });

    let view = reset(&mut env, &[QUOTE_PLUS_AMP]).await;

    let o = outcome(&view, QUOTE_PLUS_AMP);
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(kinds(&o.methods_removed), ["microsoftAuthenticator"]);
    assert!(o.methods_remaining.is_empty());
    assert_eq!(sim_stems(&env, QUOTE_PLUS_AMP), ["password"]);
    let stats = env.sim.stats();
    assert_eq!(stats.ghost_successes, 1);
    assert_eq!(stats.methods_deleted, 1);
    assert_eq!(
        by_status(&stats, "DELETE").get("404"),
        Some(&1),
        "the retry found it gone: {stats:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_a_first_delete_is_not_counted_as_removed() {
    // Another admin deleted the Authenticator app a moment ago; Graph still lists it.
    let mut env = TestEnv::new(
        "fid-first-404",
        SimConfig {
            consistency_delay_ms: 4_000,
            ..fixture_tenant()
        },
    )
    .await;
    let other = mfa_reset::graph::GraphClient::new(
        &env.settings.graph,
        &env.settings.rate,
        &env.settings.retry,
    )
    .expect("client");
    let user = UserRef::parse(QUOTE_PLUS_AMP).unwrap();
    let listed = other.list_methods(&user).await.expect("listed");
    let app = listed
        .iter()
        .find(|m| m.stem() == "microsoftAuthenticator")
        .expect("an Authenticator app");
    other
        .delete_method(&user, app)
        .await
        .expect("deleted elsewhere");

    // Waiting out the lag: a method still listed after the wait would be believed remaining.
    env.settings.reset.consistency_wait = Duration::from_secs(10);
    let view = reset(&mut env, &[QUOTE_PLUS_AMP]).await;

    let o = outcome(&view, QUOTE_PLUS_AMP);
    assert!(o.methods_removed.is_empty(), "{o:?}");
    assert!(o.methods_remaining.is_empty(), "{o:?}");
    assert_eq!(o.status, Status::AlreadyClean, "{o:?}");
    let deletes = by_status(&env.sim.stats(), "DELETE");
    assert_eq!(deletes.get("204"), Some(&1), "{deletes:?}");
    assert_eq!(deletes.get("404"), Some(&1), "{deletes:?}");
    assert_eq!(sim_stems(&env, QUOTE_PLUS_AMP), ["password"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_mid_batch_is_renewed_once_and_the_batch_completes() {
    let mut env = TestEnv::new(
        "fid-token",
        SimConfig {
            users: 60,
            latency_ms: 15,
            generation: GenOptions {
                methods_min: 2,
                ..GenOptions::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    let users: Vec<String> = (0..60).map(upn_for_index).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let enqueued = enqueue(&env, &refs, false).await;
    env.start_worker(4);
    let waited = tokio::time::Instant::now();
    while env.sim.stats().methods_deleted < 20 {
        assert!(waited.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    env.sim.expire_tokens();
    let view = env.wait_batch(&enqueued.batch, 90).await;

    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(60),
        "{:?}",
        view.counts()
    );
    let stats = env.sim.stats();
    assert_eq!(stats.tokens_issued, 2, "renewed once: {stats:?}");
    assert!(
        stats.requests_by_status.get("401").copied().unwrap_or(0) >= 1,
        "the expiry was noticed mid-batch: {stats:?}"
    );
    assert!(env
        .sim
        .users_snapshot()
        .iter()
        .all(|u| u.methods.len() == 1));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_user_fails_forbidden_and_is_dead_lettered() {
    let mut env = TestEnv::new("fid-privileged", fixture_tenant()).await;

    let view = reset(&mut env, &[BREAKGLASS, DOLLAR]).await;

    let o = outcome(&view, BREAKGLASS);
    assert_eq!(o.status, Status::Failed, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("Authorization_RequestDenied"));
    assert!(o.methods_removed.is_empty());
    assert_eq!(o.attempts, 1, "a 403 is not retried");
    assert_eq!(outcome(&view, DOLLAR).status, Status::Reset);
    assert_eq!(sim_stems(&env, BREAKGLASS), ["password", "fido2"]);
    let letters = dlq::list(&env.settings, Some(&view.manifest().unwrap().batch))
        .await
        .expect("dlq list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].user.as_deref(), Some(BREAKGLASS));
    assert_eq!(letters[0].error_code, "Authorization_RequestDenied");
    let stats = env.sim.stats();
    assert_eq!(
        by_status(&stats, "DELETE").get("403"),
        Some(&1),
        "{stats:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_type_is_left_in_place_and_the_outcome_is_partial() {
    let unknown =
        json!({"@odata.type": UNKNOWN_METHOD_TYPE, "id": "9f9f9f9f-0000-4000-8000-000000000301"});
    let users = json!([
        {
            "userPrincipalName": "future.keys@contoso.com",
            "methods": [
                unknown.clone(),
                typed("fido2", "f1d0f1d0-0000-4000-8000-000000000301"),
                typed("windowsHelloForBusiness", "d7d7d7d7-0000-4000-8000-000000000301"),
                json!({"@odata.type": "#microsoft.graph.emailAuthenticationMethod", "emailAddress": "keys@personal.example.com"}),
            ]
        },
        {
            // The fixture's future.user: the office phone is the default, and Graph will not
            // delete a default while another method (the unknown one) is registered.
            "userPrincipalName": "future.phone@contoso.com",
            "methods": [unknown, phone("office", "+1 5555550302")]
        }
    ]);
    let mut env = TestEnv::new("fid-unknown", tenant_of(users)).await;

    let view = reset(
        &mut env,
        &["future.keys@contoso.com", "future.phone@contoso.com"],
    )
    .await;

    let keys = outcome(&view, "future.keys@contoso.com");
    assert_eq!(keys.status, Status::Partial, "{keys:?}");
    assert_eq!(keys.methods_removed.len(), 3, "{keys:?}");
    assert_eq!(kinds(&keys.methods_remaining), [UNKNOWN_METHOD_TYPE]);
    assert_eq!(keys.error_code.as_deref(), Some("unknown_method_type"));
    assert_eq!(
        sim_stems(&env, "future.keys@contoso.com"),
        ["password", "futureQuantum"],
        "the unknown type is still registered"
    );

    let phone = outcome(&view, "future.phone@contoso.com");
    assert_eq!(phone.status, Status::Partial, "{phone:?}");
    assert!(phone.methods_removed.is_empty());
    assert_eq!(
        kinds(&phone.methods_remaining),
        ["phone", UNKNOWN_METHOD_TYPE]
    );
    assert_eq!(phone.error_code.as_deref(), Some("badRequest"));
    assert!(phone
        .error_message
        .as_deref()
        .unwrap_or_default()
        .contains(UNKNOWN_METHOD_TYPE));
    assert_eq!(
        sim_stems(&env, "future.phone@contoso.com"),
        ["password", "futureQuantum", "phone"]
    );

    let stats = env.sim.stats();
    assert_eq!(stats.methods_deleted, 3);
    let deletes = by_status(&stats, "DELETE");
    assert_eq!(
        deletes.values().sum::<u64>(),
        4,
        "no DELETE of the unknown type: {deletes:?}"
    );
    assert_eq!(
        deletes.get("400"),
        Some(&1),
        "the phone is asked once: {deletes:?}"
    );
    let letters = dlq::list(&env.settings, None).await.expect("dlq list");
    assert!(letters.is_empty(), "partial is not a failure: {letters:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_signed_in_with_a_certificate_resets_users() {
    let cert = std::fs::read_to_string(fixture_path("client-cert.pem")).expect("certificate");
    let mut env = TestEnv::new(
        "fid-cert",
        SimConfig {
            client_certificate_pem: Some(cert),
            ..fixture_tenant()
        },
    )
    .await;
    env.settings.graph.client_secret = None;
    env.settings.graph.client_certificate = Some(fixture_path("client-cert.pem"));
    env.settings.graph.client_private_key = Some(fixture_path("client-key.pem").into());

    let view = reset(&mut env, &[ADELE, DOLLAR]).await;

    assert_eq!(outcome(&view, ADELE).status, Status::Reset);
    assert_eq!(outcome(&view, DOLLAR).status, Status::Reset);
    assert_eq!(sim_stems(&env, ADELE), ["password"]);
    let stats = env.sim.stats();
    assert_eq!(stats.tokens_issued, 1, "{stats:?}");
    assert_eq!(stats.requests_by_status.get("401"), None);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_records_what_would_be_removed_and_changes_nothing() {
    let mut env = TestEnv::new("fid-dry", fixture_tenant()).await;
    let before = env.sim.users_snapshot();
    let enqueued = enqueue(&env, &[ADELE, EVERY_METHOD, FUTURE], true).await;
    env.start_worker(4);

    let view = env.wait_batch(&enqueued.batch, 60).await;

    let adele = outcome(&view, ADELE);
    assert_eq!(adele.status, Status::DryRun);
    assert!(adele.dry_run);
    let mut would = kinds(&adele.methods_removed);
    would.sort();
    assert_eq!(would, ["email", "microsoftAuthenticator", "phone", "phone"]);
    assert!(adele
        .methods_removed
        .iter()
        .all(|m| m.backup_sealed.is_none()));
    assert!(adele
        .methods_removed
        .iter()
        .any(|m| m.masked.as_deref() == Some("a***@personal.example.com")));
    assert_eq!(outcome(&view, EVERY_METHOD).methods_removed.len(), 12);
    assert_eq!(
        kinds(&outcome(&view, FUTURE).methods_remaining),
        [UNKNOWN_METHOD_TYPE]
    );
    assert_eq!(env.sim.users_snapshot(), before, "nothing changed");
    let stats = env.sim.stats();
    assert_eq!(stats.writes, 0, "{stats:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_recreates_the_phone_and_email_methods_of_a_batch() {
    let mut env = TestEnv::new("fid-restore", fixture_tenant()).await;
    let (_key_dir, identity) = crate::at_rest::restore_key(&mut env);
    let adele_before = env.sim.user(ADELE).unwrap();
    let view = reset(&mut env, &[ADELE, EVERY_METHOD]).await;
    let batch = view.manifest().unwrap().batch.clone();
    let adele = outcome(&view, ADELE);
    assert_eq!(
        adele
            .methods_removed
            .iter()
            .filter(|m| m.backup_sealed.is_some())
            .count(),
        3,
        "both phones and the email are backed up, sealed"
    );

    let restored = commands::restore::run(
        &env.settings,
        &RestoreArgs {
            batch: batch.clone(),
            user: Some(ADELE.to_uppercase()),
            yes: true,
            identity: Some(identity),
            key: Some(env.keys.admin.path.clone()),
        },
    )
    .await
    .expect("restore");

    // Mobile, alternateMobile and email come back; the Authenticator app cannot.
    assert_eq!(restored.created, 3, "{restored:?}");
    assert_eq!(restored.not_restorable, 1);
    assert_eq!(restored.failed, 0);
    let after = env.sim.user(ADELE).unwrap();
    let numbers = |v: &[Value]| {
        let mut n: Vec<(String, String)> = v
            .iter()
            .filter_map(|m| {
                Some((
                    m.get("phoneType")?.as_str()?.to_string(),
                    m.get("phoneNumber")?.as_str()?.to_string(),
                ))
            })
            .collect();
        n.sort();
        n
    };
    assert_eq!(numbers(&after.methods), numbers(&adele_before.methods));
    assert!(after
        .methods
        .iter()
        .any(|m| m["emailAddress"] == "adele@personal.example.com"));
    assert!(
        !after
            .methods
            .iter()
            .any(|m| m["@odata.type"]
                == "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod")
    );
    assert_eq!(
        sim_stems(&env, EVERY_METHOD),
        ["password"],
        "--user restores that user only"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backup_restore_says_it_cannot() {
    let mut env = TestEnv::new("fid-no-backup", fixture_tenant()).await;
    let view = reset(&mut env, &[ADELE]).await;
    let batch = view.manifest().unwrap().batch.clone();
    assert!(outcome(&view, ADELE)
        .methods_removed
        .iter()
        .all(|m| m.backup_sealed.is_none()));
    env.sim.reset_stats();

    let restored = commands::restore::run(
        &env.settings,
        &RestoreArgs {
            batch,
            user: None,
            yes: true,
            identity: None,
            key: Some(env.keys.admin.path.clone()),
        },
    )
    .await
    .expect("restore runs");

    assert_eq!(restored.created, 0);
    assert_eq!(restored.no_backup, 3, "{restored:?}");
    assert_eq!(restored.not_restorable, 1);
    assert_eq!(env.sim.stats().writes, 0);
    assert_eq!(sim_stems(&env, ADELE), ["password"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_user_is_never_touched() {
    let mut env = TestEnv::new("fid-protected", fixture_tenant()).await;
    let adele_id = env.sim.user(ADELE).unwrap().id;
    env.settings.reset.protected_users = vec![ADELE.to_uppercase()];
    let before = env.sim.user(ADELE).unwrap();

    let view = reset(&mut env, &[ADELE]).await;

    let o = outcome(&view, ADELE);
    assert_eq!(o.status, Status::SkippedProtected, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("protected_user"));
    assert!(o.methods_removed.is_empty());
    assert_eq!(env.sim.user(ADELE).unwrap(), before);
    let stats = env.sim.stats();
    assert_eq!(
        calls_to(&stats, "/authentication/"),
        0,
        "her methods were not even listed: {stats:?}"
    );
    assert_eq!(stats.writes, 0);

    // Listed by UPN, requested by object id: still never changed.
    let view = reset(&mut env, &[&adele_id]).await;
    let o = outcome(&view, &adele_id);
    assert_eq!(o.status, Status::SkippedProtected, "{o:?}");
    assert_eq!(env.sim.user(ADELE).unwrap(), before);
    assert_eq!(env.sim.stats().writes, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_role_holder_is_skipped_with_skip_admins() {
    let mut env = TestEnv::new("fid-admins", fixture_tenant()).await;
    env.settings.reset.skip_admins = true;
    let before = env.sim.user(GLOBAL_ADMIN).unwrap();

    let view = reset(&mut env, &[GLOBAL_ADMIN, DOLLAR]).await;

    let o = outcome(&view, GLOBAL_ADMIN);
    assert_eq!(o.status, Status::SkippedProtected, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("directory_role"));
    assert!(o
        .error_message
        .as_deref()
        .unwrap_or_default()
        .contains("Global Administrator"));
    assert_eq!(outcome(&view, DOLLAR).status, Status::Reset);
    assert_eq!(env.sim.user(GLOBAL_ADMIN).unwrap(), before);
    let stats = env.sim.stats();
    assert_eq!(stats.methods_deleted, 1, "only the $admin's OATH token");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_not_executed() {
    let mut env = TestEnv::new("fid-expired", fixture_tenant()).await;
    let batch = "fid-expired-batch";
    let user = UserRef::parse(ADELE).unwrap();
    let old = Utc::now() - chrono::Duration::hours(25);
    let request = ResetRequest {
        version: REQUEST_VERSION,
        request_id: ResetRequest::id_for(batch, &user),
        batch: batch.into(),
        user,
        ticket: None,
        reason: None,
        requested_by: Some("tests".into()),
        dry_run: false,
        revoke_sessions: true,
        requested_at: old,
        replay: 0,
        tap: None,
        carry: None,
        proof: None,
    };
    let manifest = Record::Manifest(BatchManifest {
        batch: batch.into(),
        count: 1,
        source: "test".into(),
        dry_run: false,
        revoke_sessions: true,
        requested_by: None,
        created_at: old,
        sealed: None,
        cap: None,
    });
    let signed = env.sign(std::slice::from_ref(&request)).remove(0);
    let mut publisher = Publisher::connect(&env.settings.broker, &env.topology(), "test")
        .await
        .expect("publisher");
    publisher
        .send(OutMessage::json(
            RK_OUTCOME,
            serde_json::to_vec(&manifest).unwrap(),
        ))
        .await
        .unwrap();
    publisher
        .send(
            OutMessage::json(RK_REQUEST, serde_json::to_vec(&request).unwrap())
                .with_headers(signed),
        )
        .await
        .unwrap();
    publisher.close().await.unwrap();
    let before = env.sim.user(ADELE).unwrap();

    env.start_worker(2);
    let view = env.wait_batch(batch, 60).await;

    let o = outcome(&view, ADELE);
    assert_eq!(o.status, Status::Expired, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("expired"));
    assert!(!o.sessions_revoked);
    assert_eq!(env.sim.user(ADELE).unwrap(), before);
    assert_eq!(env.sim.stats().requests_total, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_group_enqueues_all_250_members_across_pages() {
    let mut env = TestEnv::new(
        "fid-group",
        SimConfig {
            users: 300,
            generation: GenOptions {
                methods_min: 1,
                group_size: 250,
                ..GenOptions::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    env.settings.graph.page_size = 100;
    let mut args = enqueue_args(None, None);
    args.group = Some(RESET_PENDING_GROUP_ID.to_string());
    args.transitive = true;

    let enqueued = commands::enqueue::run(&env.settings, &args)
        .await
        .expect("group enqueued");

    assert_eq!(enqueued.count, 250);
    let pages = env
        .sim
        .stats()
        .requests_by_endpoint
        .get("GET /v1.0/groups/{id}/transitiveMembers")
        .cloned()
        .unwrap_or_default();
    assert_eq!(pages.get("200"), Some(&3), "three pages of 100: {pages:?}");
    env.start_worker(32);
    let view = env.wait_batch(&enqueued.batch, 120).await;
    assert_eq!(
        view.manifest().unwrap().source,
        format!("group:{RESET_PENDING_GROUP_ID}")
    );
    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(250),
        "{:?}",
        view.counts()
    );
    let users = env.sim.users_snapshot();
    let reset: Vec<bool> = users.iter().map(|u| u.methods.len() == 1).collect();
    assert!(reset[..250].iter().all(|r| *r), "every member is reset");
    assert!(reset[250..].iter().all(|r| !*r), "no one else is touched");

    // Without --transitive only the direct members (the first half) are enqueued.
    env.stop_workers().await;
    args.transitive = false;
    let direct = commands::enqueue::run(&env.settings, &args)
        .await
        .expect("direct members enqueued");
    assert_eq!(direct.count, 125);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_preset_leaves_fido2_email_and_hardware_oath_tokens_in_place() {
    let users = json!([
        {
            "userPrincipalName": "portal.push@contoso.com",
            "defaultMethod": "push",
            "methods": [
                typed("microsoftAuthenticator", "a1a1a1a1-0000-4000-8000-000000000201"),
                typed("softwareOath", "50f7ab52-0000-4000-8000-000000000201"),
                phone("mobile", "+1 5555550201"),
                typed("hardwareOath", "4a4a4a4a-0000-4000-8000-000000000201"),
                typed("fido2", "f1d0f1d0-0000-4000-8000-000000000201"),
                typed("windowsHelloForBusiness", "d7d7d7d7-0000-4000-8000-000000000201"),
                json!({"@odata.type": "#microsoft.graph.emailAuthenticationMethod", "emailAddress": "portal@personal.example.com"}),
            ]
        }
    ]);
    let mut env = TestEnv::new("fid-portal", tenant_of(users)).await;
    env.settings.reset.methods = MethodSelection::Preset("portal".into());

    let view = reset(&mut env, &["portal.push@contoso.com"]).await;

    let o = outcome(&view, "portal.push@contoso.com");
    let mut left = sim_stems(&env, "portal.push@contoso.com");
    left.sort();
    let mut removed: Vec<&str> = kinds(&o.methods_removed);
    removed.sort();
    // Graph refuses to delete the default (the Authenticator app) while other methods remain,
    // and the FIDO2 key, Windows Hello and email stay by choice: the app is reported as
    // remaining, never silently skipped.
    // Hardware OATH tokens stay too: the portal deactivates them, a DELETE would un-assign them.
    assert_eq!(removed, ["phone", "softwareOath"], "{o:?}");
    assert_eq!(
        left,
        [
            "email",
            "fido2",
            "hardwareOath",
            "microsoftAuthenticator",
            "password",
            "windowsHelloForBusiness"
        ]
    );
    assert_eq!(
        calls_to(&env.sim.stats(), "hardwareOathMethods"),
        0,
        "not even listed from beta"
    );
    assert_eq!(o.status, Status::Partial, "{o:?}");
    assert_eq!(kinds(&o.methods_remaining), ["microsoftAuthenticator"]);
    assert_eq!(o.error_code.as_deref(), Some("badRequest"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_consistency_does_not_make_a_reset_partial() {
    let mut env = TestEnv::new(
        "fid-consistency",
        SimConfig {
            consistency_delay_ms: 1_500,
            ..fixture_tenant()
        },
    )
    .await;
    env.settings.reset.consistency_wait = Duration::from_secs(5);

    let view = reset(&mut env, &[ADELE, EVERY_METHOD]).await;

    for upn in [ADELE, EVERY_METHOD] {
        let o = outcome(&view, upn);
        assert_eq!(o.status, Status::Reset, "{o:?}");
        assert!(o.methods_remaining.is_empty(), "{o:?}");
        assert_eq!(sim_stems(&env, upn), ["password"]);
    }
    let lists = calls_to(&env.sim.stats(), "/authentication/methods");
    assert!(
        lists > 4,
        "deleted methods were still listed and re-checked: {lists}"
    );
    env.cleanup().await;
}
