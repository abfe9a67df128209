//! [`Ledger`]: which requests already have a recorded outcome, learned from the outcomes
//! stream. A redelivered request found here is acked without touching Graph again.
//!
//! Memory is bounded by design, whatever the stream holds:
//! - outcomes: at most `worker.ledger_capacity` request ids (default 1,800,000), kept in
//!   [`GENERATIONS`] hash sets of a fixed share each, oldest generation forgotten first, and a
//!   generation forgotten whole once everything in it is older than `reset.max_request_age`
//!   (such a request expires anyway). A set never outgrows its share, so it never rehashes
//!   into a table twice the size: the default takes 8 × 2^18 slots of 21 bytes (≈ 48 MB
//!   measured), whether 10 or 10 million outcomes went by (BENCHMARKS.md, "Memory").
//! - plans: at most [`PLAN_CAPACITY`] requests with a plan and no outcome yet (in flight or
//!   interrupted, across all workers).
//!
//! A redelivered request whose entry was forgotten is executed again: it lists the user's
//! methods, finds the ones already deleted gone, and records a second outcome that the batch
//! view does not prefer over the first (see `batch`). The limit trades that rare extra Graph
//! read for bounded memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::domain::MethodRecord;

/// A request (one replay of it).
pub type Key = (Uuid, u32);

/// Plans kept at most (a plan lives only until its outcome arrives: requests in flight on
/// every worker, and interrupted ones). A plan of three methods takes about 1 KB.
const PLAN_CAPACITY: usize = 5_000;

/// The outcomes are kept in this many generations: forgetting the oldest frees an eighth.
pub const GENERATIONS: usize = 8;

/// One generation of outcomes.
#[derive(Debug)]
struct Generation {
    ids: HashSet<Key>,
    /// The oldest and newest outcome time in it.
    oldest: DateTime<Utc>,
    newest: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Entries {
    /// What an attempt was about to delete, for requests without an outcome yet.
    plans: HashMap<Key, Vec<MethodRecord>>,
    /// Oldest first; the last one takes new outcomes.
    generations: VecDeque<Generation>,
}

impl Entries {
    fn is_done(&self, key: &Key) -> bool {
        self.generations.iter().any(|g| g.ids.contains(key))
    }

    fn len(&self) -> usize {
        self.generations.iter().map(|g| g.ids.len()).sum()
    }
}

/// Request ids (with their replay generation) that have a final outcome.
#[derive(Debug)]
pub struct Ledger {
    entries: Mutex<Entries>,
    max_age: Duration,
    /// Outcomes one generation holds at most.
    share: usize,
}

/// Default entry limit (`worker.ledger_capacity`): 8 shares of 225,000, each just under
/// 7/8 of 2^18 slots (the load at which a hash set grows).
pub const DEFAULT_CAPACITY: usize = 1_800_000;

impl Ledger {
    /// An empty ledger that forgets entries older than `max_age`, holding at most
    /// [`DEFAULT_CAPACITY`] entries.
    pub fn new(max_age: std::time::Duration) -> Ledger {
        Ledger::with_capacity(max_age, DEFAULT_CAPACITY)
    }

    /// An empty ledger holding at most `capacity` entries (at least [`GENERATIONS`]).
    pub fn with_capacity(max_age: std::time::Duration, capacity: usize) -> Ledger {
        Ledger {
            entries: Mutex::new(Entries::default()),
            max_age: Duration::from_std(max_age).unwrap_or(Duration::days(1)),
            share: capacity.div_ceil(GENERATIONS).max(1),
        }
    }

    /// Record an outcome.
    pub fn record(&self, request_id: Uuid, replay: u32, at: DateTime<Utc>) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        let key = (request_id, replay);
        e.plans.remove(&key);
        if e.is_done(&key) {
            return;
        }
        // A new generation when the last is full, or spans more than its share of max_age.
        let span = self.max_age / GENERATIONS as i32;
        let fresh = match e.generations.back() {
            None => true,
            Some(last) => last.ids.len() >= self.share || at - last.oldest > span,
        };
        if fresh {
            e.generations.push_back(Generation {
                ids: HashSet::new(),
                oldest: at,
                newest: at,
            });
            while e.generations.len() > GENERATIONS {
                e.generations.pop_front();
            }
        }
        if let Some(last) = e.generations.back_mut() {
            last.ids.insert(key);
            last.oldest = last.oldest.min(at);
            last.newest = last.newest.max(at);
        }
        // Forget generations whose newest outcome is past max_age (never the last one).
        let cutoff = Utc::now() - self.max_age;
        while e.generations.len() > 1 && e.generations.front().is_some_and(|g| g.newest < cutoff) {
            e.generations.pop_front();
        }
    }

    /// Remember what an attempt of a request without an outcome was about to delete.
    pub fn record_plan(&self, request_id: Uuid, replay: u32, methods: Vec<MethodRecord>) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        let key = (request_id, replay);
        if e.is_done(&key) {
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
            .map(|e| e.is_done(&(request_id, replay)))
            .unwrap_or(false)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
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
        // Forgetting a generation frees an eighth: between 7/8 of the capacity and all of it.
        assert!((875..=1000).contains(&ledger.len()), "{}", ledger.len());
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
