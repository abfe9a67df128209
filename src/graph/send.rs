//! The one send loop of [`GraphClient`]: every attempt of every call goes through
//! [`GraphClient::execute`] here.
//!
//! Each attempt goes token → budget (all, and writes for DELETE/POST/PATCH; it waits out the
//! pause before and after taking its cells) → send → feed the answer and
//! `x-ms-throttle-limit-percentage` to the budget → classify.
//! What follows an attempt is not decided here: the attempt machine ([`super::attempt`])
//! returns a [`Step`], and the loop carries it out (renews the token, pauses everyone, sleeps,
//! or returns).

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::attempt::{Attempts, OnNotFound, Outcome, Step};
use super::budget::Limit;
use super::error::{classify, from_transport};
use super::{AccessToken, Error, GraphClient};

tokio::task_local! {
    /// The `client-request-id` of the Graph calls made in this task: the reset request's id.
    static CLIENT_REQUEST_ID: uuid::Uuid;
}

/// Run `work` with every Graph call it makes carrying `id` as `client-request-id`: the id
/// Microsoft documents for correlating a client's calls (a GUID), shown in Entra's audit
/// and sign-in logs, so they join to the reset's outcome. Without it each call gets a
/// fresh one.
pub async fn with_client_request_id<F: std::future::Future>(id: uuid::Uuid, work: F) -> F::Output {
    CLIENT_REQUEST_ID.scope(id, work).await
}

tokio::task_local! {
    /// Is the request this task's calls belong to still this worker's (see
    /// [`with_write_guard`])?
    static WRITE_GUARD: WriteGuard;
}

/// Answers true once the calls of a task must not write any more.
pub type WriteGuard = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// Run `work` with every write it makes (DELETE, POST, PATCH) asking `taken_back` right
/// before it is sent, after its wait for the budget or a pause, each attempt: once it answers
/// true the write is not sent and fails with [`Error::Withheld`]. A worker runs each reset
/// under it: a request whose delivery went back to the broker may be running on another
/// worker already, and two workers must not delete one user's methods side by side.
pub async fn with_write_guard<F: std::future::Future>(
    taken_back: WriteGuard,
    work: F,
) -> F::Output {
    WRITE_GUARD.scope(taken_back, work).await
}

/// True when this task's writes are to be withheld.
fn withheld() -> bool {
    WRITE_GUARD
        .try_with(|taken_back| taken_back())
        .unwrap_or(false)
}

/// The `client-request-id` the next call of this task sends.
pub fn client_request_id() -> uuid::Uuid {
    CLIENT_REQUEST_ID
        .try_with(|id| *id)
        .unwrap_or_else(|_| uuid::Uuid::new_v4())
}

/// A successful answer.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Bytes,
}

impl Answer {
    pub(super) fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::InvalidResponse {
            status: self.status,
            message: format!("not JSON: {e}"),
        })
    }
}

impl GraphClient {
    /// The one send loop (see the module docs): one attempt after another, each followed by
    /// the [`Step`] the attempt machine (`attempt.rs`) decides, carried out here.
    pub(super) async fn execute(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
        on_not_found: OnNotFound,
    ) -> Result<Answer, Error> {
        self.execute_with(method, url, body, on_not_found, &[])
            .await
    }

