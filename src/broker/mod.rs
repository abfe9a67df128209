//! RabbitMQ: the topology (declared in one place), connecting with backoff, confirmed
//! publishing, consuming, and reading the outcomes stream.
//!
//! # Layout
//! - [`topology`]: every exchange, queue, argument and binding, and why.
//! - [`publisher`]: [`Publisher`], pipelined publisher confirms that survive a broker restart.
//! - [`consumer`]: [`Consumer`] and [`Incoming`]: QoS, deliveries, ack and hand-back.
//! - [`stream`]: reading `{prefix}.outcomes` "up to now" (with a marker) and following it live.
//! - [`definitions`]: one broker user per role with least-authority permissions (`setup
//!   --definitions`).
//! - [`headers`]: reading and writing AMQP headers.

pub mod consumer;
pub mod definitions;
pub mod headers;
pub mod publisher;
pub mod stream;
pub mod topology;

use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};

use crate::config::{redact_url, BrokerSettings};
use crate::net::BrokerTransport;

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
/// Says clearly how to start a broker when none answers. Refuses plaintext `amqp://` to
/// another host unless `broker.allow_plaintext` ([`crate::net::broker_transport`]); with
/// `amqps://`, trusts `broker.ca_file` and presents `broker.client_cert_file` when set.
pub async fn connect(settings: &BrokerSettings, name: &str) -> anyhow::Result<Connection> {
    let transport = crate::net::broker_transport(&settings.url, settings.allow_plaintext)?;
    let tls = match transport {
        BrokerTransport::Tls => tls_config(settings)?,
        BrokerTransport::Plain => OwnedTLSConfig::default(),
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    (|| Connection::connect_with_config(&settings.url, props.clone(), tls.clone(), runtime.clone()))
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

/// The TLS settings of an `amqps://` connection, read from the files the settings name.
fn tls_config(settings: &BrokerSettings) -> anyhow::Result<OwnedTLSConfig> {
    let read = |path: &str, setting: &str| {
        std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "{setting} = {:?}: cannot read it ({}); set it to a PEM file",
                crate::net::printable(path),
                e.kind()
            )
        })
    };
    let cert_chain = if settings.ca_file.is_empty() {
        None
    } else {
        let pem = read(&settings.ca_file, "broker.ca_file")?;
        let text = String::from_utf8(pem)
            .map_err(|_| anyhow::anyhow!("broker.ca_file: not a PEM text file"))?;
        anyhow::ensure!(
            text.contains("-----BEGIN CERTIFICATE-----"),
            "broker.ca_file = {:?}: no CERTIFICATE block",
            crate::net::printable(&settings.ca_file)
        );
        Some(text)
    };
    let identity = match (
        settings.client_cert_file.is_empty(),
        settings.client_key_file.is_empty(),
    ) {
        (true, true) => None,
        (false, false) => {
            let pem = read(&settings.client_cert_file, "broker.client_cert_file")?;
            // The key is a secret: errors name the setting, never its content.
            let key = read(&settings.client_key_file, "broker.client_key_file")?;
            anyhow::ensure!(
                key.windows(17).any(|w| w == b"BEGIN PRIVATE KEY"),
                "broker.client_key_file: not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----); \
                 convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
            );
            Some(OwnedIdentity::PKCS8 { pem, key })
        }
        (false, true) => anyhow::bail!(
            "broker.client_cert_file is set but broker.client_key_file is not: set both"
        ),
        (true, false) => anyhow::bail!(
            "broker.client_key_file is set but broker.client_cert_file is not: set both"
        ),
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
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
