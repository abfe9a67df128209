//! The token endpoint (`POST /{tenant}/oauth2/v2.0/token`, client credentials by secret or
//! by certificate-signed client assertion), the store of issued tokens, and the bearer check
//! every Graph call goes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use percent_encoding::percent_decode_str;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::graph::paths::decode;
use crate::reply::{json_response, token_error};
use crate::throttle::lock;
use crate::Shared;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Entra refuses assertions valid for longer than this.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 600;

/// The certificate registered for the app: what client assertions are checked against.
#[derive(Clone)]
pub struct ClientCertificate {
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub x5t_s256: String,
    /// base64url SHA-1 of the DER (`x5t`).
    pub x5t: String,
    key: DecodingKey,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t_s256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Parse a PEM `CERTIFICATE` holding an RSA public key.
    pub fn from_pem(text: &str) -> anyhow::Result<ClientCertificate> {
        let block = pem::parse(text).map_err(|e| anyhow::anyhow!("certificate PEM: {e}"))?;
        if block.tag() != "CERTIFICATE" {
            anyhow::bail!("expected a PEM CERTIFICATE block, found {:?}", block.tag());
        }
        let der = block.contents();
        let rsa_key = rsa_public_key_of_certificate(der)
            .ok_or_else(|| anyhow::anyhow!("the certificate holds no RSA public key"))?;
        Ok(ClientCertificate {
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
            x5t: URL_SAFE_NO_PAD.encode(Sha1::digest(der)),
            key: DecodingKey::from_rsa_der(rsa_key),
        })
    }
}

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Walk Certificate → tbsCertificate → subjectPublicKeyInfo → the PKCS#1 RSAPublicKey bytes.
fn rsa_public_key_of_certificate(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = der_element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    // The optional explicit [0] version comes first in v3 certificates.
    if tag == 0xA0 {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = der_element(rest)?.2;
    }
    let (tag, spki, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after_algorithm) = der_element(spki)?;
    let (tag, bits, _) = der_element(after_algorithm)?;
    // BIT STRING whose first byte counts unused bits (0 for a key).
    if tag != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    Some(&bits[1..])
}

#[derive(Debug, Clone)]
struct Issued {
    app: String,
    expires: Instant,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// Not a token this simulator issued.
    Unknown,
    /// Issued but past its lifetime.
    Expired,
}

impl BearerError {
    /// The message Graph gives with `InvalidAuthenticationToken`.
    pub fn message(self) -> &'static str {
        match self {
            BearerError::Missing => "Access token is empty.",
            BearerError::Unknown => "IDX14100: JWT is not well formed, there are no dots (.).",
            BearerError::Expired => "Lifetime validation failed, the token is expired.",
        }
    }
}

/// Issued access tokens: opaque random strings remembered with their app and expiry.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: Mutex<HashMap<String, Issued>>,
}

impl TokenStore {
    /// Issue a token for `app` (tenant/client) valid for `ttl`.
    pub fn issue(&self, app: &str, ttl: Duration) -> String {
        let token: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(64)
            .map(char::from)
            .collect();
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        if tokens.len() > 10_000 {
            tokens.retain(|_, t| t.expires > now);
        }
        tokens.insert(
            token.clone(),
            Issued {
                app: app.to_string(),
                expires: now + ttl,
            },
        );
        token
    }

    /// Check an `Authorization` header; the token's app on success.
    pub fn check(&self, authorization: Option<&str>) -> Result<String, BearerError> {
        let value = authorization.ok_or(BearerError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(BearerError::Missing)?;
        let tokens = lock(&self.tokens);
        let issued = tokens.get(token).ok_or(BearerError::Unknown)?;
        if Instant::now() >= issued.expires {
            return Err(BearerError::Expired);
        }
        Ok(issued.app.clone())
    }

    /// Expire every issued token now (to exercise a client's 401 handling).
    pub fn expire_all(&self) {
        let now = Instant::now();
        for t in lock(&self.tokens).values_mut() {
            t.expires = now;
        }
    }
}

/// What the token endpoint needs to know.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Accepted tenant id.
    pub tenant_id: String,
    /// Accepted client id.
    pub client_id: String,
    /// Accepted secret.
    pub client_secret: String,
    /// Registered certificate, if any.
    pub certificate: Option<ClientCertificate>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
}

/// The app key tokens, throttling and stats are kept under.
pub fn app_key(tenant: &str, client: &str) -> String {
    format!("{}/{}", tenant.to_lowercase(), client.to_lowercase())
}

/// Parse an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// The token endpoint's handler, after the stages of [`crate::pipeline`] it goes through.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The route is `/{tenant}/oauth2/v2.0/token`: the tenant is the first segment.
    let raw_tenant = uri.path().trim_start_matches('/').split('/').next();
    let tenant = decode(raw_tenant.unwrap_or(""));
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| shared.addr.to_string(), str::to_string);
    let (response, issued) = token_endpoint(&shared.policy, &shared.tokens, &tenant, &host, &body);
    if issued {
        shared.stats.update(|s| s.tokens_issued += 1);
    }
    response
}

