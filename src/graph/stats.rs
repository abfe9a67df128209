//! [`ThrottleStats`]: the Graph client's traffic counters, kept as `prometheus-client` metrics,
//! and [`ThrottleSnapshot`], the flat view of them that logs, benchmarks and tests read.
//!
//! The metrics are registered into the worker's registry (see [`ThrottleStats::register`]), so
//! `/metrics` shows them next to the worker's own; `prometheus-client` counters share their
//! value between clones, so the registered copies and the client's copy are one counter.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use super::NoAnswer;

/// Label set `status="429"`: the answer's status, or its class (`2xx`, `4xx`, `5xx`, `other`)
/// for the statuses that are not counted one by one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// Label set `cause="timeout"` of the requests that got no answer ([`NoAnswer`]'s names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// The `status` labels, in the order of [`ThrottleStats::by_status`].
const STATUSES: [&str; 12] = [
    "200", "201", "204", "2xx", "400", "401", "403", "404", "429", "4xx", "5xx", "other",
];

/// Which entry of [`STATUSES`] counts `status`.
fn status_index(status: u16) -> usize {
    match status {
        200 => 0,
        201 => 1,
        204 => 2,
        202..=299 => 3,
        400 => 4,
        401 => 5,
        403 => 6,
        404 => 7,
        429 => 8,
        402..=499 => 9,
        500..=599 => 10,
        _ => 11,
    }
}

/// Counters of Graph traffic for `/metrics`, logs and benchmarks. Each counter is exact; a
/// snapshot is not a consistent cut across counters (good enough for metrics).
#[derive(Debug, Clone)]
pub struct ThrottleStats {
    requests: Counter,
    responses: Family<StatusLabel, Counter>,
    /// The members of `responses`, one per entry of [`STATUSES`], kept at hand so counting an
    /// answer takes no lock on the family.
    by_status: [Counter; STATUSES.len()],
    no_answer: Family<CauseLabel, Counter>,
    timeouts: Counter,
    connection_errors: Counter,
    throttled: Counter,
    retries: Counter,
    token_renewals: Counter,
    pause_seconds: Counter<f64, AtomicU64>,
    budget_wait_seconds: Counter<f64, AtomicU64>,
    in_flight: Gauge<i64, AtomicI64>,
    factor: Gauge<f64, AtomicU64>,
    writes_factor: Gauge<f64, AtomicU64>,
    workers: Gauge<i64, AtomicI64>,
}

impl Default for ThrottleStats {
    fn default() -> Self {
        let responses = Family::<StatusLabel, Counter>::default();
        // Every status exists from the start, so `/metrics` shows `…{status="429"} 0`
        // before the first 429 rather than nothing.
        let by_status =
            STATUSES.map(|status| responses.get_or_create_owned(&StatusLabel { status }));
        let no_answer = Family::<CauseLabel, Counter>::default();
        let cause = |cause: NoAnswer| {
            no_answer.get_or_create_owned(&CauseLabel {
                cause: cause.as_str(),
            })
        };
        let timeouts = cause(NoAnswer::Timeout);
        let connection_errors = cause(NoAnswer::Connection);
        let factor = Gauge::default();
        factor.set(1.0);
        let writes_factor = Gauge::default();
        writes_factor.set(1.0);
        let workers = Gauge::default();
        workers.set(1);
        Self {
            requests: Counter::default(),
            responses,
            by_status,
            no_answer,
            timeouts,
            connection_errors,
            throttled: Counter::default(),
            retries: Counter::default(),
            token_renewals: Counter::default(),
            pause_seconds: Counter::default(),
            budget_wait_seconds: Counter::default(),
            in_flight: Gauge::default(),
            factor,
            writes_factor,
            workers,
        }
    }
}

