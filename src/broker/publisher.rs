//! Confirmed publishing.
//!
//! [`Publisher`] keeps up to `broker.confirm_window` publishes in flight (waiting for each
//! confirm one by one is 20–30× slower: docs/rabbitmq-notes.md) and keeps every unconfirmed message
//! until its ack arrives: when the connection drops, it reconnects with backoff and
//! publishes the unconfirmed ones again. Duplicates that this can cause are absorbed by
//! the request id (see `worker`). [`publish_confirmed`] is the one-message form the worker uses.

use std::collections::VecDeque;

use std::time::Duration;

use anyhow::bail;
use backon::{BackoffBuilder, ConstantBackoff, ConstantBuilder};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

use super::Topology;
use crate::config::BrokerSettings;

/// A message to publish through the deployment's exchange.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Routing key (`request`, `dead`, `outcome`, `retry.30s`, …).
    pub routing_key: String,
    /// JSON body.
    pub body: Vec<u8>,
    /// AMQP message id (the request id for requests).
    pub message_id: Option<String>,
    /// Headers.
    pub headers: FieldTable,
    /// The exchange, when not the deployment's main one (producers write to the intake).
    pub exchange: Option<String>,
}

impl OutMessage {
    /// A JSON message.
    pub fn json(routing_key: &str, body: Vec<u8>) -> OutMessage {
        OutMessage {
            routing_key: routing_key.to_string(),
            body,
            message_id: None,
            headers: FieldTable::default(),
            exchange: None,
        }
    }

    /// Publish through `exchange` instead of the one the caller names.
    pub fn via(mut self, exchange: String) -> OutMessage {
        self.exchange = Some(exchange);
        self
    }

    /// Set the message id.
    pub fn with_id(mut self, id: String) -> OutMessage {
        self.message_id = Some(id);
        self
    }

    /// Set the headers.
    pub fn with_headers(mut self, headers: FieldTable) -> OutMessage {
        self.headers = headers;
        self
    }

    fn properties(&self) -> BasicProperties {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            // Persistent: survives a broker restart (quorum queues store every message anyway).
            .with_delivery_mode(2)
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        // No header table at all when there are none (a compact request has none): one field
        // less for the broker to decode on every message.
        if !self.headers.inner().is_empty() {
            props = props.with_headers(self.headers.clone());
        }
        if let Some(id) = &self.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        props
    }
}

/// Publish one message and wait for its confirm (the channel must be in confirm mode).
/// `mandatory`: a message that routes nowhere is an error, not a silent drop.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    msg: &OutMessage,
) -> anyhow::Result<()> {
    // A confirm normally takes milliseconds. When the broker goes away mid-publish, lapin may
    // never resolve it (docs/rabbitmq-notes.md, "lapin 4.x"): give up so the caller can hold the message
    // and reconnect instead of hanging until the shutdown grace runs out.
    tokio::time::timeout(
        CONFIRM_TIMEOUT,
        publish_confirmed_inner(channel, exchange, msg),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no publisher confirm for a message to {:?} within {CONFIRM_TIMEOUT:?}",
            msg.routing_key
        )
    })?
}

/// A message handed to the broker whose confirm is still to come: publish several in a
/// fixed order (the channel keeps it) and wait for their confirms afterwards.
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    routing_key: String,
}

/// Hand `msg` to the broker now; [`PendingConfirm::confirmed`] waits for its confirm.
pub async fn publish_pending(
    channel: &Channel,
    exchange: &str,
    msg: &OutMessage,
) -> anyhow::Result<PendingConfirm> {
    let confirm = begin_publish(channel, exchange, msg).await?;
    Ok(PendingConfirm {
        confirm,
        routing_key: msg.routing_key.clone(),
    })
}

