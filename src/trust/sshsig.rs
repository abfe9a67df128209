//! OpenSSH signatures ("sshsig", the format of `ssh-keygen -Y sign` and `-Y verify`): making
//! them with a key file or through ssh-agent, and checking them against an allowed-signers
//! file.
//!
//! Choices where OpenSSH leaves room:
//! - A passphrase-protected key file is refused with "load it into ssh-agent": no passphrase
//!   is read from the environment (where other processes of the user can read it).
//! - A private key file that others can read is refused, as `ssh` refuses it.
//! - FIDO2 (`sk-`) keys sign through ssh-agent only (the key file is a handle, the secret is
//!   on the token), and their signatures must carry the user-presence flag: a key made with
//!   `-O no-touch-required` is refused. `ssh-keygen -Y verify` does not check that flag.
//! - Hash: SHA-512, as `ssh-keygen -Y sign` uses; SHA-256 signatures verify too.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::agent::{put_string, AgentClient, AgentError};
use super::allowed_signers::{check_key_type, fingerprint};
use super::canonical::{to_canonical_json, CanonicalError};
use super::{AllowedSigners, Namespace, NotAllowed, Principal};

/// Largest armored signature accepted; an ecdsa sshsig is under 1 KiB.
const MAX_ARMORED: usize = 16 * 1024;
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// FIDO2 flag: the user touched the key.
const SK_USER_PRESENT: u8 = 0x01;

/// Makes sshsig signatures with one key, held in memory or by ssh-agent.
pub struct Signer {
    public: PublicKey,
    backend: Backend,
}

enum Backend {
    Key(Box<PrivateKey>),
    Agent(AgentClient),
}

/// A signer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no OpenSSH key.
    #[error("{path} is not an OpenSSH private or public key: pass the key file ssh-keygen wrote (id_ed25519) or its .pub with the key loaded in ssh-agent")]
    NotAKey {
        /// The file.
        path: String,
    },
    /// The private key is readable by others.
    #[error("{path} is readable by other users (mode {mode:03o}): run `chmod 600 {path}`")]
    Unprotected {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The private key needs a passphrase.
    #[error("{path} is protected by a passphrase: load it into ssh-agent (`ssh-add {path}`) and pass its public key ({path}.pub) instead")]
    Encrypted {
        /// The file.
        path: String,
    },
    /// A FIDO2 key file, which cannot sign without the token.
    #[error("{path} is a FIDO2 (sk-) key: load it into ssh-agent (`ssh-add {path}`) and pass its public key ({path}.pub)")]
    SkNeedsAgent {
        /// The file.
        path: String,
    },
    /// A key type we do not support.
    #[error("{what}: {problem}")]
    Unsupported {
        /// The file or key.
        what: String,
        /// Which type, and the supported ones.
        problem: String,
    },
    /// A public key was given but no agent is running.
    #[error("{path} is a public key, so the private key must be in ssh-agent, but SSH_AUTH_SOCK is not set: start ssh-agent and `ssh-add` the key, or pass the private key file")]
    NoAgent {
        /// The public key file.
        path: String,
    },
    /// The agent does not hold the key.
    #[error(
        "ssh-agent at {socket} does not hold key {fingerprint}: `ssh-add` its private key first"
    )]
    NotInAgent {
        /// The agent's socket.
        socket: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// Talking to the agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The key could not be encoded or generated.
    #[error("key error: {0}")]
    Key(String),
}

/// A signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The agent refused or failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent's signature does not verify with the key: a broken or hostile agent.
    #[error("ssh-agent returned a signature that does not verify with key {fingerprint}")]
    AgentMismatch {
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// Signing with the in-memory key failed.
    #[error("signing failed: {0}")]
    Crypto(String),
    /// The value to sign has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// Who signed, once a signature has verified and the signer is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The person, from the allowed-signers file.
    pub principal: Principal,
    /// `SHA256:…` fingerprint of the key that signed.
    pub fingerprint: String,
}

/// Why a signature was not accepted. [`VerifyError::reason`] gives the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No signature at all.
    #[error("unsigned: no signature")]
    Unsigned,
    /// Something that is not an sshsig signature.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature does not match the message, or was made for another namespace.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A valid signature by a key the allowed-signers file does not allow here and now.
    #[error("signer not allowed: {0}")]
    SignerNotAllowed(NotAllowed),
}

impl VerifyError {
    /// The dead-letter reason of issue 10: `unsigned`, `bad_signature` (also for a malformed
    /// signature) or `signer_not_allowed`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Unsigned => "unsigned",
            VerifyError::Malformed(_) | VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::SignerNotAllowed(_) => "signer_not_allowed",
        }
    }
}

