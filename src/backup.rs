//! Backed-up phone numbers and email addresses, sealed to the restore key.
//!
//! With `reset.backup = true` a worker keeps what `restore` needs to put a removed phone or
//! email method back. That value is personal data, and the outcomes stream (and the retry
//! queues, which carry what an interrupted attempt removed) is read by every reader of the
//! broker. So the value never goes there in clear: the worker encrypts it with
//! [age](https://age-encryption.org/v1) to an X25519 recipient (`reset.backup_recipient`,
//! `age1…`) whose identity (`AGE-SECRET-KEY-1…`) only the people who may restore hold, away
//! from the workers. A worker can seal but never open.
//!
//! age has no associated data, so what a sealed value belongs to goes inside it: the
//! requested user, the method type and the method id. [`BackupIdentity::open`] compares them
//! with the record it came from, so a value copied into another user's record is refused.

use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::config::ResetSettings;

/// Largest sealed value [`BackupIdentity::open`] looks at: an age file to one X25519
/// recipient is ~200 bytes of header plus the payload (a phone number or an address and
/// the names it is bound to), so a few KiB is generous; anything larger is not ours.
const MAX_SEALED: usize = 8 * 1024;
/// Largest identity file read (an age-keygen file is ~190 bytes).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// What a sealed value says it belongs to, and the value.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// The user as the request named it ([`crate::domain::UserRef`]'s text).
    user: String,
    /// The method type (`phone`, `email`).
    #[serde(rename = "type")]
    kind: String,
    /// The method id.
    id: String,
    /// The full phone number or email address.
    value: String,
}

/// Which method of which user a sealed value is for.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The user as the request named it.
    pub user: &'a str,
    /// The method type.
    pub kind: &'a str,
    /// The method id.
    pub id: &'a str,
}

/// The restore key's public half (`reset.backup_recipient`): what workers seal to.
#[derive(Clone)]
pub struct BackupRecipient(age::x25519::Recipient);

impl std::fmt::Debug for BackupRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupRecipient({})", self.0)
    }
}

impl std::fmt::Display for BackupRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BackupRecipient {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<BackupRecipient> {
        let text = text.trim();
        age::x25519::Recipient::from_str(text)
            .map(BackupRecipient)
            .map_err(|_| {
                anyhow::anyhow!(
                    "{:?} is not an age X25519 recipient (a public key that starts with \
                     \"age1\", as `age-keygen` or `mfa-reset keys --dir DIR` prints it)",
                    crate::net::printable(text)
                )
            })
    }
}

impl BackupRecipient {
    /// The recipient a worker seals backups to: `None` with `reset.backup = false`; with it on,
    /// `reset.backup_recipient` must name one, else the worker does not start (the values
    /// would otherwise have to go on the stream in clear).
    pub fn from_settings(reset: &ResetSettings) -> anyhow::Result<Option<BackupRecipient>> {
        if !reset.backup {
            return Ok(None);
        }
        anyhow::ensure!(
            !reset.backup_recipient.trim().is_empty(),
            "reset.backup = true but reset.backup_recipient is not set: backed-up phone \
             numbers and emails are only ever written encrypted to a restore key. Make one \
             with `age-keygen -o restore.key` (or `mfa-reset keys --dir DIR`), keep the key \
             file away from the workers, and set reset.backup_recipient \
             (MFA_RESET__RESET__BACKUP_RECIPIENT) to the age1… public key it prints; or set \
             reset.backup = false"
        );
        let recipient = reset
            .backup_recipient
            .parse()
            .map_err(|e: anyhow::Error| e.context("reset.backup_recipient"))?;
        Ok(Some(recipient))
    }

    /// `value` sealed to this recipient for the method `bound`, as base64 text.
    pub fn seal(&self, bound: Binding<'_>, value: &str) -> String {
        let payload = Payload {
            user: bound.user.to_string(),
            kind: bound.kind.to_string(),
            id: bound.id.to_string(),
            value: value.to_string(),
        };
        // Serialising a struct of strings cannot fail.
        let plain = serde_json::to_vec(&payload).unwrap_or_default();
        // Encrypting to an X25519 recipient into memory cannot fail: the only errors age
        // returns here come from plugins and I/O, and neither is involved.
        let sealed = age::encrypt(&self.0, &plain).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(sealed)
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Not base64, too long, or not an age file.
    #[error("the sealed backup is malformed")]
    Malformed,
    /// Sealed to another key than the identity given.
    #[error("the sealed backup was not made for this restore key (another --identity?)")]
    WrongKey,
    /// It opened, but names another user or method than the record holding it.
    #[error("the sealed backup belongs to another user or method than the record holding it")]
    Mismatch,
}

/// The restore key (`restore --identity FILE`): opens what workers sealed.
pub struct BackupIdentity(age::x25519::Identity);

impl std::fmt::Debug for BackupIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupIdentity({})", self.0.to_public())
    }
}

impl BackupIdentity {
    /// A new random restore key.
    pub fn generate() -> BackupIdentity {
        BackupIdentity(age::x25519::Identity::generate())
    }

    /// Its public half, for `reset.backup_recipient`.
    pub fn recipient(&self) -> BackupRecipient {
        BackupRecipient(self.0.to_public())
    }

    /// The key as an age identity file holds it (`# created: …`, `# public key: age1…`,
    /// `AGE-SECRET-KEY-1…`), as `age-keygen` writes it.
    pub fn to_file_text(&self) -> String {
        format!(
            "# created: {}\n# public key: {}\n{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.0.to_public(),
            self.0.to_string().expose_secret()
        )
    }

    /// Write it to `path`: a new file (never an existing one, never through a symlink),
    /// readable by its owner only.
    pub fn write_new(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        file.write_all(self.to_file_text().as_bytes())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        Ok(())
    }

