//! A minimal OpenID Connect provider in the shape of Microsoft Entra ID's v2.0 endpoints, so
//! a web sign-in (authorization code flow with PKCE) runs offline:
//!
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration`: the discovery document;
//! - `GET /{tenant}/discovery/v2.0/keys`: the JWKS (one RSA key, `kid`);
//! - `GET /{tenant}/oauth2/v2.0/authorize`: instead of Entra's sign-in pages, a test login form
//!   listing the tenant's users and the app roles to grant (`operator`, `approver`, `viewer`);
//!   its `POST` redirects to `redirect_uri` with `code` and `state` (or `error=access_denied`);
//! - `POST /{tenant}/oauth2/v2.0/token` with `grant_type=authorization_code` (routed here by
//!   [`crate::auth::token`]): redeems a code once, checks `client_id`, `redirect_uri` and the
//!   PKCE `code_verifier`, and answers an `id_token` signed RS256 with Entra's v2.0 claims
//!   (`iss` = `{base}/{tenant}/v2.0`, `aud` = client id, `oid`, `tid`, `sub`,
//!   `preferred_username`, `name`, `nonce`, `roles` when any were granted).
//!
//! What the simulator does not model: app registrations (any client id is accepted, the code is
//! bound to it; any redirect URI is accepted, the code is bound to it), consent, `prompt`,
//! `response_mode=form_post`, refresh tokens. Error codes follow Entra's where it has one
//! (AADSTS70008 expired code, AADSTS501481 bad code verifier, AADSTS50148 PKCE mismatch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::parse_form;
use crate::reply::{json_response, token_error};
use crate::throttle::lock;
use crate::Shared;

/// The app roles the login form offers.
pub const APP_ROLES: [&str; 3] = ["operator", "approver", "viewer"];
/// Entra's authorization codes live about 10 minutes.
const CODE_TTL: Duration = Duration::from_secs(600);
/// Lifetime of the id tokens issued.
const ID_TOKEN_TTL_SECS: i64 = 3600;
/// Users listed on the login form.
const FORM_USERS: usize = 50;

/// The provider's signing key and the codes it has issued.
pub(crate) struct Oidc {
    key: KeyPair,
    kid: String,
    n: String,
    e: String,
    codes: Mutex<HashMap<String, Grant>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a code stands for.
#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: Option<(String, String)>,
    user: usize,
    roles: Vec<String>,
    expires: Instant,
}

impl Oidc {
    /// A fresh RSA-2048 signing key.
    pub(crate) fn new() -> anyhow::Result<Oidc> {
        let key = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("generating the simulator's OIDC signing key"))?;
        let public = key.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(format!("{n}.{e}"))[..12]);
        Ok(Oidc {
            key,
            kid,
            n,
            e,
            codes: Mutex::default(),
        })
    }

    /// A compact JWS (RS256) of `claims`.
    fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow::anyhow!("RS256 signing failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

fn base_url(shared: &Shared, headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| shared.addr.to_string(), str::to_string);
    format!("http://{host}")
}

fn issuer(base: &str, tenant: &str) -> String {
    format!("{base}/{tenant}/v2.0")
}

/// AADSTS90002 for a tenant that is not the simulator's.
// The refusal is the answer itself, built once and returned at once.
#[allow(clippy::result_large_err)]
fn check_tenant(shared: &Shared, tenant: &str) -> Result<(), Response> {
    if tenant.eq_ignore_ascii_case(&shared.policy.tenant_id) {
        Ok(())
    } else {
        Err(token_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        ))
    }
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`
pub(crate) async fn discovery(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_tenant(&shared, &tenant) {
        return r;
    }
    let base = base_url(&shared, &headers);
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer(&base, &tenant),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "nonce", "oid", "tid", "name", "preferred_username", "roles"],
            "tenant_region_scope": "WW",
        }),
    )
}

/// `GET /{tenant}/discovery/v2.0/keys`
pub(crate) async fn keys(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
) -> Response {
    if let Err(r) = check_tenant(&shared, &tenant) {
        return r;
    }
    let oidc = &shared.oidc;
    json_response(
        StatusCode::OK,
        &json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": oidc.kid, "n": oidc.n, "e": oidc.e,
        }]}),
    )
}

/// The authorize request's parameters, checked.
struct AuthorizeRequest {
    params: HashMap<String, String>,
    redirect_uri: String,
    state: Option<String>,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><title>Sign-in error</title><h1>Sign-in error</h1><p>{}</p>",
            html_escape(message)
        )),
    )
        .into_response()
}

