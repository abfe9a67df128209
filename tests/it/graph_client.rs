//! Integration tests: graph_client. The Graph client against the simulator over real HTTP:
//! tokens and the app-wide errors that halt, addressing (by object id once resolved), the
//! privilege check, QR code + PIN, v1.0 and beta, group members by type, retries, the shared
//! Retry-After pause, paging.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use graph_sim::{
    AppPatch, FaultPatch, Fixture, GenOptions, SimConfig, SimServer, ThrottleSettings, TokenFault,
};
use mfa_reset::config::{GraphSettings, RateSettings, RetrySettings};
use mfa_reset::domain::UserRef;
use mfa_reset::graph::{
    AppFault, AuthMethod, Class, Error, GraphClient, Listing, Privilege, RoleHold,
};
use secrecy::SecretString;

use crate::common::start_sim;

const ADELE: &str = "adele.vance@contoso.com";
const GUEST: &str = "megan.bowen_fabrikam.com#EXT#@contoso.onmicrosoft.com";
const DOLLAR: &str = "$admin@contoso.com";
const QUOTE_PLUS_AMP: &str = "o'neil+mfa&co@contoso.com";
const EVERY_METHOD: &str = "every.method@contoso.com";
const MIXED_GROUP: &str = "22222222-2222-4222-8222-000000000003";

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

/// Answers to requests of endpoints containing `fragment`, summed.
fn calls_to(sim: &SimServer, fragment: &str) -> u64 {
    sim.stats()
        .requests_by_endpoint
        .iter()
        .filter(|(e, _)| e.contains(fragment))
        .flat_map(|(_, s)| s.values())
        .sum()
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
        client_private_key: Some(fixture_path("client-key.pem").into()),
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
async fn a_wrong_client_secret_halts_with_aadsts7000215_and_names_the_fix() {
    let sim = start_sim(fixture_config()).await;
    let settings = GraphSettings {
        client_secret: Some(SecretString::from("not-the-secret")),
        ..graph_settings(&sim)
    };
    let graph = GraphClient::new(&settings, &RateSettings::default(), &quick_retry()).unwrap();

    let err = graph.list_methods(&user(ADELE)).await.unwrap_err();

    assert!(
        matches!(&err, Error::App { fault: AppFault::SecretRejected, code, status: Some(401), .. } if code == "AADSTS7000215"),
        "{err:?}"
    );
    assert_eq!(err.class(), Class::Halt);
    let text = err.to_string();
    assert!(text.contains("set graph.client_secret"), "{text}");
    assert!(!text.contains("not-the-secret"));
    assert_eq!(
        graph.tokens().fetches(),
        1,
        "an app-wide error is not retried in process"
    );
    assert_eq!(sim.stats().graph_requests, 0);
}

#[tokio::test]
async fn every_app_wide_token_refusal_halts_with_its_cause() {
    let cert_pem = std::fs::read_to_string(fixture_path("client-cert.pem")).unwrap();
    let sim = start_sim(SimConfig {
        client_certificate_pem: Some(cert_pem),
        ..fixture_config()
    })
    .await;
    let by_secret = client(&sim);
    let by_certificate = GraphClient::new(
        &GraphSettings {
            client_secret: None,
            client_certificate: Some(fixture_path("client-cert.pem")),
            client_private_key: Some(fixture_path("client-key.pem").into()),
            ..graph_settings(&sim)
        },
        &RateSettings::default(),
        &quick_retry(),
    )
    .unwrap();
    let healthy = AppPatch {
        secret_expired: Some(false),
        disabled: Some(false),
        tenant_found: Some(true),
        certificate_registered: Some(true),
        ..AppPatch::default()
    };
    let cases = [
        (
            AppPatch {
                secret_expired: Some(true),
                ..AppPatch::default()
            },
            &by_secret,
            AppFault::SecretExpired,
            "AADSTS7000222",
        ),
        (
            AppPatch {
                disabled: Some(true),
                ..AppPatch::default()
            },
            &by_secret,
            AppFault::AppDisabled,
            "AADSTS7000112",
        ),
        (
            AppPatch {
                tenant_found: Some(false),
                ..AppPatch::default()
            },
            &by_secret,
            AppFault::TenantNotFound,
            "AADSTS90002",
        ),
        (
            AppPatch {
                certificate_registered: Some(false),
                ..AppPatch::default()
            },
            &by_certificate,
            AppFault::CertificateRejected,
            "AADSTS700027",
        ),
    ];

    for (broken, graph, fault, code) in cases {
        sim.set_app(healthy.clone());
        sim.set_app(broken);
        let err = graph.list_methods(&user(ADELE)).await.unwrap_err();
        assert!(
            matches!(&err, Error::App { fault: f, code: c, .. } if *f == fault && c == code),
            "{code}: {err:?}"
        );
        assert_eq!(err.class(), Class::Halt, "{code}");
    }
    sim.set_app(healthy);
    by_certificate
        .list_methods(&user(ADELE))
        .await
        .expect("the fixed app works again");
    assert_eq!(
        sim.stats().graph_requests,
        1,
        "Graph saw only the working call"
    );
}

#[tokio::test]
async fn a_temporarily_unavailable_token_endpoint_is_retried_until_it_answers() {
    let sim = start_sim(fixture_config()).await;
    sim.set_app(AppPatch {
        token_fault: Some(Some(TokenFault::TemporarilyUnavailable)),
        token_faults: Some(2),
        ..AppPatch::default()
    });
    let graph = client(&sim);

    let methods = graph
        .list_methods(&user(ADELE))
        .await
        .expect("listed once a token is issued");

    assert_eq!(method_ids(&methods), sim_method_ids(&sim, ADELE));
    assert_eq!(graph.tokens().fetches(), 3, "two refusals, then a token");
    assert_eq!(sim.app().token_faults, 0);
}

#[tokio::test]
async fn after_the_secret_is_fixed_the_same_client_carries_on() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    // The secret the app accepts is rotated: the configured one is now wrong.
    sim.set_app(AppPatch {
        client_secret: Some("rotated".into()),
        ..AppPatch::default()
    });

    let halted = graph.list_methods(&user(ADELE)).await.unwrap_err();
    let still = graph.renew_token().await.unwrap_err();
    sim.set_app(AppPatch {
        client_secret: Some(SimConfig::default().client_secret),
        ..AppPatch::default()
    });
    graph.renew_token().await.expect("a token again");
    let methods = graph.list_methods(&user(ADELE)).await.expect("listed");

    assert_eq!(halted.class(), Class::Halt);
    assert_eq!(still.code(), "AADSTS7000215");
    assert_eq!(method_ids(&methods), sim_method_ids(&sim, ADELE));
}

