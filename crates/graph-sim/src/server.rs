//! Serving: [`spawn`] binds a listener and serves the [`crate::router`] on every connection;
//! [`SimServer`] is the handle tests, the demo and the binary hold.
//!
//! A hand-rolled hyper accept loop rather than `axum::serve`, because a simulated dropped
//! connection must close one TCP connection without writing an answer: each connection's
//! service looks at the router's response and, when a stage marked it
//! [`DropConnection`](crate::pipeline::DropConnection), cancels that connection's switch, which
//! drops the hyper connection future and with it the socket (the client sees a reset or an
//! unexpected EOF).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::{AppPatch, AppState, ClientCertificate, TokenPolicy, TokenStore};
use crate::faults::{FaultPatch, FaultSettings, Faults};
use crate::inspect::UserView;
use crate::pipeline::DropConnection;
use crate::stats::{SimStats, StatsRecorder};
use crate::tenant::{self, Tenant};
use crate::throttle::{lock, Throttle, ThrottleSettings};
use crate::{router, Shared, SimConfig};

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

    /// Expire every issued access token now (`POST /_sim/tokens/expire`): what a token's
    /// lifetime ending does, without waiting for it.
    pub fn expire_tokens(&self) {
        self.shared.tokens.expire_all();
    }

    /// The app's state: credentials, consent, permissions (`GET /_sim/app`).
    pub fn app(&self) -> AppState {
        lock(&self.shared.app).clone()
    }

    /// Change the app's state (`POST /_sim/app`): break its secret, withdraw consent or a
    /// permission, disable it… and fix it again. Returns the state now in force. Tokens already
    /// issued keep the roles they were issued with, as Entra's do.
    pub fn set_app(&self, patch: AppPatch) -> AppState {
        let mut app = lock(&self.shared.app);
        app.apply(patch);
        app.clone()
    }

    /// Give a user a new UPN, keeping its object id (`POST /_sim/users/{user}/rename`).
    pub fn rename_user(&self, key: &str, upn: &str) -> Result<UserView, String> {
        let mut tenant = lock(&self.shared.tenant);
        let index = tenant.find(key).ok_or_else(|| format!("no user {key}"))?;
        tenant.rename(index, upn)?;
        Ok(UserView::of(&tenant.users[index]))
    }

    /// End the consistency delay now (`POST /_sim/deletions/settle`): deleted methods stop
    /// being listed, as when `consistency_delay_ms` has passed, without waiting for it.
    pub fn settle_deletions(&self) {
        lock(&self.shared.tenant).settle_deletions();
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
        oidc: crate::oidc::Oidc::new()?,
        taps: Mutex::new(crate::tap::Taps::default()),
        addr,
        policy: TokenPolicy {
            tenant_id: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            certificate,
            token_ttl: Duration::from_secs(config.token_ttl_secs),
        },
        app: Mutex::new(AppState {
            role_management_read: !config.deny_role_management,
            user_read: !config.deny_user_read,
            ..AppState::new(&config.client_secret)
        }),
        tokens: TokenStore::default(),
        tenant: Mutex::new(tenant),
        throttle: Throttle::new(config.throttle.clone()),
        faults: Faults::new(faults),
        stats: StatsRecorder::default(),
        consistency_delay: Duration::from_millis(config.consistency_delay_ms),
        deny_sign_in_preferences: config.deny_sign_in_preferences,
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(accept_loop(
        listener,
        router::router(shared.clone()),
        cancel.clone(),
    ));
    Ok(SimServer {
        addr,
        shared,
        cancel,
        task: Some(task),
    })
}

async fn accept_loop(listener: TcpListener, router: Router, cancel: CancellationToken) {
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
        tokio::spawn(serve_connection(stream, router.clone(), cancel.clone()));
    }
}

/// Serve one connection; a response marked [`DropConnection`] closes it without an answer.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    cancel: CancellationToken,
) {
    let kill = CancellationToken::new();
    let switch = kill.clone();
    let service = hyper::service::service_fn(move |request| {
        let router = router.clone();
        let switch = switch.clone();
        async move {
            let response = router.oneshot(request).await?;
            if response.extensions().get::<DropConnection>().is_some() {
                switch.cancel();
                // The connection future is dropped with this one, before anything is written.
                std::future::pending::<()>().await;
            }
            Ok::<_, std::convert::Infallible>(response)
        }
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
