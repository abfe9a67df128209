//! Signed requests: one signature per batch, one Merkle proof per request, and the approval
//! of a second person for a big batch — and the pure check a worker runs before anything else.
//!
//! A batch is sealed by a [`Manifest`] (batch id, count, the RFC 6962 Merkle root over its
//! requests, who requested it, when) that the operator signs in namespace
//! `mfa-reset-request`. Every request carries, in AMQP headers:
//! - [`MANIFEST_HEADER`]: the [`SealedManifest`] (manifest + sshsig signature), as JSON;
//! - [`PROOF_HEADER`]: its [`MerkleProof`] (leaf index, leaf count, audit path), as JSON;
//! - [`APPROVAL_HEADER`]: for a batch of more than `security.approval_above` requests, an
//!   sshsig in namespace `mfa-reset-approve` over [`approval_message`] — the manifest's
//!   digest — by a *different* principal. The digest covers the root, so an approval of one
//!   user list does not verify for another.
//!
//! A ticket event is a batch of one: its root is the leaf hash, its proof an empty path.
//!
//! That inline form costs ~1.5 KB of headers on every request. `enqueue` writes the compact
//! form instead: the signed manifest travels once, in the batch's manifest record on the
//! outcomes stream, with a [`MerkleCap`] (one level of the tree, at most 4096 nodes, which
//! must fold up to the signed root), and every request carries only a [`CompactProof`] (the
//! manifest's digest, the leaf index, and the path from the leaf up to the cap: 296 bytes, as
//! 396 base64 characters, for a million-request batch) in its body's `proof` field, which the
//! leaf leaves out. In the body, not in a header: the broker decodes every header of every
//! message; with `publish_ceiling` on a shared 2-core machine a 296-byte header cost about a
//! fifth of the minimal publisher's rate (median of 9 rounds), the same bytes in the body
//! well under half of that, and `enqueue` took a median 38 s for a million requests with the
//! proof in the body against 42 s with it in a header (both noisy). A worker checks each manifest record's
//! signature and cap once ([`verify_known_batch`]), keeps the [`KnownBatch`] by digest, and
//! checks each request against it ([`verify_compact_request`]). A request carrying
//! [`MANIFEST_HEADER`] is verified in the inline form, whatever else it carries: the inline
//! form needs no lookup.
//!
//! The leaf is [`leaf_bytes`]: the canonical JSON of the request without the parts a retry or
//! a replay changes (`carry`, `replay`) and the compact `proof`, so a request coming back from a delay tier or the
//! dead-letter queue still verifies, while its user, batch, flags, ticket and `requested_at`
//! cannot change.
//!
//! [`verify_batch`] and [`verify_request`] are pure (no broker, no clock of their own): from
//! the headers, the allowed signers and the time they return a [`TrustedBatch`] and a
//! [`Verdict`]. A worker verifies a batch's manifest once and keeps the [`TrustedBatch`]
//! (keyed by the exact header bytes), so the per-request cost is one Merkle path.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::canonical::{canonical_json_value, CanonicalError};
use super::merkle::{digests_of, MerkleCap, MerkleProof, CAP_NODES};
use super::{Digest, Namespace, SignError, Signer};
use crate::domain::ResetRequest;

mod verify;

pub use verify::{
    replay_message, sign_replay, verdict, verify_batch, verify_compact_request, verify_known_batch,
    verify_replay, verify_request, KnownBatch, Policy, Reason, Refusal, Replayer, Seal,
    TrustedBatch, Verdict, Verified,
};

/// Header holding the batch's [`SealedManifest`] (JSON).
pub const MANIFEST_HEADER: &str = "mfa-manifest";
/// Header holding the request's [`MerkleProof`] (JSON).
pub const PROOF_HEADER: &str = "mfa-proof";
/// What the compact form's proof is called where it travels: the request's `proof` field.
pub const PROOF_FIELD: &str = "proof";
/// Header holding the approval: an armored sshsig (namespace `mfa-reset-approve`) over
/// [`approval_message`].
pub const APPROVAL_HEADER: &str = "mfa-approval";
/// Header holding an admin's replay grant: an armored sshsig (namespace `mfa-reset-admin`)
/// over the canonical JSON of [`replay_message`]. Required on every request with
/// `replay > 0` (the Merkle leaf leaves `replay` out, so without it anyone who may publish
/// could run a verified request again).
pub const REPLAY_HEADER: &str = "mfa-replay";

/// How far in the future a signed `requested_at` may lie (clocks of producer and worker
/// differ a little); further is refused as `future_request`.
pub const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(2);

/// Largest manifest header accepted before parsing it (a manifest is a few hundred bytes
/// plus a signature under 1 KiB).
const MAX_MANIFEST: usize = 16 * 1024;
/// Largest proof header accepted (a 2^40-leaf proof is under 2 KiB).
const MAX_PROOF: usize = 4 * 1024;

