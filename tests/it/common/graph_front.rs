//! [`GraphFront`]: an HTTP relay in front of the Graph simulator that records every request
//! by user and can make Graph fail for one user only.
//!
//! Everything is forwarded to the real simulator over HTTP and its answer returned as is,
//! except requests about a user marked with [`GraphFront::fail_user`]: those are answered
//! `500 generalException` without reaching the simulator (a user Graph keeps failing on,
//! while the rest of the tenant is fine). The user is read from the path segment after
//! `users/` (`/v1.0/users/{upn or id}/…`), as the client writes it for plain UPNs and ids.
//!
//! [`GraphFront::throttle_delete`] answers one chosen DELETE with a 429 and a Retry-After,
//! without reaching the simulator.
//!
//! [`GraphFront::hold_after_deletes`] closes a gate once a number of DELETEs went through:
//! every later request waits at the front (on the wire, unanswered) until
//! [`GraphFront::release`], so a test can act at a known point of a batch however fast or
//! slow the machine is. Released, the held requests go on one at a time, in the order they
//! arrived, each once the one before it was answered: as Graph would have served them had
//! the front not held them. (Released all at once, a DELETE a worker sent before its broker
//! node stopped raced the listing of the same user by the worker that took the redelivery
//! seconds later, a race the hold itself made; the cluster test once met it as a DELETE
//! answered 404.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use mfa_reset::config::Settings;
use tokio::task::JoinHandle;

/// One request that reached the front.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// The user of a `/users/{user}/…` path, lowercased.
    pub user: Option<String>,
    /// The path.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The caller's `client-request-id` header.
    pub client_request_id: Option<String>,
}

/// The relay (see the module doc).
pub struct GraphFront {
    url: String,
    state: Arc<FrontState>,
    task: JoinHandle<()>,
}

struct FrontState {
    upstream: String,
    client: reqwest::Client,
    failing: Mutex<HashSet<String>>,
    calls: Mutex<Vec<Call>>,
    /// Renames to make in the simulator just before relaying the first request whose path
    /// contains the fragment (a rename landing between two calls of one reset).
    renames: Mutex<Option<Renames>>,
    /// DELETEs relayed before the gate closes (`None`: no gate).
    hold_after: Mutex<Option<usize>>,
    /// The DELETE (counting from 1) to answer 429 with this Retry-After, in seconds.
    throttle_delete: Mutex<Option<(usize, u64)>>,
    /// True while the gate is closed; requests wait for it to turn false.
    held: tokio::sync::watch::Sender<bool>,
    /// Requests waiting at the closed gate now.
    waiting: std::sync::atomic::AtomicUsize,
    /// The next place in the line at the gate.
    places: std::sync::atomic::AtomicU64,
    /// The place whose turn it is once the gate opens.
    turn: tokio::sync::watch::Sender<u64>,
}

/// A path fragment, and the `(user, new UPN)` renames to make before its first request.
type Renames = (String, Vec<(String, String)>);

impl GraphFront {
    /// Relay to the simulator at `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> GraphFront {
        let state = Arc::new(FrontState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            failing: Mutex::default(),
            calls: Mutex::default(),
            renames: Mutex::default(),
            hold_after: Mutex::default(),
            throttle_delete: Mutex::default(),
            held: tokio::sync::watch::channel(false).0,
            waiting: std::sync::atomic::AtomicUsize::new(0),
            places: std::sync::atomic::AtomicU64::new(0),
            turn: tokio::sync::watch::channel(0).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("front binds");
        let url = format!("http://{}", listener.local_addr().expect("front address"));
        let app = Router::new().fallback(forward).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GraphFront { url, state, task }
    }

    /// Point `settings`' Graph and token URLs at the front.
    pub fn point(&self, settings: &mut Settings) {
        settings.graph.base_url = format!("{}/v1.0", self.url);
        settings.graph.beta_url = format!("{}/beta", self.url);
        settings.graph.authority = self.url.clone();
    }

    /// From now on, answer every request about `user` (UPN or id) with a 500.
    pub fn fail_user(&self, user: &str) {
        self.state
            .failing
            .lock()
            .unwrap()
            .insert(user.to_lowercase());
    }

    /// Just before relaying the first request whose path contains `fragment`, rename each
    /// `(user, new UPN)` in the simulator, in order (`POST /_sim/users/{user}/rename`).
    pub fn rename_before_first(&self, fragment: &str, renames: &[(&str, &str)]) {
        let renames = renames
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
        *self.state.renames.lock().unwrap() = Some((fragment.to_string(), renames));
    }

    /// Once `deletes` DELETE requests have been relayed (counting those so far), hold every
    /// later request at the front until [`GraphFront::release`].
    pub fn hold_after_deletes(&self, deletes: usize) {
        *self.state.hold_after.lock().unwrap() = Some(deletes);
    }

