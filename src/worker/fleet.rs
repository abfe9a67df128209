//! The other workers of the deployment, through the `{p}.fleet` fanout exchange: one Graph
//! budget across processes and hosts without counting them by hand.
//!
//! - **Heartbeats.** Every worker connection sends one each [`HEARTBEAT_EVERY`]; the workers
//!   heard from within [`PEER_TTL`], plus this one, are the live count, and each takes
//!   `1/count` of `[rate]` (unless `rate.processes` fixes the count). A worker that joins is
//!   counted by the others within a heartbeat; one that dies (killed, host gone, network cut)
//!   drops out within [`PEER_TTL`]. A heartbeat also carries what the sender's budget learned
//!   about Graph's real limits, which a worker that has learned nothing yet starts from.
//! - **Pauses.** A Retry-After seen by one worker is announced to all: Graph throttles the
//!   app, not the process (<https://learn.microsoft.com/en-us/graph/throttling>).
//!
//! Anyone who can publish to the exchange can send these, so they are advisory and bounded:
//! a pause can only delay (it extends the local pause, never shortens it) and for at most
//! `retry.max_retry_after` (the longest Retry-After the worker honours itself), so a forged one
//! cannot stop the workers for long; a heartbeat can only add to the count (slower, never
//! faster) and a peer's learned rate is only taken when lower; at most [`MAX_PEERS`] peers
//! are tracked and messages over [`MAX_MESSAGE_BYTES`] are dropped unread. Nothing is kept:
//! each connection's queue is exclusive, its messages expire after 5 s.

use std::collections::HashMap;
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
use crate::graph::{GraphClient, Learned, Limit};

/// How often a worker says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A worker not heard from for this long is no longer counted.
pub const PEER_TTL: Duration = Duration::from_secs(3);
/// Most peers tracked (forged heartbeats cannot grow memory without bound).
pub const MAX_PEERS: usize = 1024;
/// Largest message read.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// One message on `{p}.fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
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

