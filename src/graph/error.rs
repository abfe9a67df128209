//! [`Error`]: every Graph answer that is not a success, classified once.

use std::time::Duration;

/// A failed Graph call. The variant decides what happens next: retry in process,
/// hand to a broker delay tier, or record `failed` and dead-letter.
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
    /// 5xx, timeouts, connection errors: retry with backoff.
    #[error("transient Graph error {code}: {message}")]
    Transient {
        /// HTTP status (0 for connection-level errors).
        status: u16,
        /// Graph's error code, or `timeout` / `connection`.
        code: String,
        /// Graph's message.
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
    /// Could not get a token, or 401 persisted after renewing it.
    #[error("authentication failed ({code}): {message}")]
    Auth {
        /// AADSTS / Graph error code.
        code: String,
        /// Message.
        message: String,
    },
}

impl Error {
    /// Graph's error code, for reports.
    pub fn code(&self) -> String {
        match self {
            Error::Throttled { .. } => "TooManyRequests".into(),
            Error::Transient { code, .. }
            | Error::NotFound { code, .. }
            | Error::Forbidden { code, .. }
            | Error::BadRequest { code, .. }
            | Error::Auth { code, .. } => code.clone(),
        }
    }

    /// True when trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Throttled { .. } | Error::Transient { .. })
    }
}
