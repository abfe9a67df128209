//! [`RecordReader`]: what a message on the outcomes stream is, and whether to believe it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::SecuritySettings;
use crate::domain::Record;
use crate::trust::{AllowedSigners, Namespace, Principal, SealedRecord};

/// What one message on the stream is.
#[derive(Debug, Clone)]
pub enum Read {
    /// A plan or outcome sealed by a key `security.allowed_signers` lets sign in the worker
    /// namespace (a console action: the request namespace; a restore record: the admin
    /// namespace): to be believed.
    Verified {
        /// The record.
        record: Record,
        /// The worker that signed it.
        signer: Principal,
    },
    /// A record that is not a worker's and carries no result of its own (a batch manifest,
    /// a reader's marker): taken as it is.
    Unsealed(Record),
    /// Not to be believed: an unsigned, forged or altered plan or outcome, or something that
    /// is no record at all.
    Ignored {
        /// The batch it claims, if it names one.
        batch: Option<String>,
        /// Why.
        reason: String,
    },
}

/// Reads stream messages against `security.allowed_signers`, counting what it ignores.
#[derive(Debug)]
pub struct RecordReader {
    allowed: Arc<AllowedSigners>,
    ignored: AtomicU64,
}

impl RecordReader {
    /// A reader believing the worker keys of `allowed`.
    pub fn new(allowed: Arc<AllowedSigners>) -> RecordReader {
        RecordReader {
            allowed,
            ignored: AtomicU64::new(0),
        }
    }

    /// A reader of the allowed-signers file `security.allowed_signers` names.
    pub fn from_settings(security: &SecuritySettings) -> anyhow::Result<RecordReader> {
        Ok(RecordReader::new(Arc::new(load_allowed_signers(security)?)))
    }

    /// The allowed signers it believes.
    pub fn allowed(&self) -> &Arc<AllowedSigners> {
        &self.allowed
    }

    /// Records ignored so far.
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    /// What `body` is, and whether to believe it. Ignored ones are counted.
    pub fn read(&self, body: &[u8]) -> Read {
        let read = classify(body, &self.allowed);
        if matches!(read, Read::Ignored { .. }) {
            self.ignored.fetch_add(1, Ordering::Relaxed);
        }
        read
    }
}

/// Load `security.allowed_signers`; an unset or unreadable file is an error naming the fix.
pub fn load_allowed_signers(security: &SecuritySettings) -> anyhow::Result<AllowedSigners> {
    anyhow::ensure!(
        !security.allowed_signers.is_empty(),
        "security.allowed_signers is not set: name the OpenSSH allowed-signers file that lists \
         the workers' keys (namespaces=\"mfa-reset-worker\") and the operators' \
         (MFA_RESET__SECURITY__ALLOWED_SIGNERS)"
    );
    let path = Path::new(&security.allowed_signers);
    AllowedSigners::read(path)
        .with_context(|| format!("reading security.allowed_signers {}", path.display()))
}

/// The time a record claims it was written: the key's validity window is checked at it.
fn claimed_time(record: &Record) -> Option<DateTime<Utc>> {
    match record {
        Record::Outcome(o) => Some(o.finished_at),
        Record::Plan(p) => Some(p.at),
        Record::ConsoleAction(a) => Some(a.at),
        Record::Restore(r) => Some(r.at),
        Record::Manifest(_) | Record::Marker { .. } => None,
    }
}

fn record_batch(record: &Record) -> Option<&str> {
    match record {
        Record::Outcome(o) => Some(&o.batch),
        Record::Plan(p) => Some(&p.batch),
        Record::Manifest(m) => Some(&m.batch),
        Record::Restore(r) => Some(&r.batch),
        Record::Marker { .. } | Record::ConsoleAction(_) => None,
    }
}

