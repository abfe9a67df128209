//! The checks a worker runs on a request before anything else, pure (no broker, no clock of
//! their own): the batch's manifest and approval ([`verify_batch`], [`verify_known_batch`]),
//! each request's proof ([`verify_request`], [`verify_compact_request`]), a replay's
//! signature ([`verify_replay`]), and the [`Verdict`] with its dead-letter [`Reason`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    approval_message, leaf_bytes, CompactProof, Manifest, SealedManifest, CLOCK_SKEW,
    MANIFEST_HEADER, MAX_MANIFEST, MAX_PROOF, PROOF_FIELD, PROOF_HEADER, REPLAY_HEADER,
};
use crate::domain::ResetRequest;
use crate::trust::canonical::canonical_json_value;
use crate::trust::merkle::{leaf_hash, verify_to_cap, MerkleCap, MerkleProof};
use crate::trust::sshsig::{verify, VerifyError};
use crate::trust::{AllowedSigners, Digest, Namespace, Principal, SignError, Signer};

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
