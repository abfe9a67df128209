//! Standard Webhooks verification (https://www.standardwebhooks.com, the spec's
//! "Verifying webhook authenticity"): a sender signs `"{webhook-id}.{webhook-timestamp}.{body}"`
//! with HMAC-SHA256 under a shared secret given as `whsec_<base64>`, and sends
//! `webhook-signature: v1,<base64 MAC>` — several space-separated signatures are allowed (key
//! rotation), any one `v1` match is enough. A timestamp more than [`TOLERANCE_SECS`] away from
//! our clock, in either direction, is refused so a captured call cannot be replayed later.
//!
//! Everything here is a pure function of its inputs (the clock is a parameter): the decision
//! is a [`Verified`] source or a [`Refusal`], and the handler turns that into HTTP.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a `webhook-timestamp` may be from our clock, either way (the spec's 5 minutes).
pub const TOLERANCE_SECS: i64 = 5 * 60;
/// Longest `webhook-id` accepted.
pub const MAX_ID_LEN: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// A source system's secret key (the bytes behind `whsec_`). Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl Secret {
    /// Parse `whsec_<base64>` (the prefix is required: it is how the secret is handed out, and
    /// a value without it is more likely a paste of something else). The error never quotes
    /// the value.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let Some(b64) = text.trim().strip_prefix("whsec_") else {
            return Err("is not in the Standard Webhooks form `whsec_<base64>`".into());
        };
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| "is not valid base64 after `whsec_`".to_string())?;
        if bytes.len() < 16 {
            return Err(format!(
                "is {} bytes long; use a random secret of 24 to 64 bytes",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// The source systems allowed to call, each with its secret.
#[derive(Debug, Clone, Default)]
pub struct Sources(Vec<(String, Secret)>);

impl Sources {
    /// From `[webhook.secrets]`: names of 1–40 lower-case letters, digits, `-` or `_`, each
    /// secret in `whsec_` form. The first bad entry is named (never its value).
    pub fn from_settings<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a str)>,
    ) -> anyhow::Result<Sources> {
        let mut out = Vec::new();
        for (name, value) in entries {
            let ok_name = !name.is_empty()
                && name.len() <= 40
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            anyhow::ensure!(
                ok_name,
                "webhook.secrets: source name {:?} must be 1–40 lower-case letters, digits, '-' \
                 or '_'",
                crate::console::printable(name)
            );
            let secret = Secret::parse(value).map_err(|why| {
                anyhow::anyhow!(
                    "webhook.secrets.{name} (MFA_RESET__WEBHOOK__SECRETS__{}) {why}",
                    name.to_uppercase()
                )
            })?;
            out.push((name.clone(), secret));
        }
        Ok(Sources(out))
    }

    /// No source configured: every call is refused.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The configured source names.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The three headers of a call, as received (`None` = absent).
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    /// `webhook-id`
    pub id: Option<&'a str>,
    /// `webhook-timestamp` (Unix seconds)
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`
    pub signature: Option<&'a str>,
}

/// A call that verified: which source sent it, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The source whose secret made the matching signature.
    pub source: String,
    /// `webhook-id`, the idempotency key.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
}

/// Why a call is refused (all are answered 401, nothing is enqueued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `[webhook.secrets]` configured.
    #[error("no webhook source is configured on this console (webhook.secrets)")]
    NoSources,
    /// A header is missing or empty.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// `webhook-id` is too long or holds spaces or control characters.
    #[error("the webhook-id header must be 1–256 visible ASCII characters")]
    BadId,
    /// `webhook-timestamp` is not whole Unix seconds.
    #[error("the webhook-timestamp header must be Unix time in whole seconds")]
    BadTimestamp,
    /// Older than the tolerance.
    #[error("the webhook-timestamp is {0} s old; calls older than 300 s are refused (replay protection): check the sender's clock")]
    TooOld(i64),
    /// Further ahead than the tolerance.
    #[error("the webhook-timestamp is {0} s in the future; more than 300 s ahead is refused: check the sender's clock")]
    TooNew(i64),
    /// No `v1` signature matches any configured secret.
    #[error("no signature in webhook-signature matches: sign \"{{webhook-id}}.{{webhook-timestamp}}.{{body}}\" with HMAC-SHA256 and the source's whsec_ secret, sent as v1,<base64>")]
    BadSignature,
}

impl Refusal {
    /// A short machine-readable code for the JSON error.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoSources => "no_sources",
            Refusal::Missing(_) => "missing_header",
            Refusal::BadId => "bad_id",
            Refusal::BadTimestamp => "bad_timestamp",
            Refusal::TooOld(_) => "timestamp_too_old",
            Refusal::TooNew(_) => "timestamp_too_new",
            Refusal::BadSignature => "bad_signature",
        }
    }

    /// The header at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Refusal::NoSources | Refusal::BadSignature => "webhook-signature",
            Refusal::Missing(h) => h,
            Refusal::BadId => "webhook-id",
            Refusal::BadTimestamp | Refusal::TooOld(_) | Refusal::TooNew(_) => "webhook-timestamp",
        }
    }
}

/// Verify one call made at `now` (Unix seconds): the headers are present and well-formed, the
/// timestamp within [`TOLERANCE_SECS`], and one `v1` signature matches one source's secret
/// (compared in constant time, [`Mac::verify_slice`]).
pub fn verify(
    sources: &Sources,
    headers: Headers<'_>,
    body: &[u8],
    now: i64,
) -> Result<Verified, Refusal> {
    if sources.is_empty() {
        return Err(Refusal::NoSources);
    }
    fn present<'h>(v: Option<&'h str>, name: &'static str) -> Result<&'h str, Refusal> {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Refusal::Missing(name))
    }
    let id = present(headers.id, "webhook-id")?;
    let timestamp = present(headers.timestamp, "webhook-timestamp")?;
    let signature = present(headers.signature, "webhook-signature")?;
    if id.len() > MAX_ID_LEN || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Refusal::BadId);
    }
    let ts: i64 = timestamp.parse().map_err(|_| Refusal::BadTimestamp)?;
    if now - ts > TOLERANCE_SECS {
        return Err(Refusal::TooOld(now - ts));
    }
    if ts - now > TOLERANCE_SECS {
        return Err(Refusal::TooNew(ts - now));
    }
    let candidates: Vec<Vec<u8>> = signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    for (name, secret) in &sources.0 {
        let mut mac = secret.mac();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        for candidate in &candidates {
            if mac.clone().verify_slice(candidate).is_ok() {
                return Ok(Verified {
                    source: name.clone(),
                    id: id.to_string(),
                    timestamp: ts,
                });
            }
        }
    }
    Err(Refusal::BadSignature)
}

/// `v1,<base64>` for a call: what a sender puts in `webhook-signature`. Used by `serve`'s own
/// tests only through the spec's test vector; senders compute it themselves.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference libraries' signing vector
    // (standard-webhooks/standard-webhooks, libraries/go/webhook_test.go, TestWebhookSign).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sources() -> Sources {
        let name = "servicenow".to_string();
        Sources::from_settings([(&name, VECTOR_SECRET)]).unwrap()
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Headers<'a> {
        Headers {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn the_reference_vector_signs_and_verifies() {
        let secret = Secret::parse(VECTOR_SECRET).unwrap();
        assert_eq!(sign(&secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        let ts = VECTOR_TS.to_string();
        let ok = verify(
            &sources(),
            headers(VECTOR_ID, &ts, VECTOR_SIG),
            VECTOR_BODY,
            VECTOR_TS + 10,
        )
        .unwrap();
        assert_eq!(ok.source, "servicenow");
        assert_eq!(ok.id, VECTOR_ID);
    }

    #[test]
    fn any_one_of_several_signatures_may_match() {
        let ts = VECTOR_TS.to_string();
        let sig = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,xyz {VECTOR_SIG} v1,bm90LWJhc2U2NA"
        );
        assert!(verify(
            &sources(),
            headers(VECTOR_ID, &ts, &sig),
            VECTOR_BODY,
            VECTOR_TS
        )
        .is_ok());
    }

    #[test]
    fn a_changed_body_id_or_timestamp_breaks_the_signature() {
        let ts = VECTOR_TS.to_string();
        let refused = |id: &str, ts: &str, body: &[u8]| {
            verify(&sources(), headers(id, ts, VECTOR_SIG), body, VECTOR_TS)
        };
        assert_eq!(
            refused(VECTOR_ID, &ts, br#"{"test": 2432232315}"#),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            refused("msg_other", &ts, VECTOR_BODY),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            refused(VECTOR_ID, &(VECTOR_TS + 1).to_string(), VECTOR_BODY),
            Err(Refusal::BadSignature)
        );
        // A v2 (asymmetric) entry with the right bytes is not a v1 signature.
        let v2 = VECTOR_SIG.replacen("v1,", "v2,", 1);
        assert_eq!(
            verify(
                &sources(),
                headers(VECTOR_ID, &ts, &v2),
                VECTOR_BODY,
                VECTOR_TS
            ),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn the_tolerance_is_five_minutes_each_way() {
        let ts = VECTOR_TS.to_string();
        let at = |now| {
            verify(
                &sources(),
                headers(VECTOR_ID, &ts, VECTOR_SIG),
                VECTOR_BODY,
                now,
            )
        };
        assert!(at(VECTOR_TS + 300).is_ok());
        assert_eq!(at(VECTOR_TS + 301), Err(Refusal::TooOld(301)));
        assert!(at(VECTOR_TS - 300).is_ok());
        assert_eq!(at(VECTOR_TS - 301), Err(Refusal::TooNew(301)));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let ts = VECTOR_TS.to_string();
        let call = |h: Headers<'_>| verify(&sources(), h, VECTOR_BODY, VECTOR_TS);
        let mut h = headers(VECTOR_ID, &ts, VECTOR_SIG);
        h.id = None;
        assert_eq!(call(h), Err(Refusal::Missing("webhook-id")));
        let mut h = headers(VECTOR_ID, &ts, VECTOR_SIG);
        h.timestamp = Some(" ");
        assert_eq!(call(h), Err(Refusal::Missing("webhook-timestamp")));
        let mut h = headers(VECTOR_ID, &ts, VECTOR_SIG);
        h.signature = None;
        assert_eq!(call(h), Err(Refusal::Missing("webhook-signature")));
        assert_eq!(
            call(headers(VECTOR_ID, "1614265330.5", VECTOR_SIG)),
            Err(Refusal::BadTimestamp)
        );
        assert_eq!(call(headers("msg 1", &ts, VECTOR_SIG)), Err(Refusal::BadId));
        assert_eq!(
            verify(
                &Sources::default(),
                headers(VECTOR_ID, &ts, VECTOR_SIG),
                VECTOR_BODY,
                VECTOR_TS
            ),
            Err(Refusal::NoSources)
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_and_errors_never_quote_them() {
        let name = "jira".to_string();
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not*base64!",
            "whsec_c2hvcnQ=",
        ] {
            let err = Sources::from_settings([(&name, bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("MFA_RESET__WEBHOOK__SECRETS__JIRA"), "{err}");
            assert!(!err.contains(bad), "{err}");
        }
        let upper = "Jira".to_string();
        assert!(Sources::from_settings([(&upper, VECTOR_SECRET)]).is_err());
        assert_eq!(
            format!("{:?}", Secret::parse(VECTOR_SECRET).unwrap()),
            "Secret([REDACTED])"
        );
    }
}
