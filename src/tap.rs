//! The Temporary Access Pass (TAP) issued after a reset is a credential: it leaves the
//! worker only encrypted to the helpdesk's age key ([`TapRecipient`], `tap.recipient`), as an
//! ASCII-armored age file on the outcome record, which `age -d -i KEY` (or the console, with
//! [`TapIdentity`] from `tap.identity`) opens.
//!
//! What a request asks for ([`crate::domain::TapRequest`]) and what the outcome says
//! ([`crate::domain::TapOutcome`]) are domain types; this module owns the settings check
//! and the cryptography.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

use crate::config::TapSettings;
use crate::domain::TapRequest;

/// Graph's bounds on `lifetimeInMinutes` (10 minutes to 30 days); the tenant's TAP policy
/// (`minimumLifetimeInMinutes`, `maximumLifetimeInMinutes`) may narrow them, and Graph
/// refuses a pass outside those with 400.
pub const LIFETIME_MINUTES: std::ops::RangeInclusive<u32> = 10..=43_200;

/// Why TAP settings or keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `tap.lifetime` is not a whole number of minutes within Graph's bounds.
    #[error("tap.lifetime {given} is not a whole number of minutes from 10 minutes to 30 days (Graph's lifetimeInMinutes is 10..43200)")]
    Lifetime {
        /// As written.
        given: String,
    },
    /// `tap.recipient` is empty.
    #[error("tap.recipient is not set: a Temporary Access Pass is only ever issued encrypted to the helpdesk's age key; set tap.recipient to its public key (age1…, from `age-keygen -y KEY`)")]
    NoRecipient,
    /// `tap.recipient` is not an age X25519 recipient.
    #[error("tap.recipient {given:?} is not an age X25519 public key (age1…): {reason}")]
    Recipient {
        /// The value (a public key: not a secret).
        given: String,
        /// Why.
        reason: String,
    },
    /// The identity file cannot be read or holds no X25519 identity. Never shows the file.
    #[error("tap.identity {path}: {reason}")]
    Identity {
        /// The file.
        path: String,
        /// Why (never the key itself).
        reason: String,
    },
    /// Encryption failed.
    #[error("could not encrypt the Temporary Access Pass: {0}")]
    Encrypt(String),
    /// Decryption failed: not for this identity, or not an age file.
    #[error("could not decrypt the Temporary Access Pass: {0}")]
    Decrypt(String),
}

impl TapSettings {
    /// What `enqueue --tap` (and a ticket with `"tap": true`) puts on each request.
    pub fn request(&self) -> Result<TapRequest, TapError> {
        let secs = self.lifetime.as_secs();
        let minutes = u32::try_from(secs / 60).unwrap_or(u32::MAX);
        if !secs.is_multiple_of(60)
            || self.lifetime.subsec_nanos() != 0
            || !LIFETIME_MINUTES.contains(&minutes)
        {
            return Err(TapError::Lifetime {
                given: humantime::format_duration(self.lifetime).to_string(),
            });
        }
        Ok(TapRequest {
            lifetime_minutes: minutes,
            usable_once: self.usable_once,
        })
    }
}

/// The helpdesk's age public key: every pass is encrypted to it before it goes anywhere.
#[derive(Clone)]
pub struct TapRecipient(age::x25519::Recipient);

impl fmt::Debug for TapRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TapRecipient({})", self.0)
    }
}

impl TapRecipient {
    /// Parse `tap.recipient` (`age1…`).
    pub fn parse(text: &str) -> Result<TapRecipient, TapError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TapError::NoRecipient);
        }
        age::x25519::Recipient::from_str(text)
            .map(TapRecipient)
            .map_err(|reason| TapError::Recipient {
                given: text.chars().take(80).collect(),
                reason: reason.to_string(),
            })
    }

    /// `tap.recipient` when set, `None` when empty (TAP requests then fail with
    /// `tap_no_recipient`, before any Graph call); an invalid value is an error.
    pub fn from_settings(settings: &TapSettings) -> Result<Option<TapRecipient>, TapError> {
        if settings.recipient.trim().is_empty() {
            return Ok(None);
        }
        TapRecipient::parse(&settings.recipient).map(Some)
    }

    /// The pass as an ASCII-armored age file (`-----BEGIN AGE ENCRYPTED FILE-----`).
    pub fn seal(&self, pass: &SecretString) -> Result<String, TapError> {
        age::encrypt_and_armor(&self.0, pass.expose_secret().as_bytes())
            .map_err(|error| TapError::Encrypt(error.to_string()))
    }
}

