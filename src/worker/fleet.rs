//! The other workers of the deployment, through the `{p}.fleet` fanout exchange: one Graph
//! budget across processes and hosts without counting them by hand.
//!
//! - **Heartbeats.** Every worker connection sends one each [`HEARTBEAT_EVERY`]; the workers
//!   heard from within [`PEER_TTL`] that are not idle, plus this one, are the live count, and
//!   each takes `1/count` of `[rate]` (unless `rate.processes` fixes the count). A worker
//!   is idle when nothing asked its budget for a while ([`Budget::idle`]; it starts so: it
//!   is counted from its first request, when it heartbeats at once); a
//!   worker that dies (killed, host gone, network cut) drops out within [`PEER_TTL`].
//! - **One law for the fleet.** A heartbeat carries what the sender's budget learned about
//!   Graph's real limits. The busy worker with the lowest id leads: only it probes above the
//!   last throttled rate; the others take its factor and proven rate from its heartbeats (so
//!   the fleet probes once, not once per worker, a worker that joins starts at the fleet's
//!   rate, and whoever leads after the leader dies returns to the rate the fleet proved).
//!   It also carries the sender's best recent served rate, so that every worker judges
//!   what Graph served by the fleet's average, not by its own share of it.
//! - **Pauses.** A Retry-After seen by one worker is announced to all: Graph throttles the
//!   app, not the process (<https://learn.microsoft.com/en-us/graph/throttling>).
//!
//! **Signed.** Anyone who can publish to the exchange could send these, so every message is
//! sealed with the sending worker's own key (`worker.key`, namespace `mfa-reset-worker`, the
//! seal of its plans and outcomes) with its sending time and its instance id, and a worker
//! acts only on a message whose seal verifies against `security.allowed_signers`, that is
//! fresh (clocks within [`envelope::MAX_CLOCK_SKEW`]) and that it has not taken before
//! ([`envelope`]). Anything else (unsigned, badly signed, an unknown signer, stale,
//! future-dated, replayed, sent on another deployment's exchange, malformed) is dropped unread, counted
//! (`mfa_reset_fleet_refused{reason}`) and warned about at most once a minute per reason.
//! So a holder of broker credentials alone cannot pause the workers, inflate their count or
//! lead their law; a replayed pause extends no pause. What a worker key's holder could send
//! stays bounded too: a pause only delays (it extends the local pause, never shortens it),
//! shortened by its age and for at most `retry.max_retry_after` (the longest Retry-After the
//! worker honours itself); a heartbeat only adds to the count (slower, never faster); a
//! leader sets the others' factor, never above their share of `[rate]`; and Graph's 429s
//! still pause everyone. At most [`MAX_PEERS`] peers are tracked and messages over
//! [`MAX_MESSAGE_BYTES`] are dropped unread. Nothing is kept: each connection's queue is
//! exclusive, its messages expire after 5 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::Topology;
use crate::config::Settings;
use crate::graph::{Budget, GraphClient, Learned, Limit, PauseGate};
use crate::trust::{AllowedSigners, Signer};
use crate::worker::WorkerMetrics;

pub mod envelope;

use envelope::{FleetReader, FleetSeal, RefusalLog, Refused};