/// A point-in-time copy of [`ThrottleStats`], for logs, benchmark reports and tests
/// (`scripts/bench_report.py` reads it from the worker's "worker stopped" log line).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThrottleSnapshot {
    /// Requests sent to Graph (every attempt, token requests excluded).
    pub requests: u64,
    /// Answers by status: 200.
    pub status_200: u64,
    /// 201.
    pub status_201: u64,
    /// 204.
    pub status_204: u64,
    /// Any other 2xx.
    pub status_2xx_other: u64,
    /// 400.
    pub status_400: u64,
    /// 401.
    pub status_401: u64,
    /// 403.
    pub status_403: u64,
    /// 404.
    pub status_404: u64,
    /// 429.
    pub status_429: u64,
    /// Any other 4xx.
    pub status_4xx_other: u64,
    /// Any 5xx.
    pub status_5xx: u64,
    /// Anything else (1xx, 3xx).
    pub status_other: u64,
    /// Requests that timed out without an answer.
    pub timeouts: u64,
    /// Requests that failed to connect or lost the connection.
    pub connection_errors: u64,
    /// Throttling answers received: 429s, and 503/504 carrying Retry-After.
    pub throttled: u64,
    /// Attempts after the first (401 renewals included).
    pub retries: u64,
    /// Tokens fetched after an invalidation (401).
    pub token_renewals: u64,
    /// Wall time the process was paused by Retry-After or throttling backoff, in seconds.
    pub pause_secs: f64,
    /// Time requests spent waiting for the budget, summed over requests, in seconds.
    pub budget_wait_secs: f64,
    /// Requests on the wire right now.
    pub in_flight: i64,
    /// The factor in [0.01, 1] applied to this process's share of the all-requests limit.
    pub factor: f64,
    /// The factor applied to this process's share of the writes limit.
    pub writes_factor: f64,
    /// Worker processes the budget is divided among (live count or `rate.processes`).
    pub workers: i64,
}

impl ThrottleStats {
    /// One request is about to be sent; the guard keeps `in_flight` right even on cancellation.
    pub fn start_request(&self) -> InFlight<'_> {
        self.requests.inc();
        self.in_flight.inc();
        InFlight(self)
    }

    /// Count an HTTP answer by status.
    pub fn record_status(&self, status: u16) {
        self.by_status[status_index(status)].inc();
    }

    /// Count a request that got no answer.
    pub fn record_no_answer(&self, cause: NoAnswer) {
        match cause {
            NoAnswer::Timeout => self.timeouts.inc(),
            NoAnswer::Connection => self.connection_errors.inc(),
        };
    }

    /// Count a throttling answer.
    pub fn record_throttled(&self) {
        self.throttled.inc();
    }

    /// Count a retry.
    pub fn record_retry(&self) {
        self.retries.inc();
    }

    /// Count a token renewal after a 401.
    pub fn record_token_renewal(&self) {
        self.token_renewals.inc();
    }

    /// Add wall time by which the shared pause was extended.
    pub fn add_pause(&self, d: Duration) {
        self.pause_seconds.inc_by(d.as_secs_f64());
    }

    /// Add time one request waited for the budget.
    pub fn add_budget_wait(&self, d: Duration) {
        self.budget_wait_seconds.inc_by(d.as_secs_f64());
    }

    pub(super) fn set_factors(&self, requests: f64, writes: f64) {
        self.factor.set(requests);
        self.writes_factor.set(writes);
    }

    pub(super) fn set_workers(&self, n: u32) {
        self.workers.set(i64::from(n));
    }

    /// Copy every counter.
    pub fn snapshot(&self) -> ThrottleSnapshot {
        // In the order of STATUSES.
        let [status_200, status_201, status_204, status_2xx_other, status_400, status_401, status_403, status_404, status_429, status_4xx_other, status_5xx, status_other] =
            self.by_status.each_ref().map(Counter::get);
        ThrottleSnapshot {
            requests: self.requests.get(),
            status_200,
            status_201,
            status_204,
            status_2xx_other,
            status_400,
            status_401,
            status_403,
            status_404,
            status_429,
            status_4xx_other,
            status_5xx,
            status_other,
            timeouts: self.timeouts.get(),
            connection_errors: self.connection_errors.get(),
            throttled: self.throttled.get(),
            retries: self.retries.get(),
            token_renewals: self.token_renewals.get(),
            pause_secs: self.pause_seconds.get(),
            budget_wait_secs: self.budget_wait_seconds.get(),
            in_flight: self.in_flight.get(),
            factor: self.factor.get(),
            writes_factor: self.writes_factor.get(),
            workers: self.workers.get(),
        }
    }

    /// Register every metric into `registry`, named `mfa_reset_graph_*` (README's metrics
    /// paragraph lists them). Counters get OpenMetrics' `_total` suffix, seconds `_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        let graph = registry.sub_registry_with_prefix("mfa_reset_graph");
        graph.register(
            "requests",
            "Requests sent to Graph (every attempt, token requests excluded)",
            self.requests.clone(),
        );
        graph.register(
            "responses",
            "Graph answers by status (2xx, 4xx and 5xx: the statuses not counted one by one)",
            self.responses.clone(),
        );
        graph.register(
            "no_answer",
            "Requests that got no answer, by cause (timeout, connection)",
            self.no_answer.clone(),
        );
        graph.register(
            "throttled",
            "Throttling answers: 429s, and 503/504 carrying Retry-After",
            self.throttled.clone(),
        );
        graph.register(
            "retries",
            "Attempts after the first (token renewals included)",
            self.retries.clone(),
        );
        graph.register(
            "token_renewals",
            "Tokens fetched again after Graph refused one (401)",
            self.token_renewals.clone(),
        );
        graph.register_with_unit(
            "pause",
            "Time the whole process was paused by Retry-After or throttling backoff",
            Unit::Seconds,
            self.pause_seconds.clone(),
        );
        graph.register_with_unit(
            "budget_wait",
            "Time requests waited for the rate budget, summed over requests",
            Unit::Seconds,
            self.budget_wait_seconds.clone(),
        );
        graph.register(
            "in_flight",
            "Graph requests on the wire",
            self.in_flight.clone(),
        );
        graph.register(
            "budget_factor",
            "Factor (0.01 to 1) applied to this process's share of the all-requests limit",
            self.factor.clone(),
        );
        graph.register(
            "budget_writes_factor",
            "Factor (0.01 to 1) applied to this process's share of the writes limit",
            self.writes_factor.clone(),
        );
        graph.register(
            "budget_workers",
            "Worker processes the budget is divided among",
            self.workers.clone(),
        );
    }
}

