//! [`BatchView`]: one batch's manifest and outcomes, folded from the outcomes stream.
//!
//! The stream may hold more than one outcome per request (a duplicate delivery racing a
//! crash, a `dlq replay`): the view keeps one per request — the latest replay, and within
//! it the first recorded, unless a later copy removed more methods (two copies of one
//! request executed at the same time: the one that found the methods gone must not hide the
//! one that removed them) — so every requested user has exactly one final outcome.
//!
//! Only records a [`crate::records::RecordReader`] believes are folded in ([`BatchView::read`]):
//! a plan or outcome that does not verify is counted ([`BatchView::ignored`]) and left out.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::domain::{BatchManifest, Outcome, Record, Status};
use crate::records::Read;

/// What the stream says about one batch.
#[derive(Debug, Default, Clone)]
pub struct BatchView {
    batch: String,
    manifest: Option<BatchManifest>,
    outcomes: HashMap<Uuid, Outcome>,
    order: Vec<Uuid>,
    ignored: u64,
}

impl BatchView {
    /// An empty view of `batch`.
    pub fn new(batch: &str) -> BatchView {
        BatchView {
            batch: batch.to_string(),
            ..BatchView::default()
        }
    }

    /// Fold in what a reader made of one stream message: believed records are applied, the
    /// ignored ones claiming this batch counted.
    pub fn read(&mut self, read: Read) {
        match read {
            Read::Verified { record, .. } | Read::Unsealed(record) => self.apply(record),
            Read::Ignored { batch, .. } => {
                if batch.as_deref() == Some(self.batch.as_str()) {
                    self.ignored += 1;
                }
            }
        }
    }

    /// Records claiming this batch that were ignored because they do not verify.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Fold one record in (records of other batches are ignored). The caller vouches for it:
    /// see [`BatchView::read`].
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Manifest(m) if m.batch == self.batch => {
                // Enqueueing the same batch again (to finish an interrupted run) may write a
                // second manifest; the largest count is the batch's size.
                let bigger = self
                    .manifest
                    .as_ref()
                    .is_none_or(|old| m.count >= old.count);
                if bigger {
                    self.manifest = Some(m);
                }
            }
            Record::Outcome(o) if o.batch == self.batch => {
                let o = *o;
                match self.outcomes.get(&o.request_id) {
                    Some(existing)
                        if existing.replay > o.replay
                            || (existing.replay == o.replay
                                && existing.methods_removed.len() >= o.methods_removed.len()) => {}
                    Some(_) => {
                        self.outcomes.insert(o.request_id, o);
                    }
                    None => {
                        self.order.push(o.request_id);
                        self.outcomes.insert(o.request_id, o);
                    }
                }
            }
            _ => {}
        }
    }

    /// The manifest, once seen.
    pub fn manifest(&self) -> Option<&BatchManifest> {
        self.manifest.as_ref()
    }

    /// Requests expected (from the manifest).
    pub fn expected(&self) -> u64 {
        self.manifest.as_ref().map(|m| m.count).unwrap_or(0)
    }

    /// Requests with a final outcome.
    pub fn finished(&self) -> u64 {
        self.outcomes.len() as u64
    }

    /// Requests still without an outcome.
    pub fn pending(&self) -> u64 {
        self.expected().saturating_sub(self.finished())
    }

    /// True when the manifest is known and every request has an outcome.
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some() && self.pending() == 0
    }

    /// Outcomes per status.
    pub fn counts(&self) -> BTreeMap<Status, u64> {
        let mut counts = BTreeMap::new();
        for o in self.outcomes.values() {
            *counts.entry(o.status).or_insert(0) += 1;
        }
        counts
    }

    /// Outcomes in the order they were first recorded.
    pub fn outcomes(&self) -> impl Iterator<Item = &Outcome> {
        self.order.iter().filter_map(|id| self.outcomes.get(id))
    }
}
