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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
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

/// How long one connection attempt to one node may take (TCP, TLS and the AMQP handshake)
/// before the next node is tried: a node cut off by the network never answers at all.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the next connection attempt starts among `broker.addresses()`: the node that
/// answered last. It starts at a random node, so that the processes of a deployment spread
/// over the cluster (any node serves every queue and stream: RabbitMQ routes to the
/// leader), and moves on when a node drops a connection ([`avoid_current_node`]).
fn next_node() -> &'static AtomicUsize {
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    NEXT.get_or_init(|| AtomicUsize::new(rand::random::<u16>() as usize))
}

/// The node this process talks to dropped a connection: the next connection tries the
/// following node first (a node that is stopping may still accept a connection for a
/// moment). With a single `broker.url` this changes nothing.
pub fn avoid_current_node() {
    next_node().fetch_add(1, Ordering::Relaxed);
}

/// Connect to the broker, retrying with backoff for up to `broker.connect_timeout`.
/// With several addresses (`broker.urls`, the nodes of a cluster) every attempt tries each
/// node once, starting with the one that answered last, and takes the first that accepts.
/// Says clearly how to start a broker when none answers. Refuses plaintext `amqp://` to
/// another host unless `broker.allow_plaintext` ([`crate::net::broker_transport`]); with
/// `amqps://`, trusts `broker.ca_file` and presents `broker.client_cert_file` when set.
pub async fn connect(settings: &BrokerSettings, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let addresses = settings.addresses();
    let mut nodes = Vec::with_capacity(addresses.len());
    for address in &addresses {
        let tls = match crate::net::broker_transport(address, settings.allow_plaintext)? {
            BrokerTransport::Tls => tls_config(settings)?,
            BrokerTransport::Plain => OwnedTLSConfig::default(),
        };
        nodes.push((*address, tls));
    }
    (|| connect_any(&nodes, &props))
        .retry(connect_backoff(settings.connect_timeout).build())
        .notify(|err, delay| {
            tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "broker not reachable; retrying");
        })
        .await
        .with_context(|| {
            format!(
                "cannot reach RabbitMQ at {} (broker.url / MFA_RESET__BROKER__URL, or \
                 broker.urls / MFA_RESET__BROKER__URLS for the nodes of a cluster). \
                 Start one with `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`), \
                 then try again",
                settings.shown_addresses()
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

/// One round: each address once, from [`next_node`] on; the first connection that opens.
async fn connect_any(
    nodes: &[(&str, OwnedTLSConfig)],
    props: &ConnectionProperties,
) -> anyhow::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let count = nodes.len().max(1);
    let start = next_node().load(Ordering::Relaxed) % count;
    let mut failures = Vec::new();
    for step in 0..count {
        let at = (start + step) % count;
        let Some((address, tls)) = nodes.get(at) else {
            break;
        };
        let attempt = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            Connection::connect_with_config(address, props.clone(), tls.clone(), runtime.clone()),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                next_node().store(at, Ordering::Relaxed);
                if step > 0 {
                    tracing::info!(broker = %redact_url(address), "connected to another node of the cluster");
                }
                return Ok(conn);
            }
            Ok(Err(err)) => failures.push(format!("{}: {err}", redact_url(address))),
            Err(_) => failures.push(format!(
                "{}: no answer within {ATTEMPT_TIMEOUT:?}",
                redact_url(address)
            )),
        }
    }
    anyhow::bail!("{}", failures.join("; "))
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