/// A redirect to the client with `error` (after the redirect URI is known to be usable).
fn redirect_error(req: &AuthorizeRequest, error: &str, description: &str) -> Response {
    let mut url = format!(
        "{}{}error={}&error_description={}",
        req.redirect_uri,
        if req.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        },
        enc(error),
        enc(description)
    );
    if let Some(state) = &req.state {
        url.push_str(&format!("&state={}", enc(state)));
    }
    redirect(&url)
}

fn redirect(url: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Check the parameters both the form and its submission carry.
#[allow(clippy::result_large_err)]
fn check_authorize(params: HashMap<String, String>) -> Result<AuthorizeRequest, Response> {
    let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let Some(redirect_uri) = get("redirect_uri") else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'.",
        ));
    };
    if !(redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://")) {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS50011: The redirect URI specified in the request is not a valid URL.",
        ));
    }
    if get("client_id").is_none() {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        ));
    }
    let req = AuthorizeRequest {
        state: get("state"),
        redirect_uri,
        params,
    };
    let get = |k: &str| req.params.get(k).filter(|v| !v.is_empty()).cloned();
    if get("response_type").as_deref() != Some("code") {
        return Err(redirect_error(
            &req,
            "unsupported_response_type",
            "AADSTS700054: response_type 'code' is the only one this provider supports.",
        ));
    }
    if !get("scope")
        .unwrap_or_default()
        .split(' ')
        .any(|s| s == "openid")
    {
        return Err(redirect_error(
            &req,
            "invalid_scope",
            "The scope must include 'openid' for a sign-in.",
        ));
    }
    if let Some(mode) = get("response_mode") {
        if mode != "query" {
            return Err(redirect_error(
                &req,
                "invalid_request",
                "The simulator answers with response_mode=query only.",
            ));
        }
    }
    match (
        get("code_challenge"),
        get("code_challenge_method").as_deref(),
    ) {
        (None, _) => {}
        (Some(_), None | Some("plain" | "S256")) => {}
        (Some(_), Some(_)) => {
            return Err(redirect_error(
                &req,
                "invalid_request",
                "AADSTS501491: Invalid code_challenge_method.",
            ))
        }
    }
    Ok(req)
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: the test login form.
pub(crate) async fn authorize_form(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = check_tenant(&shared, &tenant) {
        return r;
    }
    let params = parse_form(query.unwrap_or_default().as_bytes());
    let req = match check_authorize(params) {
        Ok(req) => req,
        Err(response) => return response,
    };
    let users: Vec<(String, String)> = {
        let tenant = lock(&shared.tenant);
        tenant
            .users
            .iter()
            .take(FORM_USERS)
            .map(|u| (u.user_principal_name.clone(), u.display_name.clone()))
            .collect()
    };
    let mut hidden = String::new();
    let mut keys: Vec<_> = req.params.iter().collect();
    keys.sort();
    for (k, v) in keys {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
            html_escape(k),
            html_escape(v)
        ));
    }
    let options: String = users
        .iter()
        .map(|(upn, name)| {
            format!(
                "<option value=\"{}\">{} ({})</option>\n",
                html_escape(upn),
                html_escape(name),
                html_escape(upn)
            )
        })
        .collect();
    let roles: String = APP_ROLES
        .iter()
        .map(|r| {
            format!("<label><input type=\"checkbox\" name=\"role\" value=\"{r}\"> {r}</label>\n")
        })
        .collect();
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Sign in (graph-sim)</title></head>\n\
         <body><h1>Sign in to the simulated tenant</h1>\n\
         <form method=\"post\" action=\"/{tenant}/oauth2/v2.0/authorize\">\n{hidden}\
         <p><label>User <select name=\"login\">\n{options}</select></label></p>\n\
         <p>App roles: {roles}</p>\n\
         <p><button type=\"submit\" name=\"decision\" value=\"allow\">Sign in</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"cancel\">Cancel</button></p>\n\
         </form></body></html>\n",
        tenant = html_escape(&tenant),
    ))
    .into_response()
}

