//! The admin's record of a restore: [`RestoreLog`] writes it, [`read`] decides whether to
//! believe it.
//!
//! A restore adds a way to sign in to someone's account, so who did it must be on the record
//! before it happens. `restore --yes` seals each [`RestoreRecord`] with the admin's key
//! (namespace `mfa-reset-admin`) as the next link of the restore's own chain
//! `{batch}/restore-{id}` ([`chain`]), and publishes it to the outcomes stream with a
//! publisher confirm: the started record before Graph is called (not confirmed: nothing is
//! created), the finished one after. Readers believe a restore record only on such a chain,
//! for the batch the chain names, signed by a key allowed in the admin namespace.

use anyhow::Context;
use lapin::{Channel, Connection};

use super::Read;
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::RK_OUTCOME;
use crate::broker::{OutMessage, Topology};
use crate::config::Settings;
use crate::domain::{Record, RestoreRecord, RestoreStage, RestoreUser};
use crate::trust::chain::chain_id;
use crate::trust::{AllowedSigners, ChainWriter, Namespace, Principal, SealedRecord, Signer};

/// How the writer part of a restore's chain begins: `{batch}/restore-{id}`. A worker's
/// writer id is a bare UUID, so no worker chain is one.
const WRITER_PREFIX: &str = "restore-";

/// The chain of restore `id` of `batch`.
pub fn chain(batch: &str, id: uuid::Uuid) -> String {
    chain_id(batch, &format!("{WRITER_PREFIX}{}", id.simple()))
}

/// Is `chain` a restore's (`{batch}/restore-…`)?
pub fn is_restore_chain(chain: &str) -> bool {
    chain
        .rsplit_once('/')
        .is_some_and(|(_, writer)| writer.starts_with(WRITER_PREFIX))
}

/// Whether to believe a sealed restore record: on a restore chain of the batch it names,
/// signed by a key `allowed` lets sign in the admin namespace when it says it was written.
pub fn read(record: RestoreRecord, sealed: &SealedRecord, allowed: &AllowedSigners) -> Read {
    let batch = Some(sealed.link.batch().to_string());
    if !is_restore_chain(&sealed.link.chain) {
        return Read::Ignored {
            batch,
            reason: "a restore record on a chain that is not a restore's".into(),
        };
    }
    if record.batch != sealed.link.batch() {
        return Read::Ignored {
            batch,
            reason: "its chain names another batch than it does".into(),
        };
    }
    let at = record.at;
    super::read::believe(
        Record::Restore(Box::new(record)),
        sealed,
        Namespace::Admin,
        allowed,
        at,
        batch,
    )
}

/// One restore's chain on the outcomes stream: each record sealed with the admin's key and
/// confirmed by the broker before [`RestoreLog::write`] returns.
pub struct RestoreLog {
    conn: Connection,
    channel: Channel,
    exchange: String,
    chain: ChainWriter,
    signer: Signer,
    by: Principal,
    id: uuid::Uuid,
    batch: String,
}

impl RestoreLog {
    /// Connect to the broker for restore `id` of `batch`, signed by `signer` (whom
    /// `security.allowed_signers` names `by` in the admin namespace).
    pub async fn open(
        settings: &Settings,
        batch: &str,
        signer: Signer,
        by: Principal,
    ) -> anyhow::Result<RestoreLog> {
        let topology = Topology::new(&settings.broker, &settings.retry);
        let (conn, channel) = crate::commands::confirming_channel(
            settings,
            "mfa-reset restore",
            &topology.outcomes(),
            "cannot record the restore",
        )
        .await?;
        let id = uuid::Uuid::new_v4();
        Ok(RestoreLog {
            conn,
            channel,
            exchange: topology.exchange(),
            chain: ChainWriter::new(chain(batch, id), Namespace::Admin),
            signer,
            by,
            id,
            batch: batch.to_string(),
        })
    }

    /// Who signs.
    pub fn by(&self) -> &Principal {
        &self.by
    }

