//! Microsoft Graph: tokens, the HTTP client, method types, error classification,
//! and the shared rate budget and Retry-After pause.
//!
//! # Layout
//! - `token`: client-credentials tokens (secret or certificate), cached and renewed.
//! - `client`: [`GraphClient`], every call we make, each retried in one place.
//! - `methods`: [`AuthMethod`], one variant per `@odata.type`, and its DELETE path.
//! - `error`: [`Error`], the one classification of Graph's answers (retry / renew / permanent).
//! - `throttle`: [`Budget`] (proactive limits) and [`PauseGate`] (one pause for every task).
//! - `address`: how a user goes into a URL path (`#EXT#`, `$`, `'`).

mod address;
mod client;
mod error;
mod methods;
mod throttle;
mod token;

pub use address::user_path;
pub use client::{GraphClient, GroupMember, TemporaryAccessPass};
pub use error::{Class, Error, NoAnswer};
pub use methods::AuthMethod;
pub use throttle::{Budget, PauseGate, ThrottleSnapshot, ThrottleStats};
pub use token::{AccessToken, TokenProvider};
