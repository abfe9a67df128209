//! The worker's gate: every request is verified ([`crate::trust::requests`]) before it is
//! claimed, before Graph. A batch's manifest signature (and approval) is checked once and
//! the [`TrustedBatch`] kept, keyed by the exact header bytes, so the per-request cost is
//! one Merkle path: a million-request batch costs one sshsig verification per worker, not a
//! million.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::SecuritySettings;
use crate::domain::ResetRequest;
use crate::trust::requests::{
    verify_batch, verify_replay, verify_request, Policy, Seal, TrustedBatch, Verdict,
};
use crate::trust::{AllowedSigners, Digest};

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
        Ok(Gatekeeper::new(allowed, security.approval_above))
    }

    /// A gatekeeper for `allowed` with the two-person rule above `approval_above`.
    pub fn new(allowed: AllowedSigners, approval_above: u64) -> Gatekeeper {
        Gatekeeper {
            allowed,
            approval_above,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict on `request` delivered with `seal`, at `now`.
    /// A replay (`replay > 0`) needs an admin's grant first ([`verify_replay`]).
    pub fn check(&self, request: &ResetRequest, seal: Seal<'_>, now: DateTime<Utc>) -> Verdict {
        let replayed_by = match verify_replay(request, seal.replay, &self.allowed, now) {
            Ok(replayed_by) => replayed_by,
            Err(refusal) => return Verdict::Refused(refusal),
        };
        match self.batch(seal, now) {
            Ok(batch) => verify_request(request, seal.proof, &batch, now).replayed_by(replayed_by),
            Err(refusal) => Verdict::Refused(refusal),
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
            carry: None,
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
