//! Reading the `{prefix}.outcomes` stream.
//!
//! The broker does not tell an AMQP reader where a stream ends, so "everything so far"
//! is found with a marker: publish a [`Record::Marker`] of our own, then read until it
//! comes by (https://www.rabbitmq.com/docs/streams#consuming). [`StreamFollower`] reads from an offset and keeps
//! following; [`StreamFollower::sync`] waits until everything confirmed before the call
//! has been handed to the handler.
//!
//! The handler gets each message as it is on the stream ([`StreamMessage`]: its offset and
//! body): what a record means, and whether it is to be believed, is `records`' business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::headers;
use super::publisher::{publish_confirmed, OutMessage};
use super::topology::RK_OUTCOME;
use super::Topology;
use crate::domain::Record;

/// Where to start reading.
#[derive(Debug, Clone, Copy)]
pub enum Offset {
    /// The oldest record kept.
    First,
    /// Records written from this time on (the broker's segment granularity may give a few earlier ones).
    Since(DateTime<Utc>),
    /// Only records written after the consumer starts.
    Next,
}

/// Acks are batched: acking each delivery of a stream read is ~5× slower (measured: docs/rabbitmq-notes.md).
const ACK_EVERY: u64 = 500;
/// Credit for the stream consumer (a stream consumer must set QoS).
const STREAM_PREFETCH: u16 = 2000;

/// A stream to follow: its name, and the exchange and routing key markers reach it by.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The exchange.
    pub exchange: String,
    /// The stream.
    pub stream: String,
    /// Its routing key.
    pub routing_key: String,
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<()>>>>;

/// One message read from the stream, as it is there.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// Its position in the stream (`x-stream-offset`, which the broker adds to every
    /// delivery from a stream); 0 if absent.
    pub offset: u64,
    /// The AMQP timestamp its publisher set (seconds), if any: a claim, not a proof.
    pub timestamp: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
}

/// Just enough of a body to recognise our own markers without decoding the rest.
#[derive(serde::Deserialize)]
struct Peek {
    kind: Option<String>,
    id: Option<Uuid>,
}

/// Follows the outcomes stream in a background task, handing each record to a handler.
pub struct StreamFollower {
    waiters: Waiters,
    publish: Channel,
    exchange: String,
    routing_key: String,
    task: JoinHandle<anyhow::Result<()>>,
    cancel: CancellationToken,
}

impl StreamFollower {
    /// Start following the outcomes stream from `offset`; `handler` sees every message
    /// except our own markers.
    pub async fn start<H>(
        conn: &Connection,
        topology: &Topology,
        offset: Offset,
        handler: H,
    ) -> anyhow::Result<StreamFollower>
    where
        H: FnMut(StreamMessage) + Send + 'static,
    {
        let outcomes = Followed {
            exchange: topology.exchange(),
            stream: topology.outcomes(),
            routing_key: RK_OUTCOME.to_string(),
        };
        StreamFollower::start_on(conn, outcomes, offset, handler).await
    }

    /// Start following another stream of the deployment (the control stream).
    pub async fn start_on<H>(
        conn: &Connection,
        followed: Followed,
        offset: Offset,
        mut handler: H,
    ) -> anyhow::Result<StreamFollower>
    where
        H: FnMut(StreamMessage) + Send + 'static,
    {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(STREAM_PREFETCH, BasicQosOptions { global: false })
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            match offset {
                Offset::First => AMQPValue::LongString("first".into()),
                Offset::Next => AMQPValue::LongString("next".into()),
                Offset::Since(t) => AMQPValue::Timestamp(t.timestamp().max(0) as u64),
            },
        );
        let mut consumer = channel
            .basic_consume(
                followed.stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .with_context(|| format!("reading the stream {}", followed.stream))?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;

        let waiters: Waiters = Arc::default();
        let cancel = CancellationToken::new();
        let task_waiters = waiters.clone();
        let task_cancel = cancel.clone();
        let task = tokio::spawn(async move {
            let mut unacked = 0u64;
            loop {
                let next = tokio::select! {
                    _ = task_cancel.cancelled() => break,
                    next = consumer.next() => next,
                };
                let delivery = match next {
                    None => break,
                    Some(Err(err)) => {
                        return Err(anyhow::Error::from(err).context("outcomes stream"))
                    }
                    Some(Ok(d)) => d,
                };
                unacked += 1;
                if unacked >= ACK_EVERY {
                    delivery.ack(BasicAckOptions { multiple: true }).await?;
                    unacked = 0;
                }
                let marker = match serde_json::from_slice::<Peek>(&delivery.data) {
                    Ok(Peek {
                        kind: Some(kind),
                        id: Some(id),
                    }) if kind == "marker" => Some(id),
                    _ => None,
                };
                if let Some(id) = marker {
                    let waiter = task_waiters.lock().ok().and_then(|mut w| w.remove(&id));
                    if let Some(waiter) = waiter {
                        // Ack what we hold so the broker keeps sending while we wait.
                        delivery.ack(BasicAckOptions { multiple: true }).await?;
                        unacked = 0;
                        let _ = waiter.send(());
                    }
                    continue;
                }
                handler(StreamMessage {
                    offset: headers::get_u64(&delivery.properties, "x-stream-offset").unwrap_or(0),
                    timestamp: *delivery.properties.timestamp(),
                    body: delivery.data,
                });
            }
            let _ = channel.close(200, "done".into()).await;
            Ok(())
        });
        Ok(StreamFollower {
            waiters,
            publish,
            exchange: followed.exchange,
            routing_key: followed.routing_key,
            task,
            cancel,
        })
    }

    /// Wait until every record confirmed before this call has been handed to the handler.
    pub async fn sync(&self) -> anyhow::Result<()> {
        let id = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(id, tx);
        }
        let body = serde_json::to_vec(&Record::Marker { id })?;
        publish_confirmed(
            &self.publish,
            &self.exchange,
            &OutMessage::json(&self.routing_key, body),
        )
        .await
        .with_context(|| format!("writing a marker to the stream ({})", self.routing_key))?;
        rx.await.map_err(|_| {
            anyhow::anyhow!("the outcomes stream reader stopped before reaching the marker")
        })
    }

    /// True while the reader task runs.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stop following.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let _ = self.publish.close(200, "done".into()).await;
        self.task.await.context("outcomes stream reader panicked")?
    }
}

/// Read every record from `offset` up to now, then stop.
pub async fn read_until_now<H>(
    conn: &Connection,
    topology: &Topology,
    offset: Offset,
    handler: H,
) -> anyhow::Result<()>
where
    H: FnMut(StreamMessage) + Send + 'static,
{
    let follower = StreamFollower::start(conn, topology, offset, handler).await?;
    follower.sync().await?;
    follower.stop().await
}
