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

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::canonical::{canonical_json_value, CanonicalError};
use super::merkle::{digests_of, leaf_hash, verify_to_cap, MerkleCap, MerkleProof, CAP_NODES};
use super::sshsig::{verify, VerifyError};
use super::{AllowedSigners, Digest, Namespace, Principal, SignError, Signer};
use crate::domain::ResetRequest;

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

/// Why a request is not executed: the dead-letter reason of issue 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No manifest at all.
    Unsigned,
    /// A manifest whose signature does not verify (or is malformed).
    BadSignature,
    /// A valid signature by a key not allowed to request (or claiming another principal).
    SignerNotAllowed,
    /// The request is not the leaf its proof says, of the signed batch.
    NotInBatch,
    /// A batch above `security.approval_above` without a valid approval by another person.
    NotApproved,
    /// A signed `requested_at` further in the future than [`CLOCK_SKEW`].
    FutureRequest,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 6] = [
        Reason::Unsigned,
        Reason::BadSignature,
        Reason::SignerNotAllowed,
        Reason::NotInBatch,
        Reason::NotApproved,
        Reason::FutureRequest,
    ];

    /// The exact string in dead letters (`x-mfa-error-code`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Unsigned => "unsigned",
            Reason::BadSignature => "bad_signature",
            Reason::SignerNotAllowed => "signer_not_allowed",
            Reason::NotInBatch => "not_in_batch",
            Reason::NotApproved => "not_approved",
            Reason::FutureRequest => "future_request",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request refused: the reason and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The dead-letter reason.
    pub reason: Reason,
    /// What exactly failed.
    pub message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The principals behind a verified request: who requested its batch, and who approved it
/// (when it needed approval). Outcome records carry them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The requester, as `allowed_signers` names them (namespace `mfa-reset-request`).
    pub requested_by: Principal,
    /// The second person, when the batch carries an approval (namespace `mfa-reset-approve`).
    pub approved_by: Option<Principal>,
    /// Digest of the batch's manifest.
    pub manifest: Digest,
    /// The request's leaf index in the manifest (its proof's): outcomes name it, so the
    /// audit finds every user of the batch without a verified outcome.
    #[serde(default)]
    pub item: u64,
    /// The admin whose grant let this replay run (`replay > 0` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_by: Option<Replayer>,
}

/// The admin who signed a replay's grant: who, and with which key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayer {
    /// As `allowed_signers` names them (namespace `mfa-reset-admin`).
    pub principal: Principal,
    /// `SHA256:…` fingerprint of the key that signed the grant.
    pub key: String,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed, in its batch, approved when it had to be: run it.
    Verified(Verified),
    /// Dead-letter it with the reason; never execute it.
    Refused(Refusal),
}

impl Verdict {
    /// A verified verdict naming the admin who granted its replay.
    pub fn replayed_by(self, replayer: Option<Replayer>) -> Verdict {
        match self {
            Verdict::Verified(verified) => Verdict::Verified(Verified {
                replayed_by: replayer,
                ..verified
            }),
            refused => refused,
        }
    }
}

/// What verification needs from the deployment.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `security.allowed_signers`.
    pub allowed: &'a AllowedSigners,
    /// `security.approval_above`.
    pub approval_above: u64,
}

/// A batch whose manifest (and approval, when present) verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedBatch {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Its digest.
    pub digest: Digest,
    /// Who signed it.
    pub requested_by: Principal,
    /// Who approved it.
    pub approved_by: Option<Principal>,
}

/// The headers verification reads, as text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seal<'a> {
    /// [`MANIFEST_HEADER`].
    pub manifest: Option<&'a str>,
    /// [`PROOF_HEADER`].
    pub proof: Option<&'a str>,
    /// The request's `proof` field (compact form; ignored when `manifest` is present).
    pub leaf: Option<&'a str>,
    /// [`APPROVAL_HEADER`].
    pub approval: Option<&'a str>,
    /// [`REPLAY_HEADER`].
    pub replay: Option<&'a str>,
}

/// What an admin signs (namespace `mfa-reset-admin`, canonical JSON) to replay `request`:
/// its id, the replay number it will run under, and its batch.
pub fn replay_message(request: &ResetRequest) -> Value {
    serde_json::json!({
        "request_id": request.request_id,
        "replay": request.replay,
        "batch": request.batch,
    })
}

