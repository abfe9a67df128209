//! Every exchange, queue, argument and binding of mfa-reset, declared in one place.
//!
//! Names all start with `broker.prefix` (default `mfa-reset`):
//!
//! | name | kind | role |
//! |---|---|---|
//! | `{p}` | direct exchange | what workers and tools publish (retries, dead letters, outcomes) |
//! | `{p}.intake` | direct exchange | the only one producers write to: `request` → `{p}.requests`, `awaiting` → `{p}.awaiting`, `outcome` → `{p}.outcomes` (the signed batch manifest record) |
//! | `{p}.requests` | quorum queue | one message per user to reset |
//! | `{p}.retry.{delay}` | quorum queue, TTL | a request waiting to be tried again (one queue per delay) |
//! | `{p}.dead` | quorum queue | what could not succeed, with why |
//! | `{p}.outcomes` | stream | every batch manifest and per-user outcome: the record |
//! | `{p}.control` | stream | signed admin commands (`halt`, `resume`) every worker follows |
//! | `{p}.awaiting` | stream | batches above `security.approval_above`, until `approve` republishes them |
//! | `{p}.fleet` | fanout exchange | workers' heartbeats and throttling pauses (nothing kept) |
//! | (server-named) | exclusive classic queue, one per worker connection | this worker's copy of `{p}.fleet` |

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{BrokerSettings, RetrySettings};

/// Routing key of the requests queue.
pub const RK_REQUEST: &str = "request";
/// Routing key of the dead-letter queue.
pub const RK_DEAD: &str = "dead";
/// Routing key of the outcomes stream.
pub const RK_OUTCOME: &str = "outcome";
/// Routing key of the control stream.
pub const RK_CONTROL: &str = "control";
/// Routing key (on the intake) of the stream of batches awaiting approval.
pub const RK_AWAITING: &str = "awaiting";

/// The names of one deployment's exchange and queues.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    tiers: Vec<Duration>,
    delivery_limit: u32,
    stream_max_bytes: u64,
}

impl Topology {
    /// Names for `broker.prefix`, with one retry queue per `retry.tiers` entry.
    pub fn new(broker: &BrokerSettings, retry: &RetrySettings) -> Topology {
        Topology {
            prefix: broker.prefix.clone(),
            tiers: retry.tiers.clone(),
            delivery_limit: broker.delivery_limit,
            stream_max_bytes: broker.stream_max_bytes,
        }
    }

