//! [`Sealer`]: the worker's side of the record. Each plan and outcome is sealed (linked into
//! its batch's chain and signed with `worker.key`) and published in chain order.
//!
//! Order matters: a record whose successor reached the stream but which never did is a gap
//! the audit reports as missing. So the chain's next link is drawn and the message handed to
//! the channel under one lock (the channel keeps the order), and only the confirm is awaited
//! outside it. A sealed record the broker did not confirm is handed back ([`Sealed`]) to be
//! published *again, as it is* — never sealed anew, which would fork the chain.
//!
//! Cost: one ed25519 signature (tens of microseconds) per record, against the hundreds of
//! milliseconds of Graph calls each record stands for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use lapin::Channel;
use tokio::sync::Mutex;

use crate::broker::publisher::{publish_pending, OutMessage};
use crate::broker::topology::RK_OUTCOME;
use crate::domain::Record;
use crate::trust::chain::chain_id;
use crate::trust::{verify, AllowedSigners, ChainWriter, Namespace, Principal, Signer};

/// A sealed record as published: kept to be published again if the broker did not confirm it.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// Its chain.
    pub chain: String,
    /// Its place in the chain.
    pub seq: u64,
    /// The message.
    pub message: OutMessage,
}

/// Seals the records of one worker process: one chain per batch, under a writer id drawn at
/// start (a restarted worker starts new chains).
pub struct Sealer {
    signer: Arc<Signer>,
    writer: String,
    chains: Mutex<HashMap<String, ChainWriter>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("writer", &self.writer)
            .field("key", &self.signer.fingerprint())
            .finish()
    }
}

impl Sealer {
    /// A sealer signing with `signer`, under a fresh writer id.
    pub fn new(signer: Signer) -> Sealer {
        Sealer {
            signer: Arc::new(signer),
            writer: uuid::Uuid::new_v4().simple().to_string(),
            chains: Mutex::new(HashMap::new()),
        }
    }

    /// The sealer of `worker.key`; unset or unusable is an error naming the fix.
    pub fn from_key_setting(key: &str) -> anyhow::Result<Sealer> {
        anyhow::ensure!(
            !key.is_empty(),
            "worker.key is not set: name this worker's SSH private key (ed25519, mode 0600), \
             whose public key security.allowed_signers lists with namespaces=\"mfa-reset-worker\" \
             (MFA_RESET__WORKER__KEY)"
        );
        let signer = Signer::from_key_file(Path::new(key))
            .with_context(|| format!("loading worker.key {key}"))?;
        Ok(Sealer::new(signer))
    }

    /// Check that `allowed` lets this key sign worker records (else everyone, this worker
    /// included, would ignore them); the worker's principal.
    pub fn check_allowed(&self, allowed: &AllowedSigners) -> anyhow::Result<Principal> {
        let probe = b"mfa-reset worker key check";
        let signature = self
            .signer
            .sign(Namespace::Worker, probe)
            .context("signing with worker.key")?;
        verify(
            &signature,
            Namespace::Worker,
            probe,
            allowed,
            chrono::Utc::now(),
        )
        .map(|verified| verified.principal)
        .map_err(|error| {
            anyhow::anyhow!(
                "worker.key ({}) may not sign worker records: {error}. Every reader would \
                     ignore this worker's records; list its public key in {} with \
                     namespaces=\"mfa-reset-worker\"",
                self.fingerprint(),
                allowed.source()
            )
        })
    }

    /// The signer of `worker.key`, shared with what else the worker signs in its namespace
    /// (its fleet messages, [`crate::worker::fleet`]).
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// The key that signs, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.signer.fingerprint()
    }

    /// Seal `record` (a plan or an outcome of `batch`) as the next of its batch's chain and
    /// publish it, confirmed. When the broker does not confirm it, the error comes back with
    /// the sealed record, to be published again as it is.
    pub async fn publish(
        &self,
        channel: &Channel,
        exchange: &str,
        batch: &str,
        record: &Record,
        message_id: String,
    ) -> Result<(), (anyhow::Error, Option<Sealed>)> {
        let (sealed, pending) = {
            let mut chains = self.chains.lock().await;
            let writer = chains.entry(batch.to_string()).or_insert_with(|| {
                ChainWriter::new(chain_id(batch, &self.writer), Namespace::Worker)
            });
            let seq = writer.next_seq();
            let body = writer
                .seal(record, &self.signer)
                .map_err(anyhow::Error::from)
                .and_then(|sealed| Ok(serde_json::to_vec(&sealed)?))
                .map_err(|error| (error.context("sealing a record"), None))?;
            let sealed = Sealed {
                chain: writer.chain().to_string(),
                seq,
                message: OutMessage::json(RK_OUTCOME, body).with_id(message_id),
            };
            let pending = publish_pending(channel, exchange, &sealed.message).await;
            (sealed, pending)
        };
        let confirmed = match pending {
            Ok(pending) => pending.confirmed().await,
            Err(error) => Err(error),
        };
        confirmed.map_err(|error| (error, Some(sealed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{AllowedSigners, ChainAudit, KeySet, SealedRecord};

    #[tokio::test]
    async fn records_of_one_batch_form_one_chain_and_another_batch_starts_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeySet::generate(dir.path()).unwrap();
        let sealer = Sealer::from_key_setting(&keys.worker.path.display().to_string()).unwrap();
        let mut chains = sealer.chains.lock().await;
        let mut seal = |batch: &str| {
            let writer = chains.entry(batch.to_string()).or_insert_with(|| {
                ChainWriter::new(chain_id(batch, &sealer.writer), Namespace::Worker)
            });
            writer
                .seal(
                    &Record::Marker {
                        id: uuid::Uuid::nil(),
                    },
                    &sealer.signer,
                )
                .unwrap()
        };
        let records: Vec<SealedRecord> = vec![seal("b1"), seal("b1"), seal("b2")];
        assert_eq!(records[0].link.chain, records[1].link.chain);
        assert_eq!((records[0].link.seq, records[1].link.seq), (0, 1));
        assert_eq!(records[2].link.seq, 0);
        assert_eq!(records[2].link.batch(), "b2");
        let allowed = AllowedSigners::read(&keys.allowed_signers).unwrap();
        let mut audit = ChainAudit::new(&allowed, Namespace::Worker);
        for (position, record) in records.iter().take(2).enumerate() {
            audit.push(position as u64, record, chrono::Utc::now(), None);
        }
        assert!(audit.finish(None).is_intact());
    }

    #[test]
    fn a_missing_worker_key_says_which_setting_to_fill() {
        let error = Sealer::from_key_setting("").unwrap_err().to_string();
        assert!(error.contains("worker.key"), "{error}");
    }
}
