//! `restore` is signed and recorded: `--yes` needs an admin's key, and who re-creates which
//! methods of whom is on the outcomes stream (signed, without the values) before Graph is
//! called, with what came of it after; `audit verify` lists restores and names a forged one.

use std::path::PathBuf;

use lapin::types::FieldTable;
use mfa_reset::broker;
use mfa_reset::broker::topology::RK_OUTCOME;
use mfa_reset::commands;
use mfa_reset::domain::{Outcome, Record, RestoreRecord, RestoreResult, RestoreStage};
use mfa_reset::records::restore::chain;
use mfa_reset::records::{Read, RecordReader};
use mfa_reset::trust::{ChainWriter, Namespace, Signer};

use crate::at_rest::{restore_args, restore_key, ADELE, ADELE_SECRETS};
use crate::common::env::TestEnv;
use crate::fidelity::{fixture_tenant, outcome, reset};

/// Every restore record on the stream with its verified signer (`None`: not believed).
async fn restore_records(env: &TestEnv) -> Vec<(Option<String>, RestoreRecord)> {
    let reader = RecordReader::from_settings(&env.settings.security).expect("allowed signers");
    let mut found = Vec::new();
    for body in env.stream_bodies().await {
        let text = String::from_utf8_lossy(&body);
        if !text.contains(r#""kind":"restore""#) {
            continue;
        }
        match reader.read(&body) {
            Read::Verified {
                record: Record::Restore(record),
                signer,
            } => found.push((Some(signer.to_string()), *record)),
            _ => {
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let record = value.get("record").cloned().unwrap_or(value);
                found.push((
                    None,
                    serde_json::from_value(record).expect("a restore record"),
                ));
            }
        }
    }
    found
}