impl Signer {
    /// A signer from `--key FILE`: an OpenSSH private key file signs here; a public key file
    /// (`id_ed25519.pub`) signs through the ssh-agent of `SSH_AUTH_SOCK`, which must hold it.
    pub fn from_key_file(path: &Path) -> Result<Signer, SignerError> {
        let name = path.display().to_string();
        let text = read_key_file(path)?;
        if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
            return Signer::from_private_key_file(path, &text);
        }
        let public = PublicKey::from_openssh(text.trim())
            .map_err(|_| SignerError::NotAKey { path: name.clone() })?;
        let agent = AgentClient::from_env().ok_or(SignerError::NoAgent { path: name })?;
        Signer::from_agent(agent, public)
    }

    fn from_private_key_file(path: &Path, text: &str) -> Result<Signer, SignerError> {
        use std::os::unix::fs::PermissionsExt as _;
        let name = path.display().to_string();
        let mode = std::fs::metadata(path)
            .map_err(|source| SignerError::Read {
                path: name.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(SignerError::Unprotected {
                path: name,
                mode: mode & 0o777,
            });
        }
        let key = PrivateKey::from_openssh(text)
            .map_err(|_| SignerError::NotAKey { path: name.clone() })?;
        if key.is_encrypted() {
            return Err(SignerError::Encrypted { path: name });
        }
        if matches!(
            key.algorithm(),
            Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256
        ) {
            return Err(SignerError::SkNeedsAgent { path: name });
        }
        Signer::from_private_key(key).map_err(|error| match error {
            SignerError::Unsupported { problem, .. } => SignerError::Unsupported {
                what: name,
                problem,
            },
            other => other,
        })
    }

    /// A signer holding `key` in memory (generated keys, tests).
    pub fn from_private_key(key: PrivateKey) -> Result<Signer, SignerError> {
        let public = key.public_key().clone();
        check_key_type(&public.algorithm()).map_err(|problem| SignerError::Unsupported {
            what: "private key".to_string(),
            problem,
        })?;
        if matches!(
            public.algorithm(),
            Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256
        ) {
            return Err(SignerError::SkNeedsAgent {
                path: "private key".to_string(),
            });
        }
        Ok(Signer {
            public,
            backend: Backend::Key(Box::new(key)),
        })
    }

    /// A signer whose private key `public` is held by the agent at `agent`.
    pub fn from_agent(agent: AgentClient, public: PublicKey) -> Result<Signer, SignerError> {
        check_key_type(&public.algorithm()).map_err(|problem| SignerError::Unsupported {
            what: format!("key {}", fingerprint(public.key_data())),
            problem,
        })?;
        let blob = public
            .to_bytes()
            .map_err(|error| SignerError::Key(error.to_string()))?;
        if !agent
            .identities()?
            .iter()
            .any(|identity| identity.key_blob == blob)
        {
            return Err(SignerError::NotInAgent {
                socket: agent.socket().display().to_string(),
                fingerprint: fingerprint(public.key_data()),
            });
        }
        Ok(Signer {
            public,
            backend: Backend::Agent(agent),
        })
    }

    /// The public key that verifies this signer's signatures.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// `SHA256:…` fingerprint of the key.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.public.key_data())
    }

    /// Sign `message` for `namespace`: an armored `-----BEGIN SSH SIGNATURE-----` block, the
    /// same bytes `ssh-keygen -Y sign -n NAMESPACE` writes.
    pub fn sign(&self, namespace: Namespace, message: &[u8]) -> Result<String, SignError> {
        match &self.backend {
            Backend::Key(key) => {
                let signature =
                    SshSig::sign(key.as_ref(), namespace.as_str(), HashAlg::Sha512, message)
                        .map_err(|error| SignError::Crypto(error.to_string()))?;
                signature
                    .to_pem(LineEnding::LF)
                    .map_err(|error| SignError::Crypto(error.to_string()))
            }
            Backend::Agent(agent) => self.sign_with_agent(agent, namespace, message),
        }
    }

    /// Sign the canonical JSON of `value` (see [`super::canonical`]).
    pub fn sign_canonical<T: Serialize + ?Sized>(
        &self,
        namespace: Namespace,
        value: &T,
    ) -> Result<String, SignError> {
        self.sign(namespace, &to_canonical_json(value)?)
    }

    fn sign_with_agent(
        &self,
        agent: &AgentClient,
        namespace: Namespace,
        message: &[u8],
    ) -> Result<String, SignError> {
        let crypto = |error: ssh_key::Error| SignError::Crypto(error.to_string());
        let signed_data =
            SshSig::signed_data(namespace.as_str(), HashAlg::Sha512, message).map_err(crypto)?;
        let key_blob = self.public.to_bytes().map_err(crypto)?;
        let signature = agent.sign(&key_blob, &signed_data)?;
        // Assembled by hand from the agent's bytes (PROTOCOL.sshsig): ssh-key 0.6 re-encodes an
        // sk-ecdsa signature wrongly, and the agent's bytes are what must be kept anyway.
        let mut blob = b"SSHSIG".to_vec();
        blob.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut blob, &key_blob);
        put_string(&mut blob, namespace.as_str().as_bytes());
        put_string(&mut blob, b"");
        put_string(&mut blob, HashAlg::Sha512.as_str().as_bytes());
        put_string(&mut blob, &signature);
        let armored = armor(&blob);
        // Check what the agent made before anyone relies on it.
        let parsed = SshSig::from_pem(&armored).map_err(crypto)?;
        self.public
            .verify(namespace.as_str(), message, &parsed)
            .map_err(|_| SignError::AgentMismatch {
                fingerprint: self.fingerprint(),
            })?;
        Ok(armored)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            Backend::Key(_) => "key in memory".to_string(),
            Backend::Agent(agent) => format!("ssh-agent at {}", agent.socket().display()),
        };
        f.debug_struct("Signer")
            .field("key", &self.fingerprint())
            .field("backend", &backend)
            .finish()
    }
}