/// How often a worker says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A worker not heard from for this long is no longer counted.
pub const PEER_TTL: Duration = Duration::from_secs(3);
/// Most peers tracked (forged heartbeats cannot grow memory without bound).
pub const MAX_PEERS: usize = 1024;
/// Largest message read: a sealed heartbeat is about 1 KiB (ed25519 or ecdsa-p256, the key
/// types `security.allowed_signers` takes), and anything larger is dropped before parsing.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// One message on `{p}.fleet`. Fields this version does not know are ignored, not refused:
/// during a rolling upgrade a newer worker's heartbeat still counts it in and its pause still
/// pauses (the seal covers the whole text, so an unknown field cannot change a known one; a
/// message of an unknown `kind` is refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FleetMessage {
    /// A worker connection is alive.
    Heartbeat {
        /// This connection's random id (a reconnect is a new one).
        instance: Uuid,
        /// The worker's name, for people reading the traffic.
        worker: String,
        /// What its all-requests law learned.
        requests: Learned,
        /// What its writes law learned.
        writes: Learned,
        /// The pause it is in, left to run (0: none): a worker that joins mid-pause waits
        /// it out too.
        #[serde(default)]
        pause_ms: u64,
        /// The limit of that pause.
        #[serde(default = "requests_limit")]
        pause_limit: Limit,
        /// Nothing asked for its budget lately ([`Budget::idle`](crate::graph::Budget::idle)):
        /// the others need not leave it a share (it says so again at once when it has work).
        #[serde(default)]
        idle: bool,
    },
    /// Graph throttled a worker: everyone pauses.
    Pause {
        /// The sender's connection id.
        instance: Uuid,
        /// The worker's name.
        worker: String,
        /// When it was sent (the pause is shortened by the message's age).
        sent_at: DateTime<Utc>,
        /// The Retry-After left when it was sent.
        retry_after_ms: u64,
        /// The limit Graph named.
        limit: Limit,
    },
}

fn requests_limit() -> Limit {
    Limit::Requests
}

impl FleetMessage {
    /// The sending connection.
    pub fn instance(&self) -> Uuid {
        match self {
            FleetMessage::Heartbeat { instance, .. } | FleetMessage::Pause { instance, .. } => {
                *instance
            }
        }
    }
}

/// The workers heard from, by instance id.
#[derive(Debug, Default)]
pub struct Peers {
    /// When each was last heard, whether it said it was idle then, and the best recent
    /// served rates it reported ([`Learned::peak`], all requests and writes).
    seen: HashMap<Uuid, (Instant, bool, Peaks)>,
}

/// A peer's [`Learned::peak`] of each limit (all requests, writes).
pub type Peaks = (Option<f64>, Option<f64>);

impl Peers {
    /// `instance` was heard at `now`, `idle` or not, reporting `peaks`. A new one is ignored
    /// once [`MAX_PEERS`] are tracked.
    pub fn heard(&mut self, instance: Uuid, idle: bool, peaks: Peaks, now: Instant) {
        if self.seen.len() >= MAX_PEERS && !self.seen.contains_key(&instance) {
            self.expire(now);
            if self.seen.len() >= MAX_PEERS {
                return;
            }
        }
        self.seen.insert(instance, (now, idle, peaks));
    }

    fn expire(&mut self, now: Instant) {
        self.seen
            .retain(|_, (at, _, _)| now.saturating_duration_since(*at) < PEER_TTL);
    }

    /// The best recent served rates the busy peers reported at `now`, all requests and
    /// writes (each list leaves out the peers that reported none).
    pub fn peaks(&mut self, now: Instant) -> (Vec<f64>, Vec<f64>) {
        self.expire(now);
        let busy = || self.seen.values().filter(|(_, idle, _)| !idle);
        (
            busy()
                .filter_map(|(_, _, (requests, _))| *requests)
                .collect(),
            busy().filter_map(|(_, _, (_, writes))| *writes).collect(),
        )
    }

    /// The workers sharing the budget at `now`: this one and every peer heard within
    /// [`PEER_TTL`] that did not say it was idle.
    pub fn live(&mut self, now: Instant) -> u32 {
        self.expire(now);
        let busy = self.seen.values().filter(|(_, idle, _)| !idle).count();
        u32::try_from(busy + 1).unwrap_or(u32::MAX)
    }