impl PendingConfirm {
    /// Wait for the broker's confirm (as [`publish_confirmed`] does, with its timeout).
    pub async fn confirmed(self) -> anyhow::Result<()> {
        let routing_key = self.routing_key;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, self.confirm)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no publisher confirm for a message to {routing_key:?} within {CONFIRM_TIMEOUT:?}"
                )
            })??;
        check_confirmation(confirmation, &routing_key)
    }
}

/// How long [`publish_confirmed`] waits for the broker's confirm.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

async fn publish_confirmed_inner(
    channel: &Channel,
    exchange: &str,
    msg: &OutMessage,
) -> anyhow::Result<()> {
    let confirm = begin_publish(channel, exchange, msg).await?;
    check_confirmation(confirm.await?, &msg.routing_key)
}

/// Hand `msg` to the broker; the returned future resolves with its confirm.
/// `mandatory`: a message that routes nowhere comes back as an error, not a silent drop.
async fn begin_publish(
    channel: &Channel,
    exchange: &str,
    msg: &OutMessage,
) -> lapin::Result<PublisherConfirm> {
    let exchange = msg.exchange.as_deref().unwrap_or(exchange);
    channel
        .basic_publish(
            exchange.into(),
            msg.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &msg.body,
            msg.properties(),
        )
        .await
}

fn check_confirmation(c: Confirmation, routing_key: &str) -> anyhow::Result<()> {
    match c {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => bail!(
            "the broker could not route a message to {routing_key:?}: run `mfa-reset setup` \
             with the same broker.prefix"
        ),
        Confirmation::Nack(_) => bail!("the broker refused a message for {routing_key:?} (nack)"),
    }
}

/// Reconnections in a row without one confirm in between before giving up.
const MAX_RECOVERIES_WITHOUT_PROGRESS: usize = 30;

/// The waits before each reconnection in a row without progress: the first at once (a
/// dropped connection is usually back already), then 500 ms each, and none past
/// [`MAX_RECOVERIES_WITHOUT_PROGRESS`]: the iterator ends, the publisher gives up.
type Recoveries = std::iter::Chain<std::iter::Once<Duration>, ConstantBackoff>;

fn recoveries() -> Recoveries {
    std::iter::once(Duration::ZERO).chain(
        ConstantBuilder::default()
            .with_delay(Duration::from_millis(500))
            .with_max_times(MAX_RECOVERIES_WITHOUT_PROGRESS - 1)
            .build(),
    )
}

/// Pipelined, confirmed publishing that survives a broker restart.
pub struct Publisher {
    settings: BrokerSettings,
    topology: Topology,
    name: String,
    conn: Connection,
    channel: Channel,
    pending: VecDeque<(OutMessage, Option<PublisherConfirm>)>,
    window: usize,
    confirmed: u64,
    reconnects: u32,
    /// Reset by every confirm.
    recoveries: Recoveries,
}

impl Publisher {
    /// Connect, declare the topology and open a channel in confirm mode.
    pub async fn connect(
        settings: &BrokerSettings,
        topology: &Topology,
        name: &str,
    ) -> anyhow::Result<Publisher> {
        let (conn, channel) = open(settings, topology, name).await?;
        Ok(Publisher {
            settings: settings.clone(),
            topology: topology.clone(),
            name: name.to_string(),
            conn,
            channel,
            pending: VecDeque::new(),
            window: settings.confirm_window.max(1),
            confirmed: 0,
            reconnects: 0,
            recoveries: recoveries(),
        })
    }

    /// Messages confirmed by the broker so far.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Times the publisher had to reconnect.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// Publish; returns once the message is handed to the broker and at most `window`
    /// messages await their confirm.
    pub async fn send(&mut self, msg: OutMessage) -> anyhow::Result<()> {
        while self.pending.len() >= self.window {
            self.settle_front().await?;
        }
        let confirm = self.publish(&msg).await;
        match confirm {
            Ok(c) => self.pending.push_back((msg, Some(c))),
            Err(err) => {
                tracing::warn!(error = %err, "publish failed; reconnecting");
                self.pending.push_back((msg, None));
                self.recover().await?;
            }
        }
        Ok(())
    }

