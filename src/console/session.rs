//! Signed cookies: the session of a signed-in person and the short-lived state of a sign-in
//! in progress.
//!
//! A cookie value is `base64url(JSON) "." base64url(HMAC-SHA256(purpose "\n" JSON))` under a
//! key drawn at start (so a restart of `serve` signs everyone out, and nothing a browser holds
//! is valid for another process). The contents are not secret (name, roles, an expiry, the CSRF
//! token the page already shows); the MAC makes them unforgeable. Cookies are `HttpOnly`,
//! `SameSite=Lax`, `Path=/`, and `Secure` unless the console is served over plain HTTP on a
//! loopback address (development, tests).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The session cookie.
pub const SESSION_COOKIE: &str = "mfa_session";
/// The sign-in-in-progress cookie.
pub const LOGIN_COOKIE: &str = "mfa_login";

/// A console role, from the id token's `roles` claim (Entra app roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Uploads and submits batches.
    Operator,
    /// Approves other people's batches.
    Approver,
    /// Reads batches, progress and reports.
    Viewer,
}

impl Role {
    /// The app role value (case-insensitive) of a claim, if it is one of ours.
    pub fn from_claim(value: &str) -> Option<Role> {
        match value.to_ascii_lowercase().as_str() {
            "operator" => Some(Role::Operator),
            "approver" => Some(Role::Approver),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
        }
    }
}

/// A signed-in person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Entra object id (`oid`): the identity recorded on the audit record.
    pub oid: String,
    /// `preferred_username` (the UPN).
    pub upn: String,
    /// Display name.
    pub name: String,
    /// The roles granted, ours only.
    pub roles: Vec<Role>,
    /// The synchronizer token every POST form must carry.
    pub csrf: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

impl Session {
    /// Does the person hold `role`? (Operators and approvers may also view.)
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
            || (role == Role::Viewer
                && self
                    .roles
                    .iter()
                    .any(|r| matches!(r, Role::Operator | Role::Approver)))
    }
}

/// A sign-in in progress: what the callback must find again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// `state` sent to the provider.
    pub state: String,
    /// `nonce` the id token must carry.
    pub nonce: String,
    /// PKCE code verifier.
    pub verifier: String,
    /// Where to go after signing in (a local path).
    pub return_to: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// Signs and checks cookie values.
#[derive(Clone)]
pub struct CookieKey([u8; 32]);

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey([REDACTED])")
    }
}

impl CookieKey {
    /// A random key.
    pub fn random() -> CookieKey {
        CookieKey(rand::random())
    }

    fn mac(&self, purpose: &str, json: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\n");
        mac.update(json);
        mac
    }

    /// The cookie value of `value` for `purpose` (the cookie name).
    pub fn seal<T: Serialize>(&self, purpose: &str, value: &T) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let tag = self.mac(purpose, &json).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The value inside a cookie, if its MAC verifies (constant time) for `purpose`.
    pub fn open<T: DeserializeOwned>(&self, purpose: &str, cookie: &str) -> Option<T> {
        let (body, tag) = cookie.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(body).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(purpose, &json).verify_slice(&tag).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure unless `insecure`;
/// `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: i64, insecure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        if insecure { "" } else { "; Secure" }
    )
}

/// A random token (32 bytes, base64url).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Constant-time equality of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            oid: "o".into(),
            upn: "a@contoso.com".into(),
            name: "A".into(),
            roles: vec![Role::Operator],
            csrf: "t".into(),
            exp: 1,
        }
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_purpose_and_unaltered() {
        let key = CookieKey::random();
        let sealed = key.seal(SESSION_COOKIE, &session());
        assert_eq!(
            key.open::<Session>(SESSION_COOKIE, &sealed),
            Some(session())
        );
        assert_eq!(key.open::<Session>(LOGIN_COOKIE, &sealed), None);
        assert_eq!(
            CookieKey::random().open::<Session>(SESSION_COOKIE, &sealed),
            None
        );
        // Promote oneself to approver: the JSON changes, the MAC no longer matches.
        let (_, tag) = sealed.split_once('.').unwrap();
        let mut forged = session();
        forged.roles.push(Role::Approver);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            key.open::<Session>(SESSION_COOKIE, &format!("{body}.{tag}")),
            None
        );
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_unless_told() {
        let c = set_cookie("n", "v", 60, false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.ends_with("; Secure"));
        assert!(!set_cookie("n", "v", 60, true).contains("Secure"));
    }

    #[test]
    fn roles_come_from_app_role_values_and_operators_may_view() {
        assert_eq!(Role::from_claim("Approver"), Some(Role::Approver));
        assert_eq!(Role::from_claim("admin"), None);
        assert!(session().has(Role::Viewer));
        assert!(!session().has(Role::Approver));
    }
}
