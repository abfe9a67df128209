//! Sign-in with Microsoft Entra ID: OpenID Connect authorization code flow with PKCE
//! (RFC 7636, S256), validated by hand with `jsonwebtoken` (no `openidconnect` crate: it pulls
//! in `rsa`, RUSTSEC-2023-0071).
//!
//! `GET /login` draws `state`, `nonce` and a PKCE verifier, keeps them in a signed, short-lived
//! cookie and redirects to the provider's `authorization_endpoint` (from its discovery
//! document). `GET /auth/callback` checks `state` against the cookie, redeems the code at the
//! `token_endpoint` with the verifier (and the client secret, when configured), then checks the
//! id token: RS256 signature by a key of the provider's JWKS (fetched again when an unknown
//! `kid` appears), `iss` = the configured issuer, `aud` = our client id, `exp`/`nbf` (60 s
//! leeway), and `nonce` = ours. The person's roles are the token's `roles` claim (app roles
//! `operator`, `approver`, `viewer`; others ignored). The session is a signed cookie
//! ([`super::session`]).

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::pages;
use super::session::{
    cookie, random_token, same_token, set_cookie, LoginState, Role, Session, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use super::Console;

/// A sign-in must come back within this many seconds.
const LOGIN_TTL_SECS: i64 = 600;

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where the browser is sent.
    pub authorization_endpoint: String,
    /// Where codes are redeemed.
    pub token_endpoint: String,
    /// The signing keys.
    pub jwks_uri: String,
}

/// The provider as the console knows it: discovery and keys, fetched on first use.
#[derive(Debug, Default)]
pub struct Provider {
    discovery: tokio::sync::OnceCell<Discovery>,
    keys: tokio::sync::RwLock<Option<JwkSet>>,
}

/// Is `url` https, or http to a loopback host?
pub fn https_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(h, port)| !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

impl Provider {
    async fn discovery(&self, console: &Console) -> anyhow::Result<&Discovery> {
        self.discovery
            .get_or_try_init(|| async {
                let issuer = console.settings.console.oidc_issuer.trim_end_matches('/');
                let url = format!("{issuer}/.well-known/openid-configuration");
                let d: Discovery = console
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .with_context(|| format!("fetching {url}"))?
                    .json()
                    .await
                    .with_context(|| format!("reading {url}"))?;
                anyhow::ensure!(
                    d.issuer.trim_end_matches('/') == issuer,
                    "the provider's discovery document names the issuer {:?}, not the configured \
                     console.oidc_issuer {issuer:?}",
                    d.issuer
                );
                for endpoint in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
                    anyhow::ensure!(
                        https_or_loopback(endpoint),
                        "the provider's endpoint {endpoint} is not https"
                    );
                }
                Ok(d)
            })
            .await
    }

    /// The key with `kid`, fetching the JWKS again when it is not known (key rollover).
    async fn key(&self, console: &Console, kid: &str) -> anyhow::Result<DecodingKey> {
        if let Some(set) = self.keys.read().await.as_ref() {
            if let Some(jwk) = set.find(kid) {
                return Ok(DecodingKey::from_jwk(jwk)?);
            }
        }
        let discovery = self.discovery(console).await?;
        let set: JwkSet = console
            .http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("fetching {}", discovery.jwks_uri))?
            .json()
            .await
            .context("reading the provider's keys")?;
        let key = set
            .find(kid)
            .map(DecodingKey::from_jwk)
            .transpose()?
            .with_context(|| {
                format!("the id token's key {kid:?} is not among the provider's keys")
            })?;
        *self.keys.write().await = Some(set);
        Ok(key)
    }
}

/// Where the provider sends the browser back.
fn redirect_uri(console: &Console) -> String {
    format!("{}/auth/callback", console.public_url)
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// `?return_to=` for `/login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// `GET /login`
pub async fn login(State(console): State<Arc<Console>>, Query(q): Query<LoginQuery>) -> Response {
    if console.settings.console.oidc_issuer.is_empty() {
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is not configured: set console.oidc_issuer and console.oidc_client_id.",
        );
    }
    let discovery = match console.provider.discovery(&console).await {
        Ok(d) => d,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "the sign-in provider is unreachable");
            return pages::error(
                StatusCode::BAD_GATEWAY,
                "The sign-in provider cannot be reached; try again in a moment.",
            );
        }
    };
    // Only a local path: an open redirect would let a link send a signed-in person anywhere.
    let return_to = q
        .return_to
        .filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\'))
        .unwrap_or_else(|| "/".into());
    let state = LoginState {
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
        return_to,
        exp: chrono::Utc::now().timestamp() + LOGIN_TTL_SECS,
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(state.verifier.as_bytes()));
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let url = format!(
        "{}?client_id={}&response_type=code&response_mode=query&scope={}&redirect_uri={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        discovery.authorization_endpoint,
        enc(&console.settings.console.oidc_client_id),
        enc("openid profile"),
        enc(&redirect_uri(&console)),
        enc(&state.state),
        enc(&state.nonce),
        challenge,
    );
    let cookie_value = console.cookies.seal(LOGIN_COOKIE, &state);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url),
            (
                header::SET_COOKIE,
                set_cookie(
                    LOGIN_COOKIE,
                    &cookie_value,
                    LOGIN_TTL_SECS,
                    console.insecure_cookies,
                ),
            ),
        ],
    )
        .into_response()
}