    /// The leader of the fleet's law as `me` sees it at `now`: the lowest id of the busy
    /// workers, this one included unless it is idle itself (an idle leader would probe
    /// without sending anything). `me` when nobody else is busy.
    pub fn leader(&mut self, me: Uuid, me_idle: bool, now: Instant) -> Uuid {
        self.expire(now);
        let busy_peers = self
            .seen
            .iter()
            .filter(|(_, (_, idle, _))| !idle)
            .map(|(id, _)| *id);
        let lowest = if me_idle {
            busy_peers.min()
        } else {
            busy_peers.chain([me]).min()
        };
        lowest.unwrap_or(me)
    }
}

/// How long a peer's pause holds this worker: the Retry-After it announced, less the
/// message's age, at most `cap`; `None` when nothing is left of it.
pub fn peer_pause(
    retry_after: Duration,
    sent_at: DateTime<Utc>,
    now: DateTime<Utc>,
    cap: Duration,
) -> Option<Duration> {
    // A clock ahead of ours gives a negative age: count it as none (never longer than
    // announced either way).
    let age = (now - sent_at).to_std().unwrap_or(Duration::ZERO);
    let left = retry_after.checked_sub(age)?.min(cap);
    (!left.is_zero()).then_some(left)
}

/// This worker's view of the fleet: the peers heard, and what it does with their heartbeats.
/// Kept apart from the broker so the fleet's behaviour can be simulated (tests).
#[derive(Debug)]
pub struct Census {
    /// This connection's random id (a reconnect is a new one).
    pub me: Uuid,
    /// The share follows the live count (`rate.processes` = 0).
    counted: bool,
    peers: Peers,
}

impl Census {
    /// A census for the connection `me`; `counted`: the share follows the live count.
    pub fn new(me: Uuid, counted: bool) -> Self {
        Census {
            me,
            counted,
            peers: Peers::default(),
        }
    }

    /// Share `budget` among the live workers and say whether this one leads its law.
    pub fn recount(&mut self, budget: &Budget) {
        let now = Instant::now();
        let leader = self.peers.leader(self.me, budget.idle(), now) == self.me;
        budget.set_leader(leader);
        let (requests, writes) = self.peers.peaks(now);
        budget.set_peer_peaks(requests, writes);
        if self.counted {
            let live = self.peers.live(now);
            if budget.processes() != live {
                tracing::info!(workers = live, "workers sharing the Graph budget");
                budget.set_processes(live);
            }
        }
    }