#[tokio::test]
async fn without_admin_consent_every_call_halts_and_a_granted_consent_is_picked_up() {
    let sim = start_sim(fixture_config()).await;
    sim.set_app(AppPatch {
        admin_consent: Some(false),
        ..AppPatch::default()
    });
    let graph = client(&sim);

    let resolving = graph.resolve_user(&user(ADELE)).await.unwrap_err();
    let listing = graph.list_methods(&user(ADELE)).await.unwrap_err();
    sim.set_app(AppPatch {
        admin_consent: Some(true),
        ..AppPatch::default()
    });
    let resolved = graph
        .resolve_user(&user(ADELE))
        .await
        .expect("the refused token was dropped: the next one carries the consent");

    assert!(
        matches!(
            resolving,
            Error::App {
                fault: AppFault::PermissionMissing("User.Read.All"),
                ..
            }
        ),
        "{resolving:?}"
    );
    assert!(
        matches!(
            listing,
            Error::App {
                fault: AppFault::PermissionMissing("UserAuthenticationMethod.ReadWrite.All"),
                ..
            }
        ),
        "{listing:?}"
    );
    assert!(listing.to_string().contains("admin consent"), "{listing}");
    assert_eq!(listing.class(), Class::Halt);
    assert_eq!(resolved.user_principal_name, ADELE);
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
async fn hardware_oath_is_listed_and_deleted_under_beta_only_when_asked() {
    let sim = start_sim(fixture_config()).await;
    let graph = GraphClient::new(
        &GraphSettings {
            list_methods_from_beta: false,
            ..graph_settings(&sim)
        },
        &RateSettings::default(),
        &quick_retry(),
    )
    .unwrap();
    let every = user(EVERY_METHOD);

    let supported = graph
        .list_methods_with(&every, Listing::Supported)
        .await
        .unwrap();
    let beta_calls_before = calls_to(&sim, "/beta/");
    let with_hardware = graph
        .list_methods_with(&every, Listing::WithHardwareOath)
        .await
        .unwrap();

    assert!(!supported.iter().any(AuthMethod::is_beta_only));
    assert!(supported
        .iter()
        .any(|m| matches!(m, AuthMethod::QrCodePin { .. })));
    assert_eq!(
        beta_calls_before, 0,
        "v1.0 alone for a scope without hardware OATH"
    );
    assert_eq!(with_hardware.len(), supported.len() + 1);
    let hardware = with_hardware
        .iter()
        .find(|m| matches!(m, AuthMethod::HardwareOath { .. }))
        .expect("the token is seen");
    graph
        .delete_method(&every, hardware)
        .await
        .expect("deleted under beta");
    assert!(!sim_method_ids(&sim, EVERY_METHOD).contains(hardware.id()));
    let stats = sim.stats();
    let beta: Vec<&String> = stats
        .requests_by_endpoint
        .keys()
        .filter(|e| e.contains("/beta/"))
        .collect();
    assert_eq!(
        beta,
        [
            "DELETE /beta/users/{user}/authentication/hardwareOathMethods/{id}",
            "GET /beta/users/{user}/authentication/hardwareOathMethods"
        ],
        "beta only where hardware OATH needs it"
    );
}

#[tokio::test]
async fn a_qr_code_pin_method_is_deleted_whole() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    let every = user(EVERY_METHOD);
    let methods = graph
        .list_methods_with(&every, Listing::Supported)
        .await
        .unwrap();
    let qr = methods
        .iter()
        .find(|m| matches!(m, AuthMethod::QrCodePin { .. }))
        .expect("the fixture user has QR code + PIN");

    graph.delete_method(&every, qr).await.expect("deleted");

    let after = graph
        .list_methods_with(&every, Listing::Supported)
        .await
        .unwrap();
    assert!(!after
        .iter()
        .any(|m| matches!(m, AuthMethod::QrCodePin { .. })));
    let view = sim.user(EVERY_METHOD).unwrap();
    assert!(view.qr_codes.is_empty());
    assert!(view
        .methods
        .iter()
        .all(|m| m["@odata.type"] != "#microsoft.graph.qrCodePinAuthenticationMethod"));
    assert!(sim
        .stats()
        .requests_by_endpoint
        .contains_key("DELETE /v1.0/users/{user}/authentication/qrCodePinMethod"));
}

