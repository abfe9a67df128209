//! The Temporary Access Pass after a reset, against the real broker and the simulator: issued
//! only once the methods are gone, sealed to the helpdesk key (and opening to exactly the pass
//! Graph created), never in clear in the worker's logs, on the outcomes stream or in the
//! report; a pass nobody signed for is refused; a tenant policy that refuses passes leaves the
//! reset `reset` and reports Graph's code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use graph_sim::{GenOptions, SimConfig};
use mfa_reset::commands;
use mfa_reset::domain::{
    Outcome, Record, ResetRequest, Status, TapRequest, UserRef, REQUEST_VERSION,
};
use mfa_reset::tap::TapIdentity;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::common::env::{csv_of_generated, enqueue_args, TestEnv};
use crate::common::proc;

fn tenant(users: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// A helpdesk key: the identity (as its file text) and the recipient workers seal to.
fn helpdesk_key() -> (TapIdentity, String) {
    let key = age::x25519::Identity::generate();
    let identity = TapIdentity::parse(key.to_string().expose_secret()).expect("identity");
    (identity, key.to_public().to_string())
}

/// The pass the simulator created for `upn` (what Graph showed once), if any.
async fn sim_pass(env: &TestEnv, upn: &str) -> Option<String> {
    let response = reqwest::get(format!("{}/_sim/users/{upn}/tap", env.sim.url()))
        .await
        .expect("sim answers");
    if response.status().as_u16() == 404 {
        return None;
    }
    let body: Value = response.json().await.expect("json");
    body["temporaryAccessPass"].as_str().map(str::to_string)
}

/// The user as the simulator holds it.
async fn sim_user(env: &TestEnv, upn: &str) -> Value {
    reqwest::get(format!("{}/_sim/users/{upn}", env.sim.url()))
        .await
        .expect("sim answers")
        .json()
        .await
        .expect("json")
}

/// The raw bytes of every message on this test's outcomes stream, whatever they hold.
async fn raw_stream(env: &TestEnv) -> Vec<Vec<u8>> {
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = bodies.clone();
    let conn = mfa_reset::broker::connect(&env.settings.broker, "test raw stream")
        .await
        .expect("broker");
    mfa_reset::broker::stream::read_until_now(
        &conn,
        &env.topology(),
        mfa_reset::broker::stream::Offset::First,
        move |message| sink.lock().unwrap().push(message.body.to_vec()),
    )
    .await
    .expect("read the outcomes stream");
    let _ = conn.close(200, "bye".into()).await;
    let out = bodies.lock().unwrap().clone();
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_is_issued_after_the_reset_sealed_to_the_helpdesk_and_never_in_clear() {
    let env = TestEnv::new("tap-issued", tenant(3)).await;
    env.setup().await;
    let (identity, recipient) = helpdesk_key();
    let dir = tempfile::tempdir().expect("dir");
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, csv_of_generated(3)).expect("csv");
    let mut args = enqueue_args(Some(csv), None);
    args.tap = true;
    let mut settings = env.settings.clone();
    settings.tap.lifetime = Duration::from_secs(2 * 3600);
    let enqueued = commands::enqueue::run(&settings, &args)
        .await
        .expect("enqueued");
    // The worker is the real binary, logging everything it can (trace) to a file.
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut worker = proc::mfa_reset(&env.settings, &["work", "--concurrency", "2"])
        .env("MFA_RESET__TAP__RECIPIENT", &recipient)
        .env("MFA_RESET__LOG__LEVEL", "trace")
        .env("MFA_RESET__WORKER__NAME", "tap-worker")
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("worker starts");

    let view = env.wait_batch(&enqueued.batch, 120).await;
    proc::signal(&worker, nix::sys::signal::Signal::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("worker stops on SIGTERM");

    let outcomes: Vec<&Outcome> = view.outcomes().collect();
    assert_eq!(outcomes.len(), 3);
    let mut passes = Vec::new();
    for outcome in outcomes {
        let upn = outcome.user.to_string();
        assert_eq!(outcome.status, Status::Reset, "{upn}: {outcome:?}");
        assert_eq!(outcome.tap_issued(), Some(true), "{upn}: {:?}", outcome.tap);
        let tap = outcome.tap.as_ref().expect("tap on the outcome");
        assert_eq!((tap.lifetime_minutes, tap.usable_once), (120, true));
        let sealed = tap.sealed.as_deref().expect("the pass, sealed");
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        let opened = identity
            .open(sealed)
            .expect("opens with the helpdesk identity");
        let created = sim_pass(&env, &upn)
            .await
            .expect("the simulator created one");
        assert_eq!(opened.expose_secret(), created, "{upn}");
        // The user now has the pass and nothing else; Graph lists it without the secret.
        let user = sim_user(&env, &upn).await;
        let methods = user["methods"].as_array().expect("methods");
        let kinds: Vec<&str> = methods
            .iter()
            .filter_map(|m| m["@odata.type"].as_str())
            .filter(|t| !t.ends_with("passwordAuthenticationMethod"))
            .collect();
        assert_eq!(
            kinds,
            ["#microsoft.graph.temporaryAccessPassAuthenticationMethod"],
            "{upn}: {user}"
        );
        assert!(methods.iter().all(|m| m["temporaryAccessPass"].is_null()));
        passes.push(created);
    }

    let logs = std::fs::read(log.path()).expect("worker log");
    assert!(
        contains(&logs, "outcome recorded"),
        "the worker logged its work"
    );
    let stream = raw_stream(&env).await;
    assert!(stream.len() >= 4, "manifest and outcomes on the stream");
    let mut csv_report = Vec::new();
    commands::report::write_csv(&view, &mut csv_report).expect("csv report");
    let mut jsonl_report = Vec::new();
    commands::report::write_jsonl(&view, &mut jsonl_report).expect("jsonl report");
    assert!(String::from_utf8_lossy(&csv_report).contains(",true,"));
    for pass in &passes {
        assert!(!contains(&logs, pass), "a pass is in the worker's log");
        for record in &stream {
            assert!(!contains(record, pass), "a pass is on the outcomes stream");
        }
        assert!(!contains(&csv_report, pass), "a pass is in the CSV report");
        assert!(
            !contains(&jsonl_report, pass),
            "a pass is in the JSONL report"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_added_to_a_signed_request_is_refused_and_nothing_is_done() {
    let mut env = TestEnv::new("tap-forged", tenant(2)).await;
    let (_, recipient) = helpdesk_key();
    env.settings.tap.recipient = recipient;
    env.setup().await;
    env.start_worker(2);
    let upn = graph_sim::tenant::upn_for_index(1);
    let user = UserRef::parse(&upn).expect("user");
    let signed = ResetRequest {
        version: REQUEST_VERSION,
        request_id: ResetRequest::id_for("tap-forged", &user),
        batch: "tap-forged".into(),
        user,
        ticket: None,
        reason: None,
        requested_by: None,
        dry_run: false,
        revoke_sessions: false,
        requested_at: Utc::now(),
        replay: 0,
        tap: None,
        carry: None,
        proof: None,
    };
    let headers = env.sign(std::slice::from_ref(&signed)).remove(0);
    let methods_before = sim_user(&env, &upn).await["methods"].clone();
    // Somebody with broker access adds a pass to the signed request.
    let mut forged = signed.clone();
    forged.tap = Some(TapRequest {
        lifetime_minutes: 43_200,
        usable_once: false,
    });
    let body = serde_json::to_vec(&forged).expect("json");
    env.publish_raw_with(&env.topology().exchange(), "request", &body, headers)
        .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.queue_len(&env.topology().dead()).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forged request was not dead-lettered in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = env.drain_queue(&env.topology().dead()).await;
    assert_eq!(dead.len(), 1);
    let conn_records = env.stream_records().await;
    assert!(
        !conn_records
            .iter()
            .any(|r| matches!(r, Record::Outcome(o) if o.request_id == signed.request_id)),
        "a refused request has no outcome"
    );
    assert_eq!(sim_pass(&env, &upn).await, None, "no pass was created");
    assert_eq!(
        sim_user(&env, &upn).await["methods"],
        methods_before,
        "nothing was deleted"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_refuses_passes_leaves_the_reset_reset_and_reports_graphs_code() {
    let mut env = TestEnv::new("tap-policy", tenant(2)).await;
    let (_, recipient) = helpdesk_key();
    env.settings.tap.recipient = recipient;
    env.setup().await;
    let disabled = reqwest::Client::new()
        .post(format!(
            "{}/_sim/policies/temporaryAccessPass",
            env.sim.url()
        ))
        .json(&json!({ "state": "disabled" }))
        .send()
        .await
        .expect("sim answers");
    assert_eq!(disabled.status().as_u16(), 200);
    env.start_worker(2);
    // A ticket asks for a pass; the other does not.
    let asked = graph_sim::tenant::upn_for_index(0);
    let not_asked = graph_sim::tenant::upn_for_index(1);
    let enqueued = env
        .enqueue_tickets(&format!(
            "{{\"ticket\":\"INC1\",\"user\":\"{asked}\",\"tap\":true}}\n\
             {{\"ticket\":\"INC2\",\"user\":\"{not_asked}\"}}\n"
        ))
        .await
        .expect("enqueued");
    let view = env.wait_batch(&enqueued.batch, 90).await;

    let by_user = |upn: &str| {
        view.outcomes()
            .find(|o| o.user.to_string() == upn)
            .cloned()
            .expect("an outcome")
    };
    let refused = by_user(&asked);
    assert_eq!(refused.status, Status::Reset, "{refused:?}");
    assert_eq!(refused.error_code, None);
    let tap = refused.tap.as_ref().expect("the pass is reported");
    assert!(!tap.issued);
    assert_eq!(tap.error_code.as_deref(), Some("badRequest"), "{tap:?}");
    assert!(tap.sealed.is_none());
    let plain = by_user(&not_asked);
    assert_eq!(plain.status, Status::Reset);
    assert_eq!(plain.tap_issued(), None);

    let mut csv_report = Vec::new();
    commands::report::write_csv(&view, &mut csv_report).expect("csv report");
    let csv_report = String::from_utf8(csv_report).expect("utf-8");
    let row = csv_report
        .lines()
        .find(|l| l.starts_with(&asked))
        .expect("a row");
    assert!(row.ends_with(",false,badRequest"), "{row}");
    let row = csv_report
        .lines()
        .find(|l| l.starts_with(&not_asked))
        .expect("a row");
    assert!(row.ends_with(",,"), "{row}");
    assert_eq!(sim_pass(&env, &asked).await, None);
    env.cleanup().await;
}