/// The helpdesk's age identity (the console's copy, `tap.identity`), to show a pass once.
pub struct TapIdentity(Vec<age::x25519::Identity>);

impl fmt::Debug for TapIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TapIdentity([{} key(s), hidden])", self.0.len())
    }
}

impl TapIdentity {
    /// Read an age identity file (`age-keygen -o KEY`): `AGE-SECRET-KEY-1…` lines, `#`
    /// comments. Only X25519 identities.
    pub fn load(path: &Path) -> Result<TapIdentity, TapError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| TapError::Identity {
            path: shown.clone(),
            reason: error.to_string(),
        })?;
        TapIdentity::parse(&text).map_err(|reason| TapError::Identity {
            path: shown,
            reason,
        })
    }

    /// Parse the text of an identity file.
    pub fn parse(text: &str) -> Result<TapIdentity, String> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The error names the line, never its content: it is a secret key.
            let key = age::x25519::Identity::from_str(line)
                .map_err(|_| format!("line {} is not an age X25519 secret key", index + 1))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("holds no AGE-SECRET-KEY-1… line".into());
        }
        Ok(TapIdentity(keys))
    }

    /// Open an armored (or binary) age file sealed by [`TapRecipient::seal`].
    pub fn open(&self, sealed: &str) -> Result<SecretString, TapError> {
        let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(sealed.as_bytes()))
            .map_err(|error| TapError::Decrypt(error.to_string()))?;
        let mut reader = decryptor
            .decrypt(self.0.iter().map(|key| key as &dyn age::Identity))
            .map_err(|error| TapError::Decrypt(error.to_string()))?;
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut reader, &mut plain)
            .map_err(|error| TapError::Decrypt(error.to_string()))?;
        Ok(SecretString::from(plain))
    }

    /// The public key of the first identity (what `tap.recipient` should be).
    pub fn recipient(&self) -> Option<String> {
        self.0.first().map(|key| key.to_public().to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(lifetime: Duration) -> TapSettings {
        TapSettings {
            lifetime,
            ..TapSettings::default()
        }
    }

    #[test]
    fn a_sealed_pass_opens_only_with_the_matching_identity() {
        let key = age::x25519::Identity::generate();
        let recipient = TapRecipient::parse(&key.to_public().to_string()).unwrap();
        let sealed = recipient
            .seal(&SecretString::from("Tap-Pass-1234"))
            .unwrap();
        assert!(
            sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
            "{sealed}"
        );
        assert!(!sealed.contains("Tap-Pass-1234"));

        let identity = TapIdentity::parse(&format!(
            "# created: now\n{}\n",
            key.to_string().expose_secret()
        ))
        .unwrap();
        assert_eq!(
            identity.open(&sealed).unwrap().expose_secret(),
            "Tap-Pass-1234"
        );

        let other = age::x25519::Identity::generate();
        let other = TapIdentity::parse(other.to_string().expose_secret()).unwrap();
        assert!(other.open(&sealed).is_err());
    }

    #[test]
    fn a_lifetime_outside_graphs_bounds_or_not_in_minutes_is_refused() {
        assert_eq!(
            settings(Duration::from_secs(3600)).request().unwrap(),
            TapRequest {
                lifetime_minutes: 60,
                usable_once: true
            }
        );
        assert!(settings(Duration::from_secs(9 * 60)).request().is_err());
        assert!(settings(Duration::from_secs(43_201 * 60))
            .request()
            .is_err());
        assert!(settings(Duration::from_secs(10 * 60 + 30))
            .request()
            .is_err());
        assert_eq!(
            settings(Duration::from_secs(43_200 * 60))
                .request()
                .unwrap()
                .lifetime_minutes,
            43_200
        );
    }

    #[test]
    fn errors_about_an_identity_never_show_the_key() {
        let error = TapIdentity::parse("AGE-SECRET-KEY-1NOTAKEY").unwrap_err();
        assert!(!error.contains("NOTAKEY"), "{error}");
        assert!(TapRecipient::parse("").is_err());
        assert!(TapRecipient::parse("age1notakey").is_err());
    }
}
