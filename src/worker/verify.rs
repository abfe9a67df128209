//! The worker's gate: every request is verified ([`crate::trust::requests`]) before it is
//! claimed, before Graph. A batch's manifest signature (and approval) is checked once and
//! the [`TrustedBatch`] kept, keyed by the exact header bytes, so the per-request cost is
//! one Merkle path: a million-request batch costs one sshsig verification per worker, not a
//! million.
//!
//! Compact batches (requests carrying only their `proof` field): the session's outcomes-stream
//! follower hands every manifest record to [`Gatekeeper::learn`], which keeps those whose
//! signature and cap verify ([`KnownBatch`], by manifest digest; at most
//! `security.known_batches`, the least recently used forgotten first). A forged record fails there
//! and is never kept, so it cannot stand in for a genuine one; a request whose manifest is not
//! known is refused (`unsigned`) — after the delivery code has caught up with the stream and,
//! when the follower may have missed or forgotten it, looked it up ([`Gatekeeper::may_look_up`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::SecuritySettings;
use crate::domain::{BatchManifest, ResetRequest};
use crate::trust::requests::{
    verify_batch, verify_compact_request, verify_known_batch, verify_replay, verify_request,
    CompactProof, KnownBatch, Policy, Reason, Refusal, Seal, TrustedBatch, Verdict, PROOF_FIELD,
};
use crate::trust::{AllowedSigners, Digest};

/// Compact batches remembered by default (`security.known_batches`; manifest and cap: at
/// most 128 KiB each, so 8 MiB at worst, inside the worker's 100 MB). One forgotten is looked
/// up on the outcomes stream again when a request needs it.
pub const KNOWN_CAPACITY: usize = 64;
/// How far back a request's manifest is looked up on the stream: a request older than this
/// whose manifest this worker does not know is refused without reading the stream (it could
/// only expire anyway: `reset.max_request_age` is shorter).
const LOOKUP_HORIZON: chrono::Duration = chrono::Duration::days(7);
/// A manifest is published at its batch's `requested_at` or a little later; the stream is
/// read from this much earlier (broker and producer clocks differ).
pub const LOOKUP_SLACK: chrono::Duration = chrono::Duration::minutes(5);
/// Digests looked up and not found, remembered so a repeated forgery is not looked up again.
const NOT_FOUND_CAPACITY: usize = 4096;

/// How long a verified manifest is trusted without checking its signature again (a key's
/// `valid-before` in `allowed_signers` takes effect within this time).
const CACHE_FOR: Duration = Duration::from_secs(300);
/// Verified manifests kept; past it the cache starts over (batches are few).
const CACHE_CAPACITY: usize = 4096;

/// Verifies requests against `security.allowed_signers`, remembering verified manifests.
pub struct Gatekeeper {
    allowed: AllowedSigners,
    approval_above: u64,
    verified: Mutex<HashMap<Digest, (TrustedBatch, Instant)>>,
    known: Mutex<Known>,
    /// Held while a manifest is looked up on the stream: one lookup at a time.
    pub(super) lookups: tokio::sync::Mutex<()>,
}

/// The compact batches learnt, and what the follower has covered.
#[derive(Default)]
struct Known {
    batches: HashMap<Digest, (Arc<KnownBatch>, u64)>,
    /// Ticks on every use: the least recently used batch has the smallest tick.
    clock: u64,
    capacity: usize,
    /// Batches forgotten to stay within `capacity`: the follower's coverage has holes.
    evicted: u64,
    /// The outcomes stream has been followed from here (every manifest since was seen).
    followed_since: Option<DateTime<Utc>>,
    not_found: HashSet<Digest>,
}

