//! Microsoft Graph: tokens, the HTTP client, method types, error classification,
//! and the shared rate budget and Retry-After pause.
//!
//! # Layout
//! - `token`: client-credentials tokens (secret or certificate), cached and renewed.
//! - `client`: [`GraphClient`], every call we make, all through one send loop.
//! - `attempt`: the send loop's decisions: after each attempt, the next step (renew the token,
//!   pause everyone, back off, give up, already applied, done), and the backoff schedule.
//! - `methods`: [`AuthMethod`], one variant per `@odata.type`, and its DELETE path.
//! - `error`: [`Error`], the one classification of Graph's answers, and its [`Class`]
//!   (outage / retry / permanent / halt).
//! - `budget`: [`Budget`], the proactive rate limits, on tokio's clock.
//! - `adaptive`: the control law of each limit: measures the rate Graph served between
//!   throttlings, sets the budget just below it, remembers it, probes upwards slowly.
//! - `pause`: [`PauseGate`], one Retry-After pause for every task, and its announcements.
//! - `stats`: [`ThrottleStats`], the client's traffic counters as Prometheus metrics, and
//!   [`ThrottleSnapshot`], their flat copy for logs and benchmarks.
//! - `address`: how a user ([`UserAddress`]), a method id or a nextLink goes into (or comes
//!   from) a URL.
//! - `directory`: what is read from the directory, as types: [`DirectoryUser`] (a user resolved
//!   to its object id), [`Privilege`] (directory roles, active or eligible), [`GroupUsers`].

mod adaptive;
mod address;
mod attempt;
mod budget;
mod client;
mod directory;
mod error;
mod methods;
mod pause;
mod send;
mod stats;
mod token;

pub use address::{user_path, UserAddress};
#[cfg(test)]
pub(crate) use budget::stand_in;
pub use budget::{Budget, Learned, Limit};
pub use client::{GraphClient, Listing, TemporaryAccessPass};
pub use directory::{
    DirectoryUser, GroupMember, GroupUsers, Privilege, RoleHeld, RoleHold, SkippedMembers,
};
pub use error::{AppFault, Class, Error, NoAnswer};
pub use methods::{AuthMethod, Registered};
pub use pause::{PauseGate, Throttling};
pub use send::{client_request_id, with_client_request_id, with_write_guard, WriteGuard};
pub use stats::{ThrottleSnapshot, ThrottleStats};
pub use token::{AccessToken, TokenProvider};

/// Lock a mutex whose data stays valid even if a holder panicked (plain values, no invariants
/// spanning a panic), so a poisoned lock is recovered rather than propagated.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
