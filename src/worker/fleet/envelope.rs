//! The envelope of a fleet message: sealed with the sending worker's own key, taken by a
//! receiver only when the seal verifies, the message is fresh, and it was not taken before.
//!
//! On the wire a fleet message is a [`SealedRecord`], the seal of a worker's plans and
//! outcomes ([`crate::records::seal`]): a link `(chain, seq, prev)` on the chain
//! `fleet:{instance}` (the sending connection), the record [`Sent`] (the exchange it was sent
//! on, when, and the message), and an sshsig signature by `worker.key` in namespace
//! `mfa-reset-worker` over the canonical JSON of both. The message travels as JSON text inside the record: canonical JSON
//! holds no floating-point numbers, and a heartbeat's learned factors are floats. `prev` ties
//! each message to the sender's one before; receivers do not check it (messages may be lost).
//!
//! A receiver ([`FleetReader::open`]) takes a message when, cheapest check first:
//! 1. it is at most [`MAX_MESSAGE_BYTES`], sealed, on a `fleet:` chain naming the instance
//!    its message names, and sent on this deployment's exchange (`{p}.fleet`: a message of
//!    another deployment whose workers' keys this one allows is not taken here);
//! 2. it is fresh: sent at most [`MAX_AGE`] ago by this host's clock, and at most
//!    [`MAX_CLOCK_SKEW`] ahead of it (a copy kept and published later is stale);
//! 3. it is new: its seq is above the last one taken from that instance (one sender's
//!    messages reach a queue in order), remembered for as long as a copy could pass 2, so a
//!    copy replayed while fresh does not act twice: a replayed pause extends no pause;
//! 4. its signature verifies against `security.allowed_signers` in the worker namespace, at
//!    the time it was sent.
//!
//! Cost: one ed25519 signature per message sent and one check per message received, as for
//! an outcome record (70–240 µs each in a release build on a loaded 2-core machine, about 830
//! bytes a heartbeat; `sealing_and_opening_cost`), against a heartbeat per second per worker:
//! a worker hearing 100 others spends about 1 % of a core on them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use super::{FleetMessage, MAX_MESSAGE_BYTES, MAX_PEERS, PEER_TTL};
use crate::trust::{
    AllowedSigners, CanonicalError, ChainWriter, Namespace, Principal, SealedRecord, SignError,
    Signer, VerifyError,
};

/// How far apart the workers' clocks may be (keep them in sync with NTP): a message sent up
/// to this far ahead of this host's clock is taken, and so is one this much older than
/// [`PEER_TTL`].
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);
/// Oldest message taken: a heartbeat older than [`PEER_TTL`] speaks for a worker already
/// forgotten, and a pause is shortened by its age anyway. The broker drops a fleet message
/// after 5 s in a queue.
pub const MAX_AGE: Duration = Duration::from_secs(PEER_TTL.as_secs() + MAX_CLOCK_SKEW.as_secs());
/// How long the last seq of a sender is remembered after it was heard: as long as any older
/// copy could still pass as fresh (sent at most [`MAX_CLOCK_SKEW`] ahead, taken until
/// [`MAX_AGE`] old).
const REMEMBER_SEQ: Duration = Duration::from_secs(MAX_AGE.as_secs() + MAX_CLOCK_SKEW.as_secs());
/// How the chain of a connection's fleet messages begins: `fleet:{instance}`.
pub const FLEET_CHAIN_PREFIX: &str = "fleet:";

/// What a fleet message's seal covers besides its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    /// The exchange it was sent on, `{p}.fleet`.
    pub exchange: String,
    /// When the sender sent it, by its clock.
    pub sent_at: DateTime<Utc>,
    /// The [`FleetMessage`] as JSON text (floats and all).
    pub message: String,
}

/// The chain of `instance`'s fleet messages.
pub fn fleet_chain(instance: Uuid) -> String {
    format!("{FLEET_CHAIN_PREFIX}{instance}")
}

/// Seals one connection's fleet messages with `worker.key`: chain `fleet:{instance}`, seq 0,
/// 1, 2…
#[derive(Debug)]
pub struct FleetSeal {
    exchange: String,
    writer: ChainWriter,
    signer: Arc<Signer>,
}

impl FleetSeal {
    /// The seal of connection `instance` sending on `exchange`, signing with `signer`.
    pub fn new(exchange: &str, instance: Uuid, signer: Arc<Signer>) -> FleetSeal {
        FleetSeal {
            exchange: exchange.to_string(),
            writer: ChainWriter::new(fleet_chain(instance), Namespace::Worker),
            signer,
        }
    }

