//! # mfa-reset
//!
//! Resets multi-factor authentication for many Microsoft Entra ID users at once: a producer
//! puts one request per user on RabbitMQ, rate-limited workers reset each user through
//! Microsoft Graph, and every user ends with a recorded outcome on a replayable stream.
//!
//! # Layout
//! - [`config`]: typed settings, loaded in layers (defaults, TOML, `--config`, environment).
//! - [`telemetry`]: tracing setup (text or JSON), metrics registry.
//! - [`cli`]: the command line (clap).
//! - [`domain`]: `UserRef`, `ResetRequest`, `Outcome`, `Status`: the wire formats.
//! - [`intake`]: CSV files and ticket events parsed and validated before anything is enqueued.
//! - [`batch`]: one batch's manifest and outcomes, folded from the outcomes stream.
//! - [`broker`]: RabbitMQ topology, confirmed publishing, consuming, reading the outcomes stream.
//! - [`graph`]: the Microsoft Graph client: tokens, methods, errors, rate budget, Retry-After pause.
//! - [`reset`]: the per-user reset plan (what to delete, in which order) and its outcome.
//! - [`worker`]: the consume loop: idempotency, retry tiers, dead-lettering, shutdown.
//! - [`commands`]: one module per subcommand, each with a `run`.
//! - [`sim`]: the Graph simulator used by tests, the demo and the benchmarks.
//! - [`trust`]: signatures (OpenSSH sshsig, ssh-agent), allowed signers, Merkle batches, record chains.

pub mod batch;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod graph;
pub mod intake;
pub mod reset;
pub mod sim;
pub mod telemetry;
pub mod trust;
pub mod worker;
