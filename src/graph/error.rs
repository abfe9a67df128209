//! [`Error`]: every Graph answer that is not a success, classified once.
//!
//! [`classify`] is the only place that turns an HTTP status, its headers and its body into an
//! [`Error`]; [`classify_token_error`] does it for the token endpoint; [`from_transport`] for
//! requests that got no answer. They branch on status, Graph's error `code`, the OAuth `error`
//! and the AADSTS number, never on message text (messages change and are localised).
//!
//! Errors of the app itself (its credential, consent, tenant: [`AppFault`]) are
//! [`Error::App`], whose class is [`Class::Halt`]: no user can succeed until someone fixes the
//! app, so the worker stops taking requests instead of failing each one. Each names the cause
//! and the fix, and never holds a secret.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

/// A failed Graph call. Each variant is one typed cause; [`Error::class`] is the one place
/// that decides what happens next (see [`Class`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 429, or 503/504 with Retry-After: wait (at least) `retry_after`, then retry.
    #[error("throttled by Graph ({status}){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    Throttled {
        /// HTTP status.
        status: u16,
        /// Retry-After, when Graph sent one.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer at all (timeout, refused or dropped connection). The request may
    /// still have reached Graph and been applied.
    #[error("no answer from Graph ({cause}): {message}")]
    NoAnswer {
        /// Why there was no answer.
        cause: NoAnswer,
        /// What the transport said (names the URL, never a header).
        message: String,
    },
    /// A 5xx answer (without Retry-After): retry with backoff.
    #[error("transient Graph error {code}: {message}")]
    Transient {
        /// HTTP status (500..=599).
        status: u16,
        /// Graph's error code.
        code: String,
        /// Graph's message.
        message: String,
    },
    /// A success status whose body is not what Graph documents (not JSON, a field missing).
    #[error("Graph answered {status} with a body we cannot read: {message}")]
    InvalidResponse {
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        message: String,
    },
    /// 404 `Request_ResourceNotFound`.
    #[error("not found ({code}): {message}")]
    NotFound {
        /// Graph's error code.
        code: String,
        /// Graph's message.
        message: String,
    },
    /// 403: permanent for this user (e.g. a privileged account).
    #[error("forbidden ({code}): {message}")]
    Forbidden {
        /// Graph's error code.
        code: String,
        /// Graph's message.
        message: String,
    },
    /// 400 and other 4xx: permanent.
    #[error("bad request ({code}): {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// Graph's error code.
        code: String,
        /// Graph's message.
        message: String,
    },
    /// A method Graph offers no DELETE for (password, types this build does not know).
    /// No request was made.
    #[error("a {stem} method cannot be deleted through Graph")]
    NotDeletable {
        /// The method's type stem.
        stem: String,
    },
    /// Graph refused the access token (401), and again with a freshly issued one: the app's
    /// tokens are not good for Graph (no admin consent, wrong cloud or audience). App-wide.
    #[error("Graph refused the app's access token even when freshly issued (401 {code}: {message}): grant admin consent to the app's application permissions, and check that graph.cloud / graph.base_url are the tenant's cloud")]
    Auth {
        /// Graph's error code.
        code: String,
        /// Graph's message.
        message: String,
    },
    /// The app itself cannot work, whatever the user: its credential, consent, permissions or
    /// tenant (see [`AppFault`]). Nothing succeeds until someone fixes it.
    #[error("{}", fault.explain(code, message))]
    App {
        /// What is wrong with the app.
        fault: AppFault,
        /// HTTP status of the refusal, if there was one.
        status: Option<u16>,
        /// `AADSTS7000215`, Graph's error code, or the OAuth `error`.
        code: String,
        /// The first line of Entra's description, or Graph's message.
        message: String,
    },
    /// Not sent: the request this call belongs to was taken back from the worker while the
    /// call waited its turn (the budget, a Retry-After pause, a backoff), see
    /// [`with_write_guard`](super::with_write_guard). Only writes are withheld.
    #[error("not sent: the broker took the request back (its delivery's channel closed) while this write waited its turn; whoever runs the request next finds what was removed on its plan")]
    Withheld,
    /// The token endpoint is unavailable for now (`temporarily_unavailable`, `server_error`,
    /// 5xx): retry later; nothing is wrong with the app or the user.
    #[error("the token endpoint is unavailable for now ({status} {code}): {message}")]
    TokenUnavailable {
        /// HTTP status.
        status: u16,
        /// `AADSTS…` or the OAuth `error`.
        code: String,
        /// The first line of Entra's description.
        message: String,
    },
}