    /// The body to publish: `message`, sent at `sent_at`, sealed as this connection's next.
    pub fn seal(
        &mut self,
        message: &FleetMessage,
        sent_at: DateTime<Utc>,
    ) -> Result<Vec<u8>, SignError> {
        let json = |error: serde_json::Error| SignError::Canonical(CanonicalError::Json(error));
        let sent = Sent {
            exchange: self.exchange.clone(),
            sent_at,
            message: serde_json::to_string(message).map_err(json)?,
        };
        let sealed = self.writer.seal(&sent, &self.signer)?;
        serde_json::to_vec(&sealed).map_err(json)
    }
}

/// A fleet message whose seal has not been checked yet.
#[derive(Debug, Clone)]
pub struct Received {
    /// The sending connection, from the chain.
    pub instance: Uuid,
    /// Its place among that connection's messages.
    pub seq: u64,
    /// The exchange it says it was sent on.
    pub exchange: String,
    /// When it says it was sent.
    pub sent_at: DateTime<Utc>,
    /// What it says.
    pub message: FleetMessage,
    sealed: SealedRecord,
}

/// Read the envelope of a message from the exchange; nothing is believed yet.
pub fn parse(body: &[u8]) -> Result<Received, Refused> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Refused::Malformed(format!(
            "{} bytes, more than {MAX_MESSAGE_BYTES}",
            body.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| Refused::Malformed(format!("not JSON: {error}")))?;
    if !value.is_object() {
        return Err(Refused::Malformed("not a JSON object".into()));
    }
    if value.get("signature").is_none() {
        return Err(Refused::Signature(VerifyError::Unsigned));
    }
    let sealed: SealedRecord = serde_json::from_value(value)
        .map_err(|error| Refused::Malformed(format!("not a sealed fleet message: {error}")))?;
    let instance = sealed
        .link
        .chain
        .strip_prefix(FLEET_CHAIN_PREFIX)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| Refused::Malformed("not on a fleet chain".into()))?;
    let sent: Sent = serde_json::from_value(sealed.record.clone())
        .map_err(|error| Refused::Malformed(format!("not a fleet record: {error}")))?;
    let message: FleetMessage = serde_json::from_str(&sent.message)
        .map_err(|error| Refused::Malformed(format!("not a fleet message: {error}")))?;
    if message.instance() != instance {
        return Err(Refused::Malformed(
            "its chain names another instance than its message".into(),
        ));
    }
    Ok(Received {
        instance,
        seq: sealed.link.seq,
        exchange: sent.exchange,
        sent_at: sent.sent_at,
        message,
        sealed,
    })
}

/// Why a fleet message was dropped unread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Too large, not JSON, or not a sealed fleet message.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Unsigned, badly signed, or signed by a key not allowed in the worker namespace.
    #[error(transparent)]
    Signature(VerifyError),
    /// Sealed for another deployment's exchange.
    #[error("sent on exchange {exchange:?}, not this deployment's")]
    OtherFleet {
        /// The exchange it names.
        exchange: String,
    },
    /// Sent longer ago than [`MAX_AGE`].
    #[error("stale: sent {} ms ago, more than {} ms (a replay, or clocks apart: keep them in sync)", .age.as_millis(), MAX_AGE.as_millis())]
    Stale {
        /// How long ago.
        age: Duration,
    },
    /// Sent further ahead of this clock than [`MAX_CLOCK_SKEW`].
    #[error("future-dated: sent {} ms ahead of this host's clock, more than {} ms (keep the clocks in sync)", .ahead.as_millis(), MAX_CLOCK_SKEW.as_millis())]
    FutureDated {
        /// How far ahead.
        ahead: Duration,
    },
    /// A message of that sender at or after its seq was taken already.
    #[error("replayed: seq {seq} of {instance}, which sent seq {last} already")]
    Replayed {
        /// The sender.
        instance: Uuid,
        /// The seq of this copy.
        seq: u64,
        /// The last seq taken from it.
        last: u64,
    },
    /// [`MAX_PEERS`] senders are remembered already.
    #[error("more than {MAX_PEERS} senders heard lately")]
    TooManySenders,
}