/// Answer `POST /{tenant}/oauth2/v2.0/token`: the response and whether a token was issued.
pub fn token_endpoint(
    policy: &TokenPolicy,
    store: &TokenStore,
    tenant: &str,
    host: &str,
    body: &[u8],
) -> (Response, bool) {
    match issue_token(policy, store, tenant, host, body) {
        Ok(response) => (response, true),
        Err(refusal) => (
            token_error(refusal.error, refusal.aadsts, &refusal.description),
            false,
        ),
    }
}

/// Why the token endpoint refused: becomes a 400 in Entra's error shape.
struct Refusal {
    error: &'static str,
    aadsts: u32,
    description: String,
}

fn refuse(error: &'static str, aadsts: u32, description: &str) -> Refusal {
    Refusal {
        error,
        aadsts,
        description: description.to_string(),
    }
}

fn issue_token(
    policy: &TokenPolicy,
    store: &TokenStore,
    tenant: &str,
    host: &str,
    body: &[u8],
) -> Result<Response, Refusal> {
    if !tenant.eq_ignore_ascii_case(&policy.tenant_id) {
        return Err(refuse(
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    let form = parse_form(body);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials" {
        return Err(refuse(
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        ));
    }
    let client_id = field("client_id");
    if !client_id.eq_ignore_ascii_case(&policy.client_id) {
        return Err(refuse(
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
        ));
    }
    let scope = field("scope");
    if !scope.ends_with("/.default") {
        return Err(refuse(
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        ));
    }
    if let Some(secret) = form.get("client_secret") {
        if *secret != policy.client_secret {
            return Err(refuse(
                "invalid_client",
                7000215,
                &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
            ));
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if field("client_assertion_type") != ASSERTION_TYPE {
            return Err(refuse(
                "invalid_request",
                700025,
                "Client assertion type is not supported; expected urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        let audiences = [
            format!("http://{host}/{tenant}/oauth2/v2.0/token"),
            format!("https://{host}/{tenant}/oauth2/v2.0/token"),
        ];
        verify_assertion(policy, assertion, &audiences)
            .map_err(|why| refuse("invalid_client", 700027, &why))?;
    } else {
        return Err(refuse(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    let ttl = policy.token_ttl.as_secs();
    let token = store.issue(&app_key(tenant, client_id), policy.token_ttl);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": ttl,
            "ext_expires_in": ttl,
            "access_token": token,
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    aud: Value,
    iss: String,
    sub: String,
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
}

/// Check a client assertion: its key id, signature, audience, issuer/subject and lifetime.
fn verify_assertion(
    policy: &TokenPolicy,
    assertion: &str,
    audiences: &[String],
) -> Result<(), String> {
    let certificate = policy.certificate.as_ref().ok_or_else(|| {
        "Client assertion failed signature validation: no certificate is registered for the application.".to_string()
    })?;
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|e| format!("Client assertion is not a well-formed JWT: {e}."))?;
    let key_matches = match header.alg {
        Algorithm::PS256 => header.x5t_s256.as_deref() == Some(certificate.x5t_s256.as_str()),
        Algorithm::RS256 => {
            header.x5t.as_deref() == Some(certificate.x5t.as_str())
                || header.x5t_s256.as_deref() == Some(certificate.x5t_s256.as_str())
        }
        other => {
            return Err(format!(
                "Client assertion uses unsupported algorithm {other:?}; use PS256 or RS256."
            ))
        }
    };
    if !key_matches {
        return Err("The certificate with identifier used to sign the client assertion is not registered on application.".into());
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_aud = false;
    validation.validate_nbf = true;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &certificate.key, &validation)
        .map_err(|e| format!("Client assertion failed signature validation ({e})."))?;
    let claims = data.claims;
    let aud_ok = match &claims.aud {
        Value::String(a) => audiences.contains(a),
        Value::Array(list) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        return Err(format!(
            "The audience claim value is invalid {}; expected {}.",
            claims.aud, audiences[0]
        ));
    }
    if !claims.iss.eq_ignore_ascii_case(&policy.client_id)
        || !claims.sub.eq_ignore_ascii_case(&policy.client_id)
    {
        return Err(
            "The issuer and subject of the client assertion must both be the client id.".into(),
        );
    }
    let now = chrono::Utc::now().timestamp();
    let start = claims.nbf.or(claims.iat).unwrap_or(now);
    if claims.exp - start > MAX_ASSERTION_LIFETIME_SECS {
        return Err("The client assertion is valid for longer than 10 minutes.".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent() {
        let form = parse_form(b"scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&a=b+c");
        assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
        assert_eq!(form["a"], "b c");
    }

    #[test]
    fn app_keys_are_case_insensitive() {
        assert_eq!(app_key("T", "C"), app_key("t", "c"));
    }

    #[test]
    fn the_test_certificate_parses() {
        let pem = include_str!("../../../tests/fixtures/client-cert.pem");
        let cert = ClientCertificate::from_pem(pem).unwrap();
        assert_eq!(cert.x5t_s256.len(), 43);
    }
}
