//! What the simulator saw: request counts per endpoint and status, peak rate, 429s,
//! violations of Retry-After, ghost successes, tokens issued and injected faults.
//! Served at `GET /_sim/stats`, zeroed by `POST /_sim/stats/reset`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::throttle::lock;

/// Counters since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every Graph and token request (inspection endpoints under `/_sim` excluded).
    pub requests_total: u64,
    /// Per endpoint (`DELETE /v1.0/users/{user}/authentication/phoneMethods/{id}`), per status
    /// (`"204"`, or `"dropped"` for a closed connection).
    pub requests_by_endpoint: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per status over all endpoints.
    pub requests_by_status: BTreeMap<String, u64>,
    /// DELETE/POST/PATCH requests to Graph that were admitted by the throttle.
    pub writes: u64,
    /// Most requests that arrived within one wall-clock second since start.
    pub peak_requests_per_second: u64,
    /// 429 answers sent by the throttle (ghost 429s are counted in `ghost_successes`).
    pub throttled: u64,
    /// Requests that arrived while a Retry-After sent earlier had not yet elapsed.
    pub violations: u64,
    /// DELETEs applied but answered 429/503.
    pub ghost_successes: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Requests failed on purpose (server errors, drops, outage).
    pub faults_injected: u64,
    /// Connections closed without an answer.
    pub dropped_connections: u64,
    /// Methods deleted (204 and ghosts).
    pub methods_deleted: u64,
    /// `revokeSignInSessions` calls answered 200.
    pub sessions_revoked: u64,
}

#[derive(Debug)]
struct Inner {
    stats: SimStats,
    start: Instant,
    second: u64,
    in_second: u64,
}

/// The shared, locked counters.
#[derive(Debug)]
pub struct StatsRecorder {
    inner: Mutex<Inner>,
}

impl Default for StatsRecorder {
    fn default() -> Self {
        StatsRecorder {
            inner: Mutex::new(Inner {
                stats: SimStats::default(),
                start: Instant::now(),
                second: 0,
                in_second: 0,
            }),
        }
    }
}

impl StatsRecorder {
    /// Count an arriving request for the total and the per-second peak.
    pub fn arrived(&self, now: Instant) {
        let mut inner = lock(&self.inner);
        let second = now.saturating_duration_since(inner.start).as_secs();
        if second != inner.second {
            inner.second = second;
            inner.in_second = 0;
        }
        inner.in_second += 1;
        inner.stats.requests_total += 1;
        inner.stats.peak_requests_per_second =
            inner.stats.peak_requests_per_second.max(inner.in_second);
    }

    /// Count the answer given to a request.
    pub fn answered(&self, endpoint: &str, status: &str) {
        let mut inner = lock(&self.inner);
        *inner
            .stats
            .requests_by_endpoint
            .entry(endpoint.to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
        *inner
            .stats
            .requests_by_status
            .entry(status.to_string())
            .or_default() += 1;
    }

    /// Change counters in place.
    pub fn update(&self, f: impl FnOnce(&mut SimStats)) {
        f(&mut lock(&self.inner).stats);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> SimStats {
        lock(&self.inner).stats.clone()
    }

    /// Zero every counter.
    pub fn reset(&self) {
        let mut inner = lock(&self.inner);
        inner.stats = SimStats::default();
        inner.in_second = 0;
    }
}
