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
use serde::{Deserialize, Serialize};
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
    /// Issued while admin consent was granted: the token carries the app's `roles`.
    roles: bool,
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

fn bearer_token(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl TokenStore {
    /// Issue a token for `app` (tenant/client) valid for `ttl`; `roles` says whether it
    /// carries the app's application permissions (admin consent granted).
    pub fn issue(&self, app: &str, ttl: Duration, roles: bool) -> String {
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
                roles,
            },
        );
        token
    }

    /// Check an `Authorization` header; the token's app on success.
    pub fn check(&self, authorization: Option<&str>) -> Result<String, BearerError> {
        let token = authorization
            .and_then(bearer_token)
            .ok_or(BearerError::Missing)?;
        let tokens = lock(&self.tokens);
        let issued = tokens.get(token).ok_or(BearerError::Unknown)?;
        if Instant::now() >= issued.expires {
            return Err(BearerError::Expired);
        }
        Ok(issued.app.clone())
    }

    /// Does the token in this `Authorization` header carry the app's roles? A token issued
    /// without admin consent has none, and Graph refuses everything it is used for.
    pub fn has_roles(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(bearer_token)
            .and_then(|t| lock(&self.tokens).get(t).map(|i| i.roles))
            .unwrap_or(false)
    }

    /// Expire every issued token now (to exercise a client's 401 handling).
    pub fn expire_all(&self) {
        let now = Instant::now();
        for t in lock(&self.tokens).values_mut() {
            t.expires = now;
        }
    }
}

/// What the token endpoint needs to know that never changes.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Accepted tenant id.
    pub tenant_id: String,
    /// Accepted client id.
    pub client_id: String,
    /// Registered certificate, if any.
    pub certificate: Option<ClientCertificate>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
}

/// A transient failure of the token endpoint, as Entra answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFault {
    /// `temporarily_unavailable`, 503: the service is too busy; retry.
    TemporarilyUnavailable,
    /// `server_error`, 500: an error inside the service; retry.
    ServerError,
}

/// The app registration and its service principal as Entra holds them: which credentials the
/// token endpoint accepts, and what issued tokens may do in Graph. `GET /_sim/app` shows it,
/// `POST /_sim/app` changes it (so a test can break the app and fix it while a batch runs).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppState {
    /// The client secret the app accepts. Another value is refused with 401 `invalid_client`
    /// AADSTS7000215; not shown by `GET /_sim/app`.
    #[serde(skip_serializing)]
    pub client_secret: String,
    /// The secret has passed its end date: 401 `invalid_client` AADSTS7000222.
    pub secret_expired: bool,
    /// The certificate is registered on the app; otherwise every client assertion is refused
    /// with 401 `invalid_client` AADSTS700027.
    pub certificate_registered: bool,
    /// The service principal is disabled: 400 `unauthorized_client` AADSTS7000112.
    pub disabled: bool,
    /// The tenant exists (in this cloud); otherwise 400 `invalid_request` AADSTS90002.
    pub tenant_found: bool,
    /// Admin consent was granted to the app's application permissions. Without it Entra still
    /// issues a token, with no `roles`, and Graph refuses every call made with it
    /// (403 `Authorization_RequestDenied`).
    pub admin_consent: bool,
    /// `RoleManagement.Read.Directory` is granted: the role-management API answers (403
    /// otherwise), and directory roles in `transitiveMemberOf` are readable (otherwise they
    /// come with only `@odata.type` and `id`).
    pub role_management_read: bool,
    /// `User.Read.All` is granted: `GET /users/{u}` answers (403 otherwise), and users listed
    /// as group members are readable (otherwise only `@odata.type` and `id`).
    pub user_read: bool,
    /// The next `token_faults` token requests fail with this transient error.
    pub token_fault: Option<TokenFault>,
    /// How many token requests are still to fail with `token_fault`.
    pub token_faults: u32,
}

impl AppState {
    /// A healthy app accepting `client_secret`.
    pub fn new(client_secret: &str) -> AppState {
        AppState {
            client_secret: client_secret.to_string(),
            secret_expired: false,
            certificate_registered: true,
            disabled: false,
            tenant_found: true,
            admin_consent: true,
            role_management_read: true,
            user_read: true,
            token_fault: None,
            token_faults: 0,
        }
    }

    /// Apply the fields `patch` sets.
    pub fn apply(&mut self, patch: AppPatch) {
        let AppPatch {
            client_secret,
            secret_expired,
            certificate_registered,
            disabled,
            tenant_found,
            admin_consent,
            role_management_read,
            user_read,
            token_fault,
            token_faults,
        } = patch;
        if let Some(v) = client_secret {
            self.client_secret = v;
        }
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = $field { self.$field = v; })*};
        }
        set!(
            secret_expired,
            certificate_registered,
            disabled,
            tenant_found,
            admin_consent,
            role_management_read,
            user_read,
            token_faults
        );
        if let Some(fault) = token_fault {
            self.token_fault = fault;
        }
    }
}

