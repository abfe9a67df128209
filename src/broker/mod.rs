//! RabbitMQ: the topology (declared in one place), connecting with backoff, confirmed
//! publishing, consuming, and reading the outcomes stream.
//!
//! # Layout
//! - [`topology`]: every exchange, queue, argument and binding, and why.
//! - [`publisher`]: [`Publisher`], pipelined publisher confirms that survive a broker restart.
//! - [`consumer`]: [`Consumer`] and [`Incoming`]: QoS, deliveries, ack and hand-back.
//! - [`stream`]: reading `{prefix}.outcomes` "up to now" (with a marker) and following it live.
//! - [`headers`]: reading and writing AMQP headers.

pub mod consumer;
pub mod headers;
pub mod publisher;
pub mod stream;
pub mod topology;

use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use lapin::{Connection, ConnectionProperties};

use crate::config::{redact_url, BrokerSettings};

pub use consumer::{Consumer, Incoming};
pub use publisher::{OutMessage, Publisher};
pub use topology::Topology;

/// Delays between connection attempts: 200 ms doubling up to 5 s, for at most `timeout` of
/// waiting in all.
pub fn connect_backoff(timeout: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_total_delay(Some(timeout))
}

/// Connect to the broker, retrying with backoff for up to `broker.connect_timeout`.
/// Says clearly how to start a broker when none answers.
pub async fn connect(settings: &BrokerSettings, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    (|| Connection::connect(&settings.url, props.clone()))
        .retry(connect_backoff(settings.connect_timeout).build())
        .notify(|err, delay| {
            tracing::warn!(error = %err, retry_in = ?delay, "broker not reachable; retrying");
        })
        .await
        .with_context(|| {
            format!(
                "cannot reach RabbitMQ at {} (broker.url / MFA_RESET__BROKER__URL). \
                 Start one with `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`), \
                 then try again",
                redact_url(&settings.url)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connecting_backs_off_from_200ms_doubling_to_5s_within_the_timeout() {
        let delays: Vec<Duration> = connect_backoff(Duration::from_secs(20)).build().collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(delays.iter().sum::<Duration>() <= Duration::from_secs(20));
    }
}