/// What is wrong with the app when Entra or Graph refuses it as a whole (see [`Error::App`]).
/// Sources: <https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes>
/// and the Azure SDK's troubleshooting of `ClientSecretCredential` /
/// `ClientCertificateCredential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFault {
    /// AADSTS7000215: the secret sent is not a secret of the app.
    SecretRejected,
    /// AADSTS7000222: the secret has expired.
    SecretExpired,
    /// AADSTS700027 and kin: the client assertion or its certificate was refused.
    CertificateRejected,
    /// The client assertion could not even be signed with `graph.client_private_key`.
    CertificateUnusable,
    /// `invalid_client` without a more precise code: the credential was refused.
    CredentialRejected,
    /// AADSTS700016: no app with `graph.client_id` in the tenant.
    AppNotFound,
    /// AADSTS7000112: the app's service principal is disabled.
    AppDisabled,
    /// AADSTS90002: no such tenant (in this cloud).
    TenantNotFound,
    /// AADSTS65001 / 650056 / 500011 and kin: admin consent missing.
    ConsentMissing,
    /// Graph answered 403 to a call that only the app's permission governs: the app lacks
    /// this application permission, or admin consent for it.
    PermissionMissing(&'static str),
    /// Any other refusal of the token request (scope, grant, parameters).
    TokenRequestRefused,
}

impl AppFault {
    /// The fault an AADSTS number or an OAuth `error` of the token endpoint stands for.
    pub fn of_token_error(aadsts: Option<u64>, error: Option<&str>) -> AppFault {
        match aadsts {
            Some(7000215 | 70002) => AppFault::SecretRejected,
            Some(7000222) => AppFault::SecretExpired,
            Some(700027 | 700021 | 700023 | 700024 | 700030 | 50012 | 5002723) => {
                AppFault::CertificateRejected
            }
            Some(700016 | 700011 | 7000229) => AppFault::AppNotFound,
            Some(7000112 | 70001) => AppFault::AppDisabled,
            Some(90002 | 900023 | 90038 | 90019) => AppFault::TenantNotFound,
            Some(65001 | 650056 | 650057 | 90094 | 90008 | 500011) => AppFault::ConsentMissing,
            _ => match error {
                Some("invalid_client") => AppFault::CredentialRejected,
                Some("unauthorized_client") => AppFault::AppNotFound,
                _ => AppFault::TokenRequestRefused,
            },
        }
    }

    /// The cause and the fix, for a person.
    pub fn explain(&self, code: &str, message: &str) -> String {
        match self {
            AppFault::SecretRejected => format!(
                "the client secret was rejected ({code}): set graph.client_secret (MFA_RESET__GRAPH__CLIENT_SECRET) to the value, not the id, of a current secret of the app registration"
            ),
            AppFault::SecretExpired => format!(
                "the client secret has expired ({code}): add a new secret under the app registration's Certificates & secrets and set graph.client_secret to its value"
            ),
            AppFault::CertificateRejected => format!(
                "the client certificate was rejected ({code}: {message}): upload graph.client_certificate to the app registration's Certificates & secrets (or a renewed one if it expired) and check that graph.client_private_key is its key"
            ),
            AppFault::CertificateUnusable => format!(
                "the client assertion cannot be signed ({code}: {message}): set graph.client_private_key to the RSA key of graph.client_certificate"
            ),
            AppFault::CredentialRejected => format!(
                "Entra rejected the app's credential ({code}: {message}): check graph.client_secret, or graph.client_certificate and graph.client_private_key"
            ),
            AppFault::AppNotFound => format!(
                "the app was not found in the tenant ({code}: {message}): check graph.client_id and graph.tenant_id, and that the app is registered in (or consented to by) that tenant"
            ),
            AppFault::AppDisabled => format!(
                "the app is disabled in the tenant ({code}): enable its enterprise application (service principal) again in Entra"
            ),
            AppFault::TenantNotFound => format!(
                "the tenant was not found ({code}): check graph.tenant_id, and graph.cloud (or graph.authority) for a national cloud"
            ),
            AppFault::ConsentMissing => format!(
                "the app lacks admin consent ({code}: {message}): grant admin consent to its application permissions under API permissions"
            ),
            AppFault::PermissionMissing(permission) => format!(
                "Graph refused the app (403 {code}): it lacks the application permission {permission}, or admin consent for it: add it under API permissions and grant admin consent"
            ),
            AppFault::TokenRequestRefused => format!(
                "the token endpoint refused the app's request ({code}: {message}): check graph.scope, graph.client_id and graph.tenant_id"
            ),
        }
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// `graph.request_timeout` passed without an answer.
    Timeout,
    /// The connection could not be made, or broke before the answer.
    Connection,
}

impl NoAnswer {
    /// The cause's name in reports and metric labels: `timeout`, `connection`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoAnswer::Timeout => "timeout",
            NoAnswer::Connection => "connection",
        }
    }
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an error means for the request that met it: the one error taxonomy of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Graph is not there, or not now (no answer, 502/503/504, throttling): try again later
    /// *without* charging the request an attempt.
    Outage,
    /// This request failed in a way a later attempt may fix (500, an unreadable answer):
    /// try again later, using up an attempt.
    Retry,
    /// Permanent for this request (4xx, not deletable): record it and dead-letter it.
    Permanent,
    /// Nothing can succeed until someone fixes the app itself (its credential, consent,
    /// permissions, tenant): stop taking requests and leave them queued ([`Error::App`], and
    /// [`Error::Auth`], Graph refusing even a fresh token). The Graph client hands a `Halt`
    /// back at once, without retrying in process (see `graph::attempt`).
    Halt,
}