    /// Answer the `nth` DELETE (counting from 1, those so far included) with a 429 and
    /// `Retry-After: retry_after_secs`, without reaching the simulator: Graph throttling the
    /// app at a point the test chooses.
    pub fn throttle_delete(&self, nth: usize, retry_after_secs: u64) {
        *self.state.throttle_delete.lock().unwrap() = Some((nth, retry_after_secs));
    }

    /// True once the gate has closed (and until [`GraphFront::release`]).
    pub fn holding(&self) -> bool {
        *self.state.held.borrow()
    }

    /// Requests waiting at the closed gate now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Open the gate for good: the held requests go on to the simulator.
    pub fn release(&self) {
        *self.state.hold_after.lock().unwrap() = None;
        self.state.held.send_replace(false);
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// DELETE requests so far.
    pub fn deletes(&self) -> usize {
        deletes(&self.state.calls.lock().unwrap())
    }

    /// DELETE requests so far, by user.
    pub fn deletes_by_user(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for call in self.calls() {
            if let (&Method::DELETE, Some(user)) = (&call.method, call.user) {
                *counts.entry(user).or_default() += 1;
            }
        }
        counts
    }
}

impl Drop for GraphFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(state): State<Arc<FrontState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    // Kept until this request is answered: the next one held goes after it.
    let _turn = hold(&state).await;
    let user = user_of(&path);
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let failing = user
        .as_ref()
        .is_some_and(|u| state.failing.lock().unwrap().contains(u));
    let renames = {
        let mut held = state.renames.lock().unwrap();
        match held.as_ref() {
            Some((fragment, _)) if path.contains(fragment.as_str()) => held.take(),
            _ => None,
        }
    };
    for (from, to) in renames.map(|(_, r)| r).unwrap_or_default() {
        let url = format!(
            "{}/_sim/users/{}/rename",
            state.upstream,
            percent_encoding::utf8_percent_encode(&from, percent_encoding::NON_ALPHANUMERIC)
        );
        let renamed = state
            .client
            .post(url)
            .json(&serde_json::json!({ "userPrincipalName": to }))
            .send()
            .await
            .expect("the simulator renames");
        assert!(renamed.status().is_success(), "rename {from} → {to}");
    }
    let throttled = if method == Method::DELETE {
        let deletes = deletes(&state.calls.lock().unwrap());
        let mut throttle = state.throttle_delete.lock().unwrap();
        match *throttle {
            Some((nth, retry_after)) if deletes + 1 == nth => {
                *throttle = None;
                Some(retry_after)
            }
            _ => None,
        }
    } else {
        None
    };
    let response = if let Some(retry_after) = throttled {
        let mut response = json(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"code":"TooManyRequests","message":"injected by the test's Graph front"}}"#,
        );
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from(retry_after));
        response
    } else if failing {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":{"code":"generalException","message":"injected by the test's Graph front"}}"#,
        )
    } else {
        relay(&state, method.clone(), &uri, headers, body).await
    };
    let mut calls = state.calls.lock().unwrap();
    calls.push(Call {
        method,
        user,
        path,
        status: response.status().as_u16(),
        client_request_id,
    });
    // Close the gate when the DELETEs relayed reach the mark.
    if let Some(mark) = *state.hold_after.lock().unwrap() {
        if deletes(&calls) >= mark {
            state.held.send_replace(true);
        }
    }
    drop(calls);
    response
}

/// DELETE requests among `calls`.
fn deletes(calls: &[Call]) -> usize {
    calls.iter().filter(|c| c.method == Method::DELETE).count()
}

/// A held request's place in the line; dropped (answered, or given up by its caller), the
/// next place's turn comes.
struct Turn<'a> {
    state: &'a FrontState,
    place: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let next = self.place + 1;
        self.state
            .turn
            .send_modify(|turn| *turn = (*turn).max(next));
    }
}

/// Wait while the gate is closed, then for this request's turn in the line.
async fn hold(state: &FrontState) -> Option<Turn<'_>> {
    let mut held = state.held.subscribe();
    if !*held.borrow_and_update() {
        return None;
    }
    let place = state
        .places
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let turn = Turn { state, place };
    state
        .waiting
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = held.wait_for(|held| !*held).await;
    state
        .waiting
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    let _ = state.turn.subscribe().wait_for(|turn| *turn >= place).await;
    Some(turn)
}

async fn relay(
    state: &FrontState,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!(
        "{}{}",
        state.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut request = state.client.request(method, target).body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(err) => return json(StatusCode::BAD_GATEWAY, &format!("{{\"error\":\"{err}\"}}")),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).expect("a response")
}

fn json(status: StatusCode, body: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a response")
}

/// The user of `/…/users/{user}/…`, percent-decoded and lowercased.
fn user_of(path: &str) -> Option<String> {
    let mut segments = path.split('/');
    segments.find(|s| *s == "users")?;
    let user = segments.next().filter(|s| !s.is_empty())?;
    let decoded = percent_encoding::percent_decode_str(user).decode_utf8_lossy();
    Some(decoded.to_lowercase())
}
