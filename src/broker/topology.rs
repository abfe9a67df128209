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

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

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
}

impl Topology {
    /// Names for `broker.prefix`, with one retry queue per `retry.tiers` entry.
    pub fn new(broker: &BrokerSettings, retry: &RetrySettings) -> Topology {
        Topology {
            prefix: broker.prefix.clone(),
            tiers: retry.tiers.clone(),
            delivery_limit: broker.delivery_limit,
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
    /// Both exchanges, for tools that delete them.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.exchange(), self.intake()]
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

    /// Declare everything; idempotent (same names, same arguments).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().as_str().into(),
                // Direct: each routing key names exactly one queue; no pattern matching needed.
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    // Survives a broker restart together with the durable queues bound to it.
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;

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
        self.queue(channel, &self.outcomes(), durable, outcomes, RK_OUTCOME)
            .await?;

        channel
            .exchange_declare(
                self.intake().as_str().into(),
                // Its own exchange, so a producer's broker user can be given write access to
                // it alone (least authority): it cannot publish outcomes-as-a-worker, retries
                // or dead letters, and every request it sends is still verified by workers.
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
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
        Ok(())
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