impl Error {
    /// Graph's error code, for reports.
    pub fn code(&self) -> String {
        match self {
            Error::Throttled { .. } => "TooManyRequests".into(),
            Error::NoAnswer { cause, .. } => cause.to_string(),
            Error::InvalidResponse { .. } => "invalid_response".into(),
            Error::NotDeletable { .. } => "notDeletable".into(),
            Error::Withheld => "taken_back".into(),
            Error::Transient { code, .. }
            | Error::NotFound { code, .. }
            | Error::Forbidden { code, .. }
            | Error::BadRequest { code, .. }
            | Error::Auth { code, .. }
            | Error::App { code, .. }
            | Error::TokenUnavailable { code, .. } => code.clone(),
        }
    }

    /// The HTTP status Graph answered, if it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Throttled { status, .. }
            | Error::Transient { status, .. }
            | Error::InvalidResponse { status, .. }
            | Error::BadRequest { status, .. }
            | Error::TokenUnavailable { status, .. } => Some(*status),
            Error::NotFound { .. } => Some(404),
            Error::Forbidden { .. } => Some(403),
            Error::Auth { .. } => Some(401),
            Error::App { status, .. } => *status,
            Error::NoAnswer { .. } | Error::NotDeletable { .. } | Error::Withheld => None,
        }
    }

    /// What this error means for the request (see [`Class`]). The one place that decides it:
    /// the Graph client retries `Outage` and `Retry` in process (up to `retry.max_attempts`)
    /// and hands `Permanent` and `Halt` back at once; the worker then requeues, delays,
    /// dead-letters or halts by the same class.
    pub fn class(&self) -> Class {
        match self {
            Error::Throttled { .. } | Error::NoAnswer { .. } | Error::TokenUnavailable { .. } => {
                Class::Outage
            }
            Error::Transient {
                status: 502..=504, ..
            } => Class::Outage,
            Error::Transient { .. } | Error::InvalidResponse { .. } => Class::Retry,
            Error::NotFound { .. }
            | Error::Forbidden { .. }
            | Error::BadRequest { .. }
            | Error::NotDeletable { .. } => Class::Permanent,
            // Handed back at once, never retried; the reset stops (`Interrupted::TakenBack`).
            Error::Withheld => Class::Permanent,
            Error::Auth { .. } | Error::App { .. } => Class::Halt,
        }
    }

    /// True when the app itself cannot work ([`Class::Halt`]): no user can succeed until
    /// someone fixes it, so nothing about this user may be concluded from it.
    pub fn halts(&self) -> bool {
        self.class() == Class::Halt
    }

    /// True when trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), Class::Outage | Class::Retry)
    }
}

/// Classify a non-success answer of Graph (or of the token endpoint's 429/5xx).
///
/// 429 → `Throttled`; 503/504 with Retry-After → `Throttled`; 500/502/503/504 → `Transient`;
/// 401 → `Auth` (the client renews the token and retries once before returning it);
/// 403 → `Forbidden`; 404 → `NotFound`; 400 and any other status → `BadRequest`.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let retry_after = retry_after(headers, SystemTime::now());
    let (code, message) = error_body(body);
    let code = code.unwrap_or_else(|| default_code(status).to_string());
    match status {
        429 => Error::Throttled {
            status,
            retry_after,
        },
        503 | 504 if retry_after.is_some() => Error::Throttled {
            status,
            retry_after,
        },
        500 | 502 | 503 | 504 => Error::Transient {
            status,
            code,
            message,
        },
        401 => Error::Auth { code, message },
        403 => Error::Forbidden { code, message },
        404 => Error::NotFound { code, message },
        _ => Error::BadRequest {
            status,
            code,
            message,
        },
    }
}

