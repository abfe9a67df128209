//! [`Outbox`]: outcomes decided but not recorded because the broker went away while they
//! were being published.
//!
//! They outlive the connection: the next session records them before it consumes anything,
//! so the redelivered request is then found done instead of being executed again (which would
//! find the methods gone and record `already_clean`, losing what was removed).

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context;
use lapin::Channel;
use uuid::Uuid;

use super::Ledger;
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::RK_OUTCOME;
use crate::broker::{OutMessage, Topology};
use crate::domain::{Outcome, Record};

/// Outcomes held through a broker outage, by (request id, replay).
#[derive(Debug, Default)]
pub struct Outbox(Mutex<HashMap<(Uuid, u32), Outcome>>);

impl Outbox {
    /// Hold an outcome the broker did not confirm.
    pub fn hold(&self, outcome: Outcome) {
        if let Ok(mut held) = self.0.lock() {
            held.insert((outcome.request_id, outcome.replay), outcome);
        }
    }

    /// Outcomes held now.
    pub fn len(&self) -> usize {
        self.0.lock().map(|held| held.len()).unwrap_or(0)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record every held outcome (confirmed), then forget it. Always, even when the stream
    /// already has an outcome for the request: that one may come from another worker that got
    /// the redelivered copy first and found the methods gone (`already_clean`); the batch view
    /// prefers the outcome that removed the methods, and a duplicate record costs nothing.
    pub async fn record_held(
        &self,
        publish: &Channel,
        topology: &Topology,
        ledger: &Ledger,
    ) -> anyhow::Result<()> {
        let held: Vec<Outcome> = self
            .0
            .lock()
            .map(|held| held.values().cloned().collect())
            .unwrap_or_default();
        for outcome in held {
            let key = (outcome.request_id, outcome.replay);
            let body = serde_json::to_vec(&Record::Outcome(Box::new(outcome.clone())))?;
            publish_confirmed(
                publish,
                &topology.exchange(),
                &OutMessage::json(RK_OUTCOME, body).with_id(key.0.to_string()),
            )
            .await
            .context("recording outcomes held through a broker outage")?;
            ledger.record(key.0, key.1, outcome.finished_at);
            tracing::info!(user = %outcome.user, status = %outcome.status, "recorded an outcome held through a broker outage");
            if let Ok(mut held) = self.0.lock() {
                held.remove(&key);
            }
        }
        Ok(())
    }
}
