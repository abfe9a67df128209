//! The worker: consumes requests, resets users through Graph, records outcomes.
//!
//! Per delivery: parse (invalid → dead-letter) → verify its signed batch, proof and approval
//! (refused → dead-letter with the reason, never executed) → already recorded? (ack, no Graph call) →
//! halted or capped? (handed back, nothing used) → expired / protected? → reset → outcome
//! sealed on the stream (confirmed) → ack. Only records that verify against
//! `security.allowed_signers` count as recorded (see [`crate::records`]). A request whose
//! Graph errors outlast the in-process retries goes to the next broker delay tier (never
//! held unacked through a long wait); after the last tier it fails and is dead-lettered.
//!
//! An outage is not the request's fault: when the in-process retries end on Graph being
//! unreachable (no answer, 502/503/504) or throttling, the request waits in the first delay
//! tier again *without* using up an attempt. It comes back until Graph answers, bounded by
//! `reset.max_request_age` (past it the request ends `expired`), so a long outage never
//! turns a whole batch into `failed`.
//!
//! What becomes of a delivery is decided as a value ([`disposition::decide`], pure) and then
//! carried out against the broker in one place (`delivery::carry_out`).
//!
//! # Layout
//! - [`disposition`]: the decision: [`Disposition`] from the request, what came of it, and
//!   the rules (pure, unit-tested branch by branch).
//! - `delivery`: one task per delivery: claim, run, decide, carry out; panics caught.
//! - `session`: one connection's life: consuming, reaping, queue probe, stream liveness,
//!   idle exit, graceful shutdown.
//! - [`verify`]: the [`Gatekeeper`]: every request verified against
//!   `security.allowed_signers` before anything else; verified manifests cached.
//! - [`gate`]: whether requests may be taken now: an admin's halt, the hourly cap.
//! - [`outbox`]: sealed records held through a broker outage, recorded after reconnecting.
//! - [`fleet`]: the other workers: heartbeats (the live count that divides the Graph budget)
//!   and Retry-After pauses shared through the `{p}.fleet` exchange, each sealed with
//!   `worker.key` and taken only when it verifies ([`fleet::envelope`]).
//! - [`ledger`]: which requests already have an outcome (idempotency).
//! - [`metrics`]: counters for `/metrics` and summaries.

mod delivery;
pub mod disposition;
pub mod fleet;
pub mod gate;
pub mod ledger;
pub mod metrics;
pub mod outbox;
mod session;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::backup::BackupRecipient;
use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::graph::GraphClient;
use crate::records::{RecordReader, Sealer};
use crate::reset::{ProtectedUsers, ProtectedUsersError, Scope};
use disposition::Cause;
use session::Ended;

pub use disposition::Disposition;
pub use gate::Gate;
pub use ledger::Ledger;
pub use metrics::WorkerMetrics;
pub use outbox::Outbox;
pub use verify::Gatekeeper;

/// How a `work` run is shaped.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// Users in flight.
    pub concurrency: usize,
    /// Exit once nothing has been in flight or waiting for this long.
    pub exit_when_idle: Option<Duration>,
}

/// What outlives a connection: settings, clients, the ledger and the outbox.
struct Worker {
    settings: Settings,
    topology: Topology,
    graph: GraphClient,
    scope: Scope,
    /// `reset.backup_recipient` when `reset.backup` is on.
    backup: Option<BackupRecipient>,
    /// `reset.protected_users`, resolved to object ids at start.
    protected: ProtectedUsers,
    ledger: Arc<Ledger>,
    outbox: Outbox,
    name: String,
    metrics: Arc<WorkerMetrics>,
    options: WorkOptions,
    gatekeeper: Gatekeeper,
    /// Seals this worker's plans and outcomes with `worker.key`.
    sealer: Sealer,
    /// Believes only records (and commands) that verify against `security.allowed_signers`.
    reader: RecordReader,
    /// Halt and hourly cap.
    gate: Gate,
    /// `tap.recipient`: the helpdesk key every Temporary Access Pass is sealed to.
    tap: Option<crate::tap::TapRecipient>,
}