/// Classify a request that got no HTTP answer. The request may still have reached Graph.
pub fn from_transport(err: &reqwest::Error) -> Error {
    let cause = if err.is_timeout() {
        NoAnswer::Timeout
    } else {
        NoAnswer::Connection
    };
    // reqwest's Display names the URL, never headers, so no token can leak through it.
    Error::NoAnswer {
        cause,
        message: err.to_string(),
    }
}

/// The code Graph would have sent for `status`, when the body has none. (A 429 is
/// [`Error::Throttled`], whose code is always `TooManyRequests`.)
fn default_code(status: u16) -> &'static str {
    match status {
        400 => "badRequest",
        401 => "InvalidAuthenticationToken",
        403 => "Authorization_RequestDenied",
        404 => "Request_ResourceNotFound",
        500..=599 => "serviceUnavailable",
        _ => "unexpectedStatus",
    }
}

/// `(code, message)` from either error shape Graph uses:
/// `{"error":{"code","message"}}` and (WHfB / FIDO2 deletes)
/// `{"odata.error":{"code","message":{"value"}}}`. Anything else gives `(None, "")`.
pub fn error_body(body: &[u8]) -> (Option<String>, String) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return (
            None,
            String::from_utf8_lossy(body).chars().take(200).collect(),
        );
    };
    let err = json.get("error").or_else(|| json.get("odata.error"));
    let Some(err) = err.filter(|e| e.is_object()) else {
        return (None, String::new());
    };
    let code = err.get("code").and_then(Value::as_str).map(str::to_string);
    let message = match err.get("message") {
        Some(Value::String(m)) => m.clone(),
        Some(m) => m
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    (code, message)
}

/// Retry-After as seconds (`120`) or an HTTP date; a date in the past gives zero.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(text, now)
}

/// See [`retry_after`]. Never panics on what a server sends: a value too large for a
/// [`Duration`] (`1e20`, thirty digits) is [`Duration::MAX`] (the caller caps it, see
/// `retry.max_retry_after`); a negative, NaN or infinite one is ignored.
pub fn parse_retry_after(text: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64.
        return Some(Duration::MAX);
    }
    if let Ok(secs) = text.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// AADSTS numbers Entra documents as transient ("temporarily unavailable", "try again").
const TRANSIENT_AADSTS: [u64; 5] = [90006, 90024, 90033, 90090, 50196];

/// An error of the token endpoint.
///
/// - `temporarily_unavailable`, `server_error`, a transient AADSTS number or a 5xx:
///   [`Error::TokenUnavailable`] (class `Outage`); with a Retry-After on a 429/503/504,
///   [`Error::Throttled`].
/// - Anything else: the token request carries nothing of any user, so it is the app's own
///   fault: [`Error::App`] (class `Halt`) with the [`AppFault`] of its AADSTS number
///   (`invalid_client` AADSTS7000215 for a wrong secret, 7000222 expired, 700027 certificate,
///   7000112 disabled, 700016 app not found, 90002 tenant not found…).
pub fn classify_token_error(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = json.get("error").and_then(Value::as_str);
    let description = json
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let aadsts = json
        .get("error_codes")
        .and_then(Value::as_array)
        .and_then(|codes| codes.first())
        .and_then(Value::as_u64)
        .or_else(|| {
            // The description starts with the code, e.g. "AADSTS7000215: Invalid client secret…".
            let digits: String = description
                .strip_prefix("AADSTS")?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        });
    let code = aadsts
        .map(|n| format!("AADSTS{n}"))
        .or_else(|| error.map(str::to_string))
        .unwrap_or_else(|| format!("http_{status}"));
    // Only the first line: the rest is trace and correlation ids.
    let message = description.lines().next().unwrap_or_default().trim();
    let message = if message.is_empty() {
        format!("token endpoint answered {status}")
    } else {
        message.to_string()
    };
    let throttled = status == 429
        || (matches!(status, 503 | 504) && retry_after(headers, SystemTime::now()).is_some());
    if throttled {
        return Error::Throttled {
            status,
            retry_after: retry_after(headers, SystemTime::now()),
        };
    }
    let transient = matches!(error, Some("temporarily_unavailable" | "server_error"))
        || aadsts.is_some_and(|n| TRANSIENT_AADSTS.contains(&n))
        || (500..=599).contains(&status);
    if transient {
        return Error::TokenUnavailable {
            status,
            code,
            message,
        };
    }
    Error::App {
        fault: AppFault::of_token_error(aadsts, error),
        status: Some(status),
        code,
        message,
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
