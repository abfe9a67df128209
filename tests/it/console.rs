//! `mfa-reset serve` as a ticket system sees it: the real binary, the real broker, an
//! in-process worker and graph-sim, called over HTTP by a client that signs as a third party
//! would — its Standard Webhooks signatures are computed here with hmac/sha2/base64, never
//! with the server's code, and checked first against the reference libraries' test vector.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use graph_sim::tenant::GenOptions;
use graph_sim::SimConfig;
use hmac::{Hmac, Mac};
use mfa_reset::domain::Record;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::common::env::TestEnv;
use crate::common::proc;

/// The servicenow source's secret (24 random-looking bytes, `whsec_` form).
const SERVICENOW: &str = "whsec_c2VydmljZW5vdy10ZXN0LXNlY3JldC0wMDE=";
/// The jira source's secret.
const JIRA: &str = "whsec_amlyYS10ZXN0LXNlY3JldC1udW1iZXItMDAy";

/// `v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>` under a `whsec_` secret, as the Standard
/// Webhooks spec defines it.
fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A running `mfa-reset serve` child.
struct Serve {
    url: String,
    child: Child,
    _log: tempfile::NamedTempFile,
}

impl Serve {
    async fn start(env: &TestEnv) -> Serve {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = proc::mfa_reset(&env.settings, &["serve"])
            .env("MFA_RESET__CONSOLE__LISTEN", "127.0.0.1:0")
            .env("MFA_RESET__WEBHOOK__SECRETS__SERVICENOW", SERVICENOW)
            .env("MFA_RESET__WEBHOOK__SECRETS__JIRA", JIRA)
            .env("MFA_RESET__WEBHOOK__MAX_BODY", "2048")
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("mfa-reset serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("serve prints its first line within 60 s")
            .expect("stdout readable")
            .unwrap_or_else(|| {
                panic!(
                    "serve exited: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                )
            });
        let url = first
            .strip_prefix("console on ")
            .unwrap_or_else(|| panic!("first line is `console on URL`, got {first:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Serve {
            url,
            child,
            _log: log,
        }
    }

    async fn stop(mut self) {
        proc::signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("serve stops on SIGTERM")
            .expect("wait");
        assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
    }

    /// POST a ticket event signed with `secret` as `id` at `ts`: (status, JSON answer).
    async fn post(&self, secret: &str, id: &str, ts: i64, body: &str) -> (u16, Value) {
        let sig = sign(secret, id, ts, body.as_bytes());
        self.post_raw(id, &ts.to_string(), &sig, body).await
    }

    async fn post_raw(&self, id: &str, ts: &str, sig: &str, body: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/tickets", self.url))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts)
            .header("webhook-signature", sig)
            .body(body.to_string())
            .send()
            .await
            .expect("POST answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// GET a ticket's outcome, signed over an empty body.
    async fn outcome(&self, ticket: &str) -> (u16, Value) {
        let id = format!("get-{}", uuid::Uuid::new_v4());
        let ts = now();
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/tickets/{ticket}", self.url))
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(SERVICENOW, &id, ts, b""))
            .send()
            .await
            .expect("GET answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Poll the ticket until every request of it is final (or fail after 90 s).
    async fn wait_done(&self, ticket: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (status, body) = self.outcome(ticket).await;
            if status == 200 && body["done"] == json!(true) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ticket {ticket} not done in 90 s: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

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

/// Manifests on the stream for `batch` (how many times the console published it).
async fn manifests_of(env: &TestEnv, batch: &str) -> usize {
    env.stream_records()
        .await
        .iter()
        .filter(|r| matches!(r, Record::Manifest(m) if m.batch == batch))
        .count()
}

#[test]
fn the_client_signs_the_standard_webhooks_reference_vector() {
    // standard-webhooks/standard-webhooks, libraries/go/webhook_test.go (TestWebhookSign).
    assert_eq!(
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_ticket_is_executed_once_even_when_delivered_again_after_a_restart() {
    let mut env = TestEnv::new("console-ticket", tenant(5)).await;
    env.setup().await;
    env.start_worker(1);
    let serve = Serve::start(&env).await;
    let user = graph_sim::tenant::upn_for_index(1);
    let body = format!(
        r#"{{"ticket":"INC0099001","user":"{user}","reason":"lost phone","requested_by":"helpdesk@contoso.com","revoke_sessions":true}}"#
    );

    let (status, first) = serve.post(SERVICENOW, "msg_inc0099001", now(), &body).await;
    assert_eq!(status, 202, "{first}");
    let request_id = first["request_id"]
        .as_str()
        .expect("request_id")
        .to_string();
    assert_eq!(first["source"], "servicenow");
    assert_eq!(first["ticket"], "INC0099001");

    // The sender retries (same id, a fresh timestamp): same request, nothing published again.
    let (status, again) = serve.post(SERVICENOW, "msg_inc0099001", now(), &body).await;
    assert_eq!((status, &again["request_id"]), (202, &first["request_id"]));

    let done = serve.wait_done("INC0099001").await;
    let requests = done["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 1, "{done}");
    assert_eq!(requests[0]["request_id"], request_id.as_str());
    assert_eq!(requests[0]["status"], "reset", "{done}");
    assert_eq!(requests[0]["sessions_revoked"], true);
    assert_eq!(env.sim.user(&user).expect("user").sessions_revoked, 1);

    // After a restart the console remembers nothing, yet the same call names the same
    // request, which the worker's ledger absorbs.
    serve.stop().await;
    let serve = Serve::start(&env).await;
    let (status, after) = serve.post(SERVICENOW, "msg_inc0099001", now(), &body).await;
    assert_eq!((status, &after["request_id"]), (202, &first["request_id"]));
    // A second ticket behind it on the queue (one worker, one at a time): once it is done,
    // the redelivered one has been consumed too.
    let other = graph_sim::tenant::upn_for_index(2);
    let (status, _) = serve
        .post(
            JIRA,
            "jira-evt-1",
            now(),
            &format!(r#"{{"ticket":"OPS-12","user":"{other}"}}"#),
        )
        .await;
    assert_eq!(status, 202);
    let ops = serve.wait_done("OPS-12").await;
    assert_eq!(ops["requests"][0]["source"], "jira", "{ops}");
    assert_eq!(ops["requests"][0]["status"], "reset", "{ops}");

    let counts = env.outcome_counts().await;
    let id: uuid::Uuid = request_id.parse().expect("uuid");
    assert_eq!(
        counts.get(&id),
        Some(&1),
        "one outcome for the ticket's request"
    );
    assert_eq!(
        env.sim.user(&user).expect("user").sessions_revoked,
        1,
        "sessions revoked once"
    );
    let batch = first["batch"].as_str().expect("batch");
    assert_eq!(
        manifests_of(&env, batch).await,
        2,
        "published once per process"
    );
    serve.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_old_or_future_timestamps_and_bad_fields_are_refused_with_nothing_enqueued()
{
    let env = TestEnv::new("console-refused", tenant(3)).await;
    env.setup().await;
    let serve = Serve::start(&env).await;
    let user = graph_sim::tenant::upn_for_index(0);
    let body = format!(r#"{{"ticket":"INC1","user":"{user}"}}"#);
    let wrong = "whsec_d3Jvbmctc2VjcmV0LWZvci10aGUtdGVzdHM=";

    let (status, answer) = serve.post(wrong, "msg_wrong", now(), &body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("bad_signature")),
        "{answer}"
    );

    let (status, answer) = serve.post(SERVICENOW, "msg_old", now() - 301, &body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("timestamp_too_old")),
        "{answer}"
    );
    assert_eq!(answer["field"], "webhook-timestamp");

    let (status, answer) = serve.post(SERVICENOW, "msg_new", now() + 400, &body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("timestamp_too_new")),
        "{answer}"
    );

    // Signed for one body, sent with another.
    let ts = now();
    let sig = sign(SERVICENOW, "msg_swap", ts, body.as_bytes());
    let other = format!(
        r#"{{"ticket":"INC1","user":"{}"}}"#,
        graph_sim::tenant::upn_for_index(1)
    );
    let (status, answer) = serve
        .post_raw("msg_swap", &ts.to_string(), &sig, &other)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("bad_signature")),
        "{answer}"
    );

    let (status, answer) = serve
        .post_raw("msg_nosig", &ts.to_string(), "", &body)
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (401, Some("webhook-signature")),
        "{answer}"
    );

    // Well signed, but not a valid event: the field is named.
    let unknown = format!(r#"{{"ticket":"INC1","user":"{user}","revoke_session":true}}"#);
    let (status, answer) = serve.post(SERVICENOW, "msg_field", now(), &unknown).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("revoke_session")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoke_sessions"),
        "{answer}"
    );
    let (status, answer) = serve
        .post(
            SERVICENOW,
            "msg_user",
            now(),
            r#"{"ticket":"INC1","user":"bob@"}"#,
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("user")),
        "{answer}"
    );
    let (status, answer) = serve.post(SERVICENOW, "msg_json", now(), "INC1 bob").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_body")),
        "{answer}"
    );
    let big = format!(
        r#"{{"ticket":"INC1","user":"{user}","reason":"{}"}}"#,
        "x".repeat(4096)
    );
    let (status, answer) = serve.post(SERVICENOW, "msg_big", now(), &big).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("body_too_large")),
        "{answer}"
    );

    // A reused id with a different body is a conflict, not a second request.
    let (status, _) = serve.post(SERVICENOW, "msg_ok", now(), &body).await;
    assert_eq!(status, 202);
    let (status, answer) = serve.post(SERVICENOW, "msg_ok", now(), &other).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (409, Some("webhook-id")),
        "{answer}"
    );

    // Nothing but msg_ok reached the broker: one manifest, one request on the queue.
    let manifests: Vec<String> = env
        .stream_records()
        .await
        .into_iter()
        .filter_map(|r| match r {
            Record::Manifest(m) => Some(m.source),
            _ => None,
        })
        .collect();
    assert_eq!(manifests, vec!["webhook:servicenow:INC1".to_string()]);
    assert_eq!(env.queue_len(&env.topology().requests()).await, 1);

    // The outcome API is signed too.
    let response = reqwest::get(format!("{}/api/v1/tickets/INC1", serve.url))
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 401);
    let (status, pending) = serve.outcome("INC1").await;
    assert_eq!(
        (status, &pending["done"]),
        (200, &json!(false)),
        "{pending}"
    );
    let (status, _) = serve.outcome("INC-unknown").await;
    assert_eq!(status, 404);
    serve.stop().await;
    env.cleanup().await;
}