#[tokio::test]
async fn a_user_is_resolved_once_and_a_rename_cannot_redirect_later_calls() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);

    let adele = graph.resolve_user(&user(ADELE)).await.expect("resolved");
    let guest = graph.resolve_user(&user(GUEST)).await.expect("resolved");
    let by_id = graph
        .resolve_user(&adele.user_ref())
        .await
        .expect("resolved");
    // Between the check and the delete, Adele is renamed and another account takes her UPN.
    sim.rename_user(ADELE, "adele.old@contoso.com").unwrap();
    sim.rename_user(QUOTE_PLUS_AMP, ADELE).unwrap();
    let methods = graph.list_methods(&adele).await.unwrap();
    let authenticator = methods
        .iter()
        .find(|m| matches!(m, AuthMethod::MicrosoftAuthenticator { .. }))
        .unwrap();
    graph.delete_method(&adele, authenticator).await.unwrap();

    assert_eq!(adele.id.to_string(), "11111111-1111-4111-8111-000000000001");
    assert_eq!(by_id, adele);
    assert!(!adele.is_external());
    assert!(guest.is_external() && guest.is_guest(), "{guest:?}");
    let original = sim.user("adele.old@contoso.com").unwrap();
    assert_eq!(
        original.deleted_methods.len(),
        1,
        "the checked account was changed"
    );
    let newcomer = sim.user(ADELE).unwrap();
    assert_eq!(newcomer.id, "11111111-1111-4111-8111-000000000004");
    assert!(
        newcomer.deleted_methods.is_empty(),
        "the renamed-in account was not"
    );
    let unknown = graph
        .resolve_user(&user("nobody@contoso.com"))
        .await
        .unwrap_err();
    assert!(matches!(unknown, Error::NotFound { .. }), "{unknown:?}");
}

