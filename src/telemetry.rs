//! Logging (text or JSON, to stderr) and the `/metrics` + `/healthz` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;
use crate::graph::GraphClient;
use crate::worker::WorkerMetrics;

/// Install the global tracing subscriber. `RUST_LOG` overrides `log.level`.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, demo) is harmless: the first subscriber stays.
    let _ = if log.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_target(false).try_init()
    };
}

/// Serve `/metrics` (Prometheus text) and `/healthz` on `addr` until `cancel`.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<WorkerMetrics>,
    graph: GraphClient,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let health = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let graph = graph.clone();
                async move { render(&metrics, &graph) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move {
                    // Graph refusing the app itself (its credential, consent, tenant) is an
                    // outage of this worker that someone must fix: unhealthy, with the fix.
                    if let Some(reason) = health.halt_reason() {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("halted: {reason}\n"),
                        )
                    // A paused worker is healthy: it does what it was told (halt) or what the
                    // cap requires; it says so, and restarting it would change nothing.
                    } else if health.connected.get() != 1 {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not connected to the broker\n".to_string(),
                        )
                    } else if let Some(because) = health.paused_because() {
                        (StatusCode::OK, format!("ok, paused: {because}\n"))
                    } else {
                        (StatusCode::OK, "ok\n".to_string())
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    });
    Ok(local)
}

fn render(metrics: &WorkerMetrics, graph: &GraphClient) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    graph.stats().register(&mut registry);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        return String::new();
    }
    out
}
