//! `mfa-reset work`: a worker process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::WorkArgs;
use crate::config::Settings;
use crate::graph::GraphClient;
use crate::worker::{self, WorkOptions, WorkerMetrics};

/// Consume and reset until SIGINT/SIGTERM (or idle with `--exit-when-idle`).
pub async fn run(settings: &Settings, args: &WorkArgs) -> anyhow::Result<()> {
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    let cancel = super::shutdown_token();
    let metrics = Arc::new(WorkerMetrics::default());
    if !settings.worker.metrics_addr.is_empty() {
        let addr = settings.worker.metrics_addr.parse().with_context(|| {
            format!(
                "worker.metrics_addr {:?} is not HOST:PORT",
                settings.worker.metrics_addr
            )
        })?;
        let bound =
            crate::telemetry::serve_metrics(addr, metrics.clone(), graph.clone(), cancel.clone())
                .await?;
        tracing::info!(%bound, "serving /metrics and /healthz");
    }
    let options = WorkOptions {
        concurrency: args.concurrency.unwrap_or(settings.worker.concurrency),
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs),
    };
    tracing::info!(concurrency = options.concurrency, prefix = %settings.broker.prefix, "worker starting");
    worker::run(settings, graph.clone(), options, metrics.clone(), cancel).await?;
    // The process's Graph traffic as the client saw it (429s, pauses, budget waits):
    // operators and scripts/bench.sh read it from this line.
    let graph_stats = serde_json::to_string(&graph.stats().snapshot())?;
    tracing::info!(graph = %graph_stats, "worker stopped");
    Ok(())
}
