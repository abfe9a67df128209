//! Deterministic test keys and signers for the unit tests of `trust` (no ssh-keygen needed),
//! including hand-made FIDO2 (`sk-`) signatures, which no software key can make; and the
//! generated role keys the unit tests of the record readers share ([`key_set`]).

use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use signature::Signer as _;
use ssh_key::private::{EcdsaKeypair, Ed25519Keypair, KeypairData};
use ssh_key::public::{KeyData, SkEcdsaSha2NistP256, SkEd25519};
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey, SshSig};

use super::agent::put_string;
use super::{AllowedSigners, Namespace, Signer};

/// An ed25519 key from a one-byte seed.
pub fn ed25519(seed: u8) -> PrivateKey {
    let keypair = Ed25519Keypair::from_seed(&[seed; 32]);
    PrivateKey::new(KeypairData::Ed25519(keypair), format!("ed25519-{seed}")).unwrap()
}

/// An ecdsa-sha2-nistp256 key from a one-byte seed.
pub fn ecdsa(seed: u8) -> PrivateKey {
    PrivateKey::new(
        KeypairData::Ecdsa(ecdsa_keypair(seed)),
        format!("ecdsa-{seed}"),
    )
    .unwrap()
}

fn ecdsa_keypair(seed: u8) -> EcdsaKeypair {
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    EcdsaKeypair::NistP256 {
        public: secret.public_key().to_encoded_point(false),
        private: secret.into(),
    }
}

/// The demo's four role keys ([`super::KeySet`]) in a fresh folder (keep it alive), and the
/// allowed signers they make.
pub fn key_set() -> (tempfile::TempDir, super::KeySet, AllowedSigners) {
    let dir = tempfile::tempdir().unwrap();
    let keys = super::KeySet::generate(dir.path()).unwrap();
    let allowed = AllowedSigners::read(&keys.allowed_signers).unwrap();
    (dir, keys, allowed)
}

/// A signer holding `key` in memory.
pub fn signer(key: PrivateKey) -> Signer {
    Signer::from_private_key(key).unwrap()
}

/// An allowed-signers file with one line per `(principals, options, key)`.
pub fn allowed(lines: &[(&str, &str, &PublicKey)]) -> AllowedSigners {
    let text: String = lines
        .iter()
        .map(|(principals, options, key)| {
            format!("{principals} {options} {}\n", key.to_openssh().unwrap())
        })
        .collect();
    AllowedSigners::parse(&text, "test_allowed_signers").unwrap()
}

/// A FIDO2 key and the signatures its token would make (the token signs
/// `SHA256(application) ‖ flags ‖ counter ‖ SHA256(message)`, PROTOCOL.u2f).
pub struct SkKey {
    /// Its public key (application `ssh:`).
    pub public: PublicKey,
    inner: SkInner,
}

enum SkInner {
    Ed25519(Ed25519Keypair),
    Ecdsa(EcdsaKeypair),
}

impl SkKey {
    /// An `sk-ssh-ed25519@openssh.com` key.
    pub fn ed25519(seed: u8) -> SkKey {
        let keypair = Ed25519Keypair::from_seed(&[seed; 32]);
        let public = KeyData::SkEd25519(SkEd25519::new(keypair.public, "ssh:"));
        SkKey {
            public: PublicKey::new(public, "sk"),
            inner: SkInner::Ed25519(keypair),
        }
    }

    /// An `sk-ecdsa-sha2-nistp256@openssh.com` key.
    pub fn ecdsa(seed: u8) -> SkKey {
        let keypair = ecdsa_keypair(seed);
        let EcdsaKeypair::NistP256 { public, .. } = &keypair else {
            unreachable!("made as NistP256")
        };
        let public = KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(*public, "ssh:"));
        SkKey {
            public: PublicKey::new(public, "sk"),
            inner: SkInner::Ecdsa(keypair),
        }
    }

    /// An armored sshsig signature of `message`, with the token's `flags` and `counter`.
    pub fn sign(&self, namespace: Namespace, message: &[u8], flags: u8, counter: u32) -> String {
        use sha2::{Digest as _, Sha256};
        let signed_data =
            SshSig::signed_data(namespace.as_str(), HashAlg::Sha512, message).unwrap();
        let mut token_message = Sha256::digest(b"ssh:").to_vec();
        token_message.push(flags);
        token_message.extend(counter.to_be_bytes());
        token_message.extend(Sha256::digest(&signed_data));
        let (algorithm, raw) = match &self.inner {
            SkInner::Ed25519(keypair) => (
                Algorithm::SkEd25519,
                keypair.try_sign(&token_message).unwrap(),
            ),
            SkInner::Ecdsa(keypair) => (
                Algorithm::SkEcdsaSha2NistP256,
                keypair.try_sign(&token_message).unwrap(),
            ),
        };
        let mut signature = Vec::new();
        put_string(&mut signature, algorithm.as_str().as_bytes());
        put_string(&mut signature, raw.as_bytes());
        signature.push(flags);
        signature.extend(counter.to_be_bytes());
        let mut blob = b"SSHSIG".to_vec();
        blob.extend(1u32.to_be_bytes());
        put_string(&mut blob, &self.public.to_bytes().unwrap());
        put_string(&mut blob, namespace.as_str().as_bytes());
        put_string(&mut blob, b"");
        put_string(&mut blob, b"sha512");
        put_string(&mut blob, &signature);
        super::signer::armor(&blob)
    }
}