/// What the operator signs for a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Batch id.
    pub batch: String,
    /// Number of requests (leaves) in the batch.
    pub count: u64,
    /// RFC 6962 Merkle root over the [`leaf_bytes`] of its requests, in publishing order.
    pub root: Digest,
    /// The principal the signer is in `allowed_signers` (checked against the signature).
    pub requested_by: String,
    /// When the batch was sealed.
    pub created_at: DateTime<Utc>,
}

/// A manifest and the operator's signature of its canonical JSON: the [`MANIFEST_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedManifest {
    /// What was signed.
    pub manifest: Manifest,
    /// `-----BEGIN SSH SIGNATURE-----` block, namespace `mfa-reset-request`.
    pub signature: String,
}

impl SealedManifest {
    /// Sign `manifest` with `signer` (namespace `mfa-reset-request`).
    pub fn seal(manifest: Manifest, signer: &Signer) -> Result<SealedManifest, SignError> {
        let signature = signer.sign(Namespace::Request, &manifest_bytes(&manifest)?)?;
        Ok(SealedManifest {
            manifest,
            signature,
        })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        // A struct of strings, integers and a time always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The manifest's digest: what an approval signs.
    pub fn digest(&self) -> Result<Digest, CanonicalError> {
        Ok(Digest::of(&manifest_bytes(&self.manifest)?))
    }
}

/// The bytes a manifest signature covers: its canonical JSON.
pub fn manifest_bytes(manifest: &Manifest) -> Result<Vec<u8>, CanonicalError> {
    canonical_json_value(&serde_json::to_value(manifest)?)
}

/// What an approver signs (namespace `mfa-reset-approve`): the manifest digest in hex, so
/// `printf %s DIGEST | ssh-keygen -Y sign -n mfa-reset-approve -f KEY` makes the same.
pub fn approval_message(manifest_digest: &Digest) -> String {
    manifest_digest.to_hex()
}

/// Approve the batch whose manifest has `manifest_digest`: the [`APPROVAL_HEADER`] value.
pub fn approve(manifest_digest: &Digest, signer: &Signer) -> Result<String, SignError> {
    signer.sign(
        Namespace::Approve,
        approval_message(manifest_digest).as_bytes(),
    )
}

/// The Merkle leaf of a request: canonical JSON of everything but `carry`, `replay` and
/// `proof` (the compact form's proof of this very leaf).
///
/// Written straight from [`Leaf`], whose fields are declared in canonical order, instead of
/// through a `serde_json::Value` that is then sorted: the same bytes (the tests hold it to
/// [`canonical_json_value`] of the request), at a fraction of the cost, which `enqueue` pays
/// once per request before it can sign the batch.
pub fn leaf_bytes(request: &ResetRequest) -> Result<Vec<u8>, CanonicalError> {
    Ok(serde_json::to_vec(&Leaf::of(request))?)
}

/// The part of a [`ResetRequest`] its leaf covers, keys in canonical order (sorted by their
/// UTF-8 bytes), each serialised as the request serialises it: strings and integers only, so
/// `serde_json`'s compact output is the canonical JSON.
#[derive(Serialize)]
struct Leaf<'a> {
    batch: &'a str,
    dry_run: bool,
    reason: &'a Option<String>,
    request_id: &'a uuid::Uuid,
    requested_at: &'a DateTime<Utc>,
    requested_by: &'a Option<String>,
    revoke_sessions: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tap: Option<&'a crate::domain::TapRequest>,
    ticket: &'a Option<String>,
    user: &'a crate::domain::UserRef,
    version: u32,
}

impl<'a> Leaf<'a> {
    fn of(request: &'a ResetRequest) -> Leaf<'a> {
        // No `..`: a field added to the request does not compile here until it is placed in
        // the leaf or named as left out.
        let ResetRequest {
            version,
            request_id,
            batch,
            user,
            ticket,
            reason,
            requested_by,
            dry_run,
            revoke_sessions,
            requested_at,
            replay: _,
            tap,
            carry: _,
            proof: _,
        } = request;
        Leaf {
            batch,
            dry_run: *dry_run,
            reason,
            request_id,
            requested_at,
            requested_by,
            revoke_sessions: *revoke_sessions,
            tap: tap.as_ref(),
            ticket,
            user,
            version: *version,
        }
    }
}

/// A whole batch sealed at once: the signed manifest and every request's proof (what
/// `enqueue` does in two passes over its input, kept in memory here for small batches and
/// tests).
#[derive(Debug, Clone)]
pub struct SealedBatch {
    /// The signed manifest.
    pub manifest: SealedManifest,
    /// Proof of request `i`, in order.
    pub proofs: Vec<MerkleProof>,
    /// The batch's cap, for the compact form.
    pub cap: MerkleCap,
    /// Path of request `i` up to the cap, in order.
    pub cap_paths: Vec<Vec<Digest>>,
}

impl SealedBatch {
    /// Seal `requests` (all of one batch) as `requested_by`, signed by `signer`.
    pub fn seal(
        requests: &[ResetRequest],
        requested_by: &str,
        signer: &Signer,
        now: DateTime<Utc>,
    ) -> Result<SealedBatch, SignError> {
        SealedBatch::seal_capped(requests, requested_by, signer, now, CAP_NODES)
    }