    /// This worker's heartbeat, `name` for people reading the traffic.
    pub fn heartbeat(&mut self, name: &str, budget: &Budget, gate: &PauseGate) -> FleetMessage {
        self.recount(budget);
        let (requests, writes) = budget.learned();
        let pause_ms = gate.paused_until().map_or(0, |until| {
            let left = until.saturating_duration_since(Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        });
        FleetMessage::Heartbeat {
            instance: self.me,
            worker: name.to_string(),
            requests,
            writes,
            pause_ms,
            pause_limit: Limit::Requests,
            idle: budget.idle(),
        }
    }

    /// A peer's heartbeat: count it, and take the leader's view of the budget (or, from
    /// another peer, what it learned when this worker has learned nothing yet). A pause it
    /// carries is the caller's (see [`peer_paused`]).
    pub fn heard(
        &mut self,
        instance: Uuid,
        idle: bool,
        requests: Learned,
        writes: Learned,
        budget: &Budget,
    ) {
        let peaks = (requests.peak, writes.peak);
        self.peers.heard(instance, idle, peaks, Instant::now());
        self.recount(budget);
        if self.peers.leader(self.me, budget.idle(), Instant::now()) == instance {
            budget.follow(requests, writes);
        } else {
            budget.adopt(requests, writes);
        }
    }
}

/// Another worker was throttled on `limit` until `until`: pause this one too. Returns how
/// much the pause grew (zero: this worker was paused that long already, nothing changes).
pub fn peer_paused(budget: &Budget, gate: &PauseGate, until: Instant, limit: Limit) -> Duration {
    let grew = gate.pause_until(until);
    if !grew.is_zero() {
        budget.on_peer_throttled(until, limit);
    }
    grew
}

/// What the fleet task signs its messages with, believes the others' by, and counts into.
#[derive(Debug, Clone)]
pub struct FleetTrust {
    /// `worker.key`: seals this worker's messages.
    pub signer: Arc<Signer>,
    /// `security.allowed_signers`: a message is taken only when its seal verifies against it
    /// in the worker namespace.
    pub allowed: Arc<AllowedSigners>,
    /// Counts what is refused (`mfa_reset_fleet_refused`).
    pub metrics: Arc<WorkerMetrics>,
}

/// The fleet task of one connection; stopped with [`Fleet::stop`].
pub struct Fleet {
    task: JoinHandle<()>,
    stop: CancellationToken,
    started: Instant,
}

impl Fleet {
    /// Declare this connection's fleet queue and start heartbeating, counting and relaying
    /// pauses for `graph`'s budget, every message sealed and checked with `trust`.
    pub async fn start(
        conn: &Connection,
        topology: &Topology,
        settings: &Settings,
        name: &str,
        graph: &GraphClient,
        trust: &FleetTrust,
    ) -> anyhow::Result<Fleet> {
        let channel = conn.create_channel().await?;
        let queue = topology.declare_fleet_queue(&channel).await?;
        let deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                format!("{name}-fleet").as_str().into(),
                // Auto-ack: these are live signals, a lost one is replaced by the next.
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let stop = CancellationToken::new();
        let me = Uuid::new_v4();
        let run = Run {
            channel,
            exchange: topology.fleet(),
            name: name.to_string(),
            cap: settings.retry.max_retry_after,
            graph: graph.clone(),
            census: Census::new(me, settings.rate.processes == 0),
            seal: FleetSeal::new(&topology.fleet(), me, trust.signer.clone()),
            reader: FleetReader::new(&topology.fleet(), trust.allowed.clone()),
            refusals: RefusalLog::default(),
            metrics: trust.metrics.clone(),
        };
        let task = tokio::spawn(run.run(deliveries, stop.clone()));
        Ok(Fleet {
            task,
            stop,
            started: Instant::now(),
        })
    }

    /// Return once every running peer has had the time to heartbeat since this started: the
    /// count is right and a pause the fleet is in is known before the first request is taken.
    pub async fn settled(&self) {
        tokio::time::sleep_until(self.started + HEARTBEAT_EVERY + Duration::from_millis(200)).await;
    }

    /// Stop the task and close its channel (the queue goes with it).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Run {
    channel: lapin::Channel,
    exchange: String,
    name: String,
    cap: Duration,
    graph: GraphClient,
    census: Census,
    /// Seals what this connection sends.
    seal: FleetSeal,
    /// Opens what the others send.
    reader: FleetReader,
    /// When to warn about refused messages.
    refusals: RefusalLog,
    metrics: Arc<WorkerMetrics>,
}

impl Run {
    async fn run(mut self, mut deliveries: lapin::Consumer, stop: CancellationToken) {
        let mut throttlings = self.graph.gate().subscribe();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let budget = self.graph.budget();
        let gate = self.graph.gate();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = heartbeat.tick() => {
                    let beat = self.census.heartbeat(&self.name, &budget, &gate);
                    self.publish(&beat, Utc::now()).await;
                }
                // Work again after idling: the others count this worker from now, not from
                // the next tick (meanwhile they would send its share too).
                _ = budget.woke().notified() => {
                    let beat = self.census.heartbeat(&self.name, &budget, &gate);
                    self.publish(&beat, Utc::now()).await;
                    heartbeat.reset();
                }
                throttling = throttlings.recv() => match throttling {
                    Ok(t) => {
                        let left = t.until.saturating_duration_since(Instant::now());
                        let sent_at = Utc::now();
                        let pause = FleetMessage::Pause {
                            instance: self.census.me,
                            worker: self.name.clone(),
                            sent_at,
                            retry_after_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                            limit: t.limit,
                        };
                        self.publish(&pause, sent_at).await;
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                delivery = deliveries.next() => match delivery {
                    Some(Ok(delivery)) => self.receive(&delivery.data),
                    // The channel or connection went away: the session notices and reconnects.
                    Some(Err(_)) | None => break,
                },
            }
        }
        let _ = self.channel.close(200, "bye".into()).await;
    }

