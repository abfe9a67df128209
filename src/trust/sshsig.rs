//! Checking sshsig signatures (the format of `ssh-keygen -Y verify`) against an
//! allowed-signers file, with the three outcomes issue 10 dead-letters on: unsigned, bad
//! signature, signer not allowed.
//!
//! Stricter than OpenSSH in two ways: the signature envelope must be byte-exact (one accepted
//! form per signature), and a FIDO2 (`sk-`) signature must carry the user-presence flag, so a
//! key made with `-O no-touch-required` is refused; `ssh-keygen -Y verify` checks neither.
//! SHA-256 and SHA-512 signatures both verify.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use ssh_key::{Algorithm, PublicKey, SshSig};

use super::agent::put_string;
use super::allowed_signers::{check_key_type, fingerprint};
use super::canonical::to_canonical_json;
use super::{AllowedSigners, Namespace, NotAllowed, Principal};

/// Largest armored signature accepted; an ecdsa sshsig is under 1 KiB.
const MAX_ARMORED: usize = 16 * 1024;
/// FIDO2 flag: the user touched the key.
const SK_USER_PRESENT: u8 = 0x01;

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

#[cfg(test)]
#[path = "sshsig_tests.rs"]
mod tests;
