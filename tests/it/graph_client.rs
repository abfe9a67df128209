//! Integration tests: graph_client. The Graph client against the simulator over real HTTP:
//! tokens, addressing, retries, the shared Retry-After pause, paging.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use graph_sim::{FaultPatch, Fixture, GenOptions, SimConfig, SimServer, ThrottleSettings};
use mfa_reset::config::{GraphSettings, RateSettings, RetrySettings};
use mfa_reset::domain::UserRef;
use mfa_reset::graph::{AuthMethod, Error, GraphClient};
use secrecy::SecretString;

use crate::common::start_sim;

const ADELE: &str = "adele.vance@contoso.com";
const GUEST: &str = "megan.bowen_fabrikam.com#EXT#@contoso.onmicrosoft.com";
const DOLLAR: &str = "$admin@contoso.com";
const QUOTE_PLUS_AMP: &str = "o'neil+mfa&co@contoso.com";
const EVERY_METHOD: &str = "every.method@contoso.com";

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fixture_config() -> SimConfig {
    SimConfig {
        fixture: Some(Fixture::load(fixture_path("tenant.json").as_ref()).expect("fixture loads")),
        ..SimConfig::default()
    }
}

fn graph_settings(sim: &SimServer) -> GraphSettings {
    let defaults = SimConfig::default();
    GraphSettings {
        base_url: format!("{}/v1.0", sim.url()),
        authority: sim.url(),
        tenant_id: defaults.tenant_id,
        client_id: defaults.client_id,
        client_secret: Some(SecretString::from(defaults.client_secret)),
        request_timeout: Duration::from_secs(10),
        ..GraphSettings::default()
    }
}

/// Fast retries so tests do not wait for production backoffs.
fn quick_retry() -> RetrySettings {
    RetrySettings {
        max_attempts: 20,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(60),
        ..RetrySettings::default()
    }
}

fn client(sim: &SimServer) -> GraphClient {
    GraphClient::new(
        &graph_settings(sim),
        &RateSettings::default(),
        &quick_retry(),
    )
    .expect("client builds")
}

fn user(s: &str) -> UserRef {
    UserRef::parse(s).expect("valid user")
}

fn method_ids(methods: &[AuthMethod]) -> HashSet<String> {
    methods.iter().map(|m| m.id().to_string()).collect()
}

fn sim_method_ids(sim: &SimServer, upn: &str) -> HashSet<String> {
    sim.user(upn)
        .expect("user exists in the simulator")
        .methods
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_token_by_client_secret_lets_the_client_list_methods() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);

    let methods = graph.list_methods(&user(ADELE)).await.expect("listed");

    assert_eq!(method_ids(&methods), sim_method_ids(&sim, ADELE));
    assert!(methods
        .iter()
        .any(|m| matches!(m, AuthMethod::Phone { .. })));
    assert_eq!(sim.stats().tokens_issued, 1);
}

#[tokio::test]
async fn a_token_by_certificate_lets_the_client_list_methods() {
    let cert_pem = std::fs::read_to_string(fixture_path("client-cert.pem")).unwrap();
    let sim = start_sim(SimConfig {
        client_certificate_pem: Some(cert_pem),
        ..fixture_config()
    })
    .await;
    let settings = GraphSettings {
        client_secret: None,
        client_certificate: Some(fixture_path("client-cert.pem")),
        client_private_key: Some(fixture_path("client-key.pem")),
        ..graph_settings(&sim)
    };
    let graph = GraphClient::new(&settings, &RateSettings::default(), &quick_retry()).unwrap();

    let methods = graph
        .list_methods(&user(ADELE))
        .await
        .expect("listed with a certificate token");

    assert_eq!(method_ids(&methods), sim_method_ids(&sim, ADELE));
    assert_eq!(sim.stats().tokens_issued, 1);
}