/// Armor an sshsig blob as `ssh-keygen` does: base64 in 70-character lines.
pub(crate) fn armor(blob: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
    let mut out = String::from("-----BEGIN SSH SIGNATURE-----\n");
    for line in encoded.as_bytes().chunks(70) {
        // base64 output is ASCII, so any byte boundary is a char boundary.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END SSH SIGNATURE-----\n");
    out
}

fn read_key_file(path: &Path) -> Result<String, SignerError> {
    use std::io::Read as _;
    let name = path.display().to_string();
    let read = |source| SignerError::Read {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(|_| SignerError::NotAKey { path: name.clone() })?;
    Ok(text)
}

/// Check `armored` is a signature of `message` for `namespace` by a key that `allowed` lets
/// sign in that namespace at time `at`; returns who signed.
pub fn verify(
    armored: &str,
    namespace: Namespace,
    message: &[u8],
    allowed: &AllowedSigners,
    at: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    let armored = armored.trim();
    if armored.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    if armored.len() > MAX_ARMORED {
        return Err(VerifyError::Malformed(format!(
            "{} bytes, more than any sshsig signature",
            armored.len()
        )));
    }
    let fields = envelope_fields(armored).map_err(VerifyError::Malformed)?;
    let signature = SshSig::from_pem(armored)
        .map_err(|error| VerifyError::Malformed(format!("not an SSH SIGNATURE block ({error})")))?;
    if !parse_is_exact(&signature, &fields) {
        return Err(VerifyError::Malformed(
            "the SSH SIGNATURE block has inconsistent lengths".to_string(),
        ));
    }
    // OpenSSH takes any version up to 1; the version is not signed, so only 1 is taken here.
    if signature.version() != SshSig::VERSION {
        return Err(VerifyError::Malformed(format!(
            "sshsig version {}, expected {}",
            signature.version(),
            SshSig::VERSION
        )));
    }
    if signature.namespace() != namespace.as_str() {
        return Err(VerifyError::BadSignature(format!(
            "made for namespace {:?}, not {namespace}",
            signature.namespace()
        )));
    }
    let key = signature.public_key();
    if let Err(problem) = check_key_type(&key.algorithm()) {
        return Err(VerifyError::SignerNotAllowed(NotAllowed::UnsupportedKey {
            problem,
        }));
    }
    if signature.algorithm() != key.algorithm() {
        return Err(VerifyError::BadSignature(format!(
            "a {} signature from a {} key",
            signature.algorithm().as_str(),
            key.algorithm().as_str()
        )));
    }
    PublicKey::new(key.clone(), "")
        .verify(namespace.as_str(), message, &signature)
        .map_err(|_| VerifyError::BadSignature("does not match the message".to_string()))?;
    if is_sk(&key.algorithm()) {
        check_user_presence(signature.signature_bytes())?;
    }
    let principal = allowed
        .principal_for(key, namespace, at)
        .map_err(VerifyError::SignerNotAllowed)?;
    Ok(Verified {
        principal: principal.clone(),
        fingerprint: fingerprint(key),
    })
}

/// [`verify`] over the canonical JSON of `value`.
pub fn verify_canonical<T: Serialize + ?Sized>(
    armored: &str,
    namespace: Namespace,
    value: &T,
    allowed: &AllowedSigners,
    at: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    let bytes =
        to_canonical_json(value).map_err(|error| VerifyError::Malformed(error.to_string()))?;
    verify(armored, namespace, &bytes, allowed, at)
}

/// The sshsig blob's five fields, read strictly (PROTOCOL.sshsig: magic, version, five
/// strings, nothing after).
///
/// ssh-key 0.6 reads length prefixes loosely (a nested length is not checked to be used up),
/// and the envelope is not signed: without this, flipped length bytes would still verify.
/// [`verify`] compares these fields with the re-encoded parse, leaving one byte form.
fn envelope_fields(armored: &str) -> Result<Vec<Vec<u8>>, String> {
    let body = armored
        .strip_prefix("-----BEGIN SSH SIGNATURE-----")
        .and_then(|rest| rest.strip_suffix("-----END SSH SIGNATURE-----"))
        .ok_or("not an SSH SIGNATURE block")?;
    let body: String = body.split_ascii_whitespace().collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the SSH SIGNATURE block is not base64")?;
    let rest = blob.strip_prefix(b"SSHSIG").ok_or("no SSHSIG preamble")?;
    let mut rest = rest.get(4..).ok_or("cut short")?;
    let mut fields = Vec::with_capacity(5);
    for field in [
        "public key",
        "namespace",
        "reserved",
        "hash algorithm",
        "signature",
    ] {
        let cut = || format!("the {field} field is cut short");
        let length = rest.get(..4).ok_or_else(cut)?;
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let value = rest
            .get(4..)
            .and_then(|tail| tail.get(..length))
            .ok_or_else(cut)?;
        fields.push(value.to_vec());
        rest = &rest[4 + length..];
    }
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the signature", rest.len()));
    }
    Ok(fields)
}

/// True when the parsed signature, encoded again, is byte for byte the envelope's fields.
fn parse_is_exact(signature: &SshSig, fields: &[Vec<u8>]) -> bool {
    let Ok(key) = PublicKey::new(signature.public_key().clone(), "").to_bytes() else {
        return false;
    };
    let algorithm = signature.algorithm();
    let bytes = signature.signature_bytes();
    let mut encoded = Vec::new();
    put_string(&mut encoded, algorithm.as_str().as_bytes());
    match bytes.len().checked_sub(5) {
        // sk signatures: `string signature, byte flags, uint32 counter` (ssh-key keeps the
        // trailer inside its bytes, and 0.6 re-encodes sk-ecdsa wrongly, so by hand).
        Some(split) if is_sk(&algorithm) => {
            put_string(&mut encoded, &bytes[..split]);
            encoded.extend_from_slice(&bytes[split..]);
        }
        _ => put_string(&mut encoded, bytes),
    }
    fields.len() == 5
        && fields[0] == key
        && fields[1] == signature.namespace().as_bytes()
        && fields[2] == signature.reserved()
        && fields[3] == signature.hash_alg().as_str().as_bytes()
        && fields[4] == encoded
}

fn is_sk(algorithm: &Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256
    )
}