/// The [`REPLAY_HEADER`] value granting `request` (its `replay` already incremented).
pub fn sign_replay(request: &ResetRequest, signer: &Signer) -> Result<String, SignError> {
    signer.sign_canonical(Namespace::Admin, &replay_message(request))
}

/// Is a replayed `request` (`replay > 0`) granted by an admin in `allowed`? `Ok(None)` for a
/// first run, `Ok(Some(admin))` (who signed, with which key) for a valid grant of exactly this request id, replay number
/// and batch; otherwise the refusal (`unsigned`, `bad_signature`, `signer_not_allowed`).
pub fn verify_replay(
    request: &ResetRequest,
    replay_header: Option<&str>,
    allowed: &AllowedSigners,
    now: DateTime<Utc>,
) -> Result<Option<Replayer>, Refusal> {
    if request.replay == 0 {
        return Ok(None);
    }
    let grant = replay_header
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .ok_or_else(|| {
            Refusal::new(
                Reason::Unsigned,
                format!(
                    "replay {} without a {REPLAY_HEADER} header: replays are signed by an admin \
                     (`mfa-reset dlq replay --yes --key FILE`)",
                    request.replay
                ),
            )
        })?;
    if grant.len() > MAX_MANIFEST {
        return Err(Refusal::new(
            Reason::BadSignature,
            format!(
                "the {REPLAY_HEADER} header is {} bytes, more than any signature",
                grant.len()
            ),
        ));
    }
    let bytes = canonical_json_value(&replay_message(request)).map_err(|error| {
        Refusal::new(
            Reason::BadSignature,
            format!("the replay grant has no canonical form: {error}"),
        )
    })?;
    let admin = verify(grant, Namespace::Admin, &bytes, allowed, now).map_err(|error| {
        from_verify(
            error,
            &format!(
                "the replay grant (request {}, replay {}, batch {})",
                request.request_id, request.replay, request.batch
            ),
        )
    })?;
    Ok(Some(Replayer {
        principal: admin.principal,
        key: admin.fingerprint,
    }))
}

/// Check a batch's manifest signature and, when present or needed, its approval, at `now`.
pub fn verify_batch(
    manifest_header: Option<&str>,
    approval_header: Option<&str>,
    policy: &Policy<'_>,
    now: DateTime<Utc>,
) -> Result<TrustedBatch, Refusal> {
    let text = manifest_header
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .ok_or_else(|| {
            Refusal::new(
                Reason::Unsigned,
                format!(
                    "neither a {MANIFEST_HEADER} header nor a {PROOF_FIELD} field: not \
                     enqueued by `mfa-reset enqueue --key`"
                ),
            )
        })?;
    let bad = |message: String| Refusal::new(Reason::BadSignature, message);
    if text.len() > MAX_MANIFEST {
        return Err(bad(format!(
            "the {MANIFEST_HEADER} header is {} bytes, more than any manifest",
            text.len()
        )));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|error| bad(format!("the {MANIFEST_HEADER} header is not JSON: {error}")))?;
    let signature = value
        .get("signature")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("the {MANIFEST_HEADER} header has no signature")))?;
    // Verify the manifest as received, not a re-serialisation of what we parsed.
    let signed = value
        .get("manifest")
        .ok_or_else(|| bad(format!("the {MANIFEST_HEADER} header has no manifest")))?;
    let bytes = canonical_json_value(signed)
        .map_err(|error| bad(format!("the manifest has no canonical form: {error}")))?;
    let signer = verify(signature, Namespace::Request, &bytes, policy.allowed, now)
        .map_err(|error| from_verify(error, "the batch manifest"))?;
    let sealed: SealedManifest = serde_json::from_value(value).map_err(|error| {
        bad(format!(
            "the manifest is not one this worker reads: {error}"
        ))
    })?;
    let manifest = sealed.manifest;
    if manifest.requested_by != signer.principal.as_str() {
        return Err(Refusal::new(
            Reason::SignerNotAllowed,
            format!(
                "the manifest says requested_by {:?} but is signed by {} ({})",
                manifest.requested_by, signer.principal, signer.fingerprint
            ),
        ));
    }
    let digest = Digest::of(&bytes);
    let approved_by = match approval_header.map(str::trim).filter(|a| !a.is_empty()) {
        None if manifest.count > policy.approval_above => {
            return Err(Refusal::new(
                Reason::NotApproved,
                format!(
                    "batch {} holds {} requests, more than security.approval_above ({}), and \
                     nobody approved it: a second person runs `mfa-reset approve --batch {}`",
                    manifest.batch, manifest.count, policy.approval_above, manifest.batch
                ),
            ))
        }
        None => None,
        Some(approval) => Some(verify_approval(
            approval,
            &digest,
            &signer.principal,
            policy,
            now,
        )?),
    };
    Ok(TrustedBatch {
        manifest,
        digest,
        requested_by: signer.principal,
        approved_by,
    })
}

