//! The history benchmark's stream: `OLD` outcome records of another batch on
//! `{prefix}.outcomes` (the year of history `status` must not read), then, `GAP` seconds
//! later, the manifest and `USERS` outcomes of a new batch named with the current time, as
//! `enqueue` names batches. Prints `batch: ID`.
//!
//! `cargo run --example seed_history -- PREFIX OLD USERS GAP_SECS`
//!
//! The new batch's outcomes are sealed as a worker seals them (one chain, signed with the SSH
//! key named by `SEED_WORKER_KEY`, which the reader's `security.allowed_signers` must list
//! for the worker namespace): readers believe only verified records. The older records are
//! left unsealed: they are only there to be skipped, and sealing a million of them would
//! take minutes. (The topology of PREFIX must exist:
//! `MFA_RESET__BROKER__PREFIX=PREFIX mfa-reset setup`.)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use mfa_reset::domain::{BatchManifest, Outcome, Record, Status, UserRef};
use mfa_reset::trust::chain::{chain_id, ChainWriter};
use mfa_reset::trust::{Namespace, Signer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prefix = args
        .first()
        .cloned()
        .unwrap_or_else(|| "mfa-bench-history".into());
    let old: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let users: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let gap: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(150);
    let url = std::env::var("MFA_RESET__BROKER__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let key = std::env::var("SEED_WORKER_KEY").map_err(|_| {
        anyhow::anyhow!("set SEED_WORKER_KEY to a worker's SSH private key (mfa-reset keys)")
    })?;
    let signer = Signer::from_key_file(std::path::Path::new(&key))?;
    let started = Instant::now();
    let old_batch = "20250101-0000-history-0000";
    publish(
        &channel,
        &prefix,
        (0..old).map(|i| serde_json::to_vec(&outcome(old_batch, i)).expect("JSON")),
    )
    .await?;
    eprintln!(
        "seeded {old} older records in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if old > 0 {
        tokio::time::sleep(Duration::from_secs(gap)).await;
    }
    let batch = format!(
        "{}-bench-{:04x}",
        Utc::now().format("%Y%m%d-%H%M"),
        rand::random::<u16>()
    );
    let manifest = Record::Manifest(BatchManifest {
        batch: batch.clone(),
        count: users as u64,
        source: "bench".into(),
        dry_run: false,
        revoke_sessions: false,
        requested_by: Some("bench".into()),
        created_at: Utc::now(),
        sealed: None,
        cap: None,
    });
    let mut chain = ChainWriter::new(chain_id(&batch, "seed-history"), Namespace::Worker);
    let mut bodies = vec![serde_json::to_vec(&manifest)?];
    for i in 0..users {
        bodies.push(serde_json::to_vec(
            &chain.seal(&outcome(&batch, i), &signer)?,
        )?);
    }
    publish(&channel, &prefix, bodies.into_iter()).await?;
    println!("batch: {batch}");
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

fn outcome(batch: &str, i: usize) -> Record {
    Record::Outcome(Box::new(Outcome {
        request_id: uuid::Uuid::new_v4(),
        batch: batch.to_string(),
        user: UserRef::parse(&format!("user{i}@contoso.example")).expect("a valid UPN"),
        status: Status::Reset,
        methods_removed: Vec::new(),
        methods_remaining: Vec::new(),
        sessions_revoked: false,
        attempts: 1,
        error_code: None,
        error_message: None,
        ticket: None,
        finished_at: Utc::now(),
        worker: "bench".into(),
        graph_calls: 3,
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

/// Publish with a window of 2,000 confirms in flight.
async fn publish(
    channel: &Channel,
    prefix: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    let mut window = VecDeque::new();
    for body in bodies {
        let confirm = channel
            .basic_publish(
                prefix.into(),
                "outcome".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        window.push_back(confirm);
        if window.len() >= 2000 {
            if let Some(c) = window.pop_front() {
                c.await?;
            }
        }
    }
    for c in window {
        c.await?;
    }
    Ok(())
}
