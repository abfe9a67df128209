//! The default-method rule through the broker, with a default of every kind: Graph refuses
//! to delete the default MFA method while any other method is registered, so the reset must
//! delete it last, and no DELETE may be refused on the way.
//!
//! Every user here also holds an email method, which is never a default
//! (`userPreferredMethodForSecondaryAuthentication` names only phones, the Authenticator app
//! and OATH tokens): it goes before the default.

use graph_sim::tenant::{EMAIL_METHOD_ID, MOBILE_PHONE_ID};
use mfa_reset::domain::Status;
use serde_json::{json, Value};

use crate::common::env::TestEnv;
use crate::fidelity::{by_status, calls_to, outcome, phone, reset, sim_stems, tenant_of, typed};

const AUTHENTICATOR_ID: &str = "a1a1a1a1-0000-4000-8000-000000000501";
const SOFTWARE_OATH_ID: &str = "50f7ab52-0000-4000-8000-000000000501";
const HARDWARE_OATH_ID: &str = "4a4a4a4a-0000-4000-8000-000000000501";
const FIDO2_ID: &str = "f1d0f1d0-0000-4000-8000-000000000501";

fn email() -> Value {
    json!({"@odata.type": "#microsoft.graph.emailAuthenticationMethod", "emailAddress": "someone@personal.example.com"})
}

/// One user with `default` and `methods`, reset through the broker: asserts the reset
/// removed everything, the default last (in the outcome and in what Graph saw), and that
/// Graph refused no DELETE. Returns the test's env for further checks.
async fn assert_default_deleted_last(test: &str, default: &str, methods: Vec<Value>) -> TestEnv {
    let upn = format!("{test}@contoso.com");
    let count = methods.len();
    let users = json!([{ "userPrincipalName": upn, "defaultMethod": default, "methods": methods }]);
    let mut env = TestEnv::new(test, tenant_of(users)).await;
    let before = env.sim.user(&upn).expect("user in the simulator");
    let default_id = before
        .default_method_id
        .clone()
        .unwrap_or_else(|| panic!("{default} is served by one of the methods"));
    assert_eq!(before.default_method.as_deref(), Some(default));

    let view = reset(&mut env, &[&upn]).await;

    let o = outcome(&view, &upn);
    assert_eq!(o.status, Status::Reset, "{o:?}");
    assert!(o.methods_remaining.is_empty(), "{o:?}");
    assert_eq!(o.methods_removed.len(), count, "{o:?}");
    assert_eq!(
        o.methods_removed.last().map(|m| m.id.as_str()),
        Some(default_id.as_str()),
        "the outcome lists the default ({default}) last: {o:?}"
    );
    let after = env.sim.user(&upn).expect("user in the simulator");
    let deleted: Vec<&str> = after
        .deleted_methods
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(deleted.len(), count, "{deleted:?}");
    assert_eq!(
        deleted.last().copied(),
        Some(default_id.as_str()),
        "Graph saw the default ({default}) deleted last: {deleted:?}"
    );
    assert_eq!(sim_stems(&env, &upn), ["password"]);
    let stats = env.sim.stats();
    assert_eq!(
        by_status(&stats, "DELETE").get("400"),
        None,
        "no DELETE was refused: {stats:?}"
    );
    assert_eq!(
        by_status(&stats, "PATCH").get("204"),
        None,
        "the default was not moved: {stats:?}"
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticator_push_default_is_deleted_last_and_no_delete_is_refused() {
    let env = assert_default_deleted_last(
        "def-push",
        "push",
        vec![
            typed("microsoftAuthenticator", AUTHENTICATOR_ID),
            phone("mobile", "+1 5555550501"),
            email(),
            typed("softwareOath", SOFTWARE_OATH_ID),
            phone("office", "+1 5555550502"),
            typed("fido2", FIDO2_ID),
        ],
    )
    .await;
    assert_eq!(
        calls_to(&env.sim.stats(), "signInPreferences"),
        1,
        "one default read"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_software_oath_default_is_deleted_last_and_no_delete_is_refused() {
    let env = assert_default_deleted_last(
        "def-soft-oath",
        "oath",
        vec![
            typed("softwareOath", SOFTWARE_OATH_ID),
            email(),
            phone("mobile", "+1 5555550511"),
            typed("microsoftAuthenticator", AUTHENTICATOR_ID),
        ],
    )
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardware_oath_default_is_deleted_last_and_no_delete_is_refused() {
    let env = assert_default_deleted_last(
        "def-hard-oath",
        "oath",
        vec![
            typed("hardwareOath", HARDWARE_OATH_ID),
            phone("office", "+1 5555550521"),
            email(),
            phone("mobile", "+1 5555550522"),
        ],
    )
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_office_phone_default_is_deleted_after_the_mobile_and_no_delete_is_refused() {
    // The mobile goes after the other phones (the alternate-mobile rule): the default's
    // place must win over it.
    let env = assert_default_deleted_last(
        "def-office",
        "voiceOffice",
        vec![
            phone("office", "+1 5555550531"),
            phone("mobile", "+1 5555550532"),
            email(),
            typed("microsoftAuthenticator", AUTHENTICATOR_ID),
        ],
    )
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_default_on_the_mobile_is_deleted_last_after_the_alternate() {
    let env = assert_default_deleted_last(
        "def-sms",
        "sms",
        vec![
            phone("mobile", "+1 5555550541"),
            phone("alternateMobile", "+1 5555550542"),
            email(),
            typed("softwareOath", SOFTWARE_OATH_ID),
        ],
    )
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_possible_default_it_goes_last_after_the_email_without_reading_the_default() {
    let env = assert_default_deleted_last(
        "def-single",
        "voiceMobile",
        vec![
            phone("mobile", "+1 5555550551"),
            email(),
            typed("fido2", FIDO2_ID),
        ],
    )
    .await;
    let upn = "def-single@contoso.com";
    let deleted: Vec<String> = env
        .sim
        .user(upn)
        .expect("user")
        .deleted_methods
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(deleted, [EMAIL_METHOD_ID, FIDO2_ID, MOBILE_PHONE_ID]);
    assert_eq!(
        calls_to(&env.sim.stats(), "signInPreferences"),
        0,
        "one candidate: no default to read"
    );
    env.cleanup().await;
}
