//! # mfa-reset
//!
//! Resets multi-factor authentication for many Microsoft Entra ID users at once: a producer
//! puts one request per user on RabbitMQ, rate-limited workers reset each user through
//! Microsoft Graph, and every user ends with a recorded outcome on a replayable stream.
//!
//! # Layout
//! - [`config`]: typed settings in layers (built-in defaults, one settings file from `--config`,
//!   `MFA_RESET_CONFIG` or `/etc/mfa-reset/config.toml` — refused when others can write it —,
//!   then the environment).
//! - [`telemetry`]: tracing setup (text or JSON), metrics registry.
//! - [`cli`]: the command line (clap).
//! - [`domain`]: `UserRef`, `ResetRequest`, `Outcome`, `Status`: the wire formats.
//! - [`intake`]: CSV files and ticket events parsed and validated before anything is enqueued.
//! - [`batch`]: one batch's manifest and outcomes, folded from the outcomes stream.
//! - [`broker`]: RabbitMQ topology, confirmed publishing, consuming (`consumer`: QoS, ack,
//!   hand back), reading the outcomes stream.
//! - [`graph`]: the Microsoft Graph client: tokens, methods, the error taxonomy (`Class`: outage,
//!   retry, permanent, halt), the attempt loop as a state machine (`attempt`), the rate budget,
//!   its adaptive factor, the Retry-After pause and the traffic statistics.
//! - [`reset`]: the per-user reset: the plan as pure functions (`plan`: which methods, in what
//!   order, what the outcome is), who is never touched (`protected`), waiting out Graph's eventual
//!   consistency (`settle`), and the thin async layer that calls Graph.
//! - [`worker`]: the consume loop: decisions as values (`disposition`: one pure function from a
//!   delivery and its attempt to ack / retry tier / outage requeue / record / dead-letter /
//!   halt / reject), carried out in one place (`delivery`), one task per delivery, the session
//!   (`session`), the outbox of outcomes held through a broker outage, the idempotency ledger.
//! - [`commands`]: one module per subcommand, each with a `run` (`approve` has two parts of its
//!   own: reading the awaiting stream, `awaiting`, and the directory-role check, `admins`).
//! - [`net`]: transport policy (https-only Graph, TLS or loopback-only broker) and printing
//!   values that came from outside without their control characters.
//! - [`console`]: `serve`: the web console and the ticket webhook (Standard Webhooks).
//! - [`records`]: the worker's plan and outcome records sealed (signed, hash-chained) when
//!   written and verified when read; only verified ones count. Also an admin's signed record
//!   of a `restore` (who re-creates what, and what came of it).
//! - [`backup`]: backed-up phone numbers and emails encrypted to the restore key (age X25519)
//!   by workers, opened only by `restore --identity`.
//! - [`control`]: signed admin commands (`halt`, `resume`) on the control stream.
//! - [`tap`]: the Temporary Access Pass after a reset: settings check, sealed to the
//!   helpdesk's age key on the outcome, opened by the console with its identity.
//! - [`trust`]: signatures (OpenSSH sshsig, ssh-agent), allowed signers, Merkle batches, record
//!   chains; a signed request's wire form (`requests`) and the worker's pure check of it
//!   (`requests::verify`).
//!
//! The Graph simulator used by tests, the demo and the benchmarks is the workspace's
//! `graph-sim` crate (`crates/graph-sim`), which shares no types with this one; `demo` needs
//! it through the default cargo feature `demo`.

pub mod backup;
pub mod batch;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod domain;
pub mod graph;
pub mod intake;
pub mod net;
pub mod records;
pub mod reset;
pub mod tap;
pub mod telemetry;
pub mod trust;
pub mod worker;