/// Decrements `in_flight` when the request ends (or its future is dropped).
#[derive(Debug)]
pub struct InFlight<'a>(&'a ThrottleStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_statuses_and_in_flight() {
        let stats = ThrottleStats::default();
        {
            let _guard = stats.start_request();
            assert_eq!(stats.snapshot().in_flight, 1);
            stats.record_status(204);
        }
        stats.record_status(429);
        stats.record_status(503);
        stats.record_no_answer(NoAnswer::Timeout);
        let s = stats.snapshot();
        assert_eq!(
            (
                s.requests,
                s.in_flight,
                s.status_204,
                s.status_429,
                s.status_5xx,
                s.timeouts
            ),
            (1, 0, 1, 1, 1, 1)
        );
        assert_eq!(s.factor, 1.0);
        assert!(serde_json::to_string(&s)
            .unwrap()
            .contains("\"status_429\":1"));
    }

    #[test]
    fn every_status_lands_in_its_own_bucket() {
        let stats = ThrottleStats::default();
        for status in [200, 201, 204, 202, 400, 401, 403, 404, 429, 409, 500, 302] {
            stats.record_status(status);
        }
        stats.record_no_answer(NoAnswer::Connection);
        let s = stats.snapshot();
        let buckets = [
            s.status_200,
            s.status_201,
            s.status_204,
            s.status_2xx_other,
            s.status_400,
            s.status_401,
            s.status_403,
            s.status_404,
            s.status_429,
            s.status_4xx_other,
            s.status_5xx,
            s.status_other,
        ];
        assert_eq!(buckets, [1; 12]);
        assert_eq!((s.timeouts, s.connection_errors), (0, 1));
    }

    #[test]
    fn the_registered_metrics_are_the_counted_ones() {
        let stats = ThrottleStats::default();
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let _guard = stats.start_request();
        stats.record_status(200);
        stats.record_throttled();
        stats.record_retry();
        stats.add_pause(Duration::from_millis(1500));
        stats.record_no_answer(NoAnswer::Timeout);
        stats.set_factors(0.5, 0.25);
        stats.set_workers(3);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();

        for line in [
            "mfa_reset_graph_requests_total 1",
            "mfa_reset_graph_responses_total{status=\"200\"} 1",
            "mfa_reset_graph_responses_total{status=\"429\"} 0",
            "mfa_reset_graph_no_answer_total{cause=\"timeout\"} 1",
            "mfa_reset_graph_no_answer_total{cause=\"connection\"} 0",
            "mfa_reset_graph_throttled_total 1",
            "mfa_reset_graph_retries_total 1",
            "mfa_reset_graph_token_renewals_total 0",
            "mfa_reset_graph_pause_seconds_total 1.5",
            "mfa_reset_graph_budget_wait_seconds_total 0.0",
            "mfa_reset_graph_in_flight 1",
            "mfa_reset_graph_budget_factor 0.5",
            "mfa_reset_graph_budget_writes_factor 0.25",
            "mfa_reset_graph_budget_workers 3",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