/// Parse a message from the exchange; `None` for anything too large or not one of ours.
pub fn parse(body: &[u8]) -> Option<FleetMessage> {
    if body.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The workers heard from, by instance id.
#[derive(Debug, Default)]
pub struct Peers {
    seen: HashMap<Uuid, Instant>,
}

impl Peers {
    /// `instance` was heard at `now`. A new one is ignored once [`MAX_PEERS`] are tracked.
    pub fn heard(&mut self, instance: Uuid, now: Instant) {
        if self.seen.len() >= MAX_PEERS && !self.seen.contains_key(&instance) {
            self.expire(now);
            if self.seen.len() >= MAX_PEERS {
                return;
            }
        }
        self.seen.insert(instance, now);
    }

    fn expire(&mut self, now: Instant) {
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < PEER_TTL);
    }

    /// The live workers at `now`: this one and every peer heard within [`PEER_TTL`].
    pub fn live(&mut self, now: Instant) -> u32 {
        self.expire(now);
        u32::try_from(self.seen.len() + 1).unwrap_or(u32::MAX)
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

/// The fleet task of one connection; stopped with [`Fleet::stop`].
pub struct Fleet {
    task: JoinHandle<()>,
    stop: CancellationToken,
    started: Instant,
}

impl Fleet {
    /// Declare this connection's fleet queue and start heartbeating, counting and relaying
    /// pauses for `graph`'s budget.
    pub async fn start(
        conn: &Connection,
        topology: &Topology,
        settings: &Settings,
        name: &str,
        graph: &GraphClient,
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
        let run = Run {
            channel,
            exchange: topology.fleet(),
            instance: Uuid::new_v4(),
            name: name.to_string(),
            counted: settings.rate.processes == 0,
            cap: settings.retry.max_retry_after,
            graph: graph.clone(),
            peers: Peers::default(),
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
    instance: Uuid,
    name: String,
    /// The share follows the live count (`rate.processes` = 0).
    counted: bool,
    cap: Duration,
    graph: GraphClient,
    peers: Peers,
}

impl Run {
    async fn run(mut self, mut deliveries: lapin::Consumer, stop: CancellationToken) {
        let mut throttlings = self.graph.gate().subscribe();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = heartbeat.tick() => {
                    self.recount();
                    let (requests, writes) = self.graph.budget().learned();
                    let pause_ms = self
                        .graph
                        .gate()
                        .paused_until()
                        .map_or(0, |until| {
                            let left = until.saturating_duration_since(Instant::now());
                            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                        });
                    self.publish(&FleetMessage::Heartbeat {
                        instance: self.instance,
                        worker: self.name.clone(),
                        requests,
                        writes,
                        pause_ms,
                        pause_limit: Limit::Requests,
                    })
                    .await;
                }
                throttling = throttlings.recv() => match throttling {
                    Ok(t) => {
                        let left = t.until.saturating_duration_since(Instant::now());
                        self.publish(&FleetMessage::Pause {
                            instance: self.instance,
                            worker: self.name.clone(),
                            sent_at: Utc::now(),
                            retry_after_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                            limit: t.limit,
                        })
                        .await;
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

    fn recount(&mut self) {
        if self.counted {
            let live = self.peers.live(Instant::now());
            let budget = self.graph.budget();
            if budget.processes() != live {
                tracing::info!(workers = live, "workers sharing the Graph budget");
                budget.set_processes(live);
            }
        }
    }

    fn receive(&mut self, body: &[u8]) {
        let Some(message) = parse(body) else {
            tracing::debug!(
                bytes = body.len(),
                "ignored a message on the fleet exchange"
            );
            return;
        };
        match message {
            FleetMessage::Heartbeat { instance, .. } if instance == self.instance => {}
            FleetMessage::Pause { instance, .. } if instance == self.instance => {}
            FleetMessage::Heartbeat {
                instance,
                requests,
                writes,
                pause_ms,
                pause_limit,
                worker,
            } => {
                self.peers.heard(instance, Instant::now());
                self.recount();
                self.graph.budget().adopt(requests, writes);
                if pause_ms > 0 {
                    // Transit is a few milliseconds; the heartbeat carries no send time.
                    self.pause(&worker, Duration::from_millis(pause_ms), pause_limit);
                }
            }
            FleetMessage::Pause {
                worker,
                sent_at,
                retry_after_ms,
                limit,
                ..
            } => {
                let announced = Duration::from_millis(retry_after_ms);
                if let Some(left) = peer_pause(announced, sent_at, Utc::now(), self.cap) {
                    self.pause(&worker, left, limit);
                }
            }
        }
    }

    /// Pause this worker for `left` (at most the cap) because `worker` was throttled.
    fn pause(&self, worker: &str, left: Duration, limit: Limit) {
        let left = left.min(self.cap);
        let until = Instant::now() + left;
        let grew = self.graph.gate().pause_until(until);
        if grew.is_zero() {
            return;
        }
        self.graph.stats().add_pause(grew);
        self.graph.budget().on_throttled(until, limit);
        tracing::debug!(%worker, pause_ms = left.as_millis() as u64, ?limit, "paused by another worker's throttling");
    }

    async fn publish(&self, message: &FleetMessage) {
        let Ok(body) = serde_json::to_vec(message) else {
            return;
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
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_live_count_is_this_worker_and_every_peer_heard_lately() {
        let mut peers = Peers::default();
        let t0 = Instant::now();
        assert_eq!(peers.live(t0), 1);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        peers.heard(a, t0);
        peers.heard(b, t0 + Duration::from_secs(2));
        assert_eq!(peers.live(t0 + Duration::from_secs(2)), 3);
        // a is silent for PEER_TTL: gone; b still counts.
        assert_eq!(peers.live(t0 + PEER_TTL), 2);
        assert_eq!(peers.live(t0 + Duration::from_secs(10)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forged_heartbeats_cannot_grow_the_peers_past_the_bound() {
        let mut peers = Peers::default();
        let now = Instant::now();
        for _ in 0..MAX_PEERS + 100 {
            peers.heard(Uuid::new_v4(), now);
        }
        assert_eq!(peers.live(now), MAX_PEERS as u32 + 1);
    }

    #[test]
    fn a_peers_pause_is_shortened_by_its_age_and_capped() {
        let now = Utc::now();
        let cap = Duration::from_secs(180);
        let secs = Duration::from_secs;
        assert_eq!(peer_pause(secs(5), now, now, cap), Some(secs(5)));
        assert_eq!(
            peer_pause(secs(5), now - chrono::Duration::seconds(2), now, cap),
            Some(secs(3))
        );
        assert_eq!(
            peer_pause(secs(5), now - chrono::Duration::seconds(9), now, cap),
            None
        );
        // A sender whose clock is ahead: never longer than announced.
        assert_eq!(
            peer_pause(secs(5), now + chrono::Duration::seconds(60), now, cap),
            Some(secs(5))
        );
        // A forged year-long pause holds for the cap only.
        assert_eq!(peer_pause(secs(365 * 86_400), now, now, cap), Some(cap));
        assert_eq!(peer_pause(Duration::ZERO, now, now, cap), None);
    }

    #[test]
    fn messages_round_trip_and_anything_else_is_ignored() {
        let pause = FleetMessage::Pause {
            instance: Uuid::new_v4(),
            worker: "w1".into(),
            sent_at: Utc::now(),
            retry_after_ms: 3000,
            limit: Limit::Writes,
        };
        let body = serde_json::to_vec(&pause).unwrap();
        assert!(String::from_utf8_lossy(&body).contains(r#""kind":"pause""#));
        assert_eq!(parse(&body), Some(pause));
        let heartbeat = FleetMessage::Heartbeat {
            instance: Uuid::new_v4(),
            worker: "w2".into(),
            requests: Learned {
                factor: 0.5,
                throttled_at: Some(0.52),
            },
            writes: Learned {
                factor: 1.0,
                throttled_at: None,
            },
            pause_ms: 1500,
            pause_limit: Limit::Requests,
        };
        assert_eq!(
            parse(&serde_json::to_vec(&heartbeat).unwrap()),
            Some(heartbeat)
        );
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(br#"{"kind":"halt"}"#), None);
        let extra = br#"{"kind":"pause","instance":"00000000-0000-0000-0000-000000000001","worker":"w","sent_at":"2026-01-01T00:00:00Z","retry_after_ms":1,"limit":"writes","x":1}"#;
        assert_eq!(parse(extra), None, "unknown fields refused");
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(parse(&big), None);
    }
}
