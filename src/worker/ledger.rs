//! [`Ledger`]: which requests already have a recorded outcome, learned from the outcomes
//! stream. A redelivered request found here is acked without touching Graph again.
//!
//! Memory is bounded twice: by `reset.max_request_age` (a request older than that expires
//! anyway, so its entry can be forgotten) and by a hard entry limit, oldest first
//! (`worker.ledger_capacity`, default 2,000,000 entries ≈ 100 MB). A redelivered request whose
//! entry was evicted is executed again: it lists the user's methods, finds the ones already
//! deleted gone, and records a second outcome that the batch view does not prefer over the
//! first (see `batch`). The limit trades that rare extra Graph read for bounded memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::domain::MethodRecord;

/// A request (one replay of it).
pub type Key = (Uuid, u32);

/// Plans kept at most (a plan lives only until its outcome arrives: in-flight and
/// interrupted requests).
const PLAN_CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
struct Entries {
    /// What an attempt was about to delete, for requests without an outcome yet.
    plans: HashMap<Key, Vec<MethodRecord>>,
    done: HashMap<Key, DateTime<Utc>>,
    /// Insertion order, for evicting the oldest first when the limit is reached.
    order: VecDeque<Key>,
}

/// Request ids (with their replay generation) that have a final outcome.
#[derive(Debug)]
pub struct Ledger {
    entries: Mutex<Entries>,
    max_age: Duration,
    capacity: usize,
}

/// Default entry limit (`worker.ledger_capacity`).
pub const DEFAULT_CAPACITY: usize = 2_000_000;

impl Ledger {
    /// An empty ledger that forgets entries older than `max_age`, holding at most
    /// [`DEFAULT_CAPACITY`] entries.
    pub fn new(max_age: std::time::Duration) -> Ledger {
        Ledger::with_capacity(max_age, DEFAULT_CAPACITY)
    }

    /// An empty ledger holding at most `capacity` entries (at least 1).
    pub fn with_capacity(max_age: std::time::Duration, capacity: usize) -> Ledger {
        Ledger {
            entries: Mutex::new(Entries::default()),
            max_age: Duration::from_std(max_age).unwrap_or(Duration::days(1)),
            capacity: capacity.max(1),
        }
    }

    /// Record an outcome.
    pub fn record(&self, request_id: Uuid, replay: u32, at: DateTime<Utc>) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        let key = (request_id, replay);
        e.plans.remove(&key);
        if e.done.insert(key, at).is_none() {
            e.order.push_back(key);
        }
        // Drop what is older than max_age from the front, now and then, not on every insert.
        if e.order.len() % 4096 == 0 {
            let cutoff = Utc::now() - self.max_age;
            e.done.retain(|_, t| *t >= cutoff);
            let Entries { done, order, .. } = &mut *e;
            order.retain(|k| done.contains_key(k));
        }
        while e.order.len() > self.capacity {
            if let Some(oldest) = e.order.pop_front() {
                e.done.remove(&oldest);
            }
        }
    }

    /// Remember what an attempt of a request without an outcome was about to delete.
    pub fn record_plan(&self, request_id: Uuid, replay: u32, methods: Vec<MethodRecord>) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        let key = (request_id, replay);
        if e.done.contains_key(&key) {
            return;
        }
        if e.plans.len() >= PLAN_CAPACITY && !e.plans.contains_key(&key) {
            // Far more interrupted requests than any batch: forget one rather than grow.
            if let Some(any) = e.plans.keys().next().copied() {
                e.plans.remove(&any);
            }
        }
        e.plans.entry(key).or_default().extend(methods);
    }

    /// What earlier attempts of this request were about to delete (if they left no outcome).
    pub fn plan(&self, request_id: Uuid, replay: u32) -> Vec<MethodRecord> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.plans.get(&(request_id, replay)).cloned())
            .unwrap_or_default()
    }

    /// Has this request (this replay of it) an outcome?
    pub fn is_done(&self, request_id: Uuid, replay: u32) -> bool {
        self.entries
            .lock()
            .map(|e| e.done.contains_key(&(request_id, replay)))
            .unwrap_or(false)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.done.len()).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_distinct_from_the_original() {
        let ledger = Ledger::new(std::time::Duration::from_secs(3600));
        let id = Uuid::new_v4();
        ledger.record(id, 0, Utc::now());
        assert!(ledger.is_done(id, 0));
        assert!(!ledger.is_done(id, 1));
    }

    #[test]
    fn the_ledger_never_holds_more_than_its_capacity_and_forgets_the_oldest() {
        let ledger = Ledger::with_capacity(std::time::Duration::from_secs(3600), 1000);
        let ids: Vec<Uuid> = (0..5000).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            ledger.record(*id, 0, Utc::now());
            ledger.record(*id, 0, Utc::now()); // a duplicate record takes no extra room
        }
        assert_eq!(ledger.len(), 1000);
        assert!(!ledger.is_done(ids[0], 0));
        assert!(ledger.is_done(ids[4999], 0));
    }

    #[test]
    fn entries_older_than_the_max_age_are_pruned() {
        let ledger = Ledger::new(std::time::Duration::from_secs(60));
        let old = Utc::now() - Duration::hours(2);
        for _ in 0..4095 {
            ledger.record(Uuid::new_v4(), 0, old);
        }
        ledger.record(Uuid::new_v4(), 0, Utc::now());
        assert_eq!(ledger.len(), 1);
    }
}
