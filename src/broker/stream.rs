//! Reading the `{prefix}.outcomes` stream.
//!
//! The broker does not tell an AMQP reader where a stream ends (a stream's message count
//! reads 0 on 3.10), so "everything so far" is found one of two ways:
//! - by a reader that may write (a worker): publish a [`Record::Marker`] of our own, then
//!   read until it comes by (https://www.rabbitmq.com/docs/streams#consuming);
//!   [`StreamFollower::sync`] waits until everything confirmed before the call has been
//!   handed to the handler;
//! - by a reader that may not (`status`, `report`: least authority, see
//!   `broker::definitions`): [`tail`] attaches a second consumer at `last`, where the broker
//!   starts from the first message of the stream's last chunk and sends that chunk in one
//!   burst, and takes the highest `x-stream-offset` it sees; [`read_to_tail`] reads until
//!   that offset has been handed to the handler. A record confirmed before the call is in
//!   that chunk or an earlier one.
//!
//! Where to start is a [`Offset`]: `Since(t)` attaches at the first chunk the broker wrote
//! at or after `t`, so a reader interested in one recent batch skips a year of history
//! without reading it (`status` starts at the batch's own time).
//!
//! The handler gets each message as it is on the stream ([`StreamMessage`]: its offset and
//! body): what a record means, and whether it is to be believed, is `records`' business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio::sync::{oneshot, watch};
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
    /// From the first record of the stream's last chunk.
    Last,
    /// From this offset (`x-stream-offset` of a delivery) on.
    At(u64),
}

impl Offset {
    fn argument(self) -> AMQPValue {
        match self {
            Offset::First => AMQPValue::LongString("first".into()),
            Offset::Next => AMQPValue::LongString("next".into()),
            Offset::Last => AMQPValue::LongString("last".into()),
            Offset::Since(t) => AMQPValue::Timestamp(t.timestamp().max(0) as u64),
            Offset::At(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
        }
    }
}

/// How long [`tail`] waits for the first message of the last chunk: an empty stream sends
/// none. The broker sends it as soon as the consumer attaches (milliseconds), so this only
/// bounds the wait on an empty stream.
const FIRST_DELIVERY_WAIT: Duration = Duration::from_millis(1500);
/// The rest of a chunk follows its first message in the same burst; a gap this long after
/// the last delivery means the burst is over.
const BURST_GAP: Duration = Duration::from_millis(250);

/// The offsets of what a consumer attached at `from` receives in its first burst: the first
/// and the highest. `None` when nothing comes (an empty stream, or nothing since `from`).
pub async fn probe(
    conn: &Connection,
    stream: &str,
    from: Offset,
) -> anyhow::Result<Option<(u64, u64)>> {
    probe_burst(conn, stream, from, true).await
}

/// The offset of the first record a consumer attached at `from` receives (`None`: nothing
/// since `from`); returns as soon as it comes.
pub async fn first_offset(
    conn: &Connection,
    stream: &str,
    from: Offset,
) -> anyhow::Result<Option<u64>> {
    Ok(probe_burst(conn, stream, from, false)
        .await?
        .map(|(first, _)| first))
}

async fn probe_burst(
    conn: &Connection,
    stream: &str,
    from: Offset,
    whole_burst: bool,
) -> anyhow::Result<Option<(u64, u64)>> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(STREAM_PREFETCH, BasicQosOptions { global: false })
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), from.argument());
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .with_context(|| format!("reading the stream {stream}"))?;
    let mut seen: Option<(u64, u64)> = None;
    let mut wait = FIRST_DELIVERY_WAIT;
    while let Ok(next) = tokio::time::timeout(wait, consumer.next()).await {
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(err)) => {
                return Err(anyhow::Error::from(err).context(format!("reading the stream {stream}")))
            }
            None => break,
        };
        let Some(offset) = headers::get_u64(&delivery.properties, "x-stream-offset") else {
            continue;
        };
        seen = Some(match seen {
            None => (offset, offset),
            Some((first, last)) => (first, last.max(offset)),
        });
        if !whole_burst {
            break;
        }
        wait = BURST_GAP;
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(seen)
}