/// This worker's name in outcomes and dead letters.
pub fn worker_name(settings: &Settings) -> String {
    if !settings.worker.name.is_empty() {
        return settings.worker.name.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Delays between reconnections after losing the broker: 500 ms doubling up to 5 s.
pub fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}

/// Consume and reset until `cancel` fires (or idle, with `exit_when_idle`).
/// Reconnects with backoff when the broker goes away; a broker not reachable for
/// `broker.connect_timeout` is an error, and so is a `reset.protected_users` entry that does
/// not parse or name a user of the tenant.
///
/// When Graph refuses the app itself (its secret, certificate, consent, tenant: class
/// `Halt`), the worker **halts**: it stops taking requests (they stay queued, no attempt
/// used), logs an error naming the cause and the fix, answers `/healthz` with 503 and the
/// reason, sets `mfa_reset_halted`, and asks for a token again every
/// `worker.halt_retry_every`; once one is issued it carries on by itself.
pub async fn run(
    settings: &Settings,
    graph: GraphClient,
    options: WorkOptions,
    metrics: Arc<WorkerMetrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let gatekeeper = Gatekeeper::from_settings(&settings.security)?;
    let sealer = Sealer::from_key_setting(&settings.worker.key)?;
    let reader = RecordReader::from_settings(&settings.security)?;
    let principal = sealer.check_allowed(reader.allowed())?;
    tracing::info!(key = %sealer.fingerprint(), %principal, "signing records with worker.key");
    let scope = Scope::from_settings(&settings.reset.methods)?;
    // Backups are sealed to the restore key, never written in clear: no key, no start.
    let backup = BackupRecipient::from_settings(&settings.reset)?;
    if let Some(recipient) = &backup {
        tracing::info!(%recipient, "backing up phone numbers and emails, encrypted to reset.backup_recipient");
    }
    let tap = crate::tap::TapRecipient::from_settings(&settings.tap)?;
    let Some(protected) = resolve_protected(settings, &graph, &metrics, &cancel).await? else {
        return Ok(());
    };
    let worker = Arc::new(Worker {
        gatekeeper,
        settings: settings.clone(),
        topology: Topology::new(&settings.broker, &settings.retry),
        graph,
        scope,
        backup,
        protected,
        ledger: Arc::new(Ledger::with_capacity(
            settings.reset.max_request_age,
            settings.worker.ledger_capacity,
        )),
        outbox: Outbox::default(),
        name: worker_name(settings),
        metrics,
        options,
        sealer,
        reader,
        gate: Gate::new(settings.security.max_resets_per_hour),
        tap,
    });
    let connection_name = format!("mfa-reset worker {}", worker.name);
    let mut delays = reconnect_backoff().build();
    loop {
        let conn = Arc::new(broker::connect(&settings.broker, &connection_name).await?);
        let ended = session::run(&conn, &worker, &cancel).await;
        let _ = conn.close(200, "bye".into()).await;
        let err = match ended {
            Ended::Stopped => return Ok(()),
            Ended::Halted(cause) => {
                if !wait_out_halt(
                    &worker.graph,
                    &worker.metrics,
                    &worker.settings,
                    cause,
                    &cancel,
                )
                .await
                {
                    return Ok(());
                }
                continue;
            }
            Ended::Lost(err) => err,
        };
        if cancel.is_cancelled() {
            tracing::warn!(error = %format!("{err:#}"), "stopped with an error during shutdown");
            return Ok(());
        }
        worker.metrics.reconnects.inc();
        // With a cluster, the next session starts on another node.
        broker::avoid_current_node();
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "lost the broker; reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// `reset.protected_users` resolved to object ids before any request is taken. An entry that
/// does not parse or name a user is an error (the worker does not start); Graph refusing the
/// app halts as a request would, and an outage is waited out. `None`: cancelled meanwhile.
async fn resolve_protected(
    settings: &Settings,
    graph: &GraphClient,
    metrics: &WorkerMetrics,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<ProtectedUsers>> {
    loop {
        match ProtectedUsers::resolve(&settings.reset, graph).await {
            Ok(protected) => {
                if !protected.is_empty() {
                    tracing::info!(
                        protected = protected.len(),
                        "reset.protected_users resolved to object ids"
                    );
                }
                return Ok(Some(protected));
            }
            Err(ProtectedUsersError::Graph { entry, error }) if error.halts() => {
                let cause = Cause::new(
                    error.code(),
                    format!("resolving reset.protected_users entry {entry:?}: {error}"),
                );
                if !wait_out_halt(graph, metrics, settings, cause, cancel).await {
                    return Ok(None);
                }
            }
            Err(ProtectedUsersError::Graph { entry, error }) if error.is_retryable() => {
                let every = settings.worker.halt_retry_every;
                tracing::warn!(entry = %entry, error = %error, retry_in = ?every, "cannot resolve reset.protected_users yet; trying again");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(every) => {}
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Halted: Graph refuses the app itself. Say so (error log with cause and fix, `/healthz`
/// 503, `mfa_reset_halted`), then ask for a token every `worker.halt_retry_every` until one
/// is issued. True when the worker may carry on; false when cancelled meanwhile.
///
/// A token being issued is the only thing the worker can check without a user; a fault that
/// only Graph's calls show (a permission not granted) halts again at the next request, and
/// the worker waits once more.
async fn wait_out_halt(
    graph: &GraphClient,
    metrics: &WorkerMetrics,
    settings: &Settings,
    cause: Cause,
    cancel: &CancellationToken,
) -> bool {
    let every = settings.worker.halt_retry_every;
    metrics.halt(&cause.message);
    tracing::error!(
        code = %cause.code,
        cause = %cause.message,
        retry_every = ?every,
        "HALTED: Graph refuses the app itself, so no request can succeed. No request is taken \
         until it is fixed; the requests stay queued with no attempt used. Fix the app as the \
         cause says; the worker asks for a token again on its own and carries on"
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(every) => {}
        }
        match graph.renew_token().await {
            Ok(()) => {
                metrics.resume();
                tracing::warn!("the app gets a token again: no longer halted, taking requests");
                return true;
            }
            Err(error) if error.halts() => {
                metrics.halt(&error.to_string());
                tracing::error!(code = %error.code(), cause = %error, retry_in = ?every, "still halted: Graph still refuses the app");
            }
            Err(error) => {
                tracing::warn!(error = %error, retry_in = ?every, "still halted: the token endpoint did not answer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_waits_half_a_second_doubling_up_to_five_seconds_forever() {
        let ms: Vec<u128> = reconnect_backoff()
            .build()
            .take(7)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }
}