#[tokio::test]
async fn active_group_assigned_and_eligible_admins_are_privileged() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    let privilege = |upn: &'static str| {
        let graph = graph.clone();
        async move {
            let resolved = graph.resolve_user(&user(upn)).await.unwrap();
            graph.privilege(&resolved).await.unwrap()
        }
    };

    let active = privilege("global.admin@contoso.com").await;
    let through_group = privilege("group.admin@contoso.com").await;
    let eligible = privilege("eligible.admin@contoso.com").await;
    let plain = privilege(ADELE).await;

    let holds = |p: &Privilege| match p {
        Privilege::Privileged { roles } => roles.iter().map(|r| r.hold.clone()).collect(),
        Privilege::NotPrivileged => Vec::new(),
    };
    assert_eq!(holds(&active), [RoleHold::Active]);
    assert_eq!(
        holds(&through_group),
        [RoleHold::ThroughGroup {
            group_id: "22222222-2222-4222-8222-000000000004".into()
        }]
    );
    assert_eq!(holds(&eligible), [RoleHold::Eligible]);
    assert_eq!(plain, Privilege::NotPrivileged);
    assert_eq!(active.describe(), "holds Global Administrator (active)");
    assert!(eligible
        .describe()
        .contains("Privileged Role Administrator (eligible through PIM)"));
    let stats = sim.stats();
    let assignments =
        &stats.requests_by_endpoint["GET /beta/roleManagement/directory/transitiveRoleAssignments"];
    assert_eq!(assignments.get("200"), Some(&4), "{assignments:?}");
    let eligibilities = &stats.requests_by_endpoint
        ["GET /v1.0/roleManagement/directory/roleEligibilityScheduleInstances"];
    assert_eq!(eligibilities.get("200"), Some(&4), "{eligibilities:?}");
}

#[tokio::test]
async fn a_privilege_check_the_app_may_not_make_is_an_error_naming_the_permission() {
    let sim = start_sim(SimConfig {
        deny_role_management: true,
        ..fixture_config()
    })
    .await;
    let graph = client(&sim);
    let admin = graph
        .resolve_user(&user("global.admin@contoso.com"))
        .await
        .unwrap();

    let err = graph.privilege(&admin).await.unwrap_err();
    let legacy = graph.directory_roles(&admin).await.unwrap();

    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    assert!(
        err.to_string().contains("RoleManagement.Read.Directory"),
        "{err}"
    );
    assert_eq!(
        legacy.len(),
        1,
        "a role the app may not read is still a role: {legacy:?}"
    );
    assert!(legacy[0].contains("not readable"), "{legacy:?}");
}

#[tokio::test]
async fn a_group_gives_its_users_and_says_what_it_skipped() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);

    let transitive = graph.group_users(MIXED_GROUP, true).await.expect("listed");
    let direct = graph.group_users(MIXED_GROUP, false).await.expect("listed");

    let mut upns: Vec<String> = transitive
        .users
        .iter()
        .map(|u| u.user_principal_name.clone().unwrap())
        .collect();
    upns.sort();
    assert_eq!(upns, [ADELE, GUEST, QUOTE_PLUS_AMP]);
    assert_eq!(
        transitive.to_string(),
        "3 users; skipped 2 devices, 1 service principal, 1 group, 1 contact"
    );
    assert_eq!(transitive.reported_count, Some(8));
    assert_eq!(direct.users.len(), 2);
    assert_eq!(direct.skipped.groups, 1);
    let stats = sim.stats();
    assert_eq!(
        stats.requests_by_endpoint["GET /v1.0/groups/{id}/transitiveMembers"].get("200"),
        Some(&1)
    );
}

#[tokio::test]
async fn without_user_read_group_members_come_with_their_ids_only() {
    let sim = start_sim(SimConfig {
        deny_user_read: true,
        ..fixture_config()
    })
    .await;
    let graph = client(&sim);

    let members = graph.group_users(MIXED_GROUP, false).await.expect("listed");

    assert_eq!(members.users.len(), 2);
    assert!(members
        .users
        .iter()
        .all(|u| u.user_principal_name.is_none()));
    assert!(members
        .users
        .iter()
        .any(|u| u.id == "11111111-1111-4111-8111-000000000001"));
}

#[tokio::test]
async fn revoking_a_guests_sessions_succeeds_but_the_guest_is_known_as_external() {
    let sim = start_sim(fixture_config()).await;
    let graph = client(&sim);
    let guest = graph.resolve_user(&user(GUEST)).await.unwrap();

    graph
        .revoke_sessions(&guest)
        .await
        .expect("Graph answers true");

    assert!(guest.is_external());
    let view = sim.user(GUEST).unwrap();
    assert_eq!(
        (view.revoke_requests, view.sessions_revoked),
        (1, 0),
        "nothing was revoked: the outcome must not claim it"
    );
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

    let group = graph.group_users(group, true).await.expect("all pages");

    let members = &group.users;
    assert_eq!(members.len(), 250);
    let ids: HashSet<_> = members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 250, "no member twice");
    assert!(members.iter().all(|m| m.user_principal_name.is_some()));
    assert_eq!(
        group.to_string(),
        "250 users; skipped 2 devices, 1 service principal, 1 group, 1 contact"
    );
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
