//! `mfa-reset setup`: declare the topology.

use crate::broker::{self, Topology};
use crate::config::Settings;

/// Declare every exchange and queue (idempotent) and say what exists.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset setup").await?;
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
<<<<<<< HEAD
    println!("broker {} ready:", settings.broker.shown_addresses());
    println!("  exchange {}", topology.exchange());
=======
    println!("broker {} ready:", redact_url(&settings.broker.url));
    for exchange in topology.exchanges() {
        println!("  exchange {exchange}");
    }
>>>>>>> main
    for q in topology.all_queues() {
        println!("  queue    {q}");
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