/// A change to [`AppState`]: the fields present are set (`POST /_sim/app`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppPatch {
    /// See [`AppState::client_secret`].
    pub client_secret: Option<String>,
    /// See [`AppState::secret_expired`].
    pub secret_expired: Option<bool>,
    /// See [`AppState::certificate_registered`].
    pub certificate_registered: Option<bool>,
    /// See [`AppState::disabled`].
    pub disabled: Option<bool>,
    /// See [`AppState::tenant_found`].
    pub tenant_found: Option<bool>,
    /// See [`AppState::admin_consent`].
    pub admin_consent: Option<bool>,
    /// See [`AppState::role_management_read`].
    pub role_management_read: Option<bool>,
    /// See [`AppState::user_read`].
    pub user_read: Option<bool>,
    /// See [`AppState::token_fault`] (`null` clears it).
    #[serde(default, deserialize_with = "present")]
    pub token_fault: Option<Option<TokenFault>>,
    /// See [`AppState::token_faults`].
    pub token_faults: Option<u32>,
}

/// A field that is present (even as `null`) deserializes to `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
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
    if crate::oidc::is_code_grant(&body) {
        let base = crate::oidc::base_of(&shared, &headers);
        return crate::oidc::redeem(&shared, &tenant, &base, &body);
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| shared.addr.to_string(), str::to_string);
    let (response, issued) = {
        let mut app = lock(&shared.app);
        token_endpoint(
            &shared.policy,
            &mut app,
            &shared.tokens,
            &tenant,
            &host,
            &body,
        )
    };
    if issued {
        shared.stats.update(|s| s.tokens_issued += 1);
    }
    response
}

/// Answer `POST /{tenant}/oauth2/v2.0/token` for an app in state `app`: the response and
/// whether a token was issued.
pub fn token_endpoint(
    policy: &TokenPolicy,
    app: &mut AppState,
    store: &TokenStore,
    tenant: &str,
    host: &str,
    body: &[u8],
) -> (Response, bool) {
    match issue_token(policy, app, store, tenant, host, body) {
        Ok(response) => (response, true),
        Err(refusal) => (
            token_error(
                refusal.status,
                refusal.error,
                refusal.aadsts,
                &refusal.description,
            ),
            false,
        ),
    }
}

/// Why the token endpoint refused, in Entra's error shape.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    aadsts: u32,
    description: String,
}

/// A refusal answered 400 (Entra's usual status for token errors).
fn refuse(error: &'static str, aadsts: u32, description: &str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error,
        aadsts,
        description: description.to_string(),
    }
}

/// Client authentication failed: `invalid_client`, answered 401 (RFC 6749 §5.2; Entra
/// answers a wrong or expired secret this way).
fn refuse_client(aadsts: u32, description: &str) -> Refusal {
    Refusal {
        status: StatusCode::UNAUTHORIZED,
        ..refuse("invalid_client", aadsts, description)
    }
}

fn issue_token(
    policy: &TokenPolicy,
    app: &mut AppState,
    store: &TokenStore,
    tenant: &str,
    host: &str,
    body: &[u8],
) -> Result<Response, Refusal> {
    if let Some(fault) = app.token_fault.filter(|_| app.token_faults > 0) {
        app.token_faults -= 1;
        return Err(match fault {
            TokenFault::TemporarilyUnavailable => Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..refuse(
                    "temporarily_unavailable",
                    90006,
                    "The service is temporarily unavailable. Please try again later.",
                )
            },
            TokenFault::ServerError => Refusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                ..refuse(
                    "server_error",
                    50000,
                    "There was an error issuing a token or an issue with our sign-in service.",
                )
            },
        });
    }
    if !app.tenant_found || !tenant.eq_ignore_ascii_case(&policy.tenant_id) {
        return Err(refuse(
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
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
        if *secret != app.client_secret {
            return Err(refuse_client(
                7000215,
                &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
            ));
        }
        if app.secret_expired {
            return Err(refuse_client(
                7000222,
                &format!("The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."),
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
        if !app.certificate_registered {
            return Err(refuse_client(
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on application.",
            ));
        }
        let audiences = [
            format!("http://{host}/{tenant}/oauth2/v2.0/token"),
            format!("https://{host}/{tenant}/oauth2/v2.0/token"),
        ];
        verify_assertion(policy, assertion, &audiences)
            .map_err(|why| refuse_client(700027, &why))?;
    } else {
        return Err(refuse_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    if app.disabled {
        return Err(refuse(
            "unauthorized_client",
            7000112,
            &format!("Application '{client_id}'(mfa-reset) is disabled."),
        ));
    }
    let ttl = policy.token_ttl.as_secs();
    let token = store.issue(
        &app_key(tenant, client_id),
        policy.token_ttl,
        app.admin_consent,
    );
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