/// The approver of the manifest with `digest`, unless the approval is not valid for it.
fn verify_approval(
    approval: &str,
    digest: &Digest,
    requester: &Principal,
    policy: &Policy<'_>,
    now: DateTime<Utc>,
) -> Result<Principal, Refusal> {
    let not_approved = |message: String| Refusal::new(Reason::NotApproved, message);
    let approver = verify(
        approval,
        Namespace::Approve,
        approval_message(digest).as_bytes(),
        policy.allowed,
        now,
    )
    .map_err(|error| {
        not_approved(format!(
            "the approval does not verify for this batch's manifest ({error})"
        ))
    })?;
    if &approver.principal == requester {
        return Err(not_approved(format!(
            "approved by {requester}, who requested it: nobody approves their own batch"
        )));
    }
    Ok(approver.principal)
}

fn from_verify(error: VerifyError, what: &str) -> Refusal {
    let reason = match error {
        VerifyError::Unsigned => Reason::Unsigned,
        VerifyError::Malformed(_) | VerifyError::BadSignature(_) => Reason::BadSignature,
        VerifyError::SignerNotAllowed(_) => Reason::SignerNotAllowed,
    };
    Refusal::new(reason, format!("{what}: {error}"))
}

/// Is `request` leaf `proof` of `batch`, and not from the future?
pub fn verify_request(
    request: &ResetRequest,
    proof_header: Option<&str>,
    batch: &TrustedBatch,
    now: DateTime<Utc>,
) -> Verdict {
    match check_request(request, proof_header, batch, now) {
        Ok(item) => verified(batch, item),
        Err(refusal) => Verdict::Refused(refusal),
    }
}

/// A request verified as leaf `item` of `batch`.
fn verified(batch: &TrustedBatch, item: u64) -> Verdict {
    Verdict::Verified(Verified {
        requested_by: batch.requested_by.clone(),
        approved_by: batch.approved_by.clone(),
        manifest: batch.digest,
        item,
        replayed_by: None,
    })
}

fn not_in_batch(message: String) -> Refusal {
    Refusal::new(Reason::NotInBatch, message)
}

fn same_batch(request: &ResetRequest, manifest: &Manifest) -> Result<(), Refusal> {
    if request.batch != manifest.batch {
        return Err(not_in_batch(format!(
            "the request names batch {:?}, its manifest batch {:?}",
            request.batch, manifest.batch
        )));
    }
    Ok(())
}

