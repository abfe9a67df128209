//! The Graph simulator (`graph-sim`): a stand-in for Microsoft Graph and its token endpoint,
//! over real HTTP, faithful to the parts of Graph mfa-reset touches as Microsoft documents them
//! (https://learn.microsoft.com/graph/api/resources/authenticationmethods-overview). It shares no types with mfa-reset, on purpose: a client
//! test against it checks the client against an independent reading of Graph.
//!
//! - [`server`]: [`spawn`] and [`SimServer`]: the listener, and the switch that drops a connection.
//! - [`router`]: the axum routes (`/_sim`, the token endpoint, Graph), each behind its stages.
//! - [`pipeline`]: the stages as middleware: arrival and answer, outage, auth, throttle, faults.
//! - [`graph`]: Graph's path grammar and handlers (users, methods, preferences, groups, roles).
//! - [`auth`]: the token endpoint, the app's state (credentials, consent, permissions), issued
//!   tokens, client assertion verification.
//! - [`inspect`]: the `/_sim` inspection and control endpoints.
//! - [`tenant`]: users, methods, roles, groups and their other members; generated from a seed
//!   or loaded from a fixture.
//! - [`throttle`]: token buckets, Retry-After, throttle headers, violations.
//! - [`faults`]: injected errors, ghost successes, dropped connections, latency, outages.
//! - [`stats`]: counters served at `/_sim/stats`.
//! - [`tap`]: the Temporary Access Pass policy (enabled, lifetimes, one-time use, length) and
//!   the passes created.
//! - [`reply`]: response builders in Graph's three error shapes.

pub mod auth;
pub mod faults;
mod graph;
pub mod inspect;
mod oidc;
mod pipeline;
pub mod reply;
mod router;
pub mod server;
pub mod stats;
pub mod tap;
pub mod tenant;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

pub use auth::{AppPatch, AppState, TokenFault};
pub use faults::{FaultPatch, FaultSettings};
pub use inspect::UserView;
pub use server::{spawn, SimServer};
pub use stats::SimStats;
pub use tap::{TapPolicy, TapPolicyPatch, TapState};
pub use tenant::{Fixture, GenOptions};
pub use throttle::ThrottleSettings;

use auth::{TokenPolicy, TokenStore};
use faults::Faults;
use stats::StatsRecorder;
use tenant::Tenant;
use throttle::Throttle;

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
    /// Start without `RoleManagement.Read.Directory` ([`AppState::role_management_read`]).
    pub deny_role_management: bool,
    /// Start without `User.Read.All` ([`AppState::user_read`]).
    pub deny_user_read: bool,
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
            deny_role_management: false,
            deny_user_read: false,
        }
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) addr: SocketAddr,
    pub(crate) policy: TokenPolicy,
    pub(crate) app: Mutex<AppState>,
    pub(crate) tokens: TokenStore,
    pub(crate) tenant: Mutex<Tenant>,
    pub(crate) throttle: Throttle,
    pub(crate) faults: Faults,
    pub(crate) stats: StatsRecorder,
    pub(crate) consistency_delay: Duration,
    pub(crate) deny_sign_in_preferences: bool,
    pub(crate) oidc: oidc::Oidc,
    /// The Temporary Access Pass policy and the passes created.
    pub(crate) taps: Mutex<tap::Taps>,
}
