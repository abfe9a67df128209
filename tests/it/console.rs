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

use crate::common::console::{csrf_of, location, login_form, oidc_env, sign_in, Client as Browser};
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
        Serve::start_with(env, &[]).await
    }

    async fn start_with(env: &TestEnv, extra: &[(&str, String)]) -> Serve {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = proc::mfa_reset(&env.settings, &["serve"])
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env("MFA_RESET__CONSOLE__LISTEN", "127.0.0.1:0")
            .env("MFA_RESET__WEBHOOK__SECRETS__SERVICENOW", SERVICENOW)
            .env("MFA_RESET__WEBHOOK__SECRETS__JIRA", JIRA)
            .env("MFA_RESET__WEBHOOK__MAX_BODY", "2048")
            // The console signs each ticket's batch with its own key (request namespace).
            .env("MFA_RESET__CONSOLE__KEY", &env.keys.requester.path)
            .env("MFA_RESET__CONSOLE__APPROVE_KEY", &env.keys.approver.path)
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
    // Signed by the console's key: the manifest names its principal.
    let sealed = env
        .stream_records()
        .await
        .into_iter()
        .find_map(|r| match r {
            Record::Manifest(m) if m.batch == batch => m.sealed,
            _ => None,
        })
        .expect("a sealed manifest");
    assert_eq!(sealed.manifest.requested_by, env.keys.requester.principal);
    assert_eq!(sealed.manifest.count, 1);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_through_the_providers_form_gives_a_session_with_the_granted_roles() {
    let env = TestEnv::new("console-signin", tenant(5)).await;
    env.setup().await;
    let serve = Serve::start_with(&env, &oidc_env(&env)).await;
    let sim = env.sim.url();
    let upn = graph_sim::tenant::upn_for_index(3);

    let mut anonymous = Browser::new();
    let me = anonymous.get(&format!("{}/api/v1/me", serve.url)).await;
    assert_eq!(me.status().as_u16(), 401);

    let mut operator = Browser::new();
    // The sign-in state cookie: HttpOnly, SameSite=Lax, not Secure on plain-HTTP loopback.
    let started = operator
        .http
        .get(format!("{}/login", serve.url))
        .send()
        .await
        .expect("GET");
    let set = operator.take_cookies(&started);
    assert!(
        set.iter()
            .all(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax") && !c.contains("Secure")),
        "{set:?}"
    );
    operator.cookies.clear();
    sign_in(
        &mut operator,
        &serve.url,
        &sim,
        &upn,
        &["operator", "viewer"],
    )
    .await;
    let me: Value = operator
        .get(&format!("{}/api/v1/me", serve.url))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(me["upn"], upn.as_str(), "{me}");
    assert_eq!(me["roles"], json!(["operator", "viewer"]));
    let oid = env.sim.user(&upn).expect("user").id;
    assert_eq!(
        me["oid"],
        oid.as_str(),
        "the identity is the Entra object id"
    );

    // A forged cookie (roles changed, MAC kept) is nobody.
    let mut forged = Browser::new();
    let real = operator
        .cookies
        .get("mfa_session")
        .expect("session")
        .clone();
    let (_, tag) = real.split_once('.').expect("sealed");
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        r#"{"oid":"x","upn":"x","name":"x","roles":["approver"],"csrf":"x","exp":9999999999}"#,
    );
    forged
        .cookies
        .insert("mfa_session".into(), format!("{body}.{tag}"));
    assert_eq!(
        forged
            .get(&format!("{}/api/v1/me", serve.url))
            .await
            .status()
            .as_u16(),
        401
    );

    // The page shows the session's CSRF token; a POST without it is refused.
    let home = operator
        .get(&format!("{}/", serve.url))
        .await
        .text()
        .await
        .expect("page");
    let csrf = home
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field")
        .to_string();
    let refused = operator
        .post_form(
            &format!("{}/logout", serve.url),
            &[("csrf".into(), "wrong".into())],
        )
        .await;
    assert_eq!(refused.status().as_u16(), 403);
    assert!(operator.cookies.contains_key("mfa_session"));

    // A person without a role is signed in but may not read ticket outcomes.
    let mut nobody = Browser::new();
    sign_in(
        &mut nobody,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(4),
        &[],
    )
    .await;
    let me: Value = nobody
        .get(&format!("{}/api/v1/me", serve.url))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(me["roles"], json!([]));
    assert_eq!(
        nobody
            .get(&format!("{}/api/v1/tickets/INC1", serve.url))
            .await
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        operator
            .get(&format!("{}/api/v1/tickets/INC1", serve.url))
            .await
            .status()
            .as_u16(),
        404
    );

    // A callback whose state is not the one this browser started with is refused.
    let mut crossed = Browser::new();
    let to_provider = crossed.get(&format!("{}/login", serve.url)).await;
    let authorize = location(&to_provider);
    let html = crossed.get(&authorize).await.text().await.expect("form");
    let (action, mut fields) = login_form(&html);
    for (k, v) in fields.iter_mut() {
        if k == "state" {
            *v = "forged-state".into();
        }
    }
    fields.push(("login".into(), upn.clone()));
    fields.push(("decision".into(), "allow".into()));
    let back = crossed.post_form(&format!("{sim}{action}"), &fields).await;
    let callback = crossed.get(&location(&back)).await;
    assert_eq!(callback.status().as_u16(), 400);
    assert!(!crossed.cookies.contains_key("mfa_session"));

    let out = operator
        .post_form(&format!("{}/logout", serve.url), &[("csrf".into(), csrf)])
        .await;
    assert_eq!(out.status().as_u16(), 303);
    assert!(!operator.cookies.contains_key("mfa_session"));
    serve.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_provider_redeems_a_code_once_and_only_with_its_pkce_verifier() {
    let env = TestEnv::new("console-pkce", tenant(2)).await;
    let sim = env.sim.url();
    let tenant_id = SimConfig::default().tenant_id;
    let verifier = "a-verifier-of-enough-length-0123456789-abcdefghij";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    let mut browser = Browser::new();
    let authorize = format!(
        "{sim}/{tenant_id}/oauth2/v2.0/authorize?client_id=app&response_type=code&scope=openid&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&state=s1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256"
    );
    let code = async |browser: &mut Browser| {
        let html = browser.get(&authorize).await.text().await.expect("form");
        let (action, mut fields) = login_form(&html);
        fields.push(("login".into(), graph_sim::tenant::upn_for_index(0)));
        fields.push(("role".into(), "approver".into()));
        fields.push(("decision".into(), "allow".into()));
        let back = browser.post_form(&format!("{sim}{action}"), &fields).await;
        let location = location(&back);
        location
            .split("code=")
            .nth(1)
            .and_then(|c| c.split('&').next())
            .expect("code")
            .to_string()
    };
    let token = format!("{sim}/{tenant_id}/oauth2/v2.0/token");
    let redeem = async |code: &str, verifier: &str| {
        let response = reqwest::Client::new()
            .post(&token)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", "app"),
                ("redirect_uri", "http://127.0.0.1:9/cb"),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .expect("token");
        (
            response.status().as_u16(),
            response.json::<Value>().await.expect("JSON"),
        )
    };
    let first = code(&mut browser).await;
    let (status, answer) = redeem(&first, "not-the-verifier").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error_codes"].to_string().contains("501481"),
        "{answer}"
    );
    // Used once (even by a failed attempt): the right verifier no longer helps.
    let (status, _) = redeem(&first, verifier).await;
    assert_eq!(status, 400);

    let second = code(&mut browser).await;
    let (status, answer) = redeem(&second, verifier).await;
    assert_eq!(status, 200, "{answer}");
    let id_token = answer["id_token"].as_str().expect("id_token");
    let header = jsonwebtoken::decode_header(id_token).expect("JWT header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let keys: jsonwebtoken::jwk::JwkSet =
        reqwest::get(format!("{sim}/{tenant_id}/discovery/v2.0/keys"))
            .await
            .expect("JWKS")
            .json()
            .await
            .expect("JWKS JSON");
    let key =
        jsonwebtoken::DecodingKey::from_jwk(keys.find(&header.kid.expect("kid")).expect("key"))
            .expect("RSA key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["app"]);
    validation.set_issuer(&[format!("{sim}/{tenant_id}/v2.0")]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .expect("verifies")
        .claims;
    assert_eq!(claims["nonce"], "n1");
    assert_eq!(claims["roles"], json!(["approver"]));
    assert_eq!(claims["tid"], tenant_id.as_str());
    env.cleanup().await;
}

/// The CSRF token of a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uploads_previews_and_submits_a_csv_and_watches_it_finish_live() {
    let mut env = TestEnv::new("console-upload", tenant(8)).await;
    env.settings.reset.protected_users = vec![graph_sim::tenant::upn_for_index(2)];
    env.setup().await;
    env.start_worker(4);
    let mut extra = oidc_env(&env);
    extra.push((
        "MFA_RESET__RESET__PROTECTED_USERS",
        format!("[{}]", graph_sim::tenant::upn_for_index(2)),
    ));
    let serve = Serve::start_with(&env, &extra).await;
    let sim = env.sim.url();
    let operator_upn = graph_sim::tenant::upn_for_index(6);
    let uploads = format!("{}/api/v1/uploads?name=users.csv", serve.url);

    // Nobody signed in: 401. A viewer: 403.
    let mut anonymous = Browser::new();
    assert_eq!(
        anonymous
            .post_csv(&uploads, "x", "user\n")
            .await
            .status()
            .as_u16(),
        401
    );
    let mut viewer = Browser::new();
    sign_in(
        &mut viewer,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(7),
        &["viewer"],
    )
    .await;
    assert_eq!(
        viewer
            .get(&format!("{}/batches/new", serve.url))
            .await
            .status()
            .as_u16(),
        403
    );

    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &sim,
        &operator_upn,
        &["operator"],
    )
    .await;
    let page = operator
        .get(&format!("{}/batches/new", serve.url))
        .await
        .text()
        .await
        .expect("page");
    let csrf = csrf_of(&page);
    assert_eq!(
        operator
            .post_csv(&uploads, "not-the-token", "user\n")
            .await
            .status()
            .as_u16(),
        403
    );

    // Every bad line is named; markup in a value comes back as data, never run.
    let bad = format!(
        "user\n{}\nbob@\n<script>alert(1)</script>\n",
        graph_sim::tenant::upn_for_index(0)
    );
    let refused = operator.post_csv(&uploads, &csrf, &bad).await;
    assert_eq!(refused.status().as_u16(), 422);
    let refused: Value = refused.json().await.expect("JSON");
    let lines: Vec<u64> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, vec![3, 4], "{refused}");
    let not_csv = operator.post_csv(&uploads, &csrf, "\u{0}\u{1}binary").await;
    assert_eq!(not_csv.status().as_u16(), 422);

    let users: Vec<String> = (0..4).map(graph_sim::tenant::upn_for_index).collect();
    let csv = format!("userPrincipalName\n{}\n{}\n", users.join("\n"), users[0]);
    let preview = operator.post_csv(&uploads, &csrf, &csv).await;
    assert_eq!(preview.status().as_u16(), 200);
    let preview: Value = preview.json().await.expect("JSON");
    assert_eq!(preview["count"], 4, "{preview}");
    assert_eq!(preview["duplicates_total"], 1);
    assert_eq!(preview["protected"], json!([users[2]]));
    assert_eq!(preview["needs_approval"], false);

    let upload = preview["upload"].as_str().expect("upload id");
    let submit = format!("{}/api/v1/uploads/{upload}/submit", serve.url);
    let submitted = operator.post_csv(&submit, &csrf, "").await;
    assert_eq!(submitted.status().as_u16(), 200);
    let submitted: Value = submitted.json().await.expect("JSON");
    let batch = submitted["batch"].as_str().expect("batch").to_string();
    assert_eq!(submitted["requested_by"], operator_upn.as_str());
    // Submitted once: the upload is gone.
    assert_eq!(
        operator
            .post_csv(&submit, &csrf, "")
            .await
            .status()
            .as_u16(),
        404
    );

    // Live progress over server-sent events until the batch is complete.
    let response = viewer
        .http
        .get(format!("{}/api/v1/batches/{batch}/events", serve.url))
        .header("cookie", viewer.cookie_header())
        .send()
        .await
        .expect("events");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut response = response;
    let mut seen = String::new();
    let last = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let chunk = response
                .chunk()
                .await
                .expect("stream")
                .expect("not ended before complete");
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(data) = seen
                .rsplit("data: ")
                .next()
                .filter(|d| d.contains("\"complete\":true"))
            {
                break data.lines().next().unwrap_or_default().to_string();
            }
        }
    })
    .await
    .expect("the batch completes within 90 s");
    let last: Value = serde_json::from_str(&last).expect("event JSON");
    assert_eq!(last["finished"], 4, "{last}");
    assert_eq!(last["counts"]["skipped_protected"], 1, "{last}");
    assert_eq!(last["counts"]["reset"], 3, "{last}");
    assert_eq!(last["requested_by"], operator_upn.as_str());
    // Rate, ETA, the chart's points and "not reset, and why" come with the counts; the
    // per-user rows never do (only the protected user's name, as the example of its group).
    let progress = &last["progress"];
    assert_eq!(progress["eta_seconds"], 0, "{last}");
    assert!(progress["rate"].as_f64().expect("rate") > 0.0, "{last}");
    let timeline = progress["timeline"].as_array().expect("timeline");
    assert_eq!(timeline.last().expect("points")[1], 4.0, "{last}");
    assert_eq!(progress["not_reset"][0]["status"], "skipped_protected");
    assert_eq!(progress["not_reset"][0]["count"], 1);
    assert_eq!(progress["not_reset"][0]["example"], users[2].as_str());
    for user in [&users[0], &users[1], &users[3]] {
        assert!(!seen.contains(user.as_str()), "{user} is not on the stream");
    }

    // The per-user table: a page at a time, filtered by status and searched.
    let table = format!("{}/api/v1/batches/{batch}/users", serve.url);
    let page: Value = viewer
        .get(&format!("{table}?limit=2"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        (
            page["total"].as_u64(),
            page["rows"].as_array().map(Vec::len)
        ),
        (Some(4), Some(2)),
        "{page}"
    );
    let page: Value = viewer
        .get(&format!("{table}?status=not_reset"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["rows"][0]["user"], users[2].as_str());
    assert_eq!(page["rows"][0]["status"], "skipped_protected");
    let needle = users[3].to_uppercase();
    let page: Value = viewer
        .get(&format!("{table}?q={needle}&status=reset"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["rows"][0]["user"], users[3].as_str());
    assert_eq!(
        viewer
            .get(&format!("{table}?status=bogus"))
            .await
            .status()
            .as_u16(),
        400
    );
    assert_eq!(anonymous.get(&table).await.status().as_u16(), 401);

    // The batch page escapes what it shows and loads its script from the console only.
    let page = viewer.get(&format!("{}/batches/{batch}", serve.url)).await;
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.expect("page");
    assert!(html.contains("<script src=\"/console.js\"></script>"));
    for part in [
        "id=\"chart\"",
        "id=\"rate\"",
        "id=\"eta\"",
        "id=\"why\"",
        "id=\"users\"",
    ] {
        assert!(html.contains(part), "{part} on the batch page");
    }
    serve.stop().await;
    env.cleanup().await;
}

/// Follow a batch's events until it is complete: the last event.
async fn until_complete(browser: &Browser, console: &str, batch: &str) -> Value {
    let mut response = browser
        .http
        .get(format!("{console}/api/v1/batches/{batch}/events"))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .expect("events");
    assert_eq!(response.status().as_u16(), 200);
    let mut seen = String::new();
    let last = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let chunk = response
                .chunk()
                .await
                .expect("stream")
                .expect("not ended before complete");
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(data) = seen
                .rsplit("data: ")
                .next()
                .filter(|d| d.contains("\"complete\":true"))
            {
                break data.lines().next().unwrap_or_default().to_string();
            }
        }
    })
    .await
    .expect("the batch completes within 120 s");
    serde_json::from_str(&last).expect("event JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_upload_waits_until_a_different_signed_in_approver_approves_it() {
    let mut env = TestEnv::new("console-approve", tenant(40)).await;
    // The suite's settings lift the two-person rule out of the way (approval_above = 1e6);
    // here it is the subject: a batch of more than 5 users waits (workers and console agree).
    env.settings.security.approval_above = 5;
    env.setup().await;
    env.start_worker(8);
    let serve = Serve::start_with(&env, &oidc_env(&env)).await;
    let sim = env.sim.url();
    let above = env.settings.security.approval_above as usize + 2;

    // The operator also holds the approver role: still not for their own batch.
    let operator_upn = graph_sim::tenant::upn_for_index(39);
    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &sim,
        &operator_upn,
        &["operator", "approver"],
    )
    .await;
    let csrf = csrf_of(
        &operator
            .get(&format!("{}/batches/new", serve.url))
            .await
            .text()
            .await
            .expect("page"),
    );
    let methods_before: Vec<usize> = (0..above)
        .map(|i| {
            let upn = graph_sim::tenant::upn_for_index(i);
            env.sim.user(&upn).expect("user").methods.len()
        })
        .collect();
    let csv = format!(
        "user\n{}\n",
        (0..above)
            .map(graph_sim::tenant::upn_for_index)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let preview: Value = operator
        .post_csv(
            &format!("{}/api/v1/uploads?name=big.csv", serve.url),
            &csrf,
            &csv,
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(preview["needs_approval"], true, "{preview}");
    let submitted: Value = operator
        .post_csv(
            &format!(
                "{}/api/v1/uploads/{}/submit",
                serve.url,
                preview["upload"].as_str().expect("id")
            ),
            &csrf,
            "",
        )
        .await
        .json()
        .await
        .expect("JSON");
    let batch = submitted["batch"].as_str().expect("batch").to_string();
    let approve_url = format!("{}/api/v1/batches/{batch}/approve", serve.url);

    let own = operator.post_csv(&approve_url, &csrf, "").await;
    assert_eq!(own.status().as_u16(), 403);
    let own: Value = own.json().await.expect("JSON");
    assert_eq!(own["error"], "own_batch", "{own}");

    let mut viewer = Browser::new();
    sign_in(
        &mut viewer,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(38),
        &["viewer"],
    )
    .await;
    let viewer_page = viewer
        .get(&format!("{}/batches/{batch}", serve.url))
        .await
        .text()
        .await
        .expect("page");
    assert!(
        !viewer_page.contains("id=\"approve\""),
        "no approve button for a viewer"
    );
    assert_eq!(
        viewer
            .post_csv(&approve_url, "x", "")
            .await
            .status()
            .as_u16(),
        403
    );

    // An operator without the approver role may not approve either.
    let mut other_operator = Browser::new();
    sign_in(
        &mut other_operator,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(36),
        &["operator"],
    )
    .await;
    let other_csrf = csrf_of(
        &other_operator
            .get(&format!("{}/batches/new", serve.url))
            .await
            .text()
            .await
            .expect("page"),
    );
    let refused = other_operator.post_csv(&approve_url, &other_csrf, "").await;
    assert_eq!(refused.status().as_u16(), 403);
    let refused: Value = refused.json().await.expect("JSON");
    assert_eq!(refused["error"], "forbidden", "{refused}");

    // Nothing ran while it waited: no method was deleted anywhere, every user keeps theirs.
    assert_eq!(env.sim.stats().methods_deleted, 0);
    for (index, before) in methods_before.iter().enumerate() {
        let upn = graph_sim::tenant::upn_for_index(index);
        let now = env.sim.user(&upn).expect("user").methods.len();
        assert_eq!(
            now, *before,
            "{upn} kept its methods while the batch waited"
        );
    }

    let approver_upn = graph_sim::tenant::upn_for_index(37);
    let mut approver = Browser::new();
    sign_in(
        &mut approver,
        &serve.url,
        &sim,
        &approver_upn,
        &["approver"],
    )
    .await;
    let page = approver
        .get(&format!("{}/batches/{batch}", serve.url))
        .await
        .text()
        .await
        .expect("page");
    let approve_csrf = page
        .split("id=\"approve\" data-csrf=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an approve button for another approver")
        .to_string();
    let approved = approver.post_csv(&approve_url, &approve_csrf, "").await;
    assert_eq!(approved.status().as_u16(), 200);
    let approved: Value = approved.json().await.expect("JSON");
    assert_eq!(approved["approved_by"], approver_upn.as_str());
    assert_eq!(approved["signed_as"], env.keys.approver.principal.as_str());
    assert_eq!(approved["count"], above as u64);

    let last = until_complete(&viewer, &serve.url, &batch).await;
    assert_eq!(last["finished"], above as u64, "{last}");
    assert_eq!(last["counts"]["reset"], above as u64, "{last}");

    // Both people are on the audit record, by object id, in records the console signed.
    let actions = console_actions(&env).await;
    let operator_oid = env.sim.user(&operator_upn).expect("user").id;
    let approver_oid = env.sim.user(&approver_upn).expect("user").id;
    let submitted = actions
        .iter()
        .find(|a| a.action == "batch_submitted" && a.batch.as_deref() == Some(batch.as_str()))
        .expect("the submit is on the record");
    assert_eq!(
        (&submitted.upn, &submitted.oid),
        (&operator_upn, &operator_oid)
    );
    assert_eq!(submitted.detail["awaiting_approval"], true);
    let approval = actions
        .iter()
        .find(|a| a.action == "batch_approved" && a.batch.as_deref() == Some(batch.as_str()))
        .expect("the approval is on the record");
    assert_eq!(
        (&approval.upn, &approval.oid),
        (&approver_upn, &approver_oid)
    );
    assert_eq!(approval.roles, vec!["approver".to_string()]);
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.action == "batch_approved")
            .count(),
        1,
        "the refused approvals are not recorded as approvals"
    );
    serve.stop().await;
    env.cleanup().await;
}

