//! The reset against Graph as Microsoft documents it (issue 9), through the broker: enqueue →
//! RabbitMQ → worker → graph-sim over HTTP → outcome on the stream. Each test names the
//! real behaviour the simulator models and asserts both the outcome and what the simulator
//! now holds.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use graph_sim::{AppPatch, SimConfig};
use mfa_reset::broker::topology::{RK_OUTCOME, RK_REQUEST};
use mfa_reset::broker::{OutMessage, Publisher};
use mfa_reset::commands::{self, dlq};
use mfa_reset::config::MethodSelection;
use mfa_reset::domain::{BatchManifest, Record, ResetRequest, Status, UserRef, REQUEST_VERSION};
use mfa_reset::graph::GraphClient;
use mfa_reset::worker::{self, WorkOptions, WorkerMetrics};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::env::{csv_of_generated, TestEnv};
use crate::common::graph_front::GraphFront;
use crate::common::proc;
use crate::fidelity::{
    calls_to, enqueue, fixture_tenant, kinds, outcome, phone, reset, sim_stems, tenant_of, typed,
};

const ADELE: &str = "adele.vance@contoso.com";
const ADELE_ID: &str = "11111111-1111-4111-8111-000000000001";
const GUEST: &str = "megan.bowen_fabrikam.com#EXT#@contoso.onmicrosoft.com";
/// The fixture user who takes Adele's UPN in the rename test (see `fixture_tenant`).
const NEWCOMER: &str = "o'neil#mfa^co~@contoso.com";
const NEWCOMER_ID: &str = "11111111-1111-4111-8111-000000000004";
const GLOBAL_ADMIN: &str = "global.admin@contoso.com";
const ELIGIBLE_ADMIN: &str = "eligible.admin@contoso.com";
const GROUP_ADMIN: &str = "group.admin@contoso.com";
const MIXED_GROUP: &str = "22222222-2222-4222-8222-000000000003";