    /// As [`SealedBatch::seal`], with a cap of at most `cap_nodes` nodes (tests use small
    /// ones so requests carry a path).
    pub fn seal_capped(
        requests: &[ResetRequest],
        requested_by: &str,
        signer: &Signer,
        now: DateTime<Utc>,
        cap_nodes: u64,
    ) -> Result<SealedBatch, SignError> {
        let batch = requests
            .first()
            .map(|request| request.batch.clone())
            .unwrap_or_default();
        let leaves = requests
            .iter()
            .map(leaf_bytes)
            .collect::<Result<Vec<_>, _>>()?;
        let tree = super::MerkleTree::from_leaves(&leaves);
        let manifest = Manifest {
            batch,
            count: tree.len(),
            root: tree.root(),
            requested_by: requested_by.to_string(),
            created_at: now,
        };
        let proofs = (0..tree.len()).filter_map(|i| tree.proof(i)).collect();
        let cap = tree.cap(cap_nodes);
        let cap_paths = (0..tree.len())
            .filter_map(|i| tree.path_to_cap(i, &cap))
            .collect();
        Ok(SealedBatch {
            manifest: SealedManifest::seal(manifest, signer)?,
            proofs,
            cap,
            cap_paths,
        })
    }

    /// The header value of proof `index`.
    pub fn proof_header(&self, index: usize) -> String {
        self.proofs.get(index).map(proof_header).unwrap_or_default()
    }

    /// The `proof` field of request `index` (compact form).
    pub fn compact_proof(&self, index: usize) -> String {
        CompactProof {
            manifest: self.manifest.digest().unwrap_or(Digest::ZERO),
            index: index as u64,
            path: self.cap_paths.get(index).cloned().unwrap_or_default(),
        }
        .to_text()
    }
}

/// The [`PROOF_HEADER`] value of `proof`.
pub fn proof_header(proof: &MerkleProof) -> String {
    // Two integers and a base64 string always serialise.
    serde_json::to_string(proof).unwrap_or_default()
}

/// Where a request of a compact batch sits: its manifest, its leaf index, and the sibling
/// hashes from its leaf up to the batch's [`MerkleCap`]. The request's `proof` field holds
/// its bytes in base64 ([`CompactProof::to_text`]).
///
/// The bytes: the manifest digest (32), the index (8, big-endian), then the path (32
/// each), 296 bytes for a million-request batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactProof {
    /// Digest of the batch's manifest ([`SealedManifest::digest`]).
    pub manifest: Digest,
    /// The leaf index.
    pub index: u64,
    /// Sibling hashes, leaf level first, up to the cap's level.
    pub path: Vec<Digest>,
}

impl CompactProof {
    /// The header bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(40 + self.path.len() * Digest::LEN);
        bytes.extend_from_slice(self.manifest.as_bytes());
        bytes.extend_from_slice(&self.index.to_be_bytes());
        for hash in &self.path {
            bytes.extend_from_slice(hash.as_bytes());
        }
        bytes
    }

    /// The `proof` field's value: the bytes in base64.
    pub fn to_text(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// Read the `proof` field's value; the error says what is wrong with it.
    pub fn from_text(text: &str) -> Result<CompactProof, String> {
        use base64::Engine as _;
        if text.len() > MAX_PROOF {
            return Err(format!("{} characters, more than any proof", text.len()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|error| format!("not base64: {error}"))?;
        CompactProof::from_bytes(&bytes)
    }

    /// Read the bytes; the error says what is wrong with them.
    pub fn from_bytes(bytes: &[u8]) -> Result<CompactProof, String> {
        if bytes.len() > MAX_PROOF {
            return Err(format!("{} bytes, more than any proof", bytes.len()));
        }
        let (Some(digest), Some(index)) = (bytes.get(..32), bytes.get(32..40)) else {
            return Err(format!(
                "{} bytes, too short for a manifest digest and an index",
                bytes.len()
            ));
        };
        let path = digests_of(&bytes[40..])
            .ok_or_else(|| "its path is not a whole number of 32-byte hashes".to_string())?;
        let mut manifest = [0u8; 32];
        manifest.copy_from_slice(digest);
        let mut index_bytes = [0u8; 8];
        index_bytes.copy_from_slice(index);
        Ok(CompactProof {
            manifest: Digest(manifest),
            index: u64::from_be_bytes(index_bytes),
            path,
        })
    }
}

#[cfg(test)]
#[path = "requests_tests.rs"]
mod tests;
