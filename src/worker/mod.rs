//! The worker: consumes requests, resets users through Graph, records outcomes.
//!
//! Per delivery: parse (invalid → dead-letter) → verify its signed batch, proof and approval
//! (refused → dead-letter with the reason, never executed) → already recorded? (ack, no Graph call) →
//! expired / protected? → reset → outcome on the stream (confirmed) → ack. A request whose
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
//! - [`outbox`]: outcomes held through a broker outage, recorded after reconnecting.
//! - [`ledger`]: which requests already have an outcome (idempotency).
//! - [`metrics`]: counters for `/metrics` and summaries.

mod delivery;
pub mod disposition;
pub mod ledger;
pub mod metrics;
pub mod outbox;
mod session;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::graph::GraphClient;
use crate::reset::Scope;
use session::Ended;

pub use disposition::Disposition;
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
    ledger: Arc<Ledger>,
    outbox: Outbox,
    name: String,
    metrics: Arc<WorkerMetrics>,
    options: WorkOptions,
    gatekeeper: Gatekeeper,
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
/// `broker.connect_timeout` is an error, and so is Graph refusing the app itself.
pub async fn run(
    settings: &Settings,
    graph: GraphClient,
    options: WorkOptions,
    metrics: Arc<WorkerMetrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let gatekeeper = Gatekeeper::from_settings(&settings.security)?;
    let worker = Arc::new(Worker {
        gatekeeper,
        settings: settings.clone(),
        topology: Topology::new(&settings.broker, &settings.retry),
        graph,
        scope: Scope::from_settings(&settings.reset.methods)?,
        ledger: Arc::new(Ledger::with_capacity(
            settings.reset.max_request_age,
            settings.worker.ledger_capacity,
        )),
        outbox: Outbox::default(),
        name: worker_name(settings),
        metrics,
        options,
    });
    let connection_name = format!("mfa-reset worker {}", worker.name);
    let mut delays = reconnect_backoff().build();
    loop {
        let conn = broker::connect(&settings.broker, &connection_name).await?;
        let ended = session::run(&conn, &worker, &cancel).await;
        let _ = conn.close(200, "bye".into()).await;
        let err = match ended {
            Ended::Stopped => return Ok(()),
            Ended::Halted(cause) => anyhow::bail!(
                "Graph refuses the app itself ({}: {}): no request can succeed until its \
                 registration is fixed (credential, admin consent, tenant). The requests stay \
                 queued; fix the app, then start the workers again",
                cause.code,
                cause.message
            ),
            Ended::Lost(err) => err,
        };
        if cancel.is_cancelled() {
            tracing::warn!(error = %format!("{err:#}"), "stopped with an error during shutdown");
            return Ok(());
        }
        worker.metrics.reconnects.inc();
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "lost the broker; reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
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
