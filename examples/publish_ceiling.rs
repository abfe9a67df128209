//! The producer benchmark's ceiling: a minimal lapin publisher, pipelined confirms (a window
//! of in-flight confirms, like `enqueue`), same-size messages, into a fresh quorum queue.
//!
//! `cargo run --release --example publish_ceiling -- COUNT BYTES [WINDOW [HEADER_BYTES [x|S]]]`
//! prints `ceiling: N msg/s`. The queue is deleted afterwards. With HEADER_BYTES, every
//! message also carries one header `proof` of that many bytes, as an AMQP byte array (`x`,
//! the default) or a long string (`S`): what a request's compact proof costs the broker
//! beside the same bytes in the body.
//!
//! `… --example publish_ceiling -- size-of QUEUE` prints the size of the first message in
//! QUEUE (got and requeued) unsigned (its body without the compact `proof` field) and as
//! published (body, and its headers' keys and values), so the ceiling can be measured with
//! the size of an unsigned request and with the size `enqueue` publishes (the broker does
//! not count quorum-queue bytes in `list_queues message_bytes`).

use std::collections::VecDeque;
use std::time::Instant;

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("size-of") {
        let queue = args.nth(1).unwrap_or_default();
        return size_of(&queue).await;
    }
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(320);
    let window: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let header_bytes: Option<usize> = args.next().and_then(|a| a.parse().ok());
    let header_type = args.next().unwrap_or_else(|| "x".into());
    let url = std::env::var("MFA_RESET__BROKER__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = format!("mfa-reset-ceiling-{}", std::process::id());
    let mut qargs = FieldTable::default();
    qargs.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, qargs)
        .await?;
    // CEILING_EXCHANGE=1: through a direct exchange bound to the queue, `mandatory`, as
    // `enqueue` publishes to the intake (what that costs the broker beside the default one).
    let via_exchange = std::env::var_os("CEILING_EXCHANGE").is_some();
    let exchange = if via_exchange {
        let name = format!("{queue}.x");
        ch.exchange_declare(
            name.as_str().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            name.as_str().into(),
            "request".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        name
    } else {
        String::new()
    };
    let routing_key = if via_exchange {
        "request".to_string()
    } else {
        queue.clone()
    };
    // CEILING_IDS=1: a message id (a UUID) and a timestamp on every message, as `enqueue` sets.
    let with_ids = std::env::var_os("CEILING_IDS").is_some();
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Some(bytes) = header_bytes {
        let value = vec![b'h'; bytes];
        let value = if header_type == "S" {
            AMQPValue::LongString(value.into())
        } else {
            AMQPValue::ByteArray(value.into())
        };
        let mut headers = FieldTable::default();
        headers.insert("proof".into(), value);
        props = props.with_headers(headers);
    }
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    for _ in 0..count {
        if pending.len() >= window {
            if let Some(c) = pending.pop_front() {
                let _ = c.await?;
            }
        }
        let props = if with_ids {
            props
                .clone()
                .with_message_id(uuid::Uuid::new_v4().to_string().into())
                .with_timestamp(1_764_000_000)
        } else {
            props.clone()
        };
        let c = ch
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: via_exchange,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await?;
        pending.push_back(c);
    }
    while let Some(c) = pending.pop_front() {
        let _ = c.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let header = header_bytes
        .map(|bytes| format!(" and a {bytes}-byte {header_type} header"))
        .unwrap_or_default();
    println!(
        "ceiling: {:.0} msg/s ({count} messages of {size} bytes{header} in {secs:.2}s)",
        count as f64 / secs
    );
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(())
}

async fn size_of(queue: &str) -> anyhow::Result<()> {
    let url = std::env::var("MFA_RESET__BROKER__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let message = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?
        .ok_or_else(|| anyhow::anyhow!("{queue} is empty"))?;
    // Unsigned, then body + headers (the compact proof a request carries in its body, or the
    // inline signed manifest and proof in headers), as the ceiling's message sizes.
    let body = message.delivery.data.len();
    // The same request unsigned: without the compact form's `proof` field (compact JSON,
    // so only the order of the keys can change, not the length).
    let unsigned = match serde_json::from_slice::<serde_json::Value>(&message.delivery.data) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.remove("proof");
            serde_json::to_vec(&fields).map_or(body, |bytes| bytes.len())
        }
        _ => body,
    };
    let headers: usize = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                // Added by the quorum queue on delivery, not published.
                .filter(|(key, _)| key.as_str() != "x-delivery-count")
                .map(|(key, value)| match value {
                    AMQPValue::LongString(text) => key.as_str().len() + text.as_bytes().len(),
                    AMQPValue::ByteArray(bytes) => key.as_str().len() + bytes.len(),
                    _ => key.as_str().len() + 8,
                })
                .sum()
        })
        .unwrap_or(0);
    println!("{unsigned} {}", body + headers);
    message
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(())
}
