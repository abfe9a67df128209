//! [`GraphClient`]: every Graph call mfa-reset makes, all through one send path.
//!
//! The send path ([`GraphClient::execute`]) is the only place that talks HTTP to Graph:
//! token → `gate.wait()` → budget (all, and writes for DELETE/POST/PATCH) → `gate.wait()` →
//! send → feed `x-ms-throttle-limit-percentage` to the budget → classify → retry or return.
//!
//! Retries: a 429 (or 503/504 with Retry-After) pauses the whole process through the shared
//! [`PauseGate`] for the Retry-After, or, without one, for the next step of the backoff
//! schedule (base `retry.base_delay`, doubling, capped at `retry.max_delay`, equal jitter).
//! Other 5xx, timeouts and dropped connections back off this request only. A 401 renews the
//! token and retries once. At most `retry.max_attempts` attempts and `retry.max_elapsed` in
//! all; then the error goes back to the caller, which hands retryable ones to a broker delay
//! tier (the broker's 30-minute ack timeout is never approached in process).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::address::encode_segment;
use super::error::{classify, from_transport};
use super::throttle::{backoff_schedule, jittered};
use super::{user_path, AuthMethod, Budget, Error, PauseGate, ThrottleStats, TokenProvider};
use crate::config::{GraphSettings, RateSettings, RetrySettings};
use crate::domain::UserRef;

/// A member of a group, as `enqueue --group` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Object id.
    pub id: String,
    /// UPN, when Graph gave one.
    pub user_principal_name: Option<String>,
}

/// A Temporary Access Pass just created. The pass itself is a secret: hand it to the user
/// through a safe channel, never log it.
#[derive(Debug, Clone)]
pub struct TemporaryAccessPass {
    /// Method id.
    pub id: String,
    /// The pass, in plain text (Graph shows it only in this answer).
    pub pass: SecretString,
    /// When it becomes usable, as Graph reported it.
    pub start_date_time: Option<String>,
    /// Lifetime in minutes.
    pub lifetime_in_minutes: u32,
    /// Usable once only.
    pub is_usable_once: bool,
}

/// The Graph client: one per process, cheap to clone, shares its token cache, budget and pause gate.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    v1: String,
    beta: String,
    /// `scheme://host[:port]` of the Graph roots: a nextLink elsewhere is refused (it would
    /// receive our bearer token).
    origins: [String; 2],
    list_from_beta: bool,
    page_size: u32,
    tokens: TokenProvider,
    budget: Arc<Budget>,
    gate: Arc<PauseGate>,
    stats: Arc<ThrottleStats>,
    retry: RetrySettings,
}

/// A successful answer.
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::InvalidResponse {
            status: self.status,
            message: format!("not JSON: {e}"),
        })
    }
}

/// How one call treats a 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnNotFound {
    /// An error like any other.
    Error,
    /// Success when an earlier attempt may have been applied (a DELETE answered 429/5xx or
    /// timed out, then 404 on the retry: it was already gone).
    GoneAfterRetry,
}

impl GraphClient {
    /// Build a client from settings. Fails when no credential is configured.
    pub fn new(
        graph: &GraphSettings,
        rate: &RateSettings,
        retry: &RetrySettings,
    ) -> anyhow::Result<GraphClient> {
        let stats = Arc::new(ThrottleStats::default());
        let budget = Arc::new(Budget::with_stats(rate, stats.clone())?);
        GraphClient::with_shared(graph, retry, budget, Arc::new(PauseGate::default()))
    }

