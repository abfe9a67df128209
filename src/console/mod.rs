//! `mfa-reset serve`: the web console and the ticket API, one axum process beside the workers.
//!
//! - [`webhook`]: Standard Webhooks verification, pure.
//! - [`tap`]: a user's Temporary Access Pass, opened with `tap.identity` and shown once.
//! - [`tickets`]: `POST /api/v1/tickets` (one signed request per ticket) and
//!   `GET /api/v1/tickets/{ticket}` (its outcome, from the outcomes stream).
//! - [`reports`]: a batch's report (CSV, JSON lines) as a download.
//!
//! The console holds no state that matters across restarts: request ids are derived from the
//! source and `webhook-id`, so a call delivered again after a restart carries the same request
//! id and the workers' exactly-once ledger absorbs it; what the tickets API answers is rebuilt
//! from the outcomes stream at start.

pub mod audit;
pub mod history;
pub mod oidc;
pub mod pages;
pub mod reports;
pub mod session;
pub mod tap;
pub mod tickets;
pub mod uploads;
pub mod watch;
pub mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::stream::{Offset, StreamFollower};
use crate::broker::{self, Publisher, Topology};
use crate::config::Settings;

/// Everything a handler needs.
pub struct Console {
    /// The process's settings.
    pub settings: Settings,
    /// Ticket systems allowed to call, with their secrets.
    pub sources: webhook::Sources,
    /// Publishes the batches the console creates (one at a time).
    publisher: tokio::sync::Mutex<Option<Publisher>>,
    /// Calls accepted by this process, for idempotent answers.
    pub accepted: tokio::sync::Mutex<tickets::Accepted>,
    /// What the outcomes stream says about tickets.
    pub index: Arc<std::sync::Mutex<tickets::TicketIndex>>,
    /// Where browsers reach the console (no trailing slash).
    pub public_url: String,
    /// Plain-HTTP loopback console: cookies without `Secure`.
    pub insecure_cookies: bool,
    /// Signs the session cookies.
    pub cookies: session::CookieKey,
    /// The sign-in provider.
    pub provider: oidc::Provider,
    /// HTTP client for the provider.
    pub http: reqwest::Client,
    /// The console's key (`console.key`) and the principal it signs batches as.
    pub signer: Option<(crate::trust::Signer, String)>,
    /// Uploads waiting for their submit.
    pub uploads: uploads::Uploads,
    /// Every batch on the outcomes stream, folded.
    pub batches: Arc<std::sync::Mutex<uploads::Batches>>,
    /// `tap.identity`: opens the Temporary Access Passes on outcomes.
    pub tap_identity: Option<crate::tap::TapIdentity>,
    /// Passes shown (each only once): by this console, or by any console before it, as
    /// their verified `tap_shown` records on the outcomes stream say.
    pub tap_shown: Arc<tap::Shown>,
    /// How far the outcomes stream has been read, and where it ended when the console
    /// started: a pass is not shown before the console has read every earlier `tap_shown`.
    pub stream_read: tokio::sync::watch::Receiver<u64>,
    /// One past the stream's last offset at start (0: it was empty).
    pub stream_end_at_start: u64,
    /// Woken whenever the outcomes stream brings a record (handlers waiting for a batch this
    /// process just submitted to show up).
    pub batches_changed: Arc<tokio::sync::Notify>,
    /// Batches this process submitted, with the submitting person's object id: the
    /// two-person check compares identities, not only the UPN the manifest carries.
    pub submitted: std::sync::Mutex<HashMap<String, String>>,
    /// Replays operators asked for, waiting for (or done after) an approver.
    pub replays: history::ReplayRequests,
    /// This process's chain of console actions on the audit record.
    pub audit_chain: tokio::sync::Mutex<crate::trust::ChainWriter>,
    /// The intake exchange (the console's records go to the outcomes stream through it).
    pub topology_intake: String,
    /// Cancelled when the console stops: open event streams end, so the graceful shutdown
    /// is not held by a browser watching a running batch.
    pub shutdown: CancellationToken,
}