fn not_from_the_future(request: &ResetRequest, now: DateTime<Utc>) -> Result<(), Refusal> {
    if request.requested_at > now + CLOCK_SKEW {
        return Err(Refusal::new(
            Reason::FutureRequest,
            format!(
                "requested_at {} is in the future (now {}); a request cannot be dated ahead \
                 to outlive reset.max_request_age",
                request.requested_at.to_rfc3339(),
                now.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

fn check_request(
    request: &ResetRequest,
    proof_header: Option<&str>,
    batch: &TrustedBatch,
    now: DateTime<Utc>,
) -> Result<u64, Refusal> {
    let manifest = &batch.manifest;
    same_batch(request, manifest)?;
    let text = proof_header
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .ok_or_else(|| not_in_batch(format!("no {PROOF_HEADER} header")))?;
    if text.len() > MAX_PROOF {
        return Err(not_in_batch(format!(
            "the {PROOF_HEADER} header is {} bytes, more than any proof",
            text.len()
        )));
    }
    let proof: MerkleProof = serde_json::from_str(text)
        .map_err(|error| not_in_batch(format!("the {PROOF_HEADER} header: {error}")))?;
    if proof.count != manifest.count {
        return Err(not_in_batch(format!(
            "the proof is for a batch of {}, the manifest holds {}",
            proof.count, manifest.count
        )));
    }
    let leaf = leaf_bytes(request)
        .map_err(|error| not_in_batch(format!("the request has no canonical form: {error}")))?;
    if !proof.verify(&leaf, &manifest.root) {
        return Err(not_in_batch(format!(
            "the request is not leaf {} of batch {} as signed (changed, or another batch's proof)",
            proof.index, manifest.batch
        )));
    }
    not_from_the_future(request, now)?;
    Ok(proof.index)
}

/// A compact batch's manifest record, checked: what a worker keeps per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownBatch {
    /// The sealed manifest as a [`MANIFEST_HEADER`] value: its signature (and a request's
    /// approval) are checked from it exactly as for the inline form.
    pub header: String,
    /// The manifest, as verified (without an approval: approvals travel on the requests).
    pub batch: TrustedBatch,
    /// The cap, checked against the signed count and root.
    pub cap: MerkleCap,
}

/// Check a compact batch's manifest record at `now`: the operator's signature against
/// `allowed` (any count: the approval is checked per request), and that `cap` has the nodes
/// of its level for the signed count and folds up to the signed root.
pub fn verify_known_batch(
    sealed: &SealedManifest,
    cap: &MerkleCap,
    allowed: &AllowedSigners,
    now: DateTime<Utc>,
) -> Result<KnownBatch, Refusal> {
    let header = sealed.to_header();
    let policy = Policy {
        allowed,
        approval_above: u64::MAX,
    };
    let batch = verify_batch(Some(&header), None, &policy, now)?;
    let manifest = &batch.manifest;
    if !cap.fits(manifest.count) {
        return Err(Refusal::new(
            Reason::BadSignature,
            format!(
                "the Merkle cap of batch {} holds {} nodes at level {}, not the level's nodes of \
                 {} leaves",
                manifest.batch,
                cap.nodes.len(),
                cap.level,
                manifest.count
            ),
        ));
    }
    if cap.root() != manifest.root {
        return Err(Refusal::new(
            Reason::BadSignature,
            format!(
                "the Merkle cap of batch {} does not fold up to its signed root",
                manifest.batch
            ),
        ));
    }
    Ok(KnownBatch {
        header,
        batch,
        cap: cap.clone(),
    })
}

/// Is `request` leaf `proof.index` of `batch` (whose cap is `cap`), and not from the future?
/// `batch` is the [`KnownBatch`]'s, with the request's approval checked when it needs one.
pub fn verify_compact_request(
    request: &ResetRequest,
    proof: &CompactProof,
    batch: &TrustedBatch,
    cap: &MerkleCap,
    now: DateTime<Utc>,
) -> Verdict {
    match check_compact(request, proof, batch, cap, now) {
        Ok(item) => verified(batch, item),
        Err(refusal) => Verdict::Refused(refusal),
    }
}

fn check_compact(
    request: &ResetRequest,
    proof: &CompactProof,
    batch: &TrustedBatch,
    cap: &MerkleCap,
    now: DateTime<Utc>,
) -> Result<u64, Refusal> {
    let manifest = &batch.manifest;
    same_batch(request, manifest)?;
    if proof.manifest != batch.digest {
        return Err(not_in_batch(format!(
            "the request's {PROOF_FIELD} names manifest {}, not batch {}'s {}",
            proof.manifest, manifest.batch, batch.digest
        )));
    }
    let leaf = leaf_bytes(request)
        .map_err(|error| not_in_batch(format!("the request has no canonical form: {error}")))?;
    if !verify_to_cap(
        &leaf_hash(&leaf),
        proof.index,
        manifest.count,
        &proof.path,
        cap,
    ) {
        return Err(not_in_batch(format!(
            "the request is not leaf {} of batch {} as signed (changed, or another batch's proof)",
            proof.index, manifest.batch
        )));
    }
    not_from_the_future(request, now)?;
    Ok(proof.index)
}

/// [`verify_batch`] then [`verify_request`], without a cache: the inline form only (a
/// compact request needs its [`KnownBatch`]; see `worker::verify`).
pub fn verdict(
    request: &ResetRequest,
    seal: Seal<'_>,
    policy: &Policy<'_>,
    now: DateTime<Utc>,
) -> Verdict {
    let replayed_by = match verify_replay(request, seal.replay, policy.allowed, now) {
        Ok(replayed_by) => replayed_by,
        Err(refusal) => return Verdict::Refused(refusal),
    };
    match verify_batch(seal.manifest, seal.approval, policy, now) {
        Ok(batch) => verify_request(request, seal.proof, &batch, now).replayed_by(replayed_by),
        Err(refusal) => Verdict::Refused(refusal),
    }
}

#[cfg(test)]
#[path = "requests_tests.rs"]
mod tests;