    /// Build a client around an existing budget and pause gate (tests, benchmarks, or several
    /// clients in one process that must share one budget). Stats are the budget's.
    pub fn with_shared(
        graph: &GraphSettings,
        retry: &RetrySettings,
        budget: Arc<Budget>,
        gate: Arc<PauseGate>,
    ) -> anyhow::Result<GraphClient> {
        anyhow::ensure!(
            retry.max_attempts >= 1,
            "retry.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            (1..=999).contains(&graph.page_size),
            "graph.page_size must be between 1 and 999"
        );
        let http = reqwest::Client::builder()
            .timeout(graph.request_timeout)
            .connect_timeout(graph.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("mfa-reset/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tokens = TokenProvider::new(graph, http.clone())?;
        let v1 = graph.v1_url();
        let beta = graph.beta_url();
        let origins = [origin(&v1), origin(&beta)];
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                v1,
                beta,
                origins,
                list_from_beta: graph.list_methods_from_beta,
                page_size: graph.page_size,
                tokens,
                stats: budget.stats().clone(),
                budget,
                gate,
                retry: retry.clone(),
            }),
        })
    }

    /// Counters for metrics and benchmarks.
    pub fn stats(&self) -> Arc<ThrottleStats> {
        self.inner.stats.clone()
    }

    /// The process's budget.
    pub fn budget(&self) -> Arc<Budget> {
        self.inner.budget.clone()
    }

    /// The process's Retry-After pause.
    pub fn gate(&self) -> Arc<PauseGate> {
        self.inner.gate.clone()
    }

    /// The token provider (tests check that renewals are single-flight).
    pub fn tokens(&self) -> &TokenProvider {
        &self.inner.tokens
    }

    fn user_url(&self, beta: bool, user: &UserRef, rest: &str) -> String {
        let root = if beta {
            &self.inner.beta
        } else {
            &self.inner.v1
        };
        format!("{root}/{}{rest}", user_path(user))
    }

    /// `GET /users/{u}/authentication/methods`, from the beta root unless
    /// `graph.list_methods_from_beta` is off: v1.0 does not list hardware OATH tokens or
    /// QR code + PIN, and a reset that cannot see a method cannot remove it.
    pub async fn list_methods(&self, user: &UserRef) -> Result<Vec<AuthMethod>, Error> {
        let url = self.user_url(self.inner.list_from_beta, user, "/authentication/methods");
        let items = self.get_paged(url).await?;
        Ok(items.iter().map(AuthMethod::from_json).collect())
    }

    /// The DELETE for `method`; a 404 on a retry of it counts as success.
    ///
    /// Beta-only types are deleted under `/beta`, the rest under `/v1.0`. A method that cannot
    /// be deleted (password, unknown types) is a `BadRequest` without any request.
    pub async fn delete_method(&self, user: &UserRef, method: &AuthMethod) -> Result<(), Error> {
        let Some(path) = method.delete_path() else {
            return Err(Error::NotDeletable {
                stem: method.stem().to_string(),
            });
        };
        // Method ids come from Graph, but encode them anyway: they end up in a URL path.
        let path = encode_delete_path(&path);
        let url = self.user_url(
            method.is_beta_only(),
            user,
            &format!("/authentication/{path}"),
        );
        self.execute(Method::DELETE, url, None, OnNotFound::GoneAfterRetry)
            .await
            .map(|_| ())
    }

    /// `GET /beta/users/{u}/authentication/signInPreferences` →
    /// `userPreferredMethodForSecondaryAuthentication` (`push`, `oath`, `sms`, `voiceMobile`, …).
    pub async fn default_method(&self, user: &UserRef) -> Result<Option<String>, Error> {
        let url = self.user_url(true, user, "/authentication/signInPreferences");
        let answer = self
            .execute(Method::GET, url, None, OnNotFound::Error)
            .await?;
        let body = answer.json()?;
        Ok(body
            .get("userPreferredMethodForSecondaryAuthentication")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }

    /// `PATCH /beta/users/{u}/authentication/signInPreferences` with
    /// `userPreferredMethodForSecondaryAuthentication` = `preferred` (`voiceMobile`, `push`, …).
    pub async fn set_default_method(&self, user: &UserRef, preferred: &str) -> Result<(), Error> {
        let url = self.user_url(true, user, "/authentication/signInPreferences");
        let body = json!({ "userPreferredMethodForSecondaryAuthentication": preferred });
        self.execute(Method::PATCH, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/revokeSignInSessions`.
    pub async fn revoke_sessions(&self, user: &UserRef) -> Result<(), Error> {
        let url = self.user_url(false, user, "/revokeSignInSessions");
        self.execute(Method::POST, url, None, OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `GET /users/{u}?$select=id,userPrincipalName`: the user's object id and UPN, so a
    /// user requested by one can be matched against a list holding the other.
    pub async fn user_identity(&self, user: &UserRef) -> Result<(String, String), Error> {
        let url = self.user_url(false, user, "?$select=id,userPrincipalName");
        let answer = self
            .execute(Method::GET, url, None, OnNotFound::Error)
            .await?;
        let body = answer.json()?;
        let text = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok((text("id"), text("userPrincipalName")))
    }

    /// Display names of the directory roles the user holds (transitively).
    pub async fn directory_roles(&self, user: &UserRef) -> Result<Vec<String>, Error> {
        let url = self.user_url(
            false,
            user,
            "/transitiveMemberOf/microsoft.graph.directoryRole",
        );
        let items = self.get_paged(url).await?;
        Ok(items
            .iter()
            .filter_map(|r| r.get("displayName").and_then(Value::as_str))
            .map(str::to_string)
            .collect())
    }

    /// Every user member of a group, following `@odata.nextLink`.
    pub async fn group_members(
        &self,
        group_id: &str,
        transitive: bool,
    ) -> Result<Vec<GroupMember>, Error> {
        let kind = if transitive {
            "transitiveMembers"
        } else {
            "members"
        };
        let url = format!(
            "{}/groups/{}/{kind}/microsoft.graph.user?$select=id,userPrincipalName&$top={}",
            self.inner.v1,
            encode_segment(group_id),
            self.inner.page_size
        );
        let items = self.get_paged(url).await?;
        Ok(items
            .iter()
            .filter_map(|m| {
                Some(GroupMember {
                    id: m.get("id")?.as_str()?.to_string(),
                    user_principal_name: m
                        .get("userPrincipalName")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
            })
            .collect())
    }

    /// `POST /users/{u}/authentication/phoneMethods` (restore).
    pub async fn create_phone_method(
        &self,
        user: &UserRef,
        phone_number: &str,
        phone_type: &str,
    ) -> Result<(), Error> {
        let url = self.user_url(false, user, "/authentication/phoneMethods");
        let body = json!({ "phoneNumber": phone_number, "phoneType": phone_type });
        self.execute(Method::POST, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/authentication/emailMethods` (restore).
    pub async fn create_email_method(&self, user: &UserRef, email: &str) -> Result<(), Error> {
        let url = self.user_url(false, user, "/authentication/emailMethods");
        let body = json!({ "emailAddress": email });
        self.execute(Method::POST, url, Some(body), OnNotFound::Error)
            .await
            .map(|_| ())
    }

    /// `POST /users/{u}/authentication/temporaryAccessPassMethods`: a new Temporary Access
    /// Pass (replacing any existing one), usable for `lifetime_in_minutes` (10..=43200).
    pub async fn create_temporary_access_pass(
        &self,
        user: &UserRef,
        lifetime_in_minutes: u32,
        is_usable_once: bool,
    ) -> Result<TemporaryAccessPass, Error> {
        let url = self.user_url(false, user, "/authentication/temporaryAccessPassMethods");
        let body =
            json!({ "lifetimeInMinutes": lifetime_in_minutes, "isUsableOnce": is_usable_once });
        let answer = self
            .execute(Method::POST, url, Some(body), OnNotFound::Error)
            .await?;
        let json = answer.json()?;
        let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_string);
        let pass = text("temporaryAccessPass").ok_or_else(|| Error::InvalidResponse {
            status: answer.status,
            message: "Graph created a Temporary Access Pass but did not return it".into(),
        })?;
        Ok(TemporaryAccessPass {
            id: text("id").unwrap_or_default(),
            pass: SecretString::from(pass),
            start_date_time: text("startDateTime"),
            lifetime_in_minutes: json
                .get("lifetimeInMinutes")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(lifetime_in_minutes),
            is_usable_once: json
                .get("isUsableOnce")
                .and_then(Value::as_bool)
                .unwrap_or(is_usable_once),
        })
    }

    /// GET `url` and every `@odata.nextLink` after it (the whole URL, as Graph requires);
    /// the concatenated `value` arrays.
    async fn get_paged(&self, url: String) -> Result<Vec<Value>, Error> {
        let mut items = Vec::new();
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let answer = self
                .execute(Method::GET, url, None, OnNotFound::Error)
                .await?;
            let mut body = answer.json()?;
            if let Some(Value::Array(page)) = body.get_mut("value").map(Value::take) {
                items.extend(page);
            }
            if let Some(link) = body.get("@odata.nextLink").and_then(Value::as_str) {
                if !self.inner.origins.iter().any(|o| is_under(link, o)) {
                    return Err(Error::BadRequest {
                        status: answer.status,
                        code: "foreignNextLink".into(),
                        message: format!("@odata.nextLink points outside Graph: {link}"),
                    });
                }
                next = Some(link.to_string());
            }
        }
        Ok(items)
    }

    /// The one send path (see the module docs).
    async fn execute(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
        on_not_found: OnNotFound,
    ) -> Result<Answer, Error> {
        let inner = &*self.inner;
        let write = matches!(method, Method::DELETE | Method::POST | Method::PATCH);
        let request_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let mut backoff = backoff_schedule(&inner.retry);
        let mut attempts: u32 = 0;
        let mut retries: u32 = 0;
        let mut renewed = false;
        let mut maybe_applied = false;
        loop {
            // Token errors are classified like Graph errors (transient ones are retried).
            let (error, token) = match inner.tokens.token().await {
                Err(e) => (e, None),
                Ok(token) => {
                    attempts += 1;
                    inner.gate.wait().await;
                    inner.budget.acquire(write).await;
                    inner.gate.wait().await;
                    let mut request = inner
                        .http
                        .request(method.clone(), &url)
                        .header(AUTHORIZATION, bearer(token.secret()))
                        .header(ACCEPT, "application/json")
                        .header("client-request-id", &request_id);
                    if retries > 0 {
                        request = request.header("Retry-Attempt", retries.to_string());
                    }
                    request = match &body {
                        Some(b) => request.json(b),
                        // Graph wants a Content-Length on a POST even without a body.
                        None if write => request.body(""),
                        None => request,
                    };
                    match self.send(request).await {
                        Ok(answer) => return Ok(answer),
                        Err(e) => (e, Some(token)),
                    }
                }
            };
            if let Error::NotFound { .. } = &error {
                if on_not_found == OnNotFound::GoneAfterRetry && maybe_applied {
                    tracing::debug!(%url, "404 on a retried DELETE: already applied");
                    return Ok(Answer {
                        status: 404,
                        body: Bytes::new(),
                    });
                }
            }
            let delay = match &error {
                Error::Auth { .. } if token.is_some() && !renewed => {
                    // 401: the token expired or was revoked early. Renew once, retry at once.
                    if let Some(token) = &token {
                        inner.tokens.invalidate(token).await;
                    }
                    renewed = true;
                    inner.stats.record_token_renewal();
                    inner.stats.record_retry();
                    retries += 1;
                    tracing::debug!(%url, status = 401, "token refused; renewing it and retrying once");
                    attempts -= 1; // the renewal retry does not use up an attempt
                    continue;
                }
                Error::Throttled { retry_after, .. } => {
                    inner.stats.record_throttled();
                    // Only a request that was sent can have been applied.
                    maybe_applied |= token.is_some();
                    let delay = retry_after.unwrap_or_else(|| {
                        jittered(backoff.next().unwrap_or(inner.retry.max_delay))
                    });
                    let until = Instant::now() + delay;
                    // Graph throttles the app, not the request: every task waits.
                    inner.stats.add_pause(inner.gate.pause_until(until));
                    inner.budget.on_throttled(until.into_std());
                    delay
                }
                Error::Transient { .. } | Error::NoAnswer { .. } => {
                    maybe_applied |= token.is_some();
                    jittered(backoff.next().unwrap_or(inner.retry.max_delay))
                }
                _ => return Err(error),
            };
            if attempts >= inner.retry.max_attempts
                || started.elapsed() + delay > inner.retry.max_elapsed
            {
                tracing::debug!(%url, attempts, error = %error, "giving up in process");
                return Err(error);
            }
            retries += 1;
            inner.stats.record_retry();
            tracing::debug!(
                %url,
                status = error.status().unwrap_or(0),
                code = %error.code(),
                delay_ms = delay.as_millis() as u64,
                retry = retries,
                "retrying Graph call"
            );
            if !matches!(error, Error::Throttled { .. }) {
                tokio::time::sleep(delay).await;
            }
            // A throttled retry waits on the gate at the top of the loop, with everyone else.
        }
    }

    /// Send one request, count it, feed the throttle headers to the budget, classify.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, Error> {
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
                inner.stats.record_transport_error(e.is_timeout());
                return Err(from_transport(&e));
            }
        };
        inner.stats.record_status(status);
        if let Some(percent) = limit_percentage(&headers) {
            inner.budget.observe_limit_percentage(percent);
        }
        if (200..300).contains(&status) {
            return Ok(Answer { status, body });
        }
        if status == 429 {
            tracing::debug!(
                scope = header_text(&headers, "x-ms-throttle-scope"),
                information = header_text(&headers, "x-ms-throttle-information"),
                "Graph throttled us"
            );
        }
        Err(classify(status, &headers, &body))
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

