//! What the simulator saw: request counts per endpoint and status, peak rate, the active
//! window of Graph traffic (first and last request, requests per second), 429s, violations
//! of Retry-After, ghost successes, tokens issued and injected faults.
//! Served at `GET /_sim/stats`, zeroed by `POST /_sim/stats/reset`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::throttle::lock;

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
    /// Graph requests (token requests excluded), the first of every attempt included.
    #[serde(default)]
    pub graph_requests: u64,
    /// When the first Graph request arrived, in milliseconds since start (or the last reset).
    #[serde(default)]
    pub first_graph_request_ms: Option<u64>,
    /// When the last Graph request arrived, in milliseconds since start (or the last reset).
    /// With `first_graph_request_ms`, the active window benchmarks divide by.
    #[serde(default)]
    pub last_graph_request_ms: Option<u64>,
    /// Graph requests arriving in each second counted from the first one (at most
    /// [`MAX_SECONDS_RECORDED`] entries): the steady-state rate, without start and tail.
    #[serde(default)]
    pub graph_requests_per_second: Vec<u64>,
    /// 429s from the buckets in each second counted from the first Graph request (same
    /// indexing as `graph_requests_per_second`): 429s of the opening apart from steady state.
    #[serde(default)]
    pub throttled_per_second: Vec<u64>,
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

/// Length of `graph_requests_per_second` beyond which later seconds are not recorded (a day).
pub const MAX_SECONDS_RECORDED: usize = 86_400;

#[derive(Debug)]
struct Inner {
    stats: SimStats,
    start: Instant,
    second: u64,
    in_second: u64,
    first_graph: Option<Instant>,
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
                first_graph: None,
            }),
        }
    }
}

impl StatsRecorder {
    /// Count an arriving Graph request: the total, the peak, and the active window.
    pub fn graph_arrived(&self, now: Instant) {
        self.arrived(now);
        let mut inner = lock(&self.inner);
        let first = *inner.first_graph.get_or_insert(now);
        let since_start = |t: Instant| {
            u64::try_from(t.saturating_duration_since(inner.start).as_millis()).unwrap_or(u64::MAX)
        };
        let (first_ms, now_ms) = (since_start(first), since_start(now));
        let stats = &mut inner.stats;
        stats.graph_requests += 1;
        stats.first_graph_request_ms = Some(first_ms);
        stats.last_graph_request_ms = Some(
            stats
                .last_graph_request_ms
                .map_or(now_ms, |l| l.max(now_ms)),
        );
        count_in_second(&mut stats.graph_requests_per_second, first, now);
    }

    /// Count a 429 sent by the buckets to a Graph request that arrived at `now`.
    pub fn throttled(&self, now: Instant) {
        let mut inner = lock(&self.inner);
        let first = *inner.first_graph.get_or_insert(now);
        inner.stats.throttled += 1;
        count_in_second(&mut inner.stats.throttled_per_second, first, now);
    }

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
        inner.first_graph = None;
        inner.start = Instant::now();
        inner.second = 0;
    }
}

/// Add one to the entry of the second `now` falls in, counted from `first`.
fn count_in_second(per_second: &mut Vec<u64>, first: Instant, now: Instant) {
    let second = now.saturating_duration_since(first).as_secs() as usize;
    if second < MAX_SECONDS_RECORDED {
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn graph_requests_record_the_active_window_and_each_second() {
        let stats = StatsRecorder::default();
        let t0 = lock(&stats.inner).start;
        stats.arrived(t0 + Duration::from_millis(100)); // a token request: not Graph
        stats.graph_arrived(t0 + Duration::from_millis(1_000));
        stats.graph_arrived(t0 + Duration::from_millis(1_500));
        stats.graph_arrived(t0 + Duration::from_millis(3_200));
        let s = stats.snapshot();
        assert_eq!((s.requests_total, s.graph_requests), (4, 3));
        assert_eq!(s.first_graph_request_ms, Some(1_000));
        assert_eq!(s.last_graph_request_ms, Some(3_200));
        assert_eq!(s.graph_requests_per_second, [2, 0, 1]);
        stats.throttled(t0 + Duration::from_millis(2_100));
        let s = stats.snapshot();
        assert_eq!(
            (s.throttled, s.throttled_per_second.as_slice()),
            (1, &[0, 1][..])
        );
        stats.reset();
        let s = stats.snapshot();
        assert_eq!((s.graph_requests, s.first_graph_request_ms), (0, None));
        assert!(s.graph_requests_per_second.is_empty());
    }
}
