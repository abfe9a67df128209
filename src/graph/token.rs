//! Client-credentials tokens for Graph (application permissions), by client secret or by
//! certificate (a signed client assertion), cached and renewed before they expire.
//!
//! Single-flight: the cache sits behind an async `RwLock`; a task that finds the token stale
//! takes the write lock, checks again, and fetches, so a thousand tasks needing a token make
//! one request. On a 401, [`TokenProvider::invalidate`] drops the token only if it is still the
//! one that was refused, so a burst of 401s leads to exactly one renewal.
//!
//! Secrets and tokens are [`SecretString`]s; nothing here logs or `Debug`-prints them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use tokio::time::Instant;

use super::error::{classify_token_error, from_transport, AppFault, Error};
use crate::config::GraphSettings;

/// Lifetime of a client assertion (Entra accepts up to 10 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the app proves who it is.
enum Credential {
    /// `client_secret`.
    Secret(SecretString),
    /// A certificate registered on the app and its private key: signs client assertions.
    Certificate {
        key: EncodingKey,
        /// base64url(SHA-256(certificate DER)), the JWT header `x5t#S256`.
        x5t_s256: String,
    },
}

/// An access token and the generation it belongs to (for [`TokenProvider::invalidate`]).
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    generation: u64,
}

impl AccessToken {
    /// The bearer token, for the `Authorization` header only.
    pub fn secret(&self) -> &str {
        self.value.expose_secret()
    }

    /// Which fetch produced it.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(generation {}, [REDACTED])", self.generation)
    }
}

struct Cached {
    token: AccessToken,
    renew_at: Instant,
}