/// `x-ms-throttle-limit-percentage` as a percentage. Graph documents it as a fraction of the
/// limit (0.8–1.8), the simulator sends whole percents (80–100): values up to 2 are fractions.
fn limit_percentage(headers: &HeaderMap) -> Option<f64> {
    let value: f64 = header_text(headers, "x-ms-throttle-limit-percentage")?
        .trim()
        .parse()
        .ok()?;
    (value.is_finite() && value >= 0.0).then_some(if value <= 2.0 { value * 100.0 } else { value })
}

/// Percent-encode the id segments of a method's DELETE path, keeping `/` and `$ref`.
fn encode_delete_path(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s == "$ref" {
                s.to_string()
            } else {
                encode_segment(s)
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    url[..end].to_ascii_lowercase()
}

/// True when `link` lies under `origin` (same scheme, host and port).
fn is_under(link: &str, origin: &str) -> bool {
    link.len() > origin.len()
        && link[..origin.len()].eq_ignore_ascii_case(origin)
        && link.as_bytes()[origin.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GraphSettings {
        GraphSettings {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: Some(SecretString::from("s")),
            base_url: "http://127.0.0.1:9/v1.0".into(),
            ..GraphSettings::default()
        }
    }

    #[test]
    fn a_client_needs_a_credential_and_ids() {
        let none = GraphSettings {
            client_secret: None,
            ..settings()
        };
        let err = GraphClient::new(&none, &RateSettings::default(), &RetrySettings::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("set graph.client_secret (MFA_RESET__GRAPH__CLIENT_SECRET) or graph.client_certificate + graph.client_private_key"), "{err}");
        let no_client = GraphSettings {
            client_id: " ".into(),
            ..settings()
        };
        assert!(GraphClient::new(
            &no_client,
            &RateSettings::default(),
            &RetrySettings::default()
        )
        .is_err());
        assert!(GraphClient::new(
            &settings(),
            &RateSettings::default(),
            &RetrySettings::default()
        )
        .is_ok());
    }

    #[test]
    fn user_urls_use_the_right_root_and_encoding() {
        let client = GraphClient::new(
            &settings(),
            &RateSettings::default(),
            &RetrySettings::default(),
        )
        .unwrap();
        let guest = UserRef::parse("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com").unwrap();
        assert_eq!(
            client.user_url(true, &guest, "/authentication/methods"),
            "http://127.0.0.1:9/beta/users/ann_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/authentication/methods"
        );
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

    #[test]
    fn next_links_must_stay_on_graph() {
        let o = origin("https://graph.microsoft.com/v1.0");
        assert_eq!(o, "https://graph.microsoft.com");
        assert!(is_under(
            "https://graph.microsoft.com/v1.0/groups/x?$skiptoken=1",
            &o
        ));
        assert!(!is_under(
            "https://graph.microsoft.com.evil.example/v1.0",
            &o
        ));
        assert!(!is_under("http://graph.microsoft.com/v1.0", &o));
    }

    #[test]
    fn delete_paths_keep_ref_and_encode_ids() {
        assert_eq!(
            encode_delete_path("externalAuthenticationMethods/a b/$ref"),
            "externalAuthenticationMethods/a%20b/$ref"
        );
        assert_eq!(
            encode_delete_path("phoneMethods/3179e48a-750b"),
            "phoneMethods/3179e48a-750b"
        );
    }
}
