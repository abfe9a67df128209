//! RabbitMQ: the topology (declared in one place), connecting with backoff, confirmed
//! publishing, and reading the outcomes stream.
//!
//! # Layout
//! - [`topology`]: every exchange, queue, argument and binding, and why.
//! - [`publisher`]: [`Publisher`], pipelined publisher confirms that survive a broker restart.
//! - [`stream`]: reading `{prefix}.outcomes` "up to now" (with a marker) and following it live.
//! - [`headers`]: reading and writing AMQP headers.

pub mod headers;
pub mod publisher;
pub mod stream;
pub mod topology;

use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};

use crate::config::{redact_url, BrokerSettings};

pub use publisher::{OutMessage, Publisher};
pub use topology::Topology;

/// Connect to the broker, retrying with backoff for up to `broker.connect_timeout`.
/// Says clearly how to start a broker when none answers.
pub async fn connect(settings: &BrokerSettings, name: &str) -> anyhow::Result<Connection> {
    let deadline = Instant::now() + settings.connect_timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(&settings.url, props).await {
            Ok(conn) => return Ok(conn),
            Err(err) => {
                if Instant::now() + delay > deadline {
                    return Err(err).with_context(|| {
                        format!(
                            "cannot reach RabbitMQ at {} (broker.url / MFA_RESET__BROKER__URL). \
                             Start one with `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`), \
                             then try again",
                            redact_url(&settings.url)
                        )
                    });
                }
                tracing::warn!(error = %err, retry_in = ?delay, "broker not reachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