    /// [`GraphClient::execute`] with extra request `headers` (`ConsistencyLevel: eventual` for
    /// an advanced query).
    pub(super) async fn execute_with(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
        on_not_found: OnNotFound,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Answer, Error> {
        let inner = &*self.inner;
        let request_id = client_request_id().to_string();
        let mut attempts = Attempts::new(&inner.retry, on_not_found, Instant::now());
        loop {
            let (outcome, token, limit) = self
                .attempt(
                    &method,
                    &url,
                    body.as_ref(),
                    headers,
                    &request_id,
                    attempts.retries(),
                )
                .await;
            let failure = match &outcome {
                Outcome::Answered(_) => None,
                Outcome::NoToken(e) | Outcome::Failed(e) | Outcome::Withheld(e) => {
                    Some((e.status().unwrap_or(0), e.code()))
                }
            };
            let (status, code) = failure.unwrap_or_default();
            // A throttled call waits at the gate, with everyone else, in its next attempt;
            // a backed-off one sleeps here.
            let (delay, sleep) = match attempts.next_step(outcome, &inner.retry, Instant::now()) {
                Step::Done(answer) => return Ok(answer),
                Step::AlreadyApplied => {
                    tracing::debug!(%url, "404 on a retried DELETE: already applied");
                    return Ok(Answer {
                        status: 404,
                        body: Bytes::new(),
                    });
                }
                Step::GiveUp(error) => {
                    tracing::debug!(%url, error = %error, "Graph call failed; handing the error back");
                    return Err(error);
                }
                Step::PauseEveryoneThenGiveUp { until, error } => {
                    self.pause_everyone(until, limit);
                    tracing::debug!(%url, error = %error, "Graph call failed; handing the error back");
                    return Err(error);
                }
                Step::RenewToken => {
                    if let Some(token) = &token {
                        inner.tokens.invalidate(token).await;
                    }
                    inner.stats.record_token_renewal();
                    inner.stats.record_retry();
                    tracing::debug!(%url, status = 401, "token refused; renewing it and retrying once");
                    continue;
                }
                Step::PauseEveryone { until } => {
                    self.pause_everyone(until, limit);
                    (until.saturating_duration_since(Instant::now()), false)
                }
                Step::BackOff { delay } => (delay, true),
            };
            inner.stats.record_retry();
            tracing::debug!(
                %url,
                status,
                %code,
                delay_ms = delay.as_millis() as u64,
                retry = attempts.retries(),
                "retrying Graph call"
            );
            if sleep {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Graph throttled the app on `limit`: every task of the process waits until `until`, and
    /// a pause that grew is announced to the other workers (through the gate's subscribers).
    fn pause_everyone(&self, until: Instant, limit: Limit) {
        let inner = &*self.inner;
        inner.stats.record_throttled();
        let grew = inner.gate.pause_until(until);
        inner.stats.add_pause(grew);
        if !grew.is_zero() {
            inner.gate.announce(until, limit);
        }
        inner.budget.on_throttled(until, limit);
    }

    /// One attempt: a token, the pause and the budget, the request. Hands back the token the
    /// request carried, if it got that far (a 401 invalidates exactly that one), and the limit
    /// a throttling answer would have hit.
    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&'static str, &'static str)],
        request_id: &str,
        retries: u32,
    ) -> (Outcome<Answer>, Option<AccessToken>, Limit) {
        let inner = &*self.inner;
        let write = matches!(*method, Method::DELETE | Method::POST | Method::PATCH);
        let by_method = if write {
            Limit::Writes
        } else {
            Limit::Requests
        };
        // Token errors are classified like Graph errors (transient ones are retried).
        let token = match inner.tokens.token().await {
            Ok(token) => token,
            Err(e) => return (Outcome::NoToken(e), None, by_method),
        };
        // Waits out any pause, before and after taking its cells.
        inner.budget.acquire(write, &inner.gate).await;
        // The wait may have been long: the request may have been taken back meanwhile.
        if write && withheld() {
            return (Outcome::Withheld(Error::Withheld), None, by_method);
        }
        let mut request = inner
            .http
            .request(method.clone(), url)
            .header(AUTHORIZATION, bearer(token.secret()))
            .header(ACCEPT, "application/json")
            .header("client-request-id", request_id);
        if retries > 0 {
            request = request.header("Retry-Attempt", retries.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request = match body {
            Some(b) => request.json(b),
            // Graph wants a Content-Length on a POST even without a body.
            None if write => request.body(""),
            None => request,
        };
        let (outcome, limit) = match self.send(request, write).await {
            (Ok(answer), _) => (Outcome::Answered(answer), by_method),
            (Err(e), limit) => (Outcome::Failed(e), limit.unwrap_or(by_method)),
        };
        (outcome, Some(token), limit)
    }

    /// Send one request, count it, feed the answer and the throttle headers to the budget,
    /// classify. A 429 also says which limit it names, when its headers do.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        write: bool,
    ) -> (Result<Answer, Error>, Option<Limit>) {
        let inner = &*self.inner;
        let result = {
            let _in_flight = inner.stats.start_request();
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(body) => Ok((status, headers, body)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        };
        let (status, headers, body) = match result {
            Ok(parts) => parts,
            Err(e) => {
                let error = from_transport(&e);
                if let Error::NoAnswer { cause, .. } = &error {
                    inner.stats.record_no_answer(*cause);
                }
                return (Err(error), None);
            }
        };
        inner.stats.record_status(status);
        inner.budget.observe_answer(write, status);
        if let Some(percent) = limit_percentage(&headers) {
            inner.budget.observe_limit_percentage(percent);
        }
        if (200..300).contains(&status) {
            return (Ok(Answer { status, body }), None);
        }
        let mut limit = None;
        if status == 429 {
            let scope = header_text(&headers, "x-ms-throttle-scope");
            let information = header_text(&headers, "x-ms-throttle-information");
            limit = throttled_limit(scope.as_deref(), information.as_deref());
            tracing::debug!(?scope, ?information, "Graph throttled us");
        }
        (Err(classify(status, &headers, &body)), limit)
    }
}

fn bearer(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    // Keeps the token out of any header dump (hyper and reqwest honour this flag).
    value.set_sensitive(true);
    value
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The limit a 429 names: `x-ms-throttle-information` saying writes (`WriteLimitExceeded`), or
/// a `x-ms-throttle-scope` whose access segment is `Write`
/// (`Tenant_Application/Write/{appId}/{tenantId}`), is the writes limit; any other named
/// scope or reason is the all-requests limit; neither header: unknown (the caller goes by
/// the request's method).
fn throttled_limit(scope: Option<&str>, information: Option<&str>) -> Option<Limit> {
    let writes = information.is_some_and(|i| i.to_ascii_lowercase().contains("write"))
        || scope.is_some_and(|s| s.split('/').any(|part| part.eq_ignore_ascii_case("write")));
    if writes {
        Some(Limit::Writes)
    } else if scope.is_some() || information.is_some() {
        Some(Limit::Requests)
    } else {
        None
    }
}

/// `x-ms-throttle-limit-percentage` as a percentage. Graph documents it as a fraction of the
/// limit (0.8–1.8), the simulator sends whole percents (80–100): values up to 2 are fractions.
fn limit_percentage(headers: &HeaderMap) -> Option<f64> {
    let value: f64 = header_text(headers, "x-ms-throttle-limit-percentage")?
        .trim()
        .parse()
        .ok()?;
    (value.is_finite() && value >= 0.0).then_some(if value <= 2.0 { value * 100.0 } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_names_the_writes_limit_by_its_reason_or_scope_and_otherwise_all_requests() {
        assert_eq!(
            throttled_limit(None, Some("WriteLimitExceeded")),
            Some(Limit::Writes)
        );
        assert_eq!(
            throttled_limit(Some("Tenant_Application/Write/app/tenant"), None),
            Some(Limit::Writes)
        );
        assert_eq!(
            throttled_limit(
                Some("Application_Tenant/Identity/t/c"),
                Some("ResourceUnitLimitExceeded")
            ),
            Some(Limit::Requests)
        );
        assert_eq!(
            throttled_limit(Some("Tenant_Application/ReadWrite/app/tenant"), None),
            Some(Limit::Requests)
        );
        assert_eq!(throttled_limit(None, None), None);
    }

    #[test]
    fn limit_percentage_reads_fractions_and_percents() {
        let mut h = HeaderMap::new();
        assert_eq!(limit_percentage(&h), None);
        h.insert(
            "x-ms-throttle-limit-percentage",
            HeaderValue::from_static("0.85"),
        );
        assert!((limit_percentage(&h).unwrap() - 85.0).abs() < 1e-9);
        h.insert(
            "x-ms-throttle-limit-percentage",
            HeaderValue::from_static("92"),
        );
        assert_eq!(limit_percentage(&h), Some(92.0));
    }
}
