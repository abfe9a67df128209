//! Making sshsig signatures (the format of `ssh-keygen -Y sign`) with one key: from an
//! OpenSSH key file, or through ssh-agent for the key whose public part is given.
//!
//! Choices where OpenSSH leaves room:
//! - A passphrase-protected key file is refused with "load it into ssh-agent": no passphrase
//!   is read from the environment (where other processes of the user can read it).
//! - A private key file that others can read is refused, as `ssh` refuses it.
//! - FIDO2 (`sk-`) keys sign through ssh-agent only: the key file is a handle, the secret is
//!   on the token.
//! - Hash: SHA-512, as `ssh-keygen -Y sign` uses.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use serde::Serialize;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::agent::{put_string, AgentClient, AgentError};
use super::allowed_signers::{check_key_type, fingerprint};
use super::canonical::{to_canonical_json, CanonicalError};
use super::Namespace;

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

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
    #[error("cannot read key file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why (shown in the message, not chained: error chains would say it twice).
        error: std::io::Error,
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
            .map_err(|error| SignerError::Read {
                path: name.clone(),
                error,
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
    let read = |error| SignerError::Read {
        path: name.clone(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(|_| SignerError::NotAKey { path: name.clone() })?;
    Ok(text)
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
    let write_error = |error| SignerError::Read {
        path: name.clone(),
        error,
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
