//! `mfa-reset setup`: declare the topology.

use crate::broker::{self, Topology};
use crate::config::{redact_url, Settings};

/// Declare every exchange and queue (idempotent) and say what exists.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset setup").await?;
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    println!("broker {} ready:", redact_url(&settings.broker.url));
    for exchange in topology.exchanges() {
        println!("  exchange {exchange}");
    }
    for q in topology.all_queues() {
        println!("  queue    {q}");
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
