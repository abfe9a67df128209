//! [`Outbox`]: sealed records (outcomes, and the plans before them) the broker did not
//! confirm because it went away while they were being published.
//!
//! They outlive the connection: the next session publishes them again — the same sealed
//! bytes, never sealed anew, so the chain keeps no gap and no fork — before it consumes
//! anything, so the redelivered request is then found done instead of being executed again
//! (which would find the methods gone and record `already_clean`, losing what was removed).

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::Channel;

use super::ledger::Key;
use super::Ledger;
use crate::broker::publisher::publish_confirmed;
use crate::broker::Topology;
use crate::records::Sealed;

/// A held record, and the request it concludes (for the ledger) if it is an outcome.
#[derive(Debug, Clone)]
struct Held {
    sealed: Sealed,
    concludes: Option<(Key, DateTime<Utc>)>,
}

/// Sealed records held through a broker outage, in chain order.
#[derive(Debug, Default)]
pub struct Outbox(Mutex<BTreeMap<(String, u64), Held>>);

impl Outbox {
    /// Hold a sealed record the broker did not confirm; `concludes` names the request it is
    /// the outcome of, and when.
    pub fn hold(&self, sealed: Sealed, concludes: Option<(Key, DateTime<Utc>)>) {
        if let Ok(mut held) = self.0.lock() {
            held.insert(
                (sealed.chain.clone(), sealed.seq),
                Held { sealed, concludes },
            );
        }
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.0.lock().map(|held| held.len()).unwrap_or(0)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publish every held record (confirmed), in chain order, then forget it. Always, even
    /// when the stream already has an outcome for the request: that one may come from
    /// another worker that got the redelivered copy first and found the methods gone
    /// (`already_clean`); the batch view prefers the outcome that removed the methods, and a
    /// duplicate record costs nothing.
    pub async fn record_held(
        &self,
        publish: &Channel,
        topology: &Topology,
        ledger: &Ledger,
    ) -> anyhow::Result<()> {
        let held: Vec<Held> = self
            .0
            .lock()
            .map(|held| held.values().cloned().collect())
            .unwrap_or_default();
        for Held { sealed, concludes } in held {
            publish_confirmed(publish, &topology.exchange(), &sealed.message)
                .await
                .context("recording records held through a broker outage")?;
            if let Some(((request_id, replay), at)) = concludes {
                ledger.record(request_id, replay, at);
            }
            tracing::info!(chain = %sealed.chain, seq = sealed.seq, "recorded a record held through a broker outage");
            if let Ok(mut held) = self.0.lock() {
                held.remove(&(sealed.chain, sealed.seq));
            }
        }
        Ok(())
    }
}