impl Console {
    /// The publisher, connected (again) if needed.
    async fn publisher(&self) -> anyhow::Result<tokio::sync::MutexGuard<'_, Option<Publisher>>> {
        let mut guard = self.publisher.lock().await;
        if guard.is_none() {
            let topology = Topology::new(&self.settings.broker, &self.settings.retry);
            *guard = Some(
                Publisher::connect(&self.settings.broker, &topology, "mfa-reset serve").await?,
            );
        }
        Ok(guard)
    }
}

/// A running console: its address, and the task serving it.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Ends when the console stops.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Check the settings, connect to the broker, start following the outcomes stream, bind
/// `console.listen` and serve until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let sources = webhook::Sources::from_settings(
        settings
            .webhook
            .secrets
            .iter()
            .map(|(name, secret)| (name, secret.expose_secret())),
    )?;
    let signer = if settings.console.key.trim().is_empty() {
        anyhow::ensure!(
            sources.is_empty(),
            "webhook.secrets names {} but console.key is empty: the console signs the batch of \
             each ticket with its own SSH key (namespace mfa-reset-request in \
             security.allowed_signers); set console.key (MFA_RESET__CONSOLE__KEY)",
            sources.names().join(", ")
        );
        None
    } else {
        let path = std::path::PathBuf::from(settings.console.key.trim());
        let signer = crate::trust::Signer::from_key_file(&path)
            .with_context(|| format!("console.key {}", path.display()))?;
        let principal = crate::commands::enqueue::signing_principal(
            &settings,
            &signer,
            crate::trust::Namespace::Request,
        )
        .context("console.key")?;
        Some((signer, principal))
    };
    let tap_identity = match settings.tap.identity.trim() {
        "" => None,
        path => Some(crate::tap::TapIdentity::load(std::path::Path::new(path))?),
    };
    let topology = Topology::new(&settings.broker, &settings.retry);
    // Declares the topology, so the outcomes stream exists before it is followed.
    let publisher = Publisher::connect(&settings.broker, &topology, "mfa-reset serve").await?;
    let index: Arc<std::sync::Mutex<tickets::TicketIndex>> = Arc::default();
    let conn = broker::connect(&settings.broker, "mfa-reset serve (outcomes)").await?;
    let sink = index.clone();
    let batches: Arc<std::sync::Mutex<uploads::Batches>> = Arc::default();
    let batch_sink = batches.clone();
    let batches_changed: Arc<tokio::sync::Notify> = Arc::default();
    let changed = batches_changed.clone();
    // Only what verifies against security.allowed_signers: a forged outcome on the stream
    // never shows as a ticket's or a batch's result.
    let reader = crate::records::RecordReader::from_settings(&settings.security)?;
    let tap_shown: Arc<tap::Shown> = Arc::default();
    let shown_sink = tap_shown.clone();
    let stream_end_at_start = crate::broker::stream::tail(&conn, &topology.outcomes())
        .await
        .context("reading where the outcomes stream ends")?
        .map_or(0, |last| last + 1);
    let follower = StreamFollower::start(&conn, &topology, Offset::First, move |message| {
        let record = match reader.read(&message.body) {
            crate::records::Read::Verified { record, .. } => {
                if let crate::domain::Record::ConsoleAction(action) = &record {
                    shown_sink.remember(action);
                }
                record
            }
            crate::records::Read::Unsealed(record) => record,
            crate::records::Read::Ignored { .. } => return,
        };
        let batch = match &record {
            crate::domain::Record::Manifest(m) => Some(m.batch.clone()),
            crate::domain::Record::Outcome(o) => Some(o.batch.clone()),
            _ => None,
        };
        if let (Some(batch), Ok(mut batches)) = (batch, batch_sink.lock()) {
            batches
                .entry(batch.clone())
                .or_insert_with(|| crate::batch::BatchView::new(&batch))
                .apply(record.clone());
            changed.notify_waiters();
        }
        if let Ok(mut index) = sink.lock() {
            index.record(record);
        }
    })
    .await
    .context("following the outcomes stream")?;
    let stream_read = follower.progress();
    let listener = TcpListener::bind(&settings.console.listen)
        .await
        .with_context(|| format!("console.listen {:?}", settings.console.listen))?;
    let addr = listener.local_addr()?;
    let public_url = if settings.console.public_url.is_empty() {
        format!("http://{addr}")
    } else {
        settings
            .console
            .public_url
            .trim_end_matches('/')
            .to_string()
    };
    anyhow::ensure!(
        settings.console.oidc_issuer.is_empty() || !settings.console.oidc_client_id.is_empty(),
        "console.oidc_issuer is set but console.oidc_client_id is empty: give the console's \
         application (client) id"
    );
    anyhow::ensure!(
        settings.console.oidc_issuer.is_empty()
            || oidc::https_or_loopback(&settings.console.oidc_issuer),
        "console.oidc_issuer {:?} must be https (plain http only on a loopback address)",
        settings.console.oidc_issuer
    );
    let insecure_cookies =
        public_url.starts_with("http://") && oidc::https_or_loopback(&public_url);
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let console = Arc::new(Console {
        public_url,
        insecure_cookies,
        cookies: session::CookieKey::random(),
        provider: oidc::Provider::default(),
        http,
        signer,
        uploads: Default::default(),
        batches,
        tap_identity,
        tap_shown,
        stream_read,
        stream_end_at_start,
        batches_changed,
        submitted: Default::default(),
        replays: Default::default(),
        audit_chain: tokio::sync::Mutex::new(audit::new_chain()),
        topology_intake: topology.intake(),
        shutdown: shutdown.clone(),
        settings,
        sources,
        publisher: tokio::sync::Mutex::new(Some(publisher)),
        accepted: Default::default(),
        index,
    });
    let app = router(console.clone());
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        let _ = follower.stop().await;
        if let Some(publisher) = console.publisher.lock().await.take() {
            let _ = publisher.close().await;
        }
        let _ = conn.close(200, "bye".into()).await;
        served.context("serving the console")
    });
    Ok(Running { addr, task })
}

