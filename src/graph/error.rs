//! [`Error`]: every Graph answer that is not a success, classified once.
//!
//! [`classify`] is the only place that turns an HTTP status, its headers and its body into an
//! [`Error`]; [`from_transport`] does the same for requests that got no answer. Both branch on
//! status and Graph's error `code`, never on message text (messages change and are localised).

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
    /// Could not get a token, or 401 persisted after renewing it.
    #[error("authentication failed ({code}): {message}")]
    Auth {
        /// AADSTS / Graph error code.
        code: String,
        /// Message.
        message: String,
    },
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
    /// tenant): stop taking requests and leave them queued.
    ///
    /// No cause maps here yet: app-wide token errors (a wrong or expired secret, missing
    /// admin consent, a disabled app) will, in [`Error::class`]. The Graph client already
    /// hands a `Halt` back at once, without retrying in process (see `graph::attempt`).
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
            Error::Transient { code, .. }
            | Error::NotFound { code, .. }
            | Error::Forbidden { code, .. }
            | Error::BadRequest { code, .. }
            | Error::Auth { code, .. } => code.clone(),
        }
    }

    /// The HTTP status Graph answered, if it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Throttled { status, .. }
            | Error::Transient { status, .. }
            | Error::InvalidResponse { status, .. }
            | Error::BadRequest { status, .. } => Some(*status),
            Error::NotFound { .. } => Some(404),
            Error::Forbidden { .. } => Some(403),
            Error::Auth { .. } => Some(401),
            Error::NoAnswer { .. } | Error::NotDeletable { .. } => None,
        }
    }

    /// What this error means for the request (see [`Class`]). The one place that decides it:
    /// the Graph client retries `Outage` and `Retry` in process (up to `retry.max_attempts`)
    /// and hands `Permanent` and `Halt` back at once; the worker then requeues, delays,
    /// dead-letters or halts by the same class.
    pub fn class(&self) -> Class {
        match self {
            Error::Throttled { .. } | Error::NoAnswer { .. } => Class::Outage,
            Error::Transient {
                status: 502..=504, ..
            } => Class::Outage,
            Error::Transient { .. } | Error::InvalidResponse { .. } => Class::Retry,
            Error::NotFound { .. }
            | Error::Forbidden { .. }
            | Error::BadRequest { .. }
            | Error::NotDeletable { .. }
            | Error::Auth { .. } => Class::Permanent,
        }
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

/// The code Graph would have sent for `status`, when the body has none.
fn default_code(status: u16) -> &'static str {
    match status {
        400 => "badRequest",
        401 => "InvalidAuthenticationToken",
        403 => "Authorization_RequestDenied",
        404 => "Request_ResourceNotFound",
        429 => "TooManyRequests",
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

/// See [`retry_after`].
pub fn parse_retry_after(text: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error of the token endpoint: `Auth` with the AADSTS code (`AADSTS7000215` for a wrong
/// secret), or the OAuth `error` when there is none. 429 and 5xx stay retryable.
pub fn classify_token_error(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    if status == 429 || (500..=599).contains(&status) {
        return classify(status, headers, body);
    }
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
        .map(|n| format!("AADSTS{n}"))
        .or_else(|| {
            // The description starts with the code, e.g. "AADSTS7000215: Invalid client secret…".
            let digits: String = description
                .strip_prefix("AADSTS")?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
        });
    let code = aadsts
        .or_else(|| error.map(str::to_string))
        .unwrap_or_else(|| format!("http_{status}"));
    // Only the first line: the rest is trace and correlation ids.
    let message = description.lines().next().unwrap_or_default().to_string();
    let message = if message.is_empty() {
        format!("token endpoint answered {status}")
    } else {
        message
    };
    Error::Auth { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn both_error_shapes_give_code_and_message() {
        let graph = br#"{"error":{"code":"badRequest","message":"Cannot delete default method","innerError":{}}}"#;
        let odata = br#"{"odata.error":{"code":"invalid_request","message":{"lang":"en","value":"WHfB says no"}}}"#;
        assert_eq!(
            error_body(graph),
            (
                Some("badRequest".into()),
                "Cannot delete default method".into()
            )
        );
        assert_eq!(
            error_body(odata),
            (Some("invalid_request".into()), "WHfB says no".into())
        );
        match classify(400, &headers(None), odata) {
            Error::BadRequest { status, code, .. } => {
                assert_eq!((status, code.as_str()), (400, "invalid_request"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses_map_to_their_variants() {
        let h = headers(None);
        let body = br#"{"error":{"code":"X","message":"m"}}"#;
        assert!(matches!(
            classify(429, &h, body),
            Error::Throttled {
                status: 429,
                retry_after: None
            }
        ));
        assert!(matches!(
            classify(500, &h, body),
            Error::Transient { status: 500, .. }
        ));
        assert!(matches!(
            classify(502, &h, b""),
            Error::Transient { status: 502, .. }
        ));
        assert!(matches!(
            classify(503, &h, b""),
            Error::Transient { status: 503, .. }
        ));
        assert!(matches!(
            classify(504, &h, b"not json"),
            Error::Transient { status: 504, .. }
        ));
        assert!(matches!(classify(401, &h, body), Error::Auth { .. }));
        assert!(matches!(classify(403, &h, body), Error::Forbidden { .. }));
        assert!(
            matches!(classify(404, &h, b""), Error::NotFound { ref code, .. } if code == "Request_ResourceNotFound")
        );
        assert!(matches!(
            classify(409, &h, body),
            Error::BadRequest { status: 409, .. }
        ));
        assert!(
            matches!(classify(400, &h, body), Error::BadRequest { ref code, .. } if code == "X")
        );
    }

    #[test]
    fn a_503_or_504_with_retry_after_is_throttling() {
        let h = headers(Some("7"));
        assert!(matches!(
            classify(503, &h, b""),
            Error::Throttled { status: 503, retry_after: Some(d) } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(504, &h, b""),
            Error::Throttled { status: 504, .. }
        ));
        assert!(matches!(classify(500, &h, b""), Error::Transient { .. }));
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_past_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            retry_after(&headers(Some(" 5 ")), now),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn token_errors_carry_the_aadsts_code() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#;
        match classify_token_error(401, &HeaderMap::new(), body) {
            Error::Auth { code, message } => {
                assert_eq!(code, "AADSTS7000215");
                assert_eq!(message, "AADSTS7000215: Invalid client secret provided.");
            }
            other => panic!("{other:?}"),
        }
        let no_codes =
            br#"{"error":"invalid_client","error_description":"AADSTS700016: app not found"}"#;
        assert!(
            matches!(classify_token_error(400, &HeaderMap::new(), no_codes), Error::Auth { code, .. } if code == "AADSTS700016")
        );
        let bare = br#"{"error":"unauthorized_client"}"#;
        assert!(
            matches!(classify_token_error(400, &HeaderMap::new(), bare), Error::Auth { code, .. } if code == "unauthorized_client")
        );
        assert!(classify_token_error(503, &HeaderMap::new(), b"").is_retryable());
    }

    #[test]
    fn every_cause_has_one_class() {
        let h = headers(None);
        let class = |status: u16| classify(status, &h, b"").class();
        assert_eq!(class(429), Class::Outage);
        for gateway in [502, 503, 504] {
            assert_eq!(class(gateway), Class::Outage, "{gateway}");
        }
        assert_eq!(class(500), Class::Retry);
        for permanent in [400, 401, 403, 404, 409] {
            assert_eq!(class(permanent), Class::Permanent, "{permanent}");
        }
        let no_answer = Error::NoAnswer {
            cause: NoAnswer::Timeout,
            message: "timed out".into(),
        };
        assert_eq!(
            (
                no_answer.class(),
                no_answer.code().as_str(),
                no_answer.status()
            ),
            (Class::Outage, "timeout", None)
        );
        let unreadable = Error::InvalidResponse {
            status: 200,
            message: "not JSON".into(),
        };
        assert_eq!(unreadable.class(), Class::Retry);
        let not_deletable = Error::NotDeletable {
            stem: "password".into(),
        };
        assert_eq!(
            (not_deletable.class(), not_deletable.status()),
            (Class::Permanent, None)
        );
    }
}