/// The offset of the last record on `stream` now, `None` when it is empty.
pub async fn tail(conn: &Connection, stream: &str) -> anyhow::Result<Option<u64>> {
    Ok(probe(conn, stream, Offset::Last)
        .await?
        .map(|(_, last)| last))
}

/// Read the outcomes stream from `offset` up to its tail now, then stop; publishes nothing,
/// so a read-only broker user can run it. `Since(t)` with nothing written since `t` reads
/// nothing.
pub async fn read_to_tail<H>(
    conn: &Connection,
    topology: &Topology,
    offset: Offset,
    handler: H,
) -> anyhow::Result<Option<u64>>
where
    H: FnMut(StreamMessage) + Send + 'static,
{
    let stream = topology.outcomes();
    let Some(end) = tail(conn, &stream).await? else {
        return Ok(None);
    };
    let start = match offset {
        // Resolve a time to an offset first: a consumer attached past the tail would wait
        // for the next record instead of ending.
        Offset::Since(_) => match first_offset(conn, &stream, offset).await? {
            Some(first) => Offset::At(first),
            None => return Ok(Some(end)),
        },
        Offset::Next | Offset::Last => return Ok(Some(end)),
        other => other,
    };
    let follower = StreamFollower::start(conn, topology, start, handler).await?;
    let reached = follower.reach(end + 1).await;
    follower.stop().await?;
    reached?;
    Ok(Some(end))
}

/// The largest record a reader parses (a record with its backup of a user's methods is a
/// few kilobytes).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

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
    /// One past the highest offset handed to the handler (0: nothing yet).
    high_water: watch::Receiver<u64>,
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
        args.insert("x-stream-offset".into(), offset.argument());
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
        let (high_tx, high_water) = watch::channel(0u64);
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
                let offset = headers::get_u64(&delivery.properties, "x-stream-offset");
                let marker = match serde_json::from_slice::<Peek>(&delivery.data) {
                    Ok(Peek {
                        kind: Some(kind),
                        id: Some(id),
                    }) if kind == "marker" => Some(id),
                    _ => None,
                };
                if delivery.data.len() > MAX_RECORD_BYTES {
                    // Bounded input: anyone who could write the stream could make a reader
                    // parse gigabytes. No record of ours comes near this.
                    tracing::warn!(
                        bytes = delivery.data.len(),
                        "skipping an oversized record on the stream"
                    );
                } else if let Some(id) = marker {
                    let waiter = task_waiters.lock().ok().and_then(|mut w| w.remove(&id));
                    if let Some(waiter) = waiter {
                        // Ack what we hold so the broker keeps sending while we wait.
                        delivery.ack(BasicAckOptions { multiple: true }).await?;
                        unacked = 0;
                        let _ = waiter.send(());
                    }
                } else {
                    handler(StreamMessage {
                        offset: offset.unwrap_or(0),
                        timestamp: *delivery.properties.timestamp(),
                        body: delivery.data,
                    });
                }
                if let Some(offset) = offset {
                    high_tx.send_if_modified(|h| {
                        let next = offset.saturating_add(1);
                        (next > *h).then(|| *h = next).is_some()
                    });
                }
            }
            let _ = channel.close(200, "done".into()).await;
            Ok(())
        });
        Ok(StreamFollower {
            waiters,
            high_water,
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

    /// Wait until every record below offset `end` has been handed to the handler.
    pub async fn reach(&self, end: u64) -> anyhow::Result<()> {
        let mut high = self.high_water.clone();
        high.wait_for(|h| *h >= end).await.map(|_| ()).map_err(|_| {
            anyhow::anyhow!("the outcomes stream reader stopped before reaching offset {end}")
        })
    }

    /// [`StreamFollower::high_water`] as it moves.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.high_water.clone()
    }

    /// One past the highest offset handed to the handler so far (where to resume).
    pub fn high_water(&self) -> u64 {
        *self.high_water.borrow()
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
