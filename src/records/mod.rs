//! The worker's records on the outcomes stream: sealed when written, verified when read.
//!
//! Every plan and outcome a worker writes is a [`crate::trust::SealedRecord`]: signed with
//! the worker's own SSH key (`worker.key`, namespace `mfa-reset-worker`) and hash-chained,
//! one chain per writer per batch ([`crate::trust::chain`]). Anyone holding broker
//! credentials can *append* to the stream, so a reader believes only what verifies:
//! the idempotency ledger, the hourly cap, `status`, `report` and `restore` take plans and
//! outcomes only when [`RecordReader::read`] says [`Read::Verified`], and count (and warn
//! about) the rest. `audit verify` checks the chains end to end.
//!
//! # Layout
//! - [`seal`]: [`Sealer`], the writing side: seal, publish in chain order, confirm.
//! - [`read`]: [`RecordReader`], the reading side: what a stream message is, and whether
//!   to believe it.
//! - [`restore`]: [`restore::RestoreLog`], an admin's signed record of a `restore --yes`
//!   (who re-creates what, then what was), and when to believe one.

pub mod read;
pub mod restore;
pub mod seal;

pub use read::{Read, RecordReader};
pub use seal::{Sealed, Sealer};
