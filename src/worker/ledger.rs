//! [`Ledger`]: which requests already have a recorded outcome, learned from the outcomes
//! stream. A redelivered request found here is acked without touching Graph again.
//!
//! Memory is bounded by `reset.max_request_age`: a request older than that expires
//! anyway, so its entry can be forgotten.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

/// Request ids (with their replay generation) that have a final outcome.
#[derive(Debug)]
pub struct Ledger {
    done: Mutex<HashMap<(Uuid, u32), DateTime<Utc>>>,
    max_age: Duration,
}

impl Ledger {
    /// An empty ledger that forgets entries older than `max_age`.
    pub fn new(max_age: std::time::Duration) -> Ledger {
        Ledger {
            done: Mutex::new(HashMap::new()),
            max_age: Duration::from_std(max_age).unwrap_or(Duration::days(1)),
        }
    }

    /// Record an outcome.
    pub fn record(&self, request_id: Uuid, replay: u32, at: DateTime<Utc>) {
        if let Ok(mut done) = self.done.lock() {
            done.insert((request_id, replay), at);
            // Prune now and then, not on every insert.
            if done.len() % 4096 == 0 {
                let cutoff = Utc::now() - self.max_age;
                done.retain(|_, t| *t >= cutoff);
            }
        }
    }

    /// Has this request (this replay of it) an outcome?
    pub fn is_done(&self, request_id: Uuid, replay: u32) -> bool {
        self.done
            .lock()
            .map(|d| d.contains_key(&(request_id, replay)))
            .unwrap_or(false)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.done.lock().map(|d| d.len()).unwrap_or(0)
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
}
