//! Consuming a queue with manual acks: what the worker needs from the broker, and no more.
//!
//! [`Consumer`] opens its own channel, sets the prefetch (QoS) and yields [`Incoming`]
//! deliveries; each one is settled exactly once, by [`Incoming::ack`] (done with it) or
//! [`Incoming::hand_back`] (requeue it now; on a quorum queue this counts towards
//! `x-delivery-limit`). Closing the consumer hands back every delivery not yet settled.
//! [`Probe`] counts the messages waiting in a set of queues.

use anyhow::Context;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::headers;

/// A consumer of one queue on a channel of its own.
pub struct Consumer {
    channel: Channel,
    deliveries: lapin::Consumer,
    tag: ShortString,
}

impl Consumer {
    /// Consume `queue`, at most `prefetch` deliveries unsettled at a time, with manual acks.
    /// `name` starts the consumer tag (the broker shows it in `list_consumers`).
    pub async fn start(
        conn: &Connection,
        queue: &str,
        prefetch: u16,
        name: &str,
    ) -> anyhow::Result<Consumer> {
        let channel = conn.create_channel().await?;
        // Per consumer (quorum queues have no global QoS): the broker stops sending once
        // `prefetch` deliveries are unsettled, so a slow worker does not hoard requests.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let tag = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let deliveries = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                // Manual acks (no_ack: false): a delivery is settled only once its work is done.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let tag = deliveries.tag();
        Ok(Consumer {
            channel,
            deliveries,
            tag,
        })
    }

    /// The next delivery; `None` once the broker cancelled the consumer (queue deleted).
    /// Cancel-safe: usable as a `select!` branch.
    pub async fn next(&mut self) -> Option<anyhow::Result<Incoming>> {
        let next = self.deliveries.next().await?;
        Some(
            next.map(Incoming)
                .map_err(|err| anyhow::Error::from(err).context("consuming requests")),
        )
    }

    /// Take no new deliveries (`basic.cancel`); those already taken stay ours to settle.
    pub async fn stop(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.clone(), BasicCancelOptions::default())
            .await;
    }

    /// Close the channel: every delivery not settled goes back to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
    }
}

/// One delivery taken from a [`Consumer`], to be settled once.
pub struct Incoming(Delivery);

impl Incoming {
    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.0.data
    }

    /// The AMQP properties (headers, message id, …).
    pub fn properties(&self) -> &BasicProperties {
        &self.0.properties
    }

    /// An integer header, whatever its AMQP integer type.
    pub fn header_u64(&self, key: &str) -> Option<u64> {
        headers::get_u64(&self.0.properties, key)
    }

    /// The AMQP message id, when the publisher set one.
    pub fn message_id(&self) -> Option<String> {
        self.0
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
    }

    /// True when the broker delivered this message before (to a consumer that did not settle it).
    pub fn redelivered(&self) -> bool {
        self.0.redelivered
    }

    /// A check that answers true once the channel that holds this delivery closed (or the
    /// connection went) before it was settled: the broker has put it back in the queue, and
    /// may give it to another consumer at once.
    pub fn taken_back_check(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let acker = self.0.acker.clone();
        move || acker.poisoned()
    }

    /// Done with it: the broker forgets the message. Settling a delivery a second time is a
    /// no-op (lapin's acker is used once).
    pub async fn ack(&self) -> anyhow::Result<()> {
        self.0
            .ack(BasicAckOptions::default())
            .await
            .context("acking a delivery")?;
        Ok(())
    }

    /// Not done with it: the broker requeues it now for any consumer. On a dead channel this
    /// fails, and the broker requeues it anyway when the connection goes.
    pub async fn hand_back(&self) -> anyhow::Result<()> {
        self.0
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .context("handing a delivery back")?;
        Ok(())
    }
}

/// The prefetch for `concurrency` users in flight: `configured` when set (non-zero), else a
/// little more than in flight, so the next delivery is already here when a slot frees.
pub fn prefetch_for(configured: u16, concurrency: usize) -> u16 {
    if configured > 0 {
        return configured;
    }
    let concurrency = concurrency.max(1);
    u16::try_from(concurrency + concurrency / 4 + 1).unwrap_or(u16::MAX)
}

/// Counts the messages ready in a set of queues, on a channel of its own.
pub struct Probe {
    channel: Channel,
    queues: Vec<String>,
}

impl Probe {
    /// A probe of `queues`.
    pub async fn open(conn: &Connection, queues: Vec<String>) -> anyhow::Result<Probe> {
        Ok(Probe {
            channel: conn.create_channel().await?,
            queues,
        })
    }

    /// Messages ready (not taken by a consumer) in all the queues together.
    pub async fn ready(&self) -> anyhow::Result<u64> {
        let mut ready = 0u64;
        for name in &self.queues {
            let queue = self
                .channel
                .queue_declare(
                    name.as_str().into(),
                    // Passive: only ask; a missing queue is an error, never created here.
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("counting the messages in {name}"))?;
            ready += u64::from(queue.message_count());
        }
        Ok(ready)
    }

    /// Close its channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_is_the_configured_one_or_a_little_more_than_in_flight() {
        assert_eq!(prefetch_for(50, 8), 50);
        assert_eq!(prefetch_for(0, 8), 11);
        assert_eq!(prefetch_for(0, 32), 41);
        assert_eq!(prefetch_for(0, 0), 2, "at least one in flight");
        assert_eq!(prefetch_for(0, 1_000_000), u16::MAX);
    }
}