fn classify(body: &[u8], allowed: &AllowedSigners) -> Read {
    let ignored = |batch: Option<String>, reason: String| Read::Ignored { batch, reason };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return ignored(None, format!("not JSON: {error}")),
    };
    if value.get("signature").is_none() {
        return match serde_json::from_value::<Record>(value) {
            Ok(record @ (Record::Manifest(_) | Record::Marker { .. })) => Read::Unsealed(record),
            Ok(record) => ignored(
                record_batch(&record).map(str::to_string),
                "unsigned: a record that must be signed (plan, outcome, console action, restore) \
                 carries no signature"
                    .into(),
            ),
            Err(error) => ignored(None, format!("not a record: {error}")),
        };
    }
    let sealed: SealedRecord = match serde_json::from_value(value) {
        Ok(sealed) => sealed,
        Err(error) => return ignored(None, format!("not a sealed record: {error}")),
    };
    let batch = Some(sealed.link.batch().to_string());
    let record: Record = match serde_json::from_value(sealed.record.clone()) {
        Ok(record @ (Record::Outcome(_) | Record::Plan(_))) => record,
        Ok(record @ Record::ConsoleAction(_)) => return console_action(record, &sealed, allowed),
        Ok(Record::Restore(record)) => return super::restore::read(*record, &sealed, allowed),
        Ok(_) => {
            return ignored(
                batch,
                "a sealed record that is not a plan or outcome".into(),
            )
        }
        Err(error) => return ignored(batch, format!("not a record: {error}")),
    };
    if record_batch(&record) != Some(sealed.link.batch()) {
        return ignored(batch, "its chain names another batch than it does".into());
    }
    let at = claimed_time(&record).unwrap_or_else(Utc::now);
    believe(record, &sealed, Namespace::Worker, allowed, at, batch)
}

/// `record` as read when its seal verifies in `namespace` at `at` (the time it claims),
/// ignored (in `batch`, with why) when not.
pub(super) fn believe(
    record: Record,
    sealed: &SealedRecord,
    namespace: Namespace,
    allowed: &AllowedSigners,
    at: DateTime<Utc>,
    batch: Option<String>,
) -> Read {
    match sealed.verify(namespace, allowed, at) {
        Ok(verified) => Read::Verified {
            record,
            signer: verified.principal,
        },
        Err(error) => Read::Ignored {
            batch,
            reason: error.to_string(),
        },
    }
}

/// A console action is believed when it is on a console chain (`console:…`, which no batch
/// id can be) and signed by a key allowed to request (the console's, `console.key`).
fn console_action(record: Record, sealed: &SealedRecord, allowed: &AllowedSigners) -> Read {
    if !sealed.link.chain.starts_with(CONSOLE_CHAIN_PREFIX) {
        return Read::Ignored {
            batch: None,
            reason: "a console action on a chain that is not the console's".into(),
        };
    }
    let at = claimed_time(&record).unwrap_or_else(Utc::now);
    believe(record, sealed, Namespace::Request, allowed, at, None)
}

