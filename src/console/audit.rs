//! The console's actions on the audit record.
//!
//! Every action a signed-in person takes (signing in, submitting, approving, asking for and
//! approving a replay) becomes a [`ConsoleAction`] with their UPN, object id and roles, sealed
//! with the console's key (`console.key`, namespace `mfa-reset-request`) as the next link of
//! this process's own chain `console:{writer}`, and published to the outcomes stream beside
//! the workers' records. Readers believe it only when the signature verifies
//! ([`crate::records::RecordReader`]); `audit export` lists it with its signer.
//!
//! A record that cannot be published is logged (without secrets) and the action goes on: the
//! broker being away must not lock people out of the console, and the log line says so.

use chrono::Utc;
use serde_json::Value;

use super::session::Session;
use super::Console;
use crate::broker::topology::RK_OUTCOME;
use crate::broker::OutMessage;
use crate::domain::{ConsoleAction, Record};
use crate::records::read::CONSOLE_CHAIN_PREFIX;
use crate::trust::ChainWriter;

/// A new chain for this console process.
pub fn new_chain() -> ChainWriter {
    let writer = uuid::Uuid::new_v4().simple().to_string();
    ChainWriter::new(
        format!("{CONSOLE_CHAIN_PREFIX}{writer}"),
        crate::trust::Namespace::Request,
    )
}

/// Put `action` by `session` on the audit record.
pub async fn record(
    console: &Console,
    session: &Session,
    action: &str,
    batch: Option<&str>,
    detail: Value,
) {
    if let Err(err) = try_record(console, session, action, batch, detail).await {
        tracing::error!(action, oid = %session.oid, upn = %super::printable(&session.upn), error = %format!("{err:#}"), "a console action could not be put on the audit record");
    }
}

/// [`record`], for an action that must not happen unrecorded: the error when the record
/// could not be published (confirmed).
pub async fn try_record(
    console: &Console,
    session: &Session,
    action: &str,
    batch: Option<&str>,
    detail: Value,
) -> anyhow::Result<()> {
    let entry = Record::ConsoleAction(ConsoleAction {
        action: action.to_string(),
        batch: batch.map(str::to_string),
        upn: session.upn.clone(),
        oid: session.oid.clone(),
        roles: session
            .roles
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        at: Utc::now(),
        detail,
    });
    publish(console, &entry).await
}

async fn publish(console: &Console, entry: &Record) -> anyhow::Result<()> {
    let Some((signer, _)) = &console.signer else {
        anyhow::bail!("console.key is not set: the console cannot sign its audit records");
    };
    // Sealed and published under one lock: the chain's records reach the stream in seq order,
    // and a failed publish is retried with the same sealed record, never a new one.
    let mut chain = console.audit_chain.lock().await;
    let sealed = chain.seal(entry, signer)?;
    let body = serde_json::to_vec(&sealed)?;
    let mut last = None;
    for _ in 0..3 {
        let mut publisher = match console.publisher().await {
            Ok(p) => p,
            Err(err) => {
                last = Some(err);
                continue;
            }
        };
        let Some(p) = publisher.as_mut() else {
            continue;
        };
        let message =
            OutMessage::json(RK_OUTCOME, body.clone()).via(console.topology_intake.clone());
        match p.send(message).await {
            Ok(()) => match p.flush().await {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            },
            Err(err) => last = Some(err),
        }
        // A broken connection: connect again on the next try.
        *publisher = None;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no publisher")))
}