    /// The exchange.
    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }
    /// `{p}.intake`: the exchange producers (`enqueue`, `approve`) publish to.
    pub fn intake(&self) -> String {
        format!("{}.intake", self.prefix)
    }
    /// `{p}.awaiting`: batches waiting for a second person's approval.
    pub fn awaiting(&self) -> String {
        format!("{}.awaiting", self.prefix)
    }
    /// Every exchange, for tools that delete them.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.exchange(), self.intake(), self.fleet()]
    }
    /// `{p}.requests`.
    pub fn requests(&self) -> String {
        format!("{}.requests", self.prefix)
    }
    /// `{p}.dead`.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    /// `{p}.outcomes`.
    pub fn outcomes(&self) -> String {
        format!("{}.outcomes", self.prefix)
    }
    /// `{p}.fleet`: the fanout exchange of the workers' heartbeats and pauses.
    pub fn fleet(&self) -> String {
        format!("{}.fleet", self.prefix)
    }
    /// `{p}.control`.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    /// The delay tiers, in order.
    pub fn tiers(&self) -> &[Duration] {
        &self.tiers
    }
    /// `{p}.retry.{30s}` for tier `i`.
    pub fn retry_queue(&self, i: usize) -> String {
        format!("{}.retry.{}", self.prefix, tier_label(self.tiers[i]))
    }
    /// Routing key of tier `i`.
    pub fn retry_key(&self, i: usize) -> String {
        format!("retry.{}", tier_label(self.tiers[i]))
    }
    /// Every queue, for tools that inspect or delete them.
    pub fn all_queues(&self) -> Vec<String> {
        let mut q = vec![
            self.requests(),
            self.dead(),
            self.outcomes(),
            self.control(),
            self.awaiting(),
        ];
        q.extend((0..self.tiers.len()).map(|i| self.retry_queue(i)));
        q
    }

    /// The exchanges, for checking that they exist.
    fn exchange_names(&self) -> Vec<String> {
        self.exchanges()
    }

    /// Make sure the topology exists before using it: declare it when this broker user may
    /// (configure rights: `setup`'s user, or one account for everything as on a development
    /// machine), else check every name passively, which needs no rights at all. A command
    /// run under a least-authority user (`setup --definitions`) thus declares nothing and
    /// says to run `setup` when something is missing.
    pub async fn ensure(&self, conn: &Connection) -> anyhow::Result<()> {
        let channel = conn.create_channel().await?;
        match self.declare(&channel).await {
            Ok(()) => {
                let _ = channel.close(200, "bye".into()).await;
                Ok(())
            }
            // The refused declare closed that channel; the checks use fresh ones.
            Err(err) if is_access_refused(&err) => self.check(conn).await,
            Err(err) => Err(anyhow::Error::from(err).context("declaring the broker topology")),
        }
    }

    /// Check passively that every exchange and queue exists; declare nothing.
    pub async fn check(&self, conn: &Connection) -> anyhow::Result<()> {
        let missing = |kind: &str, name: &str| {
            anyhow::anyhow!(
                "the broker has no {kind} {name}, and this broker user may not declare it: \
                 run `mfa-reset setup` as the setup user (`{}-setup`) or an administrator",
                self.prefix
            )
        };
        for name in self.exchange_names() {
            // A missing name closes the channel it was asked on: one channel per check.
            let channel = conn.create_channel().await?;
            channel
                .exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|_| missing("exchange", &name))?;
            let _ = channel.close(200, "bye".into()).await;
        }
        for name in self.all_queues() {
            let channel = conn.create_channel().await?;
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|_| missing("queue", &name))?;
            let _ = channel.close(200, "bye".into()).await;
        }
        Ok(())
    }

    /// Declare everything; idempotent (same names, same arguments).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        // Direct: each routing key names exactly one queue; no pattern matching needed.
        durable_exchange(channel, &self.exchange(), ExchangeKind::Direct).await?;

        let mut requests = FieldTable::default();
        // Quorum: replicated and durable, the type RabbitMQ recommends when losing a message matters.
        requests.insert("x-queue-type".into(), long_str("quorum"));
        // What the broker itself gives up on (delivery limit) goes to the dead-letter queue …
        requests.insert("x-dead-letter-exchange".into(), long_str(&self.exchange()));
        requests.insert("x-dead-letter-routing-key".into(), long_str(RK_DEAD));
        // … after this many redeliveries: a message that crashes workers cannot loop forever.
        requests.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        // At-least-once dead-lettering (3.10+): a dead-lettered message is kept until the
        // dead-letter queue confirms it. It requires the reject-publish overflow mode.
        requests.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
        requests.insert("x-overflow".into(), long_str("reject-publish"));
        self.queue(channel, &self.requests(), durable, requests, RK_REQUEST)
            .await?;

        let mut dead = FieldTable::default();
        // Dead letters are the operator's to-do list: replicated like the requests.
        dead.insert("x-queue-type".into(), long_str("quorum"));
        self.queue(channel, &self.dead(), durable, dead, RK_DEAD)
            .await?;

        for (i, delay) in self.tiers.iter().enumerate() {
            let mut wait = FieldTable::default();
            wait.insert("x-queue-type".into(), long_str("quorum"));
            // Messages expire only at the head of a queue, so one queue per delay keeps
            // every message's wait exact (https://www.rabbitmq.com/docs/ttl#per-message-ttl-caveats).
            wait.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            // Expired messages go back to the requests queue.
            wait.insert("x-dead-letter-exchange".into(), long_str(&self.exchange()));
            wait.insert("x-dead-letter-routing-key".into(), long_str(RK_REQUEST));
            wait.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
            wait.insert("x-overflow".into(), long_str("reject-publish"));
            self.queue(
                channel,
                &self.retry_queue(i),
                durable,
                wait,
                &self.retry_key(i),
            )
            .await?;
        }

        let mut outcomes = FieldTable::default();
        // A stream: an append-only, replayable log. `status` and `report` re-read it; nothing
        // else holds outcome state, so any host can report on any batch.
        outcomes.insert("x-queue-type".into(), long_str("stream"));
        // Keep a year of outcomes (audit trail); older segments are dropped by the broker.
        outcomes.insert("x-max-age".into(), long_str("365D"));
        if self.stream_max_bytes > 0 {
            // And at most this much disk (broker.stream_max_bytes): a flood of junk records
            // cannot fill the broker's disk and stop every queue.
            outcomes.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(i64::try_from(self.stream_max_bytes).unwrap_or(i64::MAX)),
            );
        }
        self.queue(channel, &self.outcomes(), durable, outcomes, RK_OUTCOME)
            .await?;

        // Its own exchange, so a producer's broker user can be given write access to it
        // alone (least authority): it cannot publish outcomes-as-a-worker, retries or dead
        // letters, and every request it sends is still verified by workers.
        durable_exchange(channel, &self.intake(), ExchangeKind::Direct).await?;
        let mut awaiting = FieldTable::default();
        // A stream: `approve` reads it without consuming, so a batch stays visible (and
        // re-approvable) until it ages out; nothing in it runs until approved.
        awaiting.insert("x-queue-type".into(), long_str("stream"));
        // An approval is expected within a day or so; requests expire after
        // reset.max_request_age anyway.
        awaiting.insert("x-max-age".into(), long_str("7D"));
        channel
            .queue_declare(self.awaiting().as_str().into(), durable, awaiting)
            .await?;
        for (queue, routing_key) in [
            (self.requests(), RK_REQUEST),
            (self.awaiting(), RK_AWAITING),
            (self.outcomes(), RK_OUTCOME),
        ] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.intake().as_str().into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let mut control = FieldTable::default();
        // A stream, so every worker reads every command (a queue would hand each to one),
        // and a worker starting late still finds the halt in force.
        control.insert("x-queue-type".into(), long_str("stream"));
        // Commands are few and small; a year of them is the admin's audit trail.
        control.insert("x-max-age".into(), long_str("365D"));
        self.queue(channel, &self.control(), durable, control, RK_CONTROL)
            .await?;
        // Fanout: every worker gets every heartbeat and pause. Durable like the rest; what goes
        // through it is live only, never kept.
        durable_exchange(channel, &self.fleet(), ExchangeKind::Fanout).await
    }

    /// Declare `{p}.fleet` (as [`Topology::declare`] does) and this worker connection's queue
    /// on it, bound; returns the queue's name.
    ///
    /// The exchange is checked passively (`setup` declares it; [`Topology::ensure`] has run),
    /// so a worker's broker user needs configure rights on its own server-named queue only.
    pub async fn declare_fleet_queue(&self, channel: &Channel) -> lapin::Result<String> {
        channel
            .exchange_declare(
                self.fleet().as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        // Classic: a private, transient queue (quorum queues cannot be exclusive).
        args.insert("x-queue-type".into(), long_str("classic"));
        // A heartbeat or pause older than 5 s says nothing about now.
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(5_000));
        // A reader that falls behind keeps the newest messages, never a backlog.
        args.insert("x-max-length".into(), AMQPValue::LongInt(1_000));
        args.insert("x-overflow".into(), long_str("drop-head"));
        let queue = channel
            .queue_declare(
                // Server-named, so workers never collide.
                "".into(),
                QueueDeclareOptions {
                    // Gone with the connection: a dead worker leaves nothing behind.
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        let name = queue.name().to_string();
        channel
            .queue_bind(
                name.as_str().into(),
                self.fleet().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(name)
    }

    async fn queue(
        &self,
        channel: &Channel,
        name: &str,
        options: QueueDeclareOptions,
        args: FieldTable,
        routing_key: &str,
    ) -> lapin::Result<()> {
        channel.queue_declare(name.into(), options, args).await?;
        channel
            .queue_bind(
                name.into(),
                self.exchange().as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

/// The broker refused for want of rights (ACCESS_REFUSED, 403).
pub fn is_access_refused(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))
    )
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// `30s`, `5m`, `30m`, `2h`: a short label for a delay.
fn tier_label(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Declare `name` as a durable exchange of `kind`: it survives a broker restart together with
/// the durable queues bound to it.
async fn durable_exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_with_the_prefix() {
        let topo = Topology::new(
            &BrokerSettings {
                prefix: "t1".into(),
                ..Default::default()
            },
            &RetrySettings::default(),
        );
        assert_eq!(topo.requests(), "t1.requests");
        assert_eq!(topo.intake(), "t1.intake");
        assert_eq!(topo.awaiting(), "t1.awaiting");
        assert_eq!(topo.retry_queue(0), "t1.retry.30s");
        assert_eq!(topo.retry_queue(1), "t1.retry.5m");
        assert_eq!(topo.retry_queue(2), "t1.retry.30m");
        assert!(topo.all_queues().iter().all(|q| q.starts_with("t1.")));
    }
}