    /// Wait until every message sent so far is confirmed.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.settle_front().await?;
        }
        Ok(())
    }

    /// Flush and close the connection.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.flush().await?;
        let _ = self.conn.close(200, "done".into()).await;
        Ok(())
    }

    async fn publish(&self, msg: &OutMessage) -> lapin::Result<PublisherConfirm> {
        begin_publish(&self.channel, &self.topology.exchange(), msg).await
    }

    async fn settle_front(&mut self) -> anyhow::Result<()> {
        let Some((msg, confirm)) = self.pending.pop_front() else {
            return Ok(());
        };
        let Some(confirm) = confirm else {
            self.pending.push_front((msg, None));
            return self.recover().await;
        };
        match confirm.await {
            Ok(Confirmation::Nack(_)) => {
                // The broker did not take it: publish it again (https://www.rabbitmq.com/docs/confirms#server-sent-nacks).
                tracing::warn!(routing_key = %msg.routing_key, "broker nacked a message; republishing");
                let again = self.publish(&msg).await.ok();
                self.pending.push_front((msg, again));
                Ok(())
            }
            Ok(c) => {
                check_confirmation(c, &msg.routing_key)?;
                self.confirmed += 1;
                self.recoveries = recoveries();
                Ok(())
            }
            Err(err) => {
                tracing::warn!(error = %err, "confirm lost; reconnecting");
                self.pending.push_front((msg, None));
                self.recover().await
            }
        }
    }

    /// Reconnect and publish every unconfirmed message again, in order.
    ///
    /// A reopen that fails counts as one more recovery: a broker that is starting accepts
    /// connections before its queues are back ("home node ... is down or inaccessible"), and
    /// that is the moment a producer riding out a restart reconnects.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let _ = self.conn.close(200, "reconnecting".into()).await;
        // With a cluster, start with another node: this one dropped us.
        super::avoid_current_node();
        let mut last_error = None;
        let (conn, channel) = loop {
            let Some(delay) = self.recoveries.next() else {
                let gave_up = anyhow::anyhow!(
                    "the broker keeps dropping the connection; {} message(s) were confirmed, {} were not",
                    self.confirmed,
                    self.pending.len()
                );
                return Err(match last_error {
                    Some(err) => anyhow::Error::context(err, gave_up.to_string()),
                    None => gave_up,
                });
            };
            tokio::time::sleep(delay).await;
            match open(&self.settings, &self.topology, &self.name).await {
                Ok(opened) => break opened,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "broker not ready yet; retrying");
                    last_error = Some(
                        err.context("reconnecting to the broker to republish unconfirmed messages"),
                    );
                }
            }
        };
        self.conn = conn;
        self.channel = channel;
        self.reconnects += 1;
        tracing::info!(
            unconfirmed = self.pending.len(),
            "reconnected to the broker; republishing unconfirmed messages"
        );
        let mut republished = VecDeque::with_capacity(self.pending.len());
        while let Some((msg, _)) = self.pending.pop_front() {
            let confirm = self.publish(&msg).await.ok();
            republished.push_back((msg, confirm));
        }
        self.pending = republished;
        Ok(())
    }
}

async fn open(
    settings: &BrokerSettings,
    topology: &Topology,
    name: &str,
) -> anyhow::Result<(Connection, Channel)> {
    let conn = super::connect(settings, name).await?;
    topology.ensure(&conn).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publisher_reconnects_at_once_then_every_half_second_thirty_times_in_all() {
        let waits: Vec<Duration> = recoveries().collect();
        assert_eq!(waits.len(), MAX_RECOVERIES_WITHOUT_PROGRESS);
        assert_eq!(waits[0], Duration::ZERO);
        assert!(waits[1..].iter().all(|w| *w == Duration::from_millis(500)));
    }
}