    /// The key that signs, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.signer.fingerprint()
    }

    /// The restore's id, shared by its records.
    pub fn id(&self) -> uuid::Uuid {
        self.id
    }

    /// Record what is about to be re-created (`users`' methods), confirmed.
    pub async fn write_started(&mut self, users: Vec<RestoreUser>) -> anyhow::Result<()> {
        self.write(RestoreStage::Started, users, None).await
    }

    /// Record what came of each method, and why the restore `ended` early if it did; then
    /// close the connection.
    pub async fn write_finished(
        mut self,
        users: Vec<RestoreUser>,
        ended: Option<String>,
    ) -> anyhow::Result<()> {
        let written = self.write(RestoreStage::Finished, users, ended).await;
        let _ = self.conn.close(200, "bye".into()).await;
        written
    }

    /// Seal the `stage` record of `users` as the chain's next and publish it, confirmed.
    async fn write(
        &mut self,
        stage: RestoreStage,
        users: Vec<RestoreUser>,
        ended: Option<String>,
    ) -> anyhow::Result<()> {
        let record = Record::Restore(Box::new(RestoreRecord {
            restore_id: self.id,
            batch: self.batch.clone(),
            stage,
            by: self.by.to_string(),
            key: self.signer.fingerprint(),
            at: chrono::Utc::now(),
            users,
            ended,
        }));
        let sealed = self
            .chain
            .seal(&record, &self.signer)
            .context("signing the restore record with --key")?;
        let message = OutMessage::json(RK_OUTCOME, serde_json::to_vec(&sealed)?).with_id(format!(
            "{}-{}",
            self.chain.chain(),
            sealed.link.seq
        ));
        publish_confirmed(&self.channel, &self.exchange, &message)
            .await
            .with_context(|| {
                format!(
                    "writing restore {}'s {} record to the outcomes stream",
                    self.id,
                    match stage {
                        RestoreStage::Started => "started",
                        RestoreStage::Finished => "finished",
                    }
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RestoreMethod, UserRef};
    use crate::trust::test_keys::key_set;

    fn record(batch: &str) -> Record {
        Record::Restore(Box::new(RestoreRecord {
            restore_id: uuid::Uuid::new_v4(),
            batch: batch.into(),
            stage: RestoreStage::Started,
            by: "carol@demo.invalid".into(),
            key: "SHA256:x".into(),
            at: chrono::Utc::now(),
            ended: None,
            users: vec![RestoreUser {
                user: UserRef::parse("alice@contoso.com").unwrap(),
                request_id: uuid::Uuid::new_v4(),
                replay: 0,
                methods: vec![RestoreMethod {
                    kind: "phone".into(),
                    id: "m1".into(),
                    phone_type: Some("mobile".into()),
                    result: None,
                    reason: None,
                }],
            }],
        }))
    }

    fn sealed(record: &Record, chain: &str, key: &std::path::Path) -> Vec<u8> {
        let signer = Signer::from_key_file(key).unwrap();
        let mut writer = ChainWriter::new(chain, Namespace::Admin);
        serde_json::to_vec(&writer.seal(record, &signer).unwrap()).unwrap()
    }

    #[test]
    fn a_restore_record_is_believed_only_on_its_batchs_restore_chain_signed_by_an_admin() {
        let (_dir, keys, allowed) = key_set();
        let reader = super::super::RecordReader::new(std::sync::Arc::new(allowed));
        let id = uuid::Uuid::new_v4();
        let on_chain = chain("b1", id);
        assert!(is_restore_chain(&on_chain));
        assert!(!is_restore_chain(&chain_id("b1", &id.simple().to_string())));
        match reader.read(&sealed(&record("b1"), &on_chain, &keys.admin.path)) {
            Read::Verified { signer, record } => {
                assert_eq!(signer.to_string(), keys.admin.principal);
                assert!(matches!(record, Record::Restore(_)));
            }
            other => panic!("not believed: {other:?}"),
        }
        // Signed by an operator (not an admin), on a worker's chain, on another batch's
        // restore chain, or unsigned: ignored, counted against the batch.
        for body in [
            sealed(&record("b1"), &on_chain, &keys.requester.path),
            sealed(&record("b1"), "b1/0123abcd", &keys.admin.path),
            sealed(&record("b1"), &chain("b2", id), &keys.admin.path),
            serde_json::to_vec(&record("b1")).unwrap(),
        ] {
            assert!(
                matches!(reader.read(&body), Read::Ignored { .. }),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(reader.ignored(), 4);
    }
}