/// Wait until `queue` holds exactly `n` messages (a quorum queue applies publishes, acks and
/// returned messages asynchronously), or fail after 30 s.
async fn queue_reaches(env: &TestEnv, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = env.queue_len(queue).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} holds {now} messages, not {n}, after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The console's actions on the outcomes stream that verify (signed by `console.key`).
async fn console_actions(env: &TestEnv) -> Vec<mfa_reset::domain::ConsoleAction> {
    env.stream_records()
        .await
        .into_iter()
        .filter_map(|r| match r {
            Record::ConsoleAction(a) => Some(a),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_only_after_a_different_approver_approves_and_every_step_is_recorded() {
    let mut env = TestEnv::new("console-replay", tenant(6)).await;
    env.setup().await;
    env.start_worker(4);
    let mut extra = oidc_env(&env);
    extra.push((
        "MFA_RESET__CONSOLE__ADMIN_KEY",
        env.keys.admin.path.display().to_string(),
    ));
    let serve = Serve::start_with(&env, &extra).await;
    let sim = env.sim.url();
    let operator_upn = graph_sim::tenant::upn_for_index(5);
    let approver_upn = graph_sim::tenant::upn_for_index(4);

    // An operator (who may also approve) submits three users that do not exist.
    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &sim,
        &operator_upn,
        &["operator", "approver"],
    )
    .await;
    let csrf = csrf_of(
        &operator
            .get(&format!("{}/batches/new", serve.url))
            .await
            .text()
            .await
            .expect("page"),
    );
    let preview: Value = operator
        .post_csv(
            &format!("{}/api/v1/uploads?name=ghosts.csv", serve.url),
            &csrf,
            "user\nghost1@contoso.com\nghost2@contoso.com\nghost3@contoso.com\n",
        )
        .await
        .json()
        .await
        .expect("JSON");
    let submitted: Value = operator
        .post_csv(
            &format!(
                "{}/api/v1/uploads/{}/submit",
                serve.url,
                preview["upload"].as_str().expect("upload id")
            ),
            &csrf,
            "",
        )
        .await
        .json()
        .await
        .expect("JSON");
    let batch = submitted["batch"].as_str().expect("batch").to_string();
    let mut viewer = Browser::new();
    sign_in(
        &mut viewer,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(3),
        &["viewer"],
    )
    .await;
    until_complete(&viewer, &serve.url, &batch).await;
    let dead = env.topology().dead();
    let requests = env.topology().requests();
    queue_reaches(&env, &dead, 3).await;
    // No worker runs the replay: what it releases stays on the requests queue to be counted.
    env.stop_workers().await;

    // The history lists the batch; the dead letters page lists the three letters, and only
    // an operator gets the button to ask for a replay.
    let history = viewer
        .get(&format!("{}/batches", serve.url))
        .await
        .text()
        .await
        .expect("page");
    assert!(history.contains(&format!(">{batch}</a>")), "{history}");
    assert!(history.contains("complete"));
    let letters = viewer
        .get(&format!("{}/dead-letters", serve.url))
        .await
        .text()
        .await
        .expect("page");
    for ghost in [
        "ghost1@contoso.com",
        "ghost2@contoso.com",
        "ghost3@contoso.com",
    ] {
        assert!(letters.contains(ghost), "{ghost} listed");
    }
    assert!(
        !letters.contains("replay-ask"),
        "no replay button for a viewer"
    );
    let letters = operator
        .get(&format!("{}/dead-letters", serve.url))
        .await
        .text()
        .await
        .expect("page");
    assert!(letters.contains("class=\"replay-ask\""));

    // Asking is not replaying: nothing moves until a different approver approves.
    let replays = format!("{}/api/v1/replays", serve.url);
    let ask = |browser: &mut Browser, csrf: String| {
        let replays = replays.clone();
        let batch = batch.clone();
        let cookies = browser.cookie_header();
        let http = browser.http.clone();
        async move {
            http.post(&replays)
                .header("cookie", cookies)
                .header("x-csrf-token", csrf)
                .json(&json!({"batch": batch, "error_code": "Request_ResourceNotFound"}))
                .send()
                .await
                .expect("POST")
        }
    };
    assert_eq!(
        ask(&mut viewer, "x".into()).await.status().as_u16(),
        403,
        "a viewer may not ask"
    );
    let asked = ask(&mut operator, csrf.clone()).await;
    assert_eq!(asked.status().as_u16(), 201);
    let asked: Value = asked.json().await.expect("JSON");
    assert_eq!(asked["state"], "pending");
    let id = asked["id"].as_str().expect("id").to_string();
    let approve_url = format!("{replays}/{id}/approve");
    let own = operator.post_csv(&approve_url, &csrf, "").await;
    assert_eq!(own.status().as_u16(), 403);
    assert_eq!(
        own.json::<Value>().await.expect("JSON")["error"],
        "own_replay"
    );
    assert_eq!(
        viewer
            .post_csv(&approve_url, "x", "")
            .await
            .status()
            .as_u16(),
        403
    );
    // The page's read of the queue hands the letters back; they are all there again.
    queue_reaches(&env, &dead, 3).await;
    assert_eq!(env.queue_len(&requests).await, 0, "nothing replayed yet");

    let mut approver = Browser::new();
    sign_in(
        &mut approver,
        &serve.url,
        &sim,
        &approver_upn,
        &["approver"],
    )
    .await;
    let page = approver
        .get(&format!("{}/dead-letters", serve.url))
        .await
        .text()
        .await
        .expect("page");
    let approve_csrf = page
        .split("class=\"replay-approve\" data-csrf=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an approve button for another approver")
        .to_string();
    let approved = approver.post_csv(&approve_url, &approve_csrf, "").await;
    assert_eq!(approved.status().as_u16(), 200);
    let approved: Value = approved.json().await.expect("JSON");
    assert_eq!(approved["replayed"], 3, "{approved}");
    assert_eq!(approved["approved_by"], approver_upn.as_str());
    queue_reaches(&env, &requests, 3).await;
    queue_reaches(&env, &dead, 0).await;
    // Approved once: a second approval finds it done.
    assert_eq!(
        approver
            .post_csv(&approve_url, &approve_csrf, "")
            .await
            .status()
            .as_u16(),
        409
    );

    // Every step, with the person's identity.
    let actions = console_actions(&env).await;
    let oid = |upn: &str| env.sim.user(upn).expect("user").id;
    let find = |action: &str| {
        actions
            .iter()
            .find(|a| a.action == action)
            .unwrap_or_else(|| panic!("{action} on the record: {actions:?}"))
    };
    assert_eq!(find("batch_submitted").oid, oid(&operator_upn));
    assert_eq!(find("replay_requested").oid, oid(&operator_upn));
    assert_eq!(find("replay_requested").detail["replay"], id.as_str());
    let approval = find("replay_approved");
    assert_eq!(approval.oid, oid(&approver_upn));
    assert_eq!(approval.detail["requested_by"], operator_upn.as_str());
    assert_eq!(approval.detail["replayed"], 3);
    let signed_in: Vec<&str> = actions
        .iter()
        .filter(|a| a.action == "signed_in")
        .map(|a| a.upn.as_str())
        .collect();
    for upn in [&operator_upn, &approver_upn] {
        assert!(
            signed_in.contains(&upn.as_str()),
            "{upn} signed in: {signed_in:?}"
        );
    }
    serve.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_while_a_browser_watches_a_batch_that_is_still_running() {
    let env = TestEnv::new("console-stop", tenant(2)).await;
    env.setup().await;
    let serve = Serve::start_with(&env, &oidc_env(&env)).await;
    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &env.sim.url(),
        &graph_sim::tenant::upn_for_index(1),
        &["operator"],
    )
    .await;
    let csrf = csrf_of(
        &operator
            .get(&format!("{}/batches/new", serve.url))
            .await
            .text()
            .await
            .expect("page"),
    );
    // No worker runs: the batch stays at 0 of 1, and its event stream stays open.
    let (_, submitted) = upload_and_submit(
        &mut operator,
        &serve.url,
        &csrf,
        "name=one.csv",
        &format!("user\n{}\n", graph_sim::tenant::upn_for_index(0)),
    )
    .await;
    let batch = submitted["batch"].as_str().expect("batch");
    let mut events = operator
        .http
        .get(format!("{}/api/v1/batches/{batch}/events", serve.url))
        .header("cookie", operator.cookie_header())
        .send()
        .await
        .expect("events");
    assert_eq!(events.status().as_u16(), 200);
    let first = events.chunk().await.expect("stream").expect("an event");
    assert!(String::from_utf8_lossy(&first).contains("\"complete\":false"));
    // Stopped with the stream open: it ends, and serve exits 0 (Serve::stop asserts both).
    serve.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the event stream ended with the console");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: cargo test --test it console::measure -- --ignored --nocapture"]
async fn measure_the_watch_stream_of_a_10000_user_batch() {
    use mfa_reset::broker::topology::RK_OUTCOME;
    use mfa_reset::broker::{OutMessage, Publisher};
    use mfa_reset::domain::{BatchManifest, Outcome, Status, UserRef};
    use mfa_reset::trust::chain::{chain_id, ChainWriter};
    use mfa_reset::trust::{Namespace, Signer};

    let env = TestEnv::new("console-measure", tenant(2)).await;
    env.setup().await;
    // 10,000 outcomes of a 20,000-user batch: still running, so the events keep coming.
    let batch = "20261128-1500-measure-0001";
    let topology = env.topology();
    let mut publisher = Publisher::connect(&env.settings.broker, &topology, "measure")
        .await
        .expect("publisher");
    let manifest = Record::Manifest(BatchManifest {
        batch: batch.into(),
        count: 20_000,
        source: "measure".into(),
        dry_run: false,
        revoke_sessions: false,
        requested_by: Some("ops@contoso.com".into()),
        created_at: chrono::Utc::now(),
        sealed: None,
        cap: None,
    });
    let send = |body: Vec<u8>| OutMessage::json(RK_OUTCOME, body).via(topology.intake());
    publisher
        .send(send(serde_json::to_vec(&manifest).expect("JSON")))
        .await
        .expect("manifest");
    let signer = Signer::from_key_file(&env.keys.worker.path).expect("worker key");
    let mut chain = ChainWriter::new(chain_id(batch, "measure"), Namespace::Worker);
    for i in 0..10_000u64 {
        let status = if i % 7 == 0 {
            Status::Failed
        } else {
            Status::Reset
        };
        let outcome = Record::Outcome(Box::new(Outcome {
            request_id: uuid::Uuid::new_v4(),
            batch: batch.into(),
            user: UserRef::parse(&format!("user{i}@contoso.com")).expect("upn"),
            status,
            methods_removed: Vec::new(),
            methods_remaining: Vec::new(),
            sessions_revoked: false,
            attempts: 1,
            error_code: (status == Status::Failed).then(|| "Authorization_RequestDenied".into()),
            error_message: None,
            ticket: None,
            finished_at: chrono::Utc::now(),
            worker: "measure".into(),
            graph_calls: 3,
            replay: 0,
            dry_run: false,
            requested_by: None,
            approved_by: None,
            reason: None,
            item: Some(i),
            replayed_by: None,
            replay_key: None,
            notes: Vec::new(),
            tap: None,
        }));
        let sealed = chain.seal(&outcome, &signer).expect("seal");
        publisher
            .send(send(serde_json::to_vec(&sealed).expect("JSON")))
            .await
            .expect("outcome");
    }
    publisher.close().await.expect("flush");

    let serve = Serve::start_with(&env, &oidc_env(&env)).await;
    let mut viewer = Browser::new();
    sign_in(
        &mut viewer,
        &serve.url,
        &env.sim.url(),
        &graph_sim::tenant::upn_for_index(1),
        &["viewer"],
    )
    .await;
    // The console reads the stream from its start: the batch is known once it got that far.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut response = loop {
        let response = viewer
            .http
            .get(format!("{}/api/v1/batches/{batch}/events", serve.url))
            .header("cookie", viewer.cookie_header())
            .send()
            .await
            .expect("events");
        if response.status() == 200 {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch known in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut seen = String::new();
    let mut arrivals = Vec::new();
    let mut sizes = Vec::new();
    while arrivals.len() < 10 {
        let chunk = response.chunk().await.expect("stream").expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = seen.find("\n\n") {
            let event: String = seen.drain(..end + 2).collect();
            if let Some(data) = event.split("data: ").nth(1) {
                let value: Value = serde_json::from_str(data.trim()).expect("JSON");
                if value["finished"] == 10_000 {
                    arrivals.push(std::time::Instant::now());
                    sizes.push(data.len());
                }
            }
        }
    }
    let gaps: Vec<u128> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    eprintln!(
        "MEASURE 10,000 outcomes: event every {gaps:?} ms, {} bytes each",
        sizes[0]
    );
    let started = std::time::Instant::now();
    let page: Value = viewer
        .get(&format!(
            "{}/api/v1/batches/{batch}/users?status=not_reset&q=user99&limit=50",
            serve.url
        ))
        .await
        .json()
        .await
        .expect("JSON");
    eprintln!(
        "MEASURE users page (not_reset, q=user99): {} ms, total {}",
        started.elapsed().as_millis(),
        page["total"]
    );
    serve.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_asking_for_a_pass_gets_it_sealed_and_an_operator_sees_it_once() {
    let mut env = TestEnv::new("console-tap", tenant(6)).await;
    let key = age::x25519::Identity::generate();
    let identity_file = tempfile::NamedTempFile::new().expect("identity file");
    std::fs::write(
        identity_file.path(),
        format!(
            "# helpdesk\n{}\n",
            secrecy::ExposeSecret::expose_secret(&key.to_string())
        ),
    )
    .expect("write identity");
    env.settings.tap.recipient = key.to_public().to_string();
    env.setup().await;
    env.start_worker(2);
    let mut extra = oidc_env(&env);
    extra.push((
        "MFA_RESET__TAP__IDENTITY",
        identity_file.path().display().to_string(),
    ));
    let serve = Serve::start_with(&env, &extra).await;
    let sim = env.sim.url();
    let user = graph_sim::tenant::upn_for_index(1);

    // The ticket system asks for a pass in the webhook body.
    let body = json!({"ticket": "INC-TAP-1", "user": user, "tap": true}).to_string();
    let (status, accepted) = serve.post(SERVICENOW, "msg-tap-1", now(), &body).await;
    assert_eq!(status, 202, "{accepted}");
    let batch = accepted["batch"].as_str().expect("batch").to_string();
    let request_id = accepted["request_id"].as_str().expect("id").to_string();
    let done = serve.wait_done("INC-TAP-1").await;
    let request = &done["requests"][0];
    assert_eq!(request["status"], "reset", "{done}");
    assert_eq!(request["tap"]["issued"], true, "{done}");
    // What the ticket system gets is sealed: it opens with the helpdesk key to Graph's pass.
    let sealed = request["tap"]["sealed"].as_str().expect("sealed pass");
    let created: Value = reqwest::get(format!("{sim}/_sim/users/{user}/tap"))
        .await
        .expect("sim")
        .json()
        .await
        .expect("json");
    let created = created["temporaryAccessPass"]
        .as_str()
        .expect("a pass")
        .to_string();
    assert!(!done.to_string().contains(&created), "the pass in clear");
    let opened = age::decrypt(&key, sealed.as_bytes()).expect("opens with the helpdesk key");
    assert_eq!(String::from_utf8(opened).expect("utf-8"), created);

    let page_url = format!("{}/batches/{batch}/tap/{request_id}", serve.url);
    let api_url = format!("{}/api/v1/batches/{batch}/tap/{request_id}", serve.url);
    let mut viewer = Browser::new();
    sign_in(
        &mut viewer,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(4),
        &["viewer"],
    )
    .await;
    assert_eq!(viewer.get(&page_url).await.status().as_u16(), 403);
    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(5),
        &["operator"],
    )
    .await;
    // The console learns the outcome from the stream: wait for the page to know it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let html = loop {
        let page = operator.get(&page_url).await;
        if page.status().as_u16() == 200 {
            break page.text().await.expect("page");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the console did not show the pass page in 60 s: {}",
            page.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !html.contains(&created),
        "the page holds the pass before it is asked for"
    );
    let csrf = csrf_of(&html);
    assert_eq!(
        operator
            .post_csv(&api_url, "wrong", "")
            .await
            .status()
            .as_u16(),
        403,
        "without the session's CSRF token"
    );
    let first = operator.post_csv(&api_url, &csrf, "").await;
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(
        first
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let shown: Value = first.json().await.expect("json");
    assert_eq!(shown["temporary_access_pass"], created.as_str());
    let second = operator.post_csv(&api_url, &csrf, "").await;
    assert_eq!(second.status().as_u16(), 410);
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["error"], "already_shown", "{second}");
    assert!(!second.to_string().contains(&created));

    // Shown once means once across restarts: a new console reads the showing back from its
    // signed record on the stream before it shows anything.
    serve.stop().await;
    let serve = Serve::start_with(&env, &extra).await;
    let page_url = format!("{}/batches/{batch}/tap/{request_id}", serve.url);
    let api_url = format!("{}/api/v1/batches/{batch}/tap/{request_id}", serve.url);
    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(5),
        &["operator"],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let html = loop {
        let page = operator.get(&page_url).await;
        if page.status().as_u16() == 200 {
            break page.text().await.expect("page");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted console did not show the pass page in 60 s: {}",
            page.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let again = operator.post_csv(&api_url, &csrf_of(&html), "").await;
    assert_eq!(again.status().as_u16(), 410, "shown again after a restart");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["error"], "already_shown", "{again}");
    assert!(
        again["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&graph_sim::tenant::upn_for_index(5)),
        "names who saw it: {again}"
    );
    let shown: Vec<_> = console_actions(&env)
        .await
        .into_iter()
        .filter(|a| a.action == "tap_shown")
        .collect();
    assert_eq!(shown.len(), 1, "one showing on the record: {shown:?}");

    serve.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_asking_for_passes_issues_one_sealed_pass_per_user_reset() {
    let mut env = TestEnv::new("console-upload-tap", tenant(4)).await;
    let key = age::x25519::Identity::generate();
    env.settings.tap.recipient = key.to_public().to_string();
    env.setup().await;
    env.start_worker(2);
    let serve = Serve::start_with(&env, &oidc_env(&env)).await;
    let mut operator = Browser::new();
    sign_in(
        &mut operator,
        &serve.url,
        &env.sim.url(),
        &graph_sim::tenant::upn_for_index(3),
        &["operator"],
    )
    .await;
    let page = operator
        .get(&format!("{}/batches/new", serve.url))
        .await
        .text()
        .await
        .expect("page");
    assert!(page.contains("id=\"tap\""), "the form offers the pass");
    assert!(
        page.contains(&format!(
            "data-max-upload=\"{}\"",
            env.settings.console.max_upload
        )),
        "the form knows the upload limit"
    );
    let csrf = csrf_of(&page);
    let users: Vec<String> = (0..2).map(graph_sim::tenant::upn_for_index).collect();
    let (preview, submitted) = upload_and_submit(
        &mut operator,
        &serve.url,
        &csrf,
        "name=two.csv&tap=true",
        &format!("user\n{}\n", users.join("\n")),
    )
    .await;
    assert_eq!(preview["tap"], true, "{preview}");
    let batch = submitted["batch"].as_str().expect("batch").to_string();
    let view = env.wait_batch(&batch, 120).await;
    assert_eq!(view.finished(), 2);
    for outcome in view.outcomes() {
        assert_eq!(outcome.status, mfa_reset::domain::Status::Reset);
        let tap = outcome.tap.as_ref().expect("a pass was asked for");
        assert!(tap.issued, "{tap:?}");
        let sealed = tap.sealed.as_deref().expect("sealed");
        let created: Value =
            reqwest::get(format!("{}/_sim/users/{}/tap", env.sim.url(), outcome.user))
                .await
                .expect("sim")
                .json()
                .await
                .expect("json");
        let opened = age::decrypt(&key, sealed.as_bytes()).expect("opens");
        assert_eq!(
            String::from_utf8(opened).expect("utf-8"),
            created["temporaryAccessPass"].as_str().expect("a pass")
        );
    }
    serve.stop().await;
    env.cleanup().await;
}

/// Upload `csv` with `query` (`name=…&…`) and submit it: the preview and the submit answers.
async fn upload_and_submit(
    operator: &mut Browser,
    console: &str,
    csrf: &str,
    query: &str,
    csv: &str,
) -> (Value, Value) {
    let preview: Value = operator
        .post_csv(&format!("{console}/api/v1/uploads?{query}"), csrf, csv)
        .await
        .json()
        .await
        .expect("JSON");
    let submitted: Value = operator
        .post_csv(
            &format!(
                "{console}/api/v1/uploads/{}/submit",
                preview["upload"].as_str().expect("upload id")
            ),
            csrf,
            "",
        )
        .await
        .json()
        .await
        .expect("JSON");
    (preview, submitted)
}
