//! `mfa-reset dlq list | replay | purge`: the dead-letter queue.
//!
//! Every operation reads the queue through a consumer and acks only what it removes:
//! messages it leaves go back to the queue when its channel closes, so an interrupted
//! command loses nothing. `replay` publishes (confirmed) before it acks: at worst a
//! request is replayed twice, and the worker absorbs the second by its request id. Every
//! replay carries an admin's grant (`mfa-replay`, namespace `mfa-reset-admin`): workers run
//! no replay without one.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;

use crate::broker::headers::{self, Headers};
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::RK_REQUEST;
use crate::broker::{self, OutMessage, Topology};
use crate::cli::DlqCommand;
use crate::config::Settings;
use crate::domain::ResetRequest;
use crate::net::printable;
use crate::trust::requests::{
    sign_replay, APPROVAL_HEADER, MANIFEST_HEADER, PROOF_HEADER, REPLAY_HEADER,
};
use crate::trust::Signer;

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// User, when the message is a readable request.
    pub user: Option<String>,
    /// Batch, when known.
    pub batch: Option<String>,
    /// Why: our code, Graph's, or the broker's (`delivery_limit`, …).
    pub error_code: String,
    /// Detail.
    pub error_message: String,
    /// Attempts made.
    pub attempts: u64,
    /// When it was dead-lettered.
    pub failed_at: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
}

impl DeadLetter {
    fn from_delivery(d: &Delivery) -> DeadLetter {
        let request: Option<ResetRequest> = serde_json::from_slice(&d.data).ok();
        let props = &d.properties;
        let (code, message, attempts) = match headers::get_str(props, headers::ERROR_CODE) {
            Some(code) => (
                code,
                headers::get_str(props, headers::ERROR_MESSAGE).unwrap_or_default(),
                headers::get_u64(props, headers::ATTEMPTS).unwrap_or(0),
            ),
            None => match headers::x_death(props) {
                Some((reason, queue, count)) => (
                    reason.clone(),
                    format!("dead-lettered by the broker from {queue} ({reason})"),
                    count,
                ),
                None => ("unknown".into(), String::new(), 0),
            },
        };
        DeadLetter {
            user: request
                .as_ref()
                .map(|r| r.user.to_string())
                .or_else(|| headers::get_str(props, headers::USER)),
            batch: request
                .as_ref()
                .map(|r| r.batch.clone())
                .or_else(|| headers::get_str(props, headers::BATCH)),
            error_code: code,
            error_message: message,
            attempts,
            failed_at: headers::get_str(props, headers::FAILED_AT),
            request_id: props.message_id().as_ref().map(|s| s.to_string()),
        }
    }

    fn matches(&self, batch: Option<&str>, code: Option<&str>) -> bool {
        batch.is_none_or(|b| self.batch.as_deref() == Some(b))
            && code.is_none_or(|c| self.error_code == c)
    }
}

/// Run the command.
pub async fn run(settings: &Settings, command: &DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { batch } => {
            let letters = list(settings, batch.as_deref()).await?;
            print!("{}", render(&letters));
        }
        DlqCommand::Replay {
            batch,
            error_code,
            yes: false,
            ..
        } => {
            // A replay executes resets again: show what it would do, change nothing.
            let letters: Vec<DeadLetter> = list(settings, batch.as_deref())
                .await?
                .into_iter()
                .filter(|l| l.matches(batch.as_deref(), error_code.as_deref()) && l.user.is_some())
                .collect();
            print!("{}", render(&letters));
            println!(
                "preview: {} request(s) would be replayed (executed again, keeping their original \
                 requested_at and signatures); nothing was changed. Run again with --yes --key FILE (an admin's key) to replay them.",
                letters.len()
            );
        }
        DlqCommand::Replay {
            batch,
            error_code,
            yes: true,
            key,
        } => {
            // Every replay is signed by an admin (namespace mfa-reset-admin): the worker runs a
            // request with `replay > 0` only with that grant. Loaded before anything is read.
            let key = key.as_deref().context(
                "dlq replay --yes needs --key FILE: the admin's SSH key (private key file, or its \
                 .pub with the key in ssh-agent) signs each replay, and workers refuse a replay \
                 without it",
            )?;
            // The workers check each grant against the same file: refuse here a key whose
            // replays they would all dead-letter.
            let (signer, _) = super::admin_signer(
                settings,
                key,
                "--key",
                "the workers would refuse these replays",
            )?;
            let n = replay(settings, batch.as_deref(), error_code.as_deref(), &signer).await?;
            println!("replayed: {n}");
        }
        DlqCommand::Purge { batch } => {
            let n = purge(settings, batch).await?;
            println!("purged: {n}");
        }
    }
    Ok(())
}

/// Everything in the dead-letter queue (filtered by batch); nothing is removed.
pub async fn list(settings: &Settings, batch: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    walk(settings, |d| {
        let letter = DeadLetter::from_delivery(d);
        if letter.matches(batch, None) {
            letters.push(letter);
        }
        Action::Keep
    })
    .await?;
    Ok(letters)
}

/// Replay matching dead letters; returns how many.
pub async fn replay(
    settings: &Settings,
    batch: Option<&str>,
    code: Option<&str>,
    signer: &Signer,
) -> anyhow::Result<u64> {
    let mut chosen = 0;
    walk_signed(settings, Some(signer), |d| {
        let letter = DeadLetter::from_delivery(d);
        if letter.matches(batch, code) && serde_json::from_slice::<ResetRequest>(&d.data).is_ok() {
            chosen += 1;
            Action::Replay
        } else {
            Action::Keep
        }
    })
    .await
}