/// Poll `condition` every 50 ms until it holds, or fail the test after `secs`.
async fn wait_until(what: &str, secs: u64, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_only_qr_code_and_pin_ends_reset_with_the_whole_method_gone() {
    let users = json!([{
        "userPrincipalName": "badge.only@contoso.com",
        "qrCodes": ["standard", "temporary"],
        "methods": [
            {"@odata.type": "#microsoft.graph.qrCodePinAuthenticationMethod", "id": "0c0c0c0c-0000-4000-8000-000000000101", "createdDateTime": "2025-02-02T02:02:02Z"}
        ]
    }]);
    let mut env = TestEnv::new("g9-qr", tenant_of(users)).await;

    let view = reset(&mut env, &["badge.only@contoso.com"]).await;

    let o = outcome(&view, "badge.only@contoso.com");
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(kinds(&o.methods_removed), ["qrCodePin"]);
    assert!(o.methods_remaining.is_empty(), "{o:?}");
    let user = env.sim.user("badge.only@contoso.com").unwrap();
    assert_eq!(sim_stems(&env, "badge.only@contoso.com"), ["password"]);
    assert!(user.qr_codes.is_empty(), "both QR codes and the PIN went");
    let stats = env.sim.stats();
    assert!(
        stats
            .requests_by_endpoint
            .contains_key("DELETE /v1.0/users/{user}/authentication/qrCodePinMethod"),
        "{:?}",
        stats.requests_by_endpoint.keys()
    );
    assert_eq!(calls_to(&stats, "standardQRCode"), 0);
    assert_eq!(
        calls_to(&stats, "GET /beta/users/{user}/authentication/methods"),
        0,
        "listed from v1.0, beta only for hardware OATH tokens: {stats:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_graph_still_lists_after_the_consistency_wait_is_remaining_not_removed() {
    // Graph keeps listing the deleted Authenticator app far longer than the reset waits: the
    // listing is believed over the 204.
    let mut env = TestEnv::new(
        "g9-lingering",
        SimConfig {
            consistency_delay_ms: 120_000,
            ..fixture_tenant()
        },
    )
    .await;
    env.settings.reset.consistency_wait = Duration::from_secs(1);

    let view = reset(&mut env, &[NEWCOMER]).await;

    let o = outcome(&view, NEWCOMER);
    assert_eq!(o.status, Status::Partial, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("still_listed"));
    assert!(o.methods_removed.is_empty(), "{o:?}");
    assert_eq!(kinds(&o.methods_remaining), ["microsoftAuthenticator"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eligible_admin_and_a_group_assigned_admin_are_untouched() {
    let mut env = TestEnv::new("g9-admins", fixture_tenant()).await;
    env.settings.reset.skip_admins = true;
    let admins = [GLOBAL_ADMIN, ELIGIBLE_ADMIN, GROUP_ADMIN];
    let before: Vec<_> = admins.iter().map(|a| env.sim.user(a).unwrap()).collect();

    let view = reset(
        &mut env,
        &[GLOBAL_ADMIN, ELIGIBLE_ADMIN, GROUP_ADMIN, ADELE],
    )
    .await;

    for (admin, role) in [
        (GLOBAL_ADMIN, "Global Administrator (active)"),
        (
            ELIGIBLE_ADMIN,
            "Privileged Role Administrator (eligible through PIM)",
        ),
        (GROUP_ADMIN, "Helpdesk Administrator (active through group"),
    ] {
        let o = outcome(&view, admin);
        assert_eq!(o.status, Status::SkippedProtected, "{o:?}");
        assert_eq!(o.error_code.as_deref(), Some("directory_role"), "{o:?}");
        let message = o.error_message.as_deref().unwrap_or_default();
        assert!(message.contains(role), "{admin}: {message}");
    }
    let after: Vec<_> = admins.iter().map(|a| env.sim.user(a).unwrap()).collect();
    assert_eq!(after, before, "no admin was changed");
    assert_eq!(outcome(&view, ADELE).status, Status::Reset);
    let stats = env.sim.stats();
    assert_eq!(
        calls_to(&stats, "transitiveRoleAssignments"),
        4,
        "one role-management check per user: {stats:?}"
    );
    assert_eq!(calls_to(&stats, "roleEligibilityScheduleInstances"), 4);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_role_object_is_treated_as_privileged() {
    // The app may not read directory roles (no RoleManagement.Read.Directory): Graph refuses
    // the role-management API, and no one is reset on a check that could not be made.
    let mut env = TestEnv::new(
        "g9-unreadable-roles",
        SimConfig {
            deny_role_management: true,
            ..fixture_tenant()
        },
    )
    .await;
    env.settings.reset.skip_admins = true;
    let before = env.sim.users_snapshot();

    let view = reset(&mut env, &[GLOBAL_ADMIN, ADELE]).await;

    for upn in [GLOBAL_ADMIN, ADELE] {
        let o = outcome(&view, upn);
        assert_eq!(o.status, Status::SkippedProtected, "{o:?}");
        assert_eq!(o.error_code.as_deref(), Some("privilege_check_failed"));
        let message = o.error_message.as_deref().unwrap_or_default();
        assert!(
            message.contains("RoleManagement.Read.Directory") && message.contains("not touched"),
            "{message}"
        );
    }
    assert_eq!(env.sim.users_snapshot(), before, "nobody was changed");
    assert_eq!(env.sim.stats().writes, 0);
    let letters = dlq::list(&env.settings, Some(&view.manifest().unwrap().batch))
        .await
        .expect("dlq list");
    assert!(letters.is_empty(), "{letters:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_between_check_and_delete_does_not_reach_the_renamed_account() {
    let mut env = TestEnv::new("g9-rename", fixture_tenant()).await;
    let front = GraphFront::start(&env.sim.url()).await;
    front.point(&mut env.settings);
    // Adele is checked by UPN; before her methods are listed she is renamed, and another
    // account takes her UPN.
    front.rename_before_first(
        "/authentication/methods",
        &[(ADELE, "adele.old@contoso.com"), (NEWCOMER, ADELE)],
    );
    let newcomer_before = env.sim.user(NEWCOMER_ID).unwrap();

    let view = reset(&mut env, &[ADELE]).await;

    let o = outcome(&view, ADELE);
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert_eq!(
        sim_stems(&env, "adele.old@contoso.com"),
        ["password"],
        "the account that was checked was reset"
    );
    let newcomer = env.sim.user(ADELE).unwrap();
    assert_eq!(newcomer.id, NEWCOMER_ID);
    assert_eq!(
        newcomer.methods, newcomer_before.methods,
        "the account that took the UPN was not touched"
    );
    let calls = front.calls();
    let by_upn: Vec<_> = calls
        .iter()
        .filter(|c| c.user.as_deref() == Some(ADELE))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        by_upn.len(),
        1,
        "only the first read uses the UPN: {by_upn:?}"
    );
    assert!(calls
        .iter()
        .filter(|c| c.method == axum::http::Method::DELETE)
        .all(|c| c.user.as_deref() == Some(ADELE_ID)));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_devices_and_a_service_principal_enqueues_its_users_only() {
    let mut env = TestEnv::new("g9-group", fixture_tenant()).await;
    env.setup().await;

    let (code, stdout, stderr) = proc::run(
        &env.settings,
        &["enqueue", "--group", MIXED_GROUP, "--transitive", "--yes"],
    )
    .await;

    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("3 users; skipped 2 devices, 1 service principal, 1 group, 1 contact"),
        "{stderr}"
    );
    assert!(stdout.contains("enqueued: 3"), "{stdout}");
    let batch = stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch: "))
        .expect("batch id printed")
        .to_string();
    env.start_worker(4);
    let view = env.wait_batch(&batch, 60).await;
    let mut users: Vec<String> = view.outcomes().map(|o| o.user.key()).collect();
    users.sort();
    let mut expected = [ADELE, GUEST, NEWCOMER].map(str::to_lowercase).to_vec();
    expected.sort();
    assert_eq!(users, expected, "users only");
    assert!(view.outcomes().all(|o| o.status == Status::Reset));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_halts_the_workers_with_nothing_dead_lettered_and_the_same_batch_completes_once_fixed(
) {
    let mut env = TestEnv::new(
        "g9-halt",
        SimConfig {
            users: 30,
            ..SimConfig::default()
        },
    )
    .await;
    env.setup().await;
    env.settings.worker.halt_retry_every = Duration::from_millis(300);
    // The secret was rotated in Entra; the workers still send the old one.
    env.sim.set_app(AppPatch {
        client_secret: Some("rotated-secret".into()),
        ..AppPatch::default()
    });
    let enqueued = env
        .enqueue_csv(&csv_of_generated(20))
        .await
        .expect("enqueued");
    let metrics = Arc::new(WorkerMetrics::default());
    let cancel = CancellationToken::new();
    let settings = env.settings.clone();
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry).unwrap();
    let served = mfa_reset::telemetry::serve_metrics(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        graph.clone(),
        cancel.clone(),
    )
    .await
    .expect("metrics served");
    let worker = {
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        tokio::spawn(async move {
            let options = WorkOptions {
                concurrency: 4,
                exit_when_idle: None,
            };
            worker::run(&settings, graph, options, metrics, cancel).await
        })
    };
    let http = reqwest::Client::new();
    let healthz = format!("http://{served}/healthz");

    wait_until("the worker halts", 60, || metrics.halted.get() == 1).await;
    let requests = env.topology().requests();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.queue_len(&requests).await != 20 {
        assert!(tokio::time::Instant::now() < deadline, "requests put back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = http.get(&healthz).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let reason = health.text().await.unwrap();
    assert!(
        reason.starts_with("halted: ") && reason.contains("graph.client_secret"),
        "{reason}"
    );
    let text = http
        .get(format!("http://{served}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("mfa_reset_halted 1"), "{text}");
    assert_eq!(metrics.dead_lettered.get(), 0);
    assert_eq!(env.queue_len(&env.topology().dead()).await, 0);
    assert_eq!(env.outcome_counts().await.len(), 0, "no outcome recorded");

    // The operator puts the new secret in place (here: Entra accepts the old one again).
    env.sim.set_app(AppPatch {
        client_secret: Some(SimConfig::default().client_secret),
        ..AppPatch::default()
    });
    let view = env.wait_batch(&enqueued.batch, 60).await;

    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(20),
        "{:?}",
        view.counts()
    );
    assert!(
        view.outcomes().all(|o| o.attempts == 1),
        "a halt uses no attempt"
    );
    assert_eq!(metrics.halted.get(), 0);
    assert!(metrics.halts.get() >= 1);
    assert_eq!(metrics.dead_lettered.get(), 0);
    assert_eq!(env.queue_len(&env.topology().dead()).await, 0);
    let health = http.get(&healthz).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    cancel.cancel();
    worker.await.unwrap().expect("the worker ends cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_outcome_does_not_claim_revoked_sessions_and_the_report_says_why() {
    let mut env = TestEnv::new("g9-guest", fixture_tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.csv");
    std::fs::write(&path, format!("userPrincipalName\n{GUEST}\n{ADELE}\n")).unwrap();
    let mut args = crate::common::env::enqueue_args(Some(path), None);
    args.revoke_sessions = true;
    let enqueued = commands::enqueue::run(&env.settings, &args).await.unwrap();
    env.start_worker(2);

    let view = env.wait_batch(&enqueued.batch, 60).await;

    let guest = outcome(&view, GUEST);
    assert_eq!(guest.status, Status::Reset, "{guest:?}");
    assert!(!guest.sessions_revoked, "{guest:?}");
    assert!(
        guest
            .notes
            .iter()
            .any(|n| n.contains("Graph does not revoke the sign-in sessions of external")),
        "{guest:?}"
    );
    let adele = outcome(&view, ADELE);
    assert!(
        adele.sessions_revoked && adele.notes.is_empty(),
        "{adele:?}"
    );
    assert_eq!(env.sim.user(GUEST).unwrap().sessions_revoked, 0);
    let mut report = Vec::new();
    commands::report::write_csv(&view, &mut report).unwrap();
    let report = String::from_utf8(report).unwrap();
    let guest_row = report
        .lines()
        .find(|l| l.starts_with("megan.bowen"))
        .expect("guest row");
    assert!(
        guest_row.contains(",false,") && guest_row.contains("sessions not revoked"),
        "{guest_row}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_default_with_nothing_else_in_scope_ends_partial_with_graphs_code() {
    // The default (SMS to the mobile) is the only method in scope; the FIDO2 key, out of
    // scope, keeps Graph refusing it.
    let users = json!([{
        "userPrincipalName": "sms.default@contoso.com",
        "defaultMethod": "sms",
        "methods": [
            phone("mobile", "+1 5555550301"),
            typed("fido2", "f1d0f1d0-0000-4000-8000-000000000301"),
        ]
    }]);
    let mut env = TestEnv::new("g9-refused", tenant_of(users)).await;
    env.settings.reset.methods = MethodSelection::List(vec!["phone".into()]);

    let view = reset(&mut env, &["sms.default@contoso.com"]).await;

    let o = outcome(&view, "sms.default@contoso.com");
    assert_eq!(o.status, Status::Partial, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("badRequest"));
    assert!(o.methods_removed.is_empty());
    assert_eq!(kinds(&o.methods_remaining), ["phone"]);
    let letters = dlq::list(&env.settings, Some(&view.manifest().unwrap().batch))
        .await
        .expect("dlq list");
    assert!(
        letters.is_empty(),
        "partial is not dead-lettered: {letters:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_attempt_keeps_a_method_the_user_registered_after_the_request() {
    let requested_at = Utc::now() - chrono::Duration::hours(1);
    let since = (Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let users = json!([{
        "userPrincipalName": "re.registered@contoso.com",
        "methods": [
            {"@odata.type": "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod", "id": "a1a1a1a1-0000-4000-8000-000000000401", "displayName": "old phone", "createdDateTime": "2024-01-05T08:00:00Z"},
            {"@odata.type": "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod", "id": "a1a1a1a1-0000-4000-8000-000000000402", "displayName": "new phone", "createdDateTime": since},
        ]
    }]);
    let mut env = TestEnv::new("g9-late", tenant_of(users)).await;
    let batch = "g9-late-batch";
    let user = UserRef::parse("re.registered@contoso.com").unwrap();
    let request = ResetRequest {
        version: REQUEST_VERSION,
        request_id: ResetRequest::id_for(batch, &user),
        batch: batch.into(),
        user,
        ticket: None,
        reason: None,
        requested_by: Some("tests".into()),
        dry_run: false,
        revoke_sessions: false,
        requested_at,
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
        revoke_sessions: false,
        requested_by: None,
        created_at: requested_at,
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

    env.start_worker(1);
    let view = env.wait_batch(batch, 60).await;

    let o = outcome(&view, "re.registered@contoso.com");
    assert_eq!(o.status, Status::Reset, "{o:?}");
    let removed: Vec<&str> = o.methods_removed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(removed, ["a1a1a1a1-0000-4000-8000-000000000401"]);
    assert!(o.methods_remaining.is_empty(), "{o:?}");
    assert!(
        o.notes.iter().any(|n| n.starts_with(
            "kept microsoftAuthenticator:a1a1a1a1-0000-4000-8000-000000000402: registered at"
        ) && n.contains("after the request was made")),
        "{o:?}"
    );
    let left: Vec<String> = env
        .sim
        .user("re.registered@contoso.com")
        .unwrap()
        .methods
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert!(left.contains(&"a1a1a1a1-0000-4000-8000-000000000402".to_string()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_user_is_recognised_by_object_id_whatever_the_request_names() {
    let mut env = TestEnv::new("g9-protected", fixture_tenant()).await;
    // Listed by object id, requested by UPN: only Graph can tell they are one account.
    env.settings.reset.protected_users = vec![ADELE_ID.to_uppercase()];
    let before = env.sim.user(ADELE).unwrap();

    let view = reset(&mut env, &[ADELE, NEWCOMER]).await;

    let o = outcome(&view, ADELE);
    assert_eq!(o.status, Status::SkippedProtected, "{o:?}");
    assert_eq!(o.error_code.as_deref(), Some("protected_user"));
    assert_eq!(env.sim.user(ADELE).unwrap(), before);
    assert_eq!(outcome(&view, NEWCOMER).status, Status::Reset);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_entry_that_names_no_user_stops_the_worker_with_a_clear_message() {
    let env = TestEnv::new("g9-protected-unknown", fixture_tenant()).await;
    let mut settings = env.settings.clone();
    settings.reset.protected_users = vec![ADELE.into(), "nobody@contoso.com".into()];
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry).unwrap();
    let options = WorkOptions {
        concurrency: 1,
        exit_when_idle: None,
    };

    let err = worker::run(
        &settings,
        graph,
        options,
        Arc::new(WorkerMetrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();

    assert!(
        err.starts_with(
            "reset.protected_users entry 2 (\"nobody@contoso.com\") is not a user of the tenant"
        ),
        "{err}"
    );
    assert!(err.contains("fix or remove it"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_upn_entra_does_not_allow_is_refused_at_intake_and_nothing_is_enqueued() {
    let env = TestEnv::new("g9-intake", fixture_tenant()).await;
    env.setup().await;

    let err = env
        .enqueue_csv(&format!(
            "userPrincipalName\n{ADELE}\no'neil+mfa&co@contoso.com\njürgen@contoso.com\n"
        ))
        .await
        .unwrap_err()
        .to_string();

    assert!(err.contains("line 3"), "{err}");
    assert!(
        err.contains("contains '+', which Entra does not allow in a user principal name"),
        "{err}"
    );
    assert!(err.contains("line 4") && err.contains("'ü'"), "{err}");
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);
    assert_eq!(env.sim.stats().requests_total, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardware_oath_tokens_are_listed_from_beta_only_when_the_scope_removes_them() {
    let mut env = TestEnv::new("g9-beta", fixture_tenant()).await;
    env.settings.reset.methods = MethodSelection::Preset("portal".into());
    let enqueued = enqueue(&env, &["every.method@contoso.com"], true).await;
    env.start_worker(1);
    let view = env.wait_batch(&enqueued.batch, 60).await;
    let o = outcome(&view, "every.method@contoso.com");
    assert_eq!(o.status, Status::DryRun, "{o:?}");
    assert!(!kinds(&o.methods_removed).contains(&"hardwareOath"));
    let stats = env.sim.stats();
    assert_eq!(
        calls_to(&stats, "GET /beta/users/{user}/authentication/methods"),
        0
    );
    assert_eq!(calls_to(&stats, "hardwareOathMethods"), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporarily_unavailable_token_endpoint_is_retried_without_halting() {
    let env = TestEnv::new(
        "g9-token-busy",
        SimConfig {
            users: 10,
            ..SimConfig::default()
        },
    )
    .await;
    // The first two token requests answer 503 temporarily_unavailable.
    env.sim.set_app(AppPatch {
        token_fault: Some(Some(graph_sim::TokenFault::TemporarilyUnavailable)),
        token_faults: Some(2),
        ..AppPatch::default()
    });
    let enqueued = env
        .enqueue_csv(&csv_of_generated(5))
        .await
        .expect("enqueued");
    let metrics = Arc::new(WorkerMetrics::default());
    let cancel = CancellationToken::new();
    let settings = env.settings.clone();
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry).unwrap();
    let worker = {
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        tokio::spawn(async move {
            let options = WorkOptions {
                concurrency: 2,
                exit_when_idle: None,
            };
            worker::run(&settings, graph, options, metrics, cancel).await
        })
    };

    let view = env.wait_batch(&enqueued.batch, 60).await;

    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(5),
        "{:?}",
        view.counts()
    );
    assert_eq!(
        metrics.halts.get(),
        0,
        "a busy token endpoint is an outage, not a halt"
    );
    assert_eq!(metrics.dead_lettered.get(), 0);
    assert_eq!(
        env.sim.app().token_faults,
        0,
        "both faults were met and retried"
    );
    cancel.cancel();
    worker.await.unwrap().expect("the worker ends cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_counts_every_graph_request_its_reset_made() {
    let mut env = TestEnv::new("g9-calls", fixture_tenant()).await;
    let front = GraphFront::start(&env.sim.url()).await;
    front.point(&mut env.settings);

    let view = reset(&mut env, &[ADELE]).await;

    let o = outcome(&view, ADELE);
    assert_eq!(o.status, Status::Reset, "{o:?}");
    // Every request about Adele, by UPN (the one resolution) or by object id (the rest),
    // listings of v1.0 and of beta's hardware OATH collection included.
    let made: Vec<_> = front
        .calls()
        .into_iter()
        .filter(|c| matches!(c.user.as_deref(), Some(ADELE) | Some(ADELE_ID)))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(o.graph_calls as usize, made.len(), "{made:#?}");
    env.cleanup().await;
}