/// Gets and caches access tokens.
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: Credential,
    renew_before: Duration,
    cache: RwLock<Option<Cached>>,
    generations: AtomicU64,
    fetches: AtomicU64,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match self.credential {
            Credential::Secret(_) => "client secret",
            Credential::Certificate { .. } => "certificate",
        };
        f.debug_struct("TokenProvider")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("credential", &credential)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl TokenProvider {
    /// A provider for `graph`'s tenant, app and credential, sending through `http`.
    /// Fails when no usable credential is configured or the certificate files are unusable.
    pub fn new(graph: &GraphSettings, http: reqwest::Client) -> anyhow::Result<TokenProvider> {
        anyhow::ensure!(
            !graph.tenant_id.trim().is_empty(),
            "graph.tenant_id is empty: set it (MFA_RESET__GRAPH__TENANT_ID) to the directory (tenant) id"
        );
        anyhow::ensure!(
            !graph.client_id.trim().is_empty(),
            "graph.client_id is empty: set it (MFA_RESET__GRAPH__CLIENT_ID) to the application (client) id"
        );
        if !graph.allow_insecure_http {
            crate::net::require_https(&graph.token_url(), "graph.authority")?;
        }
        let secret = graph
            .client_secret
            .as_ref()
            .filter(|s| !s.expose_secret().is_empty());
        let credential = match (secret, &graph.client_certificate, &graph.client_private_key) {
            (Some(secret), _, _) => Credential::Secret(secret.clone()),
            (None, Some(cert), Some(key)) => load_certificate(cert, key.expose_secret())?,
            (None, Some(_), None) => anyhow::bail!(
                "graph.client_certificate is set but graph.client_private_key is not: set both (MFA_RESET__GRAPH__CLIENT_PRIVATE_KEY)"
            ),
            (None, None, Some(_)) => anyhow::bail!(
                "graph.client_private_key is set but graph.client_certificate is not: set both (MFA_RESET__GRAPH__CLIENT_CERTIFICATE)"
            ),
            (None, None, None) => anyhow::bail!(
                "no Graph credential: set graph.client_secret (MFA_RESET__GRAPH__CLIENT_SECRET) or graph.client_certificate + graph.client_private_key"
            ),
        };
        let provider = TokenProvider {
            http,
            token_url: graph.token_url(),
            client_id: graph.client_id.trim().to_string(),
            scope: graph.scope(),
            credential,
            renew_before: graph.token_renew_before,
            cache: RwLock::new(None),
            generations: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        };
        if matches!(provider.credential, Credential::Certificate { .. }) {
            // Sign once now, so a key that does not fit PS256 fails at start, not on the first user.
            provider
                .client_assertion()
                .context("graph.client_private_key cannot sign a PS256 client assertion")?;
        }
        Ok(provider)
    }

    /// A valid token: the cached one, or a new one (one request however many tasks ask).
    pub async fn token(&self) -> Result<AccessToken, Error> {
        if let Some(cached) = self.cache.read().await.as_ref() {
            if Instant::now() < cached.renew_at {
                return Ok(cached.token.clone());
            }
        }
        let mut cache = self.cache.write().await;
        // Someone else may have renewed it while this task waited for the lock.
        if let Some(cached) = cache.as_ref() {
            if Instant::now() < cached.renew_at {
                return Ok(cached.token.clone());
            }
        }
        let (value, lifetime) = self.fetch().await?;
        // A short-lived token (simulators, tests) is renewed halfway, not before it is issued.
        let renew_before = self.renew_before.min(lifetime / 2);
        let token = AccessToken {
            value,
            generation: self.generations.fetch_add(1, Relaxed) + 1,
        };
        *cache = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime - renew_before,
        });
        Ok(token)
    }

    /// Graph refused `token` (401): forget it, unless it was already replaced.
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut cache = self.cache.write().await;
        if cache
            .as_ref()
            .is_some_and(|c| c.token.generation == token.generation)
        {
            *cache = None;
        }
    }

    /// Forget the cached token, whichever it is: the next [`TokenProvider::token`] fetches a
    /// new one. After admin consent or a permission is granted, only a new token carries it.
    pub async fn forget(&self) {
        *self.cache.write().await = None;
    }

    /// How many tokens were fetched so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Relaxed)
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), Error> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &self.credential {
            Credential::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret().to_string()))
            }
            Credential::Certificate { .. } => {
                let assertion = self.client_assertion().map_err(|e| Error::App {
                    fault: AppFault::CertificateUnusable,
                    status: None,
                    code: "client_assertion".into(),
                    message: format!("{e:#}"),
                })?;
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                form.push(("client_assertion", assertion));
            }
        }
        self.fetches.fetch_add(1, Relaxed);
        let response = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| from_transport(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| from_transport(&e))?;
        if !(200..300).contains(&status) {
            let error = classify_token_error(status, &headers, &body);
            // The error names the cause and the fix; it never holds the credential.
            tracing::warn!(status, code = %error.code(), error = %error, "token request failed");
            return Err(error);
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| Error::InvalidResponse {
                status,
                message: "the token endpoint answered without an access_token".into(),
            })?;
        // `expires_in` is a number on v2.0 endpoints, a string on some older ones.
        let expires_in = match answer.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3599);
        tracing::debug!(expires_in, "got a Graph token");
        Ok((
            SecretString::from(answer.access_token),
            Duration::from_secs(expires_in.max(1)),
        ))
    }

    /// A fresh signed client assertion (RFC 7523) for the token request.
    fn client_assertion(&self) -> anyhow::Result<String> {
        let Credential::Certificate { key, x5t_s256 } = &self.credential else {
            anyhow::bail!("no certificate configured");
        };
        let now = chrono::Utc::now().timestamp();
        let claims = AssertionClaims {
            aud: &self.token_url,
            iss: &self.client_id,
            sub: &self.client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs() as i64,
        };
        Ok(jsonwebtoken::encode(
            &assertion_header(x5t_s256),
            &claims,
            key,
        )?)
    }
}

fn assertion_header(x5t_s256: &str) -> Header {
    let mut header = Header::new(Algorithm::PS256);
    header.typ = Some("JWT".into());
    header.x5t_s256 = Some(x5t_s256.to_string());
    header
}

/// A setting that is either a PEM file path or the PEM text itself (handy in environment variables).
/// `secret`: the setting may be key material, so no error repeats it, nor the parser's
/// complaint (which can quote the text); only which setting is wrong and how to fix it.
fn read_pem(setting: &str, what: &str, secret: bool) -> anyhow::Result<Vec<pem::Pem>> {
    let inline = setting.contains("-----BEGIN");
    let text = if inline {
        setting.to_string()
    } else if secret {
        std::fs::read_to_string(setting).map_err(|e| {
            anyhow::anyhow!(
                "{what}: cannot read it as a file ({}); set it to the path of a PEM file, or to the PEM text itself",
                e.kind()
            )
        })?
    } else {
        std::fs::read_to_string(setting)
            .with_context(|| format!("{what}: cannot read {setting}"))?
    };
    let blocks = if secret {
        pem::parse_many(text.as_bytes())
            .map_err(|_| anyhow::anyhow!("{what}: not PEM (a -----BEGIN … -----END block)"))?
    } else {
        pem::parse_many(text.as_bytes()).with_context(|| format!("{what}: not PEM"))?
    };
    anyhow::ensure!(!blocks.is_empty(), "{what}: no PEM block found");
    Ok(blocks)
}

