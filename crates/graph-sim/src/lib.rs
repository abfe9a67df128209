//! The Graph simulator (`graph-sim`): a stand-in for Microsoft Graph and its token endpoint,
//! over real HTTP, faithful to the parts of Graph mfa-reset touches (see
//! `shared/reference/graph-api.md`).
//!
//! - [`tenant`]: users, methods, groups; generated from a seed or loaded from a fixture.
//! - [`auth`]: the token endpoint, issued tokens, client assertion verification.
//! - [`routes`]: the request pipeline, Graph paths and handlers.
//! - [`inspect`]: the `/_sim` inspection and control endpoints.
//! - [`throttle`]: token buckets, Retry-After, throttle headers, violations.
//! - [`faults`]: injected errors, ghost successes, dropped connections, latency, outages.
//! - [`stats`]: counters served at `/_sim/stats`.
//!
//! The server is a hand-rolled hyper accept loop rather than `axum::serve` because a
//! simulated dropped connection must close one TCP connection from inside a handler.

pub mod auth;
pub mod faults;
pub mod inspect;
pub mod reply;
pub mod routes;
pub mod stats;
pub mod tenant;
pub mod throttle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultPatch, FaultSettings};
pub use inspect::UserView;
pub use stats::SimStats;
pub use tenant::{Fixture, GenOptions};
pub use throttle::ThrottleSettings;

use auth::{ClientCertificate, TokenPolicy, TokenStore};
use faults::Faults;
use stats::StatsRecorder;
use tenant::Tenant;
use throttle::{lock, Throttle};

/// Everything that shapes the simulator's behaviour.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Tenant id accepted by the token endpoint.
    pub tenant_id: String,
    /// Client id accepted by the token endpoint.
    pub client_id: String,
    /// Client secret accepted by the token endpoint.
    pub client_secret: String,
    /// Generated users (ignored with a fixture).
    pub users: usize,
    /// Seed of the generated tenant.
    pub seed: u64,
    /// Added latency per Graph request, in milliseconds (initial `faults.latency_ms` when that is 0).
    pub latency_ms: u64,
    /// Lifetime of issued access tokens (`expires_in`).
    pub token_ttl_secs: u64,
    /// PEM certificate whose key signs client assertions; `None` = certificates refused.
    pub client_certificate_pem: Option<String>,
    /// A fixture tenant; when set, `users`, `seed` and `generation` are ignored.
    pub fixture: Option<Fixture>,
    /// Knobs of the generated tenant.
    pub generation: GenOptions,
    /// Throttling.
    pub throttle: ThrottleSettings,
    /// Initial faults (adjustable at run time through `POST /_sim/faults`).
    pub faults: FaultSettings,
    /// How long a deleted method keeps being listed after its 204.
    pub consistency_delay_ms: u64,
    /// Answer `signInPreferences` reads with 403, as for an app without the permission to
    /// read it: clients must then find the default method the two-pass way.
    pub deny_sign_in_preferences: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            client_id: "00000000-0000-0000-0000-000000000002".into(),
            client_secret: "sim-secret".into(),
            users: 100,
            seed: 1,
            latency_ms: 0,
            token_ttl_secs: 3599,
            client_certificate_pem: None,
            fixture: None,
            generation: GenOptions::default(),
            throttle: ThrottleSettings::default(),
            faults: FaultSettings::default(),
            consistency_delay_ms: 0,
            deny_sign_in_preferences: false,
        }
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) addr: SocketAddr,
    pub(crate) policy: TokenPolicy,
    pub(crate) tokens: TokenStore,
    pub(crate) tenant: Mutex<Tenant>,
    pub(crate) throttle: Throttle,
    pub(crate) faults: Faults,
    pub(crate) stats: StatsRecorder,
    pub(crate) consistency_delay: Duration,
    pub(crate) deny_sign_in_preferences: bool,
}

/// A running simulator; stops when dropped or on [`SimServer::shutdown`].
pub struct SimServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint URL for the configured tenant.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.url(),
            self.shared.policy.tenant_id
        )
    }

    /// Counters since start or the last reset.
    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// Zero the counters.
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// The full state of every user.
    pub fn users_snapshot(&self) -> Vec<UserView> {
        let tenant = lock(&self.shared.tenant);
        tenant.users.iter().map(UserView::of).collect()
    }

    /// One user by id or UPN.
    pub fn user(&self, key: &str) -> Option<UserView> {
        let tenant = lock(&self.shared.tenant);
        tenant.find(key).map(|i| UserView::of(&tenant.users[i]))
    }

    /// Change faults at run time; returns the settings now in force.
    pub fn set_faults(&self, patch: FaultPatch) -> FaultSettings {
        self.shared.faults.apply(patch)
    }

    /// Replace the throttle settings (buckets start full).
    pub fn set_throttle(&self, settings: ThrottleSettings) {
        self.shared.throttle.set_settings(settings);
    }

    /// Expire every issued access token now.
    pub fn expire_tokens(&self) {
        self.shared.tokens.expire_all();
    }

    /// Stop serving and wait for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Bind `listen` (port 0 = any free port) and serve in the background until the returned
/// server is dropped.
pub async fn spawn(config: SimConfig, listen: SocketAddr) -> anyhow::Result<SimServer> {
    let tenant = match config.fixture.clone() {
        Some(fixture) => Tenant::from_fixture(fixture)?,
        None => tenant::generate(config.users, config.seed, &config.generation),
    };
    let certificate = config
        .client_certificate_pem
        .as_deref()
        .map(ClientCertificate::from_pem)
        .transpose()?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("graph-sim cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let mut faults = config.faults.clone();
    if faults.latency_ms == 0 {
        faults.latency_ms = config.latency_ms;
    }
    let shared = Arc::new(Shared {
        addr,
        policy: TokenPolicy {
            tenant_id: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            certificate,
            token_ttl: Duration::from_secs(config.token_ttl_secs),
        },
        tokens: TokenStore::default(),
        tenant: Mutex::new(tenant),
        throttle: Throttle::new(config.throttle.clone()),
        faults: Faults::new(faults),
        stats: StatsRecorder::default(),
        consistency_delay: Duration::from_millis(config.consistency_delay_ms),
        deny_sign_in_preferences: config.deny_sign_in_preferences,
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone()));
    Ok(SimServer {
        addr,
        shared,
        cancel,
        task: Some(task),
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE under load: back off briefly rather than spin.
                    tracing::warn!(error = %e, "graph-sim accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, shared.clone(), cancel.clone()));
    }
}

/// Serve one connection; a handler cancels `kill` to close it without answering.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let kill = CancellationToken::new();
    let handler_kill = kill.clone();
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let kill = handler_kill.clone();
        async move { Ok::<_, Infallible>(routes::handle(shared, kill, request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection future closes the socket with no response written.
        _ = kill.cancelled() => {}
        _ = cancel.cancelled() => {}
    }
}