impl Gatekeeper {
    /// From `[security]`. Without `security.allowed_signers` no worker starts: nothing runs
    /// unsigned.
    pub fn from_settings(security: &SecuritySettings) -> anyhow::Result<Gatekeeper> {
        anyhow::ensure!(
            !security.allowed_signers.trim().is_empty(),
            "security.allowed_signers is not set (MFA_RESET__SECURITY__ALLOWED_SIGNERS): a worker \
             executes only requests signed by a key listed there, so it does not start without \
             one. Write an OpenSSH allowed_signers file naming your operators' SSH keys with \
             namespaces=\"mfa-reset-request,mfa-reset-approve\" (see README, \"Security\"), or \
             run `mfa-reset keys --dir DIR` for throw-away keys to try it out"
        );
        let path = Path::new(&security.allowed_signers);
        let allowed = AllowedSigners::read(path).context("loading security.allowed_signers")?;
        anyhow::ensure!(
            !allowed.is_empty(),
            "security.allowed_signers ({}) lists no key: no request could ever be executed; \
             add your operators' SSH public keys",
            path.display()
        );
        Ok(Gatekeeper::with_capacity(
            allowed,
            security.approval_above,
            security.known_batches,
        ))
    }

    /// A gatekeeper for `allowed` with the two-person rule above `approval_above`.
    pub fn new(allowed: AllowedSigners, approval_above: u64) -> Gatekeeper {
        Gatekeeper::with_capacity(allowed, approval_above, KNOWN_CAPACITY)
    }

    /// As [`Gatekeeper::new`], remembering at most `capacity` compact batches.
    pub fn with_capacity(
        allowed: AllowedSigners,
        approval_above: u64,
        capacity: usize,
    ) -> Gatekeeper {
        Gatekeeper {
            allowed,
            approval_above,
            verified: Mutex::new(HashMap::new()),
            known: Mutex::new(Known {
                capacity: capacity.max(1),
                ..Known::default()
            }),
            lookups: tokio::sync::Mutex::new(()),
        }
    }

    /// The verdict on `request` delivered with `seal`, at `now`.
    /// A replay (`replay > 0`) needs an admin's grant first ([`verify_replay`]).
    pub fn check(&self, request: &ResetRequest, seal: Seal<'_>, now: DateTime<Utc>) -> Verdict {
        let replayed_by = match verify_replay(request, seal.replay, &self.allowed, now) {
            Ok(replayed_by) => replayed_by,
            Err(refusal) => return Verdict::Refused(refusal),
        };
        let verdict = match (seal.manifest, seal.leaf) {
            // The inline form wins: it is self-contained.
            (None, Some(leaf)) => self.check_compact(request, leaf, seal, now),
            _ => match self.batch(seal, now) {
                Ok(batch) => verify_request(request, seal.proof, &batch, now),
                Err(refusal) => Verdict::Refused(refusal),
            },
        };
        verdict.replayed_by(replayed_by)
    }

    fn check_compact(
        &self,
        request: &ResetRequest,
        leaf: &str,
        seal: Seal<'_>,
        now: DateTime<Utc>,
    ) -> Verdict {
        let proof = match CompactProof::from_text(leaf) {
            Ok(proof) => proof,
            Err(error) => {
                return Verdict::Refused(Refusal {
                    reason: Reason::NotInBatch,
                    message: format!("the request's {PROOF_FIELD}: {error}"),
                })
            }
        };
        let Some(known) = self.known(&proof.manifest) else {
            return Verdict::Refused(Refusal {
                reason: Reason::Unsigned,
                message: format!(
                    "the manifest {} of batch {:?} was not found on the outcomes stream \
                     (no manifest record with that digest whose signature and Merkle cap \
                     verify): not enqueued by `mfa-reset enqueue --key`, or older than this \
                     worker reads",
                    proof.manifest, request.batch
                ),
            });
        };
        // The signature (again after CACHE_FOR) and the approval, as for the inline form.
        let manifest = Seal {
            manifest: Some(&known.header),
            approval: seal.approval,
            ..Seal::default()
        };
        match self.batch(manifest, now) {
            Ok(batch) => verify_compact_request(request, &proof, &batch, &known.cap, now),
            Err(refusal) => Verdict::Refused(refusal),
        }
    }