/// Delete a batch's dead letters; returns how many.
pub async fn purge(settings: &Settings, batch: &str) -> anyhow::Result<u64> {
    walk(settings, |d| {
        if DeadLetter::from_delivery(d).matches(Some(batch), None) {
            Action::Remove
        } else {
            Action::Keep
        }
    })
    .await
}

enum Action {
    Keep,
    Remove,
    Replay,
}

/// Visit every message in the dead-letter queue once; returns how many were removed or replayed.
async fn walk<F>(settings: &Settings, visit: F) -> anyhow::Result<u64>
where
    F: FnMut(&Delivery) -> Action,
{
    walk_signed(settings, None, visit).await
}

/// [`walk`], with the admin's signer for [`Action::Replay`].
async fn walk_signed<F>(
    settings: &Settings,
    signer: Option<&Signer>,
    mut visit: F,
) -> anyhow::Result<u64>
where
    F: FnMut(&Delivery) -> Action,
{
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset dlq").await?;
    let result =
        match super::ensure_set_up(&conn, &topology.dead(), "no dead letters", settings).await {
            Ok(()) => walk_on(&conn, &topology, signer, &mut visit).await,
            Err(err) => Err(err),
        };
    let _ = conn.close(200, "bye".into()).await;
    result
}

async fn walk_on<F>(
    conn: &Connection,
    topology: &Topology,
    signer: Option<&Signer>,
    visit: &mut F,
) -> anyhow::Result<u64>
where
    F: FnMut(&Delivery) -> Action,
{
    topology.ensure(conn).await?;
    let channel = conn.create_channel().await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Messages ready now. Messages another reader just handed back (a `dlq list` that ended a
    // moment ago, a killed `dlq replay`) may not be counted yet: the quorum queue takes them
    // back asynchronously. So the walk goes on past `total` until the queue stays quiet.
    let total = u64::from(message_count(&channel, &topology.dead()).await?);
    // No prefetch limit: every message we keep stays unacked until the channel closes, so a
    // limit of N would stop the broker after N kept messages and hide the rest of the queue.
    // Memory is the dead-letter queue's size, which `list` holds anyway.
    channel
        .basic_qos(0, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            topology.dead().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0u64;
    let mut acted = 0u64;
    loop {
        let quiet = if seen < total {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        let next = tokio::time::timeout(quiet, consumer.next()).await;
        let delivery = match next {
            Err(_) | Ok(None) => break,
            Ok(Some(d)) => d.context("reading the dead-letter queue")?,
        };
        seen += 1;
        match visit(&delivery) {
            Action::Keep => {}
            Action::Remove => {
                delivery.ack(BasicAckOptions::default()).await?;
                acted += 1;
            }
            Action::Replay => {
                let signer = signer.context("a replay without the admin's signer")?;
                replay_one(&publish, topology, &delivery, signer).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                acted += 1;
            }
        }
    }
    // Closing the channel returns every message we kept to the queue.
    let _ = channel.close(200, "done".into()).await;
    let _ = publish.close(200, "done".into()).await;
    Ok(acted)
}

async fn replay_one(
    publish: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    signer: &Signer,
) -> anyhow::Result<()> {
    let mut request: ResetRequest = serde_json::from_slice(&delivery.data)?;
    // A new execution, not a duplicate of the failed one: the worker keys on (id, replay).
    request.replay = request
        .replay
        .checked_add(1)
        .context("the request was replayed too often")?;
    request.carry = None;
    // The admin's grant of exactly this id, replay number and batch: the Merkle leaf leaves
    // `replay` out, so without it anyone who may publish could run a request again.
    let grant = sign_replay(&request, signer).context("signing the replay")?;
    // Fresh attempts, but the original `requested_at`: it is signed (part of the request's
    // Merkle leaf), and a replay must not make an old request young again.
    let mut replayed = Headers::default().str(
        "x-mfa-replayed-from",
        &headers::get_str(&delivery.properties, headers::ERROR_CODE).unwrap_or_default(),
    );
    // The signed batch travels with the request, so the worker verifies it again: inline in
    // these headers, or (compact form) in the request's own `proof` field, kept above.
    for key in [MANIFEST_HEADER, PROOF_HEADER, APPROVAL_HEADER] {
        replayed = replayed.copied(&delivery.properties, key);
    }
    // The previous replay's grant (if any) is not copied: this one replaces it.
    let headers = replayed.str(REPLAY_HEADER, &grant).build();
    let msg = OutMessage::json(RK_REQUEST, serde_json::to_vec(&request)?)
        .with_id(request.request_id.to_string())
        .with_headers(headers);
    // Through the intake, like every request: the admin's broker user may write nothing else
    // that reaches the requests queue (broker::definitions).
    publish_confirmed(publish, &topology.intake(), &msg).await
}

async fn message_count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// The table `dlq list` prints.
pub fn render(letters: &[DeadLetter]) -> String {
    let mut out = format!("{} dead letter(s)\n", letters.len());
    if letters.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:<40} {:<28} {:<26} {:>8}  {:<25}  {}\n",
        "user", "batch", "error_code", "attempts", "failed_at", "error_message"
    ));
    for l in letters {
        out.push_str(&format!(
            "{:<40} {:<28} {:<26} {:>8}  {:<25}  {}\n",
            // Everything here came off the queue: printed without its control characters.
            printable(l.user.as_deref().unwrap_or("(not a request)")),
            printable(l.batch.as_deref().unwrap_or("-")),
            printable(&l.error_code),
            l.attempts,
            printable(l.failed_at.as_deref().unwrap_or("-")),
            printable(&l.error_message)
        ));
    }
    out
}