impl Refused {
    /// The reason, for the count and the log: `unsigned`, `bad_signature`,
    /// `signer_not_allowed`, `malformed`, `other_fleet`, `stale`, `future_dated`,
    /// `replayed` or `too_many_senders`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Malformed(_) => "malformed",
            Refused::OtherFleet { .. } => "other_fleet",
            Refused::Signature(error) => error.reason(),
            Refused::Stale { .. } => "stale",
            Refused::FutureDated { .. } => "future_dated",
            Refused::Replayed { .. } => "replayed",
            Refused::TooManySenders => "too_many_senders",
        }
    }
}

/// A fleet message taken: fresh, new, and signed by an allowed worker key.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// What it says.
    pub message: FleetMessage,
    /// When it was sent (signed, and within [`MAX_CLOCK_SKEW`] of this clock or older).
    pub sent_at: DateTime<Utc>,
    /// The worker whose key signed it.
    pub signer: Principal,
}

/// Is a message sent at `sent_at` fresh at `now`?
pub fn fresh(sent_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refused> {
    match (now - sent_at).to_std() {
        Ok(age) if age > MAX_AGE => Err(Refused::Stale { age }),
        Ok(_) => Ok(()),
        Err(_) => {
            let ahead = (sent_at - now).to_std().unwrap_or(Duration::MAX);
            if ahead > MAX_CLOCK_SKEW {
                Err(Refused::FutureDated { ahead })
            } else {
                Ok(())
            }
        }
    }
}

/// Opens the messages of the other workers: what to believe of them, and which seq each was
/// last heard at.
#[derive(Debug)]
pub struct FleetReader {
    exchange: String,
    allowed: Arc<AllowedSigners>,
    /// The last seq taken from each sender, and when.
    last: HashMap<Uuid, (u64, Instant)>,
}

impl FleetReader {
    /// A reader of the messages on `exchange`, believing the worker keys of `allowed`.
    pub fn new(exchange: &str, allowed: Arc<AllowedSigners>) -> FleetReader {
        FleetReader {
            exchange: exchange.to_string(),
            allowed,
            last: HashMap::new(),
        }
    }

    /// `body`, taken at `now` (this host's clock), when it passes the four checks of the
    /// module docs; this connection's own messages too (the caller skips them).
    pub fn open(&mut self, body: &[u8], now: DateTime<Utc>) -> Result<Opened, Refused> {
        let received = parse(body)?;
        if received.exchange != self.exchange {
            return Err(Refused::OtherFleet {
                exchange: received.exchange,
            });
        }
        fresh(received.sent_at, now)?;
        let heard = Instant::now();
        self.check_new(received.instance, received.seq, heard)?;
        let verified = received
            .sealed
            .verify(Namespace::Worker, &self.allowed, received.sent_at)
            .map_err(Refused::Signature)?;
        // Only a verified seq is remembered: a forger's high seq would shut a worker out.
        self.last.insert(received.instance, (received.seq, heard));
        Ok(Opened {
            message: received.message,
            sent_at: received.sent_at,
            signer: verified.principal,
        })
    }

    fn check_new(&mut self, instance: Uuid, seq: u64, now: Instant) -> Result<(), Refused> {
        if let Some(&(last, _)) = self.last.get(&instance) {
            return if seq > last {
                Ok(())
            } else {
                Err(Refused::Replayed {
                    instance,
                    seq,
                    last,
                })
            };
        }
        if self.last.len() >= MAX_PEERS {
            self.last
                .retain(|_, (_, heard)| now.saturating_duration_since(*heard) < REMEMBER_SEQ);
            if self.last.len() >= MAX_PEERS {
                return Err(Refused::TooManySenders);
            }
        }
        Ok(())
    }
}

/// How often each reason of refusal is logged at most.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Says when to warn about a refused message: at most once per [`WARN_EVERY`] per reason,
/// so a forger cannot flood the log (each one is counted all the same).
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Per reason: when it was last warned about, and how many were dropped since.
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RefusalLog {
    /// A message was refused for `reason` at `now`: `Some(n)` when it is time to warn, `n`
    /// the ones refused for it since the last warning without one.
    pub fn note(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((warned, quiet)) if now.saturating_duration_since(*warned) < WARN_EVERY => {
                *quiet += 1;
                None
            }
            Some((warned, quiet)) => {
                let since = *quiet;
                (*warned, *quiet) = (now, 0);
                Some(since)
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// `detail` (which may hold text a forger chose) fit for a log line: control characters
/// shown escaped, at most 200 characters.
pub fn loggable(detail: &str) -> String {
    crate::net::shorten(detail, 200)
}

#[cfg(test)]
#[path = "envelope_tests.rs"]
mod tests;