/// The certificate's `x5t#S256` and the RSA key (PKCS#8 or PKCS#1; may share one file with the cert).
fn load_certificate(cert_setting: &str, key_setting: &str) -> anyhow::Result<Credential> {
    let cert = read_pem(cert_setting, "graph.client_certificate", false)?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .context("graph.client_certificate: no CERTIFICATE block")?;
    let key = read_pem(key_setting, "graph.client_private_key", true)?
        .into_iter()
        .find(|p| p.tag() == "PRIVATE KEY" || p.tag() == "RSA PRIVATE KEY")
        .context("graph.client_private_key: no PRIVATE KEY or RSA PRIVATE KEY block")?;
    let key = EncodingKey::from_rsa_pem(pem::encode(&key).as_bytes())
        .context("graph.client_private_key: not an RSA private key")?;
    Ok(Credential::Certificate {
        key,
        x5t_s256: x5t_s256(cert.contents()),
    })
}

/// base64url(SHA-256(DER)), without padding.
fn x5t_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway 2048-bit test key and self-signed certificate, generated on the fly by openssl.
    fn test_cert(dir: &std::path::Path) -> (String, String) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=mfa-reset-test",
                "-days",
                "1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
        (cert.display().to_string(), key.display().to_string())
    }

    fn settings() -> GraphSettings {
        GraphSettings {
            tenant_id: "tenant-1".into(),
            client_id: "client-1".into(),
            authority: "http://127.0.0.1:9".into(),
            ..GraphSettings::default()
        }
    }

    #[test]
    fn the_client_assertion_has_the_header_and_claims_entra_expects() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = test_cert(dir.path());
        let graph = GraphSettings {
            client_certificate: Some(cert.clone()),
            client_private_key: Some(key.into()),
            ..settings()
        };
        let provider = TokenProvider::new(&graph, reqwest::Client::new()).unwrap();
        let jwt = provider.client_assertion().unwrap();

        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let der = pem::parse(std::fs::read(&cert).unwrap())
            .unwrap()
            .into_contents();
        assert_eq!(header.x5t_s256.as_deref(), Some(x5t_s256(&der).as_str()));
        assert_eq!(
            x5t_s256(&der).len(),
            43,
            "base64url of 32 bytes, no padding"
        );

        let payload = jwt.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            claims["aud"],
            "http://127.0.0.1:9/tenant-1/oauth2/v2.0/token"
        );
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        let (nbf, iat, exp) = (
            claims["nbf"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(nbf, iat);
        assert_eq!(exp - iat, 300);
        assert!((chrono::Utc::now().timestamp() - iat).abs() < 5);
        let second = provider.client_assertion().unwrap();
        let claims2: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(second.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_ne!(
            claims["jti"], claims2["jti"],
            "every assertion has a fresh jti"
        );
    }

    #[test]
    fn missing_credentials_are_named_with_their_fix() {
        let err = TokenProvider::new(&settings(), reqwest::Client::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("graph.client_secret (MFA_RESET__GRAPH__CLIENT_SECRET) or graph.client_certificate + graph.client_private_key"), "{err}");
        let no_tenant = GraphSettings {
            tenant_id: String::new(),
            ..settings()
        };
        let err = TokenProvider::new(&no_tenant, reqwest::Client::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("graph.tenant_id"), "{err}");
        let half = GraphSettings {
            client_certificate: Some("x.pem".into()),
            ..settings()
        };
        let err = TokenProvider::new(&half, reqwest::Client::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("graph.client_private_key"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let graph = GraphSettings {
            client_secret: Some(SecretString::from("super-secret-value")),
            ..settings()
        };
        let provider = TokenProvider::new(&graph, reqwest::Client::new()).unwrap();
        let token = AccessToken {
            value: SecretString::from("eyJ-token"),
            generation: 1,
        };
        let printed = format!("{provider:?} {token:?}");
        assert!(
            !printed.contains("super-secret-value") && !printed.contains("eyJ-token"),
            "{printed}"
        );
    }
}