    /// Read an age identity file (as `age-keygen` writes it: `#` comments and one
    /// `AGE-SECRET-KEY-1…` line). Refused when others may read it, as ssh does for keys.
    /// Errors name the file, never its content.
    pub fn from_file(path: &Path) -> anyhow::Result<BackupIdentity> {
        use std::io::Read as _;
        let name = path.display();
        let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = file
                .metadata()
                .map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?
                .permissions()
                .mode();
            anyhow::ensure!(
                mode & 0o077 == 0,
                "{name} is readable by others (mode {:o}): a restore key opens every \
                 backed-up phone number and email; `chmod 600 {name}`",
                mode & 0o777
            );
        }
        let mut text = String::new();
        file.take(MAX_IDENTITY_FILE)
            .read_to_string(&mut text)
            .map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let (Some(line), None) = (keys.next(), keys.next()) else {
            anyhow::bail!(
                "{name} is not an age identity file with one key (one AGE-SECRET-KEY-1… line, \
                 as `age-keygen` writes it)"
            );
        };
        let identity = age::x25519::Identity::from_str(line).map_err(|_| {
            anyhow::anyhow!(
                "{name}: its key is not an age X25519 identity (AGE-SECRET-KEY-1…; plugin \
                 and passphrase identities are not supported)"
            )
        })?;
        Ok(BackupIdentity(identity))
    }

    /// Open `sealed`, which the record says belongs to `bound`: the value, when it was
    /// sealed to this key for exactly that user and method.
    pub fn open(&self, sealed: &str, bound: Binding<'_>) -> Result<String, OpenError> {
        if sealed.len() > MAX_SEALED {
            return Err(OpenError::Malformed);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed.trim())
            .map_err(|_| OpenError::Malformed)?;
        let plain = age::decrypt(&self.0, &bytes).map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => OpenError::WrongKey,
            _ => OpenError::Malformed,
        })?;
        let payload: Payload = serde_json::from_slice(&plain).map_err(|_| OpenError::Malformed)?;
        if payload.user != bound.user || payload.kind != bound.kind || payload.id != bound.id {
            return Err(OpenError::Mismatch);
        }
        Ok(payload.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_PHONE: Binding<'static> = Binding {
        user: "alice@contoso.com",
        kind: "phone",
        id: "3179e48a-750b-4051-897c-87b9720928f7",
    };

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_for_its_method() {
        let key = BackupIdentity::generate();
        let sealed = key.recipient().seal(ALICE_PHONE, "+1 5555551234");
        assert!(!sealed.contains("5555551234"));
        assert_eq!(key.open(&sealed, ALICE_PHONE).unwrap(), "+1 5555551234");

        let other = BackupIdentity::generate();
        assert_eq!(other.open(&sealed, ALICE_PHONE), Err(OpenError::WrongKey));
        let bob = Binding {
            user: "bob@contoso.com",
            ..ALICE_PHONE
        };
        assert_eq!(key.open(&sealed, bob), Err(OpenError::Mismatch));
        let email = Binding {
            kind: "email",
            ..ALICE_PHONE
        };
        assert_eq!(key.open(&sealed, email), Err(OpenError::Mismatch));
        assert_eq!(
            key.open("not base64!", ALICE_PHONE),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            key.open(&"A".repeat(MAX_SEALED + 4), ALICE_PHONE),
            Err(OpenError::Malformed)
        );
    }

    /// What a backup costs: `cargo test --release --lib -- --ignored --nocapture
    /// sealing_and_opening_cost`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn sealing_and_opening_cost() {
        let key = BackupIdentity::generate();
        let recipient = key.recipient();
        let n = 2000u32;
        let started = std::time::Instant::now();
        let sealed: Vec<String> = (0..n)
            .map(|_| recipient.seal(ALICE_PHONE, "+1 5555551234"))
            .collect();
        let seal = started.elapsed() / n;
        let started = std::time::Instant::now();
        for s in &sealed {
            assert_eq!(key.open(s, ALICE_PHONE).unwrap(), "+1 5555551234");
        }
        let open = started.elapsed() / n;
        println!(
            "per backed-up value: seal {seal:?}, open {open:?} ({} bytes of base64)",
            sealed[0].len()
        );
    }

    #[test]
    fn backup_on_without_a_recipient_refuses_naming_the_setting_and_the_fix() {
        let mut reset = ResetSettings::default();
        assert!(BackupRecipient::from_settings(&reset).unwrap().is_none());
        reset.backup = true;
        let err = BackupRecipient::from_settings(&reset)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reset.backup_recipient"), "{err}");
        assert!(err.contains("age-keygen"), "{err}");
        reset.backup_recipient = "age1notakey".into();
        let err = format!("{:#}", BackupRecipient::from_settings(&reset).unwrap_err());
        assert!(err.contains("reset.backup_recipient"), "{err}");
        assert!(err.contains("age1"), "{err}");
        reset.backup_recipient = BackupIdentity::generate().recipient().to_string();
        assert!(BackupRecipient::from_settings(&reset).unwrap().is_some());
    }

    #[cfg(unix)]
    #[test]
    fn identity_files_round_trip_and_are_refused_when_others_can_read_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restore.key");
        let key = BackupIdentity::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(key.write_new(&path).is_err(), "an existing file is kept");

        let read = BackupIdentity::from_file(&path).unwrap();
        let sealed = key.recipient().seal(ALICE_PHONE, "alice@example.org");
        assert_eq!(
            read.open(&sealed, ALICE_PHONE).unwrap(),
            "alice@example.org"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = BackupIdentity::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("AGE-SECRET-KEY"), "{err}");
    }
}