/// What the provider sends back.
#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The claims the console reads.
#[derive(Debug, Deserialize)]
struct IdClaims {
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    sub: String,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    id_token: String,
}

/// `GET /auth/callback`
pub async fn callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Response {
    let clear_login = set_cookie(LOGIN_COOKIE, "", 0, console.insecure_cookies);
    let fail = |status: StatusCode, message: &str| {
        let mut response = pages::error(status, message);
        if let Ok(v) = clear_login.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        response
    };
    if let Some(error) = cb.error {
        let description = cb.error_description.unwrap_or_default();
        return fail(
            StatusCode::UNAUTHORIZED,
            &format!("Sign-in was not completed: {error} {description}"),
        );
    }
    let Some(login) = cookie(&headers, LOGIN_COOKIE)
        .and_then(|c| console.cookies.open::<LoginState>(LOGIN_COOKIE, c))
        .filter(|l| l.exp > chrono::Utc::now().timestamp())
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started here or took too long: sign in again.",
        );
    };
    let (Some(code), Some(state)) = (cb.code, cb.state) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "The provider sent no code or state.",
        );
    };
    if !same_token(&state, &login.state) {
        return fail(
            StatusCode::BAD_REQUEST,
            "The sign-in state does not match (a forged or crossed sign-in): sign in again.",
        );
    }
    let session = match redeem(&console, &code, &login).await {
        Ok(session) => session,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "a sign-in was refused");
            return fail(
                StatusCode::UNAUTHORIZED,
                &format!("Sign-in refused: {err:#}"),
            );
        }
    };
    tracing::info!(upn = %super::printable(&session.upn), oid = %session.oid, roles = ?session.roles, "signed in");
    super::audit::record(
        &console,
        &session,
        "signed_in",
        None,
        serde_json::Value::Null,
    )
    .await;
    let value = console.cookies.seal(SESSION_COOKIE, &session);
    let max_age = session.exp - chrono::Utc::now().timestamp();
    let mut response = redirect(&login.return_to);
    for c in [
        set_cookie(SESSION_COOKIE, &value, max_age, console.insecure_cookies),
        clear_login,
    ] {
        if let Ok(v) = c.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// Redeem the code and check the id token: the session it opens.
async fn redeem(console: &Console, code: &str, login: &LoginState) -> anyhow::Result<Session> {
    let settings = &console.settings.console;
    let discovery = console.provider.discovery(console).await?;
    let redirect = redirect_uri(console);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("client_id", settings.oidc_client_id.as_str()),
        ("code_verifier", login.verifier.as_str()),
    ];
    let secret = settings
        .oidc_client_secret
        .as_ref()
        .map(|s| s.expose_secret().to_string());
    if let Some(secret) = &secret {
        form.push(("client_secret", secret.as_str()));
    }
    let response = console
        .http
        .post(&discovery.token_endpoint)
        .form(&form)
        .send()
        .await
        .context("calling the provider's token endpoint")?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        anyhow::bail!(
            "the provider refused the code ({status}): {}",
            body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no reason given")
        );
    }
    let answer: TokenAnswer = response.json().await.context("reading the token answer")?;
    let header = jsonwebtoken::decode_header(&answer.id_token).context("the id token")?;
    anyhow::ensure!(
        header.alg == Algorithm::RS256,
        "the id token is signed with {:?}, not RS256",
        header.alg
    );
    let kid = header.kid.context("the id token names no key (kid)")?;
    let key = console.provider.key(console, &kid).await?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[discovery.issuer.as_str()]);
    validation.set_audience(&[settings.oidc_client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 60;
    let claims = jsonwebtoken::decode::<IdClaims>(&answer.id_token, &key, &validation)
        .context("the id token does not verify")?
        .claims;
    anyhow::ensure!(
        claims
            .nonce
            .as_deref()
            .is_some_and(|n| same_token(n, &login.nonce)),
        "the id token's nonce is not the one this sign-in sent (a replayed token)"
    );
    let mut roles: Vec<Role> = claims
        .roles
        .iter()
        .filter_map(|r| Role::from_claim(r))
        .collect();
    roles.sort();
    roles.dedup();
    Ok(Session {
        oid: claims.oid.unwrap_or_else(|| claims.sub.clone()),
        upn: claims.preferred_username.unwrap_or_default(),
        name: claims.name.unwrap_or_default(),
        roles,
        csrf: random_token(),
        exp: chrono::Utc::now().timestamp() + settings.session_lifetime.as_secs() as i64,
    })
}

/// The session of a request, if its cookie verifies and has not expired.
pub fn session_of(console: &Console, headers: &HeaderMap) -> Option<Session> {
    cookie(headers, SESSION_COOKIE)
        .and_then(|c| console.cookies.open::<Session>(SESSION_COOKIE, c))
        .filter(|s| s.exp > chrono::Utc::now().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted_for_the_provider() {
        assert!(https_or_loopback(
            "https://login.microsoftonline.com/t/v2.0"
        ));
        assert!(https_or_loopback("http://127.0.0.1:8080/t/v2.0"));
        assert!(https_or_loopback("http://localhost/t"));
        assert!(!https_or_loopback("http://login.example.com/t"));
        assert!(!https_or_loopback("http://127.0.0.1.evil.com/t"));
        assert!(!https_or_loopback("ftp://127.0.0.1/"));
    }
}