/// The routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(pages::home))
        .route("/login", get(oidc::login))
        .route("/auth/callback", get(oidc::callback))
        .route("/logout", post(pages::logout))
        .route("/api/v1/me", get(pages::me))
        .route("/console.js", get(uploads::script))
        .route("/batches/new", get(uploads::new_batch_page))
        .route("/batches/{batch}", get(uploads::batch_page))
        .route("/api/v1/uploads", post(uploads::upload))
        .route("/api/v1/uploads/{id}/submit", post(uploads::submit))
        .route("/api/v1/batches/{batch}/events", get(uploads::batch_events))
        .route("/api/v1/batches/{batch}/approve", post(uploads::approve))
        .route("/batches/{batch}/tap/{request_id}", get(tap::page_view))
        .route(
            "/api/v1/batches/{batch}/tap/{request_id}",
            post(tap::reveal),
        )
        .route("/tap.js", get(tap::script))
        .route("/api/v1/batches/{batch}/report", get(reports::download))
        .route("/api/v1/batches/{batch}/users", get(watch::users))
        .route("/batches", get(history::history_page))
        .route("/dead-letters", get(history::dead_letters_page))
        .route(
            "/api/v1/replays",
            get(history::list_replays).post(history::ask_replay),
        )
        .route(
            "/api/v1/replays/{id}/approve",
            post(history::approve_replay),
        )
        .route("/api/v1/tickets", post(tickets::create))
        .route("/api/v1/tickets/{ticket}", get(tickets::outcome))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// Headers on every answer: no framing, no sniffing, scripts and styles only from here (the
/// pages' own inline style excepted).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
    ] {
        headers.insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// A JSON error: `{"error": code, "field": …, "message": …}` with `status`.
pub fn json_error(status: StatusCode, code: &str, field: &str, message: &str) -> Response {
    let mut body = serde_json::json!({ "error": code, "message": message });
    if !field.is_empty() {
        body["field"] = field.into();
    }
    (status, Json(body)).into_response()
}

pub use crate::net::printable;