/// How the chains of the console's actions begin: `console:{writer}`.
pub const CONSOLE_CHAIN_PREFIX: &str = "console:";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Outcome, PlanRecord, Status, UserRef};
    use crate::trust::test_keys::key_set;
    use crate::trust::{ChainWriter, Signer};

    fn outcome(batch: &str) -> Record {
        let user = UserRef::parse("alice@contoso.com").unwrap();
        Record::Outcome(Box::new(Outcome {
            request_id: uuid::Uuid::new_v4(),
            batch: batch.into(),
            user,
            status: Status::Reset,
            methods_removed: Vec::new(),
            methods_remaining: Vec::new(),
            sessions_revoked: false,
            attempts: 1,
            error_code: None,
            error_message: None,
            ticket: None,
            finished_at: Utc::now(),
            worker: "w".into(),
            graph_calls: 0,
            replay: 0,
            dry_run: false,
            requested_by: None,
            approved_by: None,
            replayed_by: None,
            replay_key: None,
            reason: None,
            item: None,
            tap: None,
            notes: Vec::new(),
        }))
    }

    fn sealed(record: &Record, chain: &str, key: &std::path::Path) -> Vec<u8> {
        let signer = Signer::from_key_file(key).unwrap();
        let mut writer = ChainWriter::new(chain, Namespace::Worker);
        serde_json::to_vec(&writer.seal(record, &signer).unwrap()).unwrap()
    }

    /// Sealing and reading one outcome: `cargo test --release --lib records::read -- --ignored
    /// --nocapture sealing_and_reading_cost`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn sealing_and_reading_cost() {
        let (_dir, keys, allowed) = key_set();
        let signer = Signer::from_key_file(&keys.worker.path).unwrap();
        let mut writer = ChainWriter::new("b1/w", Namespace::Worker);
        let record = outcome("b1");
        let n = 2000;
        let started = std::time::Instant::now();
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|_| serde_json::to_vec(&writer.seal(&record, &signer).unwrap()).unwrap())
            .collect();
        let seal = started.elapsed() / n;
        let started = std::time::Instant::now();
        for body in &bodies {
            assert!(matches!(classify(body, &allowed), Read::Verified { .. }));
        }
        let read = started.elapsed() / n;
        println!(
            "per outcome record: seal {seal:?}, read and verify {read:?} ({} bytes)",
            bodies[0].len()
        );
    }

    #[test]
    fn a_console_action_is_believed_only_on_a_console_chain_signed_by_a_requesting_key() {
        let (_dir, keys, allowed) = key_set();
        let action = Record::ConsoleAction(crate::domain::ConsoleAction {
            action: "signed_in".into(),
            batch: None,
            upn: "ops@contoso.com".into(),
            oid: "0000-oid".into(),
            roles: vec!["operator".into()],
            at: Utc::now(),
            detail: serde_json::Value::Null,
        });
        let seal = |chain: &str, key: &std::path::Path| {
            let signer = Signer::from_key_file(key).unwrap();
            let mut writer = ChainWriter::new(chain, Namespace::Request);
            serde_json::to_vec(&writer.seal(&action, &signer).unwrap()).unwrap()
        };
        match classify(&seal("console:c1", &keys.requester.path), &allowed) {
            Read::Verified { signer, .. } => {
                assert_eq!(signer.to_string(), keys.requester.principal)
            }
            other => panic!("believed: {other:?}"),
        }
        // On a batch's chain, or signed by a key that may not request (a worker's): ignored.
        assert!(matches!(
            classify(&seal("b1/c1", &keys.requester.path), &allowed),
            Read::Ignored { .. }
        ));
        assert!(matches!(
            classify(&seal("console:c1", &keys.worker.path), &allowed),
            Read::Ignored { .. }
        ));
        // Unsigned: ignored.
        assert!(matches!(
            classify(&serde_json::to_vec(&action).unwrap(), &allowed),
            Read::Ignored { .. }
        ));
    }

    #[test]
    fn a_worker_sealed_outcome_is_believed_and_names_its_worker() {
        let (_dir, keys, allowed) = key_set();
        let body = sealed(&outcome("b1"), "b1/w", &keys.worker.path);
        match classify(&body, &allowed) {
            Read::Verified { signer, .. } => assert_eq!(signer.as_str(), "worker@demo.invalid"),
            other => panic!("not verified: {other:?}"),
        }
    }

    #[test]
    fn unsigned_plans_and_outcomes_are_ignored_but_manifests_are_taken() {
        let (_dir, _keys, allowed) = key_set();
        let plain = serde_json::to_vec(&outcome("b1")).unwrap();
        assert!(
            matches!(classify(&plain, &allowed), Read::Ignored { batch: Some(b), .. } if b == "b1")
        );
        let plan = serde_json::to_vec(&Record::Plan(PlanRecord {
            request_id: uuid::Uuid::new_v4(),
            replay: 0,
            batch: "b1".into(),
            methods: Vec::new(),
            at: Utc::now(),
        }))
        .unwrap();
        assert!(matches!(classify(&plan, &allowed), Read::Ignored { .. }));
        let marker = serde_json::to_vec(&Record::Marker {
            id: uuid::Uuid::new_v4(),
        })
        .unwrap();
        assert!(matches!(classify(&marker, &allowed), Read::Unsealed(_)));
        assert!(matches!(
            classify(b"{not json", &allowed),
            Read::Ignored { .. }
        ));
    }

    #[test]
    fn records_sealed_by_keys_not_allowed_as_workers_are_ignored() {
        let (_dir, keys, allowed) = key_set();
        // An operator's key is allowed, but not in the worker namespace.
        let body = sealed(&outcome("b1"), "b1/w", &keys.requester.path);
        let Read::Ignored { reason, .. } = classify(&body, &allowed) else {
            panic!("an operator's record was believed")
        };
        assert!(reason.contains("not allowed"), "{reason}");
    }

    #[test]
    fn an_altered_record_or_one_moved_to_another_batch_is_ignored() {
        let (_dir, keys, allowed) = key_set();
        let body = sealed(&outcome("b1"), "b1/w", &keys.worker.path);
        let mut value: Value = serde_json::from_slice(&body).unwrap();
        value["record"]["status"] = "already_clean".into();
        let altered = serde_json::to_vec(&value).unwrap();
        assert!(matches!(classify(&altered, &allowed), Read::Ignored { .. }));
        let moved = sealed(&outcome("b1"), "b2/w", &keys.worker.path);
        assert!(matches!(classify(&moved, &allowed), Read::Ignored { .. }));
    }
}