    /// Keep `manifest` when it is a compact batch's whose signature and cap verify at `now`.
    /// `None` for a manifest record without a cap (nothing to keep); the refusal of one that
    /// does not verify.
    pub fn learn(
        &self,
        manifest: &BatchManifest,
        now: DateTime<Utc>,
    ) -> Option<Result<(), Refusal>> {
        let (Some(sealed), Some(cap)) = (&manifest.sealed, &manifest.cap) else {
            return None;
        };
        let digest = sealed.digest().ok()?;
        if self.known(&digest).is_some() {
            return Some(Ok(()));
        }
        let known = match verify_known_batch(sealed, cap, &self.allowed, now) {
            Ok(known) => known,
            Err(refusal) => return Some(Err(refusal)),
        };
        if let Ok(mut state) = self.known.lock() {
            state.clock += 1;
            let tick = state.clock;
            if state.batches.len() >= state.capacity {
                let oldest = state
                    .batches
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(digest, _)| *digest);
                if let Some(oldest) = oldest {
                    state.batches.remove(&oldest);
                    state.evicted += 1;
                }
            }
            state.not_found.remove(&digest);
            state.batches.insert(digest, (Arc::new(known), tick));
        }
        Some(Ok(()))
    }

    /// The compact batch with manifest `digest`, if known (and marked used).
    fn known(&self, digest: &Digest) -> Option<Arc<KnownBatch>> {
        let mut state = self.known.lock().ok()?;
        state.clock += 1;
        let tick = state.clock;
        let (known, used) = state.batches.get_mut(digest)?;
        *used = tick;
        Some(known.clone())
    }

    /// The manifest digest of a compact request (no `mfa-manifest`, a `proof` field) whose
    /// batch is not known: the caller catches up with the stream, then looks again.
    pub fn unknown_batch(&self, seal: &Seal<'_>) -> Option<Digest> {
        if seal.manifest.is_some() {
            return None;
        }
        let proof = CompactProof::from_text(seal.leaf?).ok()?;
        self.known(&proof.manifest)
            .is_none()
            .then_some(proof.manifest)
    }

    /// The outcomes stream is followed from `since` on (every manifest record since then
    /// reaches [`Gatekeeper::learn`]).
    pub fn followed_since(&self, since: DateTime<Utc>) {
        if let Ok(mut state) = self.known.lock() {
            state.followed_since = Some(since);
        }
    }

    /// Worth reading the stream for manifest `digest` of a request made at `requested_at`?
    /// Only when the follower may have missed it (the request is older than where it
    /// started) or forgotten it (batches were evicted), within [`LOOKUP_HORIZON`], and not
    /// looked up in vain before: anything else is known already or does not exist.
    pub fn may_look_up(
        &self,
        digest: &Digest,
        requested_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let Ok(state) = self.known.lock() else {
            return false;
        };
        let missed = state
            .followed_since
            .is_none_or(|since| requested_at < since + LOOKUP_SLACK);
        (missed || state.evicted > 0)
            && requested_at > now - LOOKUP_HORIZON
            && !state.not_found.contains(digest)
    }

    /// Manifest `digest` was looked up on the stream and not found (or did not verify).
    pub fn not_found(&self, digest: Digest) {
        if let Ok(mut state) = self.known.lock() {
            if state.not_found.len() >= NOT_FOUND_CAPACITY {
                state.not_found.clear();
            }
            state.not_found.insert(digest);
        }
    }

    fn batch(
        &self,
        seal: Seal<'_>,
        now: DateTime<Utc>,
    ) -> Result<TrustedBatch, crate::trust::requests::Refusal> {
        // The key covers the signatures too: a forged manifest with a known one's content
        // never finds the known one here.
        let key = seal.manifest.map(|manifest| {
            let mut bytes = manifest.as_bytes().to_vec();
            bytes.push(0);
            bytes.extend_from_slice(seal.approval.unwrap_or("").as_bytes());
            Digest::of(&bytes)
        });
        if let Some(key) = key {
            if let Ok(cache) = self.verified.lock() {
                if let Some((batch, at)) = cache.get(&key) {
                    if at.elapsed() < CACHE_FOR {
                        return Ok(batch.clone());
                    }
                }
            }
        }
        let policy = Policy {
            allowed: &self.allowed,
            approval_above: self.approval_above,
        };
        let batch = verify_batch(seal.manifest, seal.approval, &policy, now)?;
        if let (Some(key), Ok(mut cache)) = (key, self.verified.lock()) {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, (batch.clone(), Instant::now()));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{UserRef, REQUEST_VERSION};
    use crate::trust::requests::{Reason, SealedBatch};
    use crate::trust::{KeySet, Signer};

    fn request(i: usize) -> ResetRequest {
        let user = UserRef::parse(&format!("user{i}@contoso.com")).unwrap();
        ResetRequest {
            version: REQUEST_VERSION,
            request_id: ResetRequest::id_for("b1", &user),
            batch: "b1".into(),
            user,
            ticket: None,
            reason: None,
            requested_by: None,
            dry_run: false,
            revoke_sessions: false,
            requested_at: Utc::now(),
            replay: 0,
            tap: None,
            carry: None,
            proof: None,
        }
    }

    #[test]
    fn a_verified_manifest_is_remembered_but_never_lent_to_a_forged_copy_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeySet::generate(dir.path()).unwrap();
        let allowed = AllowedSigners::read(&keys.allowed_signers).unwrap();
        let gate = Gatekeeper::new(allowed, 25);
        let alice = Signer::from_key_file(&keys.requester.path).unwrap();
        let requests = vec![request(0), request(1)];
        let sealed =
            SealedBatch::seal(&requests, &keys.requester.principal, &alice, Utc::now()).unwrap();
        let manifest = sealed.manifest.to_header();
        let seal = |i: usize, manifest: &'_ str, proof: &'_ str| -> Verdict {
            let seal = Seal {
                manifest: Some(manifest),
                proof: Some(proof),
                leaf: None,
                approval: None,
                replay: None,
            };
            gate.check(&requests[i], seal, Utc::now())
        };
        for i in 0..2 {
            assert!(matches!(
                seal(i, &manifest, &sealed.proof_header(i)),
                Verdict::Verified(_)
            ));
        }
        assert_eq!(
            gate.verified.lock().unwrap().len(),
            1,
            "one batch, one entry"
        );

        // The same manifest content with the signature of another message: not from the cache.
        let mut forged = sealed.manifest.clone();
        forged.signature = alice
            .sign(crate::trust::Namespace::Request, b"something else")
            .unwrap();
        let Verdict::Refused(refusal) = seal(0, &forged.to_header(), &sealed.proof_header(0))
        else {
            panic!("a forged manifest verified");
        };
        assert_eq!(refusal.reason, Reason::BadSignature);
    }

    fn record(sealed: &SealedBatch, cap: Option<crate::trust::MerkleCap>) -> BatchManifest {
        BatchManifest {
            batch: "b1".into(),
            count: sealed.manifest.manifest.count,
            source: "test".into(),
            dry_run: false,
            revoke_sessions: false,
            requested_by: None,
            created_at: Utc::now(),
            sealed: Some(sealed.manifest.clone()),
            cap: cap.or_else(|| Some(sealed.cap.clone())),
        }
    }

    #[test]
    fn compact_requests_verify_only_against_a_learnt_record_and_forgotten_ones_may_be_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeySet::generate(dir.path()).unwrap();
        let allowed = AllowedSigners::read(&keys.allowed_signers).unwrap();
        let gate = Gatekeeper::with_capacity(allowed, 25, 1);
        let alice = Signer::from_key_file(&keys.requester.path).unwrap();
        let requests: Vec<_> = (0..5).map(request).collect();
        let sealed =
            SealedBatch::seal_capped(&requests, &keys.requester.principal, &alice, Utc::now(), 2)
                .unwrap();
        let digest = sealed.manifest.digest().unwrap();
        let leaves: Vec<String> = (0..5).map(|i| sealed.compact_proof(i)).collect();
        let compact = |i: usize| Seal {
            leaf: Some(&leaves[i]),
            ..Seal::default()
        };
        gate.followed_since(Utc::now() - chrono::Duration::hours(1));
        let Verdict::Refused(refusal) = gate.check(&requests[0], compact(0), Utc::now()) else {
            panic!("verified before its manifest record was seen");
        };
        assert_eq!(refusal.reason, Reason::Unsigned);
        assert!(
            refusal.message.contains("not found on the outcomes stream"),
            "{refusal}"
        );
        assert_eq!(gate.unknown_batch(&compact(0)), Some(digest));
        assert!(
            !gate.may_look_up(&digest, Utc::now(), Utc::now()),
            "the follower saw everything since it started: nothing to look up"
        );

        // A record whose cap was changed is not learnt; the genuine one is.
        let mut bent = sealed.cap.clone();
        bent.nodes[1].0[0] ^= 1;
        assert!(matches!(
            gate.learn(&record(&sealed, Some(bent)), Utc::now()),
            Some(Err(_))
        ));
        assert_eq!(gate.unknown_batch(&compact(0)), Some(digest));
        assert_eq!(gate.learn(&record(&sealed, None), Utc::now()), Some(Ok(())));
        for (i, request) in requests.iter().enumerate() {
            let verdict = gate.check(request, compact(i), Utc::now());
            assert!(matches!(verdict, Verdict::Verified(_)), "{i}: {verdict:?}");
        }
        // Another request's proof: not in the batch.
        let Verdict::Refused(refusal) = gate.check(&requests[1], compact(0), Utc::now()) else {
            panic!("a swapped proof verified");
        };
        assert_eq!(refusal.reason, Reason::NotInBatch);
        // With an inline manifest too, the inline form decides.
        let inline = sealed.manifest.to_header();
        let proof = sealed.proof_header(2);
        let both = Seal {
            manifest: Some(&inline),
            proof: Some(&proof),
            leaf: Some(&leaves[0]),
            ..Seal::default()
        };
        assert!(matches!(
            gate.check(&requests[2], both, Utc::now()),
            Verdict::Verified(_)
        ));

        // Learning a second batch forgets the first (capacity 1): now it may be looked up,
        // until a lookup found nothing.
        let others = vec![request(9)];
        let other =
            SealedBatch::seal(&others, &keys.requester.principal, &alice, Utc::now()).unwrap();
        assert_eq!(gate.learn(&record(&other, None), Utc::now()), Some(Ok(())));
        assert_eq!(gate.unknown_batch(&compact(0)), Some(digest));
        assert!(gate.may_look_up(&digest, Utc::now(), Utc::now()));
        assert!(
            !gate.may_look_up(&digest, Utc::now() - chrono::Duration::days(8), Utc::now()),
            "not past the lookup horizon"
        );
        gate.not_found(digest);
        assert!(!gate.may_look_up(&digest, Utc::now(), Utc::now()));
    }

    #[test]
    fn a_worker_without_allowed_signers_does_not_start_and_says_how_to_fix_it() {
        let error = Gatekeeper::from_settings(&SecuritySettings::default())
            .err()
            .expect("refused");
        let message = format!("{error:#}");
        assert!(message.contains("security.allowed_signers"), "{message}");
        assert!(message.contains("mfa-reset keys"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("allowed_signers");
        std::fs::write(&empty, "# nobody yet\n").unwrap();
        let settings = SecuritySettings {
            allowed_signers: empty.display().to_string(),
            ..SecuritySettings::default()
        };
        let message = format!("{:#}", Gatekeeper::from_settings(&settings).err().unwrap());
        assert!(message.contains("lists no key"), "{message}");
    }
}