/// Every raw stream message that mentions a restore.
async fn restore_bodies(env: &TestEnv) -> Vec<String> {
    env.stream_bodies()
        .await
        .into_iter()
        .map(|body| String::from_utf8_lossy(&body).into_owned())
        .filter(|text| text.contains(r#""kind":"restore""#))
        .collect()
}

/// Adele reset with backups on: the test's environment, its restore key and the batch.
struct AdeleReset {
    env: TestEnv,
    /// Holds the restore key: keep it bound (`_key_dir`, not `..`) while restoring.
    _key_dir: tempfile::TempDir,
    identity: PathBuf,
    batch: String,
    adele: Outcome,
}

async fn adele_reset(test: &str) -> AdeleReset {
    let mut env = TestEnv::new(test, fixture_tenant()).await;
    let (key_dir, identity) = restore_key(&mut env);
    let view = reset(&mut env, &[ADELE]).await;
    let batch = view.manifest().unwrap().batch.clone();
    let adele = outcome(&view, ADELE).clone();
    env.sim.reset_stats();
    AdeleReset {
        env,
        _key_dir: key_dir,
        identity,
        batch,
        adele,
    }
}

/// Nothing was created in the tenant, and no restore is on the record.
async fn assert_nothing_created_or_recorded(env: &TestEnv) {
    assert_eq!(env.sim.stats().writes, 0, "nothing was created");
    assert!(restore_bodies(env).await.is_empty(), "nothing was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_without_an_admins_key_is_refused_before_anything_is_created_or_recorded() {
    let AdeleReset {
        env,
        identity,
        batch,
        _key_dir,
        ..
    } = adele_reset("restore-refused").await;

    // --yes without --key: refused, naming the option.
    let mut args = restore_args(&env, &batch, Some(identity.clone()), true);
    args.key = None;
    let refused = commands::restore::run(&env.settings, &args)
        .await
        .expect_err("no key, no restore");
    assert!(format!("{refused:#}").contains("--key"), "{refused:#}");

    // An operator's key (allowed to request and approve, not to administer): refused, naming
    // the allowed-signers file and the namespace.
    args.key = Some(env.keys.requester.path.clone());
    let refused = commands::restore::run(&env.settings, &args)
        .await
        .expect_err("an operator's key does not restore");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains(&env.settings.security.allowed_signers),
        "{refused}"
    );
    assert!(refused.contains("mfa-reset-admin"), "{refused}");

    assert_nothing_created_or_recorded(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_cannot_be_recorded_creates_nothing() {
    let AdeleReset {
        env,
        identity,
        batch,
        _key_dir,
        ..
    } = adele_reset("restore-unrecorded").await;
    // The outcomes stream no longer takes records through the workers' exchange: the
    // restore's first record comes back unroutable, unconfirmed.
    route_records(&env, false).await;

    let refused = commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(identity), true),
    )
    .await
    .expect_err("an unrecorded restore does not run");

    assert!(
        format!("{refused:#}").contains("cannot be recorded; nothing was restored"),
        "{refused:#}"
    );
    route_records(&env, true).await;
    assert_nothing_created_or_recorded(&env).await;
    env.cleanup().await;
}

/// Bind the outcomes stream to the workers' exchange again (`true`), or unbind it.
async fn route_records(env: &TestEnv, bound: bool) {
    let topology = env.topology();
    let conn = broker::connect(&env.settings.broker, "test binding")
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    let (queue, exchange) = (topology.outcomes(), topology.exchange());
    if bound {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                RK_OUTCOME.into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    } else {
        channel
            .queue_unbind(
                queue.as_str().into(),
                exchange.as_str().into(),
                RK_OUTCOME.into(),
                FieldTable::default(),
            )
            .await
            .expect("unbind");
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_ends_early_records_why_in_its_finished_record() {
    let AdeleReset {
        mut env,
        identity,
        batch,
        _key_dir,
        ..
    } = adele_reset("restore-ended").await;
    // A protected user the tenant does not have: the restore stops before anything is created.
    env.settings.reset.protected_users = vec!["nobody@contoso.com".into()];

    let error = commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(identity), true),
    )
    .await
    .expect_err("protection cannot be checked");

    assert!(
        format!("{error:#}").contains("reset.protected_users"),
        "{error:#}"
    );
    assert_eq!(env.sim.stats().writes, 0, "nothing was created");
    let records = restore_records(&env).await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let finished = &records[1].1;
    assert_eq!(finished.stage, RestoreStage::Finished);
    assert!(
        finished.methods().all(|m| m.result.is_none()),
        "{finished:?}"
    );
    let ended = finished.ended.as_deref().expect("why it ended");
    assert!(ended.contains("reset.protected_users"), "{ended}");
    let verdict = commands::audit::check(&env.settings, &batch)
        .await
        .expect("audit");
    assert!(verdict.is_intact(), "{:#?}", verdict.problems);
    assert!(
        verdict.restores[0].contains("0 created") && verdict.restores[0].contains("ended early"),
        "{:#?}",
        verdict.restores
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_needs_no_key_and_records_nothing() {
    let AdeleReset {
        env,
        identity,
        batch,
        _key_dir,
        ..
    } = adele_reset("restore-preview").await;

    let args = restore_args(&env, &batch, Some(identity), false);
    assert!(args.key.is_none());
    let preview = commands::restore::run(&env.settings, &args)
        .await
        .expect("a preview runs without a key");

    assert_eq!(preview.created, 0);
    assert_nothing_created_or_recorded(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_restore_is_recorded_before_and_after_signed_and_without_the_values() {
    let AdeleReset {
        env,
        identity,
        batch,
        adele,
        _key_dir,
        ..
    } = adele_reset("restore-recorded").await;

    let done = commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(identity), true),
    )
    .await
    .expect("restore");
    assert_eq!(done.created, 3, "{done:?}");

    // Two records, both verified as the admin's, one restore: started, then finished.
    let records = restore_records(&env).await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let admin = &env.keys.admin.principal;
    for (signer, record) in &records {
        assert_eq!(signer.as_ref(), Some(admin), "{record:?}");
        assert_eq!(&record.by, admin);
        assert_eq!(record.batch, batch);
        assert_eq!(record.users.len(), 1);
        assert_eq!(record.users[0].request_id, adele.request_id);
        assert_eq!(record.methods().count(), 3);
        let key = Signer::from_key_file(&env.keys.admin.path).unwrap();
        assert_eq!(record.key, key.fingerprint());
    }
    assert_eq!(records[0].1.restore_id, records[1].1.restore_id);
    assert_eq!(records[0].1.stage, RestoreStage::Started);
    assert!(records[0].1.methods().all(|m| m.result.is_none()));
    assert_eq!(records[1].1.stage, RestoreStage::Finished);
    assert_eq!(records[1].1.count(RestoreResult::Created), 3);
    // The methods are named by the ids the worker's outcome recorded.
    let mut ids: Vec<&str> = records[1].1.methods().map(|m| m.id.as_str()).collect();
    let mut removed: Vec<&str> = adele
        .methods_removed
        .iter()
        .filter(|m| m.backup_sealed.is_some())
        .map(|m| m.id.as_str())
        .collect();
    ids.sort();
    removed.sort();
    assert_eq!(ids, removed);

    // Never the values in clear.
    for text in restore_bodies(&env).await {
        for secret in ADELE_SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} in a restore record: {text}"
            );
        }
        assert!(!text.contains("5555551234"), "{text}");
    }

    // The audit lists the restore, names the admin, and the record is intact.
    let verdict = commands::audit::check(&env.settings, &batch)
        .await
        .expect("audit");
    assert!(verdict.is_intact(), "{:#?}", verdict.problems);
    assert_eq!(verdict.restores.len(), 1, "{:#?}", verdict.restores);
    assert!(
        verdict.restores[0].contains(admin) && verdict.restores[0].contains("3 created"),
        "{}",
        verdict.restores[0]
    );

    // The export has both, verified, signed by the admin.
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.jsonl");
    commands::audit::export(&env.settings, None, Some(&export))
        .await
        .expect("export");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &serde_json::Value| line["record"]["kind"] == "restore")
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["verified"], true, "{line}");
        assert_eq!(line["signer"], admin.as_str(), "{line}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_record_signed_by_a_non_admin_is_reported_by_audit_verify() {
    let AdeleReset {
        env,
        identity,
        batch,
        _key_dir,
        ..
    } = adele_reset("restore-forged").await;

    // The real restore's records, as a template; then the same claim sealed by an operator
    // (a key allowed to request, not to administer) on a restore chain of its own.
    commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(identity), true),
    )
    .await
    .expect("restore");
    let (_, mut claim) = restore_records(&env)
        .await
        .into_iter()
        .find(|(_, r)| r.stage == RestoreStage::Finished)
        .expect("the finished record");
    claim.restore_id = uuid::Uuid::new_v4();
    claim.by = "mallory@demo.invalid".into();
    let operator = Signer::from_key_file(&env.keys.requester.path).unwrap();
    let mut writer = ChainWriter::new(chain(&batch, claim.restore_id), Namespace::Admin);
    let sealed = writer
        .seal(&Record::Restore(Box::new(claim.clone())), &operator)
        .unwrap();
    env.publish_raw_with(
        &env.topology().exchange(),
        "outcome",
        &serde_json::to_vec(&sealed).unwrap(),
        FieldTable::default(),
    )
    .await;

    let verdict = commands::audit::check(&env.settings, &batch)
        .await
        .expect("audit");
    assert!(!verdict.is_intact());
    let forged: Vec<&String> = verdict
        .problems
        .iter()
        .filter(|p| p.starts_with("forged:") && p.contains(&writer.chain().to_string()))
        .collect();
    assert_eq!(forged.len(), 1, "{:#?}", verdict.problems);
    // Only the real restore is listed.
    assert_eq!(verdict.restores.len(), 1, "{:#?}", verdict.restores);
    assert!(!verdict.restores[0].contains("mallory"));
    env.cleanup().await;
}