/// An sk signature ends in `byte flags, uint32 counter`; the flags must say "touched".
fn check_user_presence(signature: &[u8]) -> Result<(), VerifyError> {
    let flags = signature
        .len()
        .checked_sub(5)
        .map(|at| signature[at])
        .ok_or_else(|| VerifyError::Malformed("FIDO2 signature without flags".to_string()))?;
    if flags & SK_USER_PRESENT == 0 {
        return Err(VerifyError::BadSignature(
            "FIDO2 signature made without touching the key (user presence not set); \
             make the key without -O no-touch-required"
                .to_string(),
        ));
    }
    Ok(())
}

/// A fresh ed25519 key (for the demo's throw-away keys and for tests).
pub fn generate_ed25519(comment: &str) -> Result<PrivateKey, SignerError> {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut seed);
    let keypair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(keypair.into(), comment).map_err(|error| SignerError::Key(error.to_string()))
}

/// Write `key` as `path` (OpenSSH format, mode 0600, refusing to overwrite) and `path.pub`.
pub fn write_key_pair(key: &PrivateKey, path: &Path) -> Result<(), SignerError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.display().to_string();
    let write_error = |source| SignerError::Read {
        path: name.clone(),
        source,
    };
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|error| SignerError::Key(error.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|error| SignerError::Key(error.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(private.as_bytes()).map_err(write_error)?;
    let public_path = path.with_file_name(format!(
        "{}.pub",
        path.file_name()
            .map(|name| name.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&public_path, format!("{public}\n")).map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
#[path = "sshsig_tests.rs"]
mod tests;