/// `POST /{tenant}/oauth2/v2.0/authorize`: the form's submission.
pub(crate) async fn authorize_submit(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = check_tenant(&shared, &tenant) {
        return r;
    }
    // Repeated `role` fields: parse_form keeps one value per name, so collect them here.
    let roles: Vec<String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.strip_prefix("role="))
        .filter(|r| APP_ROLES.contains(r))
        .map(str::to_string)
        .collect();
    let params = parse_form(&body);
    let req = match check_authorize(params) {
        Ok(req) => req,
        Err(response) => return response,
    };
    let get = |k: &str| req.params.get(k).filter(|v| !v.is_empty()).cloned();
    if get("decision").as_deref() != Some("allow") {
        return redirect_error(
            &req,
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let user = {
        let tenant = lock(&shared.tenant);
        get("login").and_then(|login| tenant.find(&login))
    };
    let Some(user) = user else {
        return redirect_error(
            &req,
            "access_denied",
            "AADSTS50034: The user account does not exist in this directory.",
        );
    };
    let code: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect();
    let grant = Grant {
        client_id: get("client_id").unwrap_or_default(),
        redirect_uri: req.redirect_uri.clone(),
        nonce: get("nonce"),
        challenge: get("code_challenge").map(|c| {
            (
                c,
                get("code_challenge_method").unwrap_or_else(|| "plain".into()),
            )
        }),
        user,
        roles,
        expires: Instant::now() + CODE_TTL,
    };
    {
        let mut codes = lock(&shared.oidc.codes);
        let now = Instant::now();
        codes.retain(|_, g| g.expires > now);
        codes.insert(code.clone(), grant);
    }
    let mut url = format!(
        "{}{}code={}",
        req.redirect_uri,
        if req.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        },
        enc(&code)
    );
    if let Some(state) = &req.state {
        url.push_str(&format!("&state={}", enc(state)));
    }
    redirect(&url)
}

/// `grant_type=authorization_code` at the token endpoint.
pub(crate) fn redeem(shared: &Shared, tenant: &str, base: &str, body: &[u8]) -> Response {
    if let Err(r) = check_tenant(shared, tenant) {
        return r;
    }
    let form = parse_form(body);
    let get = |k: &str| form.get(k).filter(|v| !v.is_empty()).cloned();
    let invalid_grant = |aadsts: u32, description: &str| {
        token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            aadsts,
            description,
        )
    };
    let Some(code) = get("code") else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'code'.",
        );
    };
    // A code is redeemed at most once, whatever the outcome.
    let Some(grant) = lock(&shared.oidc.codes).remove(&code) else {
        return invalid_grant(
            54005,
            "OAuth2 Authorization code was already redeemed or is not valid.",
        );
    };
    if grant.expires <= Instant::now() {
        return invalid_grant(
            70008,
            "The provided authorization code or refresh token has expired.",
        );
    }
    if get("client_id").as_deref() != Some(grant.client_id.as_str()) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700016,
            "The client_id does not match the one the code was issued to.",
        );
    }
    if get("redirect_uri").as_deref() != Some(grant.redirect_uri.as_str()) {
        return invalid_grant(
            50148,
            "The redirect_uri does not match the one the authorization code was requested with.",
        );
    }
    if let Some((challenge, method)) = &grant.challenge {
        let Some(verifier) = get("code_verifier") else {
            return invalid_grant(
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        };
        let computed = if method == "S256" {
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
        } else {
            verifier
        };
        if &computed != challenge {
            return invalid_grant(
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
    }
    let (oid, upn, name) = {
        let tenant = lock(&shared.tenant);
        let u = &tenant.users[grant.user];
        (
            u.id.clone(),
            u.user_principal_name.clone(),
            u.display_name.clone(),
        )
    };
    let now = chrono::Utc::now().timestamp();
    let sub = URL_SAFE_NO_PAD.encode(&Sha256::digest(format!("{oid}\n{}", grant.client_id))[..24]);
    let mut claims = json!({
        "aud": grant.client_id,
        "iss": issuer(base, tenant),
        "iat": now,
        "nbf": now,
        "exp": now + ID_TOKEN_TTL_SECS,
        "name": name,
        "oid": oid,
        "preferred_username": upn,
        "sub": sub,
        "tid": shared.policy.tenant_id,
        "ver": "2.0",
    });
    if let Some(nonce) = grant.nonce {
        claims["nonce"] = nonce.into();
    }
    if !grant.roles.is_empty() {
        claims["roles"] = grant.roles.into();
    }
    let id_token = match shared.oidc.sign(&claims) {
        Ok(t) => t,
        Err(e) => {
            return token_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                0,
                &e.to_string(),
            )
        }
    };
    let access_token: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "scope": "openid profile",
            "expires_in": ID_TOKEN_TTL_SECS,
            "access_token": access_token,
            "id_token": id_token,
        }),
    )
}

/// Is this token request an authorization-code redemption?
pub(crate) fn is_code_grant(body: &[u8]) -> bool {
    parse_form(body).get("grant_type").map(String::as_str) == Some("authorization_code")
}

/// The base URL the token endpoint was called on.
pub(crate) fn base_of(shared: &Shared, headers: &HeaderMap) -> String {
    base_url(shared, headers)
}