    fn receive(&mut self, body: &[u8]) {
        let opened = match self.reader.open(body, Utc::now()) {
            Ok(opened) => opened,
            Err(refused) => return self.refused(&refused, body.len()),
        };
        let me = self.census.me;
        // The seal's time: signed, and checked to be fresh.
        let signed_at = opened.sent_at;
        match opened.message {
            FleetMessage::Heartbeat { instance, .. } if instance == me => {}
            FleetMessage::Pause { instance, .. } if instance == me => {}
            FleetMessage::Heartbeat {
                instance,
                requests,
                writes,
                pause_ms,
                pause_limit,
                worker,
                idle,
            } => {
                self.census
                    .heard(instance, idle, requests, writes, &self.graph.budget());
                if pause_ms > 0 {
                    // What is left of it now: shortened by the heartbeat's age.
                    let announced = Duration::from_millis(pause_ms);
                    if let Some(left) = peer_pause(announced, signed_at, Utc::now(), self.cap) {
                        self.pause(&worker, left, pause_limit);
                    }
                }
            }
            FleetMessage::Pause {
                worker,
                sent_at,
                retry_after_ms,
                limit,
                ..
            } => {
                // The earlier of its two (signed) times: never longer than either allows.
                let sent_at = sent_at.min(signed_at);
                let announced = Duration::from_millis(retry_after_ms);
                if let Some(left) = peer_pause(announced, sent_at, Utc::now(), self.cap) {
                    self.pause(&worker, left, limit);
                }
            }
        }
    }

    /// A message of `bytes` was dropped for `refused`: counted, and warned about at most once
    /// a minute per reason (a forger cannot flood the log; what it wrote is shown escaped).
    fn refused(&mut self, refused: &Refused, bytes: usize) {
        let reason = refused.reason();
        self.metrics.refuse_fleet_message(reason);
        let Some(quiet) = self.refusals.note(reason, Instant::now()) else {
            return;
        };
        tracing::warn!(
            reason,
            bytes,
            refused_since_last_warning = quiet,
            detail = %envelope::loggable(&refused.to_string()),
            "dropped a message on the fleet exchange: only fresh messages sealed by a worker key \
             that security.allowed_signers allows (namespace mfa-reset-worker) are taken \
             (next warning for this reason in a minute at the earliest)"
        );
    }

    /// Pause this worker for `left` (at most the cap) because `worker` was throttled.
    fn pause(&self, worker: &str, left: Duration, limit: Limit) {
        let left = left.min(self.cap);
        let until = Instant::now() + left;
        let grew = peer_paused(&self.graph.budget(), &self.graph.gate(), until, limit);
        if grew.is_zero() {
            return;
        }
        self.graph.stats().add_pause(grew);
        tracing::debug!(worker = %envelope::loggable(worker), pause_ms = left.as_millis() as u64, ?limit, "paused by another worker's throttling");
    }

    async fn publish(&mut self, message: &FleetMessage, sent_at: DateTime<Utc>) {
        let body = match self.seal.seal(message, sent_at) {
            Ok(body) => body,
            Err(error) => {
                // The others would drop an unsigned message: send nothing (as if lost).
                if self.refusals.note("sign", Instant::now()).is_some() {
                    tracing::warn!(error = %error, "cannot sign a fleet message with worker.key: the other workers will not hear this one (next warning in a minute at the earliest)");
                }
                return;
            }
        };
        // Unconfirmed: a lost heartbeat is replaced by the next one, and a lost pause leaves
        // the others to meet the throttling themselves (as without a fleet).
        let _ = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await;
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