#[tokio::test]
async fn a_wrong_client_secret_fails_with_aadsts7000215() {
    let sim = start_sim(fixture_config()).await;
    let settings = GraphSettings {
        client_secret: Some(SecretString::from("not-the-secret")),
        ..graph_settings(&sim)
    };
    let graph = GraphClient::new(&settings, &RateSettings::default(), &quick_retry()).unwrap();

    let err = graph.list_methods(&user(ADELE)).await.unwrap_err();

    assert!(
        matches!(&err, Error::Auth { code, .. } if code == "AADSTS7000215"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_for_many_concurrent_calls_which_all_succeed() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    graph
        .list_methods(&user(ADELE))
        .await
        .expect("first token works");
    sim.expire_tokens();

    let calls: Vec<_> = (0..20)
        .map(|_| {
            let graph = graph.clone();
            tokio::spawn(async move { graph.list_methods(&user(ADELE)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("succeeds after one renewal");
    }

    assert_eq!(
        sim.stats().tokens_issued,
        2,
        "one renewal for all twenty calls"
    );
    assert_eq!(graph.tokens().fetches(), 2);
    assert!(graph.stats().snapshot().status_401 >= 1);
}

#[tokio::test]
async fn guest_dollar_and_quote_plus_ampersand_users_are_addressed_correctly() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);

    for upn in [GUEST, DOLLAR, QUOTE_PLUS_AMP] {
        let methods = graph
            .list_methods(&user(upn))
            .await
            .unwrap_or_else(|e| panic!("{upn}: {e}"));
        assert_eq!(method_ids(&methods), sim_method_ids(&sim, upn), "{upn}");
    }
    // A write reaches the right user too.
    let methods = graph.list_methods(&user(QUOTE_PLUS_AMP)).await.unwrap();
    let authenticator = methods
        .iter()
        .find(|m| matches!(m, AuthMethod::MicrosoftAuthenticator { .. }))
        .expect("fixture user has an authenticator");
    graph
        .delete_method(&user(QUOTE_PLUS_AMP), authenticator)
        .await
        .expect("deleted");
    assert!(!sim_method_ids(&sim, QUOTE_PLUS_AMP).contains(authenticator.id()));
}

#[tokio::test]
async fn beta_only_methods_are_listed_and_deleted_under_beta() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);

    let methods = graph.list_methods(&user(EVERY_METHOD)).await.unwrap();
    let beta_only: Vec<_> = methods.iter().filter(|m| m.is_beta_only()).collect();
    assert_eq!(
        beta_only.len(),
        2,
        "hardware OATH and QR code + PIN are visible"
    );
    for method in beta_only {
        graph
            .delete_method(&user(EVERY_METHOD), method)
            .await
            .expect("deleted under beta");
    }

    let left = graph.list_methods(&user(EVERY_METHOD)).await.unwrap();
    assert!(!left.iter().any(AuthMethod::is_beta_only));
}

#[tokio::test]
async fn a_delete_answered_429_or_503_but_applied_succeeds_when_its_retry_sees_404() {
    let sim = start_sim(fixture_config()).await;
    sim.set_faults(FaultPatch {
        ghost_rate: Some(1.0),
        ..FaultPatch::default()
    });
    let graph = client(&sim);
    let methods = graph.list_methods(&user(ADELE)).await.unwrap();
    let authenticator = methods
        .iter()
        .find(|m| matches!(m, AuthMethod::MicrosoftAuthenticator { .. }))
        .unwrap();

    graph
        .delete_method(&user(ADELE), authenticator)
        .await
        .expect("404 on the retry means done");

    assert_eq!(sim.stats().ghost_successes, 1);
    assert!(!sim_method_ids(&sim, ADELE).contains(authenticator.id()));
    let stats = graph.stats().snapshot();
    assert_eq!((stats.status_404, stats.retries), (1, 1));
}

#[tokio::test]
async fn a_404_on_a_first_delete_is_not_found() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    let gone = AuthMethod::SoftwareOath {
        id: "00000000-0000-4000-8000-00000000dead".into(),
    };

    let err = graph.delete_method(&user(ADELE), &gone).await.unwrap_err();

    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_every_concurrent_task_and_graph_sees_no_violation() {
    // Graph allows 10 requests per second; we would send 100 per second without the 429s.
    let sim = start_sim(SimConfig {
        throttle: ThrottleSettings {
            requests_per_period: 10,
            requests_period: Duration::from_secs(1),
            ..ThrottleSettings::default()
        },
        ..fixture_config()
    })
    .await;
    let rate = RateSettings {
        requests: 100,
        requests_period: Duration::from_secs(1),
        ..RateSettings::default()
    };
    let graph = GraphClient::new(&graph_settings(&sim), &rate, &quick_retry()).unwrap();

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let graph = graph.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    graph.list_methods(&user(ADELE)).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every call succeeds after the pauses");
    }

    let seen = sim.stats();
    assert!(seen.throttled >= 1, "the test must actually draw a 429");
    assert_eq!(
        seen.violations, 0,
        "no request arrived during a Retry-After"
    );
    let ours = graph.stats().snapshot();
    assert!(ours.throttled >= 1 && ours.pause_secs >= 1.0, "{ours:?}");
    assert!(ours.factor < 1.0, "a 429 lowers the adaptive factor");
}

#[tokio::test]
async fn group_members_follow_next_links_across_250_members() {
    let sim = start_sim(SimConfig {
        users: 300,
        generation: GenOptions {
            group_size: 250,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    })
    .await;
    let settings = GraphSettings {
        page_size: 100,
        ..graph_settings(&sim)
    };
    let graph = GraphClient::new(&settings, &RateSettings::default(), &quick_retry()).unwrap();
    let group = graph_sim::tenant::RESET_PENDING_GROUP_ID;

    let members = graph.group_members(group, true).await.expect("all pages");

    assert_eq!(members.len(), 250);
    let ids: HashSet<_> = members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 250, "no member twice");
    assert!(members.iter().all(|m| m.user_principal_name.is_some()));
    assert_eq!(
        graph.stats().snapshot().status_200,
        3,
        "three pages of at most 100"
    );
}

#[tokio::test]
async fn default_method_roles_revocation_and_restores_reach_graph() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);

    assert_eq!(
        graph.default_method(&user(ADELE)).await.unwrap().as_deref(),
        Some("sms")
    );
    assert_eq!(
        graph
            .directory_roles(&user("global.admin@contoso.com"))
            .await
            .unwrap(),
        ["Global Administrator"]
    );
    assert!(graph
        .directory_roles(&user(ADELE))
        .await
        .unwrap()
        .is_empty());
    graph.revoke_sessions(&user(ADELE)).await.unwrap();
    assert_eq!(sim.user(ADELE).unwrap().sessions_revoked, 1);

    let clean = user("already.clean@contoso.com");
    graph
        .create_phone_method(&clean, "+1 5555550199", "mobile")
        .await
        .unwrap();
    graph
        .create_email_method(&clean, "clean@personal.example.com")
        .await
        .unwrap();
    let tap = graph
        .create_temporary_access_pass(&clean, 60, true)
        .await
        .unwrap();
    assert!(!secrecy::ExposeSecret::expose_secret(&tap.pass).is_empty());
    let stems: HashSet<String> = graph
        .list_methods(&clean)
        .await
        .unwrap()
        .iter()
        .map(|m| m.stem().to_string())
        .collect();
    assert!(stems.is_superset(&HashSet::from([
        "phone".into(),
        "email".into(),
        "temporaryAccessPass".into()
    ])));
}

#[tokio::test]
async fn the_budget_is_shared_by_clones_of_one_client() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    let clone = graph.clone();

    clone.list_methods(&user(ADELE)).await.unwrap();

    assert!(Arc::ptr_eq(&graph.budget(), &clone.budget()));
    assert!(Arc::ptr_eq(&graph.gate(), &clone.gate()));
    assert_eq!(graph.stats().snapshot().requests, 1);
}
