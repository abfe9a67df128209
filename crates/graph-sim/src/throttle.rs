//! Graph's throttling, as token buckets per app+tenant: one for all requests (resource units)
//! and one for writes. Buckets are checked when a request arrives, before any simulated
//! latency; a refused request consumes nothing.
//!
//! Also the referee of client behaviour: every 429 opens a window that lasts until its
//! Retry-After has elapsed; a request arriving inside a window (after a short grace for
//! requests already on the wire) is a *violation*, what the benchmarks report as
//! "Graph saw us ignore a Retry-After".

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bucket sizes and the Retry-After policy.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// When false, no request is refused (violations of other 429s are still counted).
    pub enabled: bool,
    /// Resource units per period (Graph identity limit for a small tenant: 3,500 per 10 s).
    pub requests_per_period: u32,
    /// Period of the request bucket.
    pub requests_period: Duration,
    /// Writes per period (Graph: 3,000 per 150 s).
    pub writes_per_period: u32,
    /// Period of the write bucket.
    pub writes_period: Duration,
    /// Smallest Retry-After sent, in seconds (at least 1 in any case).
    pub retry_after_min_secs: u64,
    /// Send Retry-After as an HTTP date instead of seconds.
    pub retry_after_http_date: bool,
    /// Requests arriving this soon after a 429 was sent are not violations (already on the wire).
    pub violation_grace: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_period: 3_500,
            requests_period: Duration::from_secs(10),
            writes_per_period: 3_000,
            writes_period: Duration::from_secs(150),
            retry_after_min_secs: 1,
            retry_after_http_date: false,
            violation_grace: Duration::from_millis(50),
        }
    }
}

/// A continuously refilling token bucket.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: u32, period: Duration, now: Instant) -> Bucket {
        let capacity = f64::from(capacity.max(1));
        Bucket {
            capacity,
            tokens: capacity,
            per_second: capacity / period.as_secs_f64().max(0.001),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// How long until one token is available (zero when it is now).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }

    fn used_percent(&self) -> f64 {
        (self.capacity - self.tokens) / self.capacity * 100.0
    }
}

#[derive(Debug)]
struct AppState {
    requests: Bucket,
    writes: Bucket,
    /// 429s sent less than the grace ago: (window opens, window closes).
    pending: VecDeque<(Instant, Instant)>,
    /// Latest end of every open window.
    blocked_until: Option<Instant>,
}

impl AppState {
    /// Promote windows whose grace has passed and tell whether `now` lies inside one.
    fn is_violation(&mut self, now: Instant) -> bool {
        while let Some(&(opens, closes)) = self.pending.front() {
            if opens > now {
                break;
            }
            self.pending.pop_front();
            self.blocked_until = Some(self.blocked_until.map_or(closes, |b| b.max(closes)));
        }
        self.blocked_until.is_some_and(|until| now < until)
    }
}

/// What to do with an arriving request.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Serve it.
    Allowed {
        /// `x-ms-throttle-limit-percentage`, when usage has reached 80 %.
        limit_percentage: Option<u32>,
        /// It arrived while a Retry-After was running.
        violation: bool,
    },
    /// Answer 429 now.
    Throttled {
        /// Whole seconds to send in Retry-After.
        retry_after_secs: u64,
        /// `x-ms-throttle-information`.
        information: &'static str,
        /// It arrived while a Retry-After was running.
        violation: bool,
    },
}

/// The buckets of every app+tenant seen.
#[derive(Debug)]
pub struct Throttle {
    settings: Mutex<ThrottleSettings>,
    apps: Mutex<HashMap<String, AppState>>,
}

impl Throttle {
    /// Full buckets for everyone.
    pub fn new(settings: ThrottleSettings) -> Throttle {
        Throttle {
            settings: Mutex::new(settings),
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> ThrottleSettings {
        lock(&self.settings).clone()
    }

    /// Replace the settings; buckets start full again.
    pub fn set_settings(&self, settings: ThrottleSettings) {
        *lock(&self.settings) = settings;
        lock(&self.apps).clear();
    }

    /// Admit (and charge) or refuse a request of `app` (tenant/client) arriving at `now`.
    pub fn admit(&self, app: &str, is_write: bool, now: Instant) -> Admission {
        let settings = self.settings();
        let mut apps = lock(&self.apps);
        let state = apps.entry(app.to_string()).or_insert_with(|| AppState {
            requests: Bucket::new(settings.requests_per_period, settings.requests_period, now),
            writes: Bucket::new(settings.writes_per_period, settings.writes_period, now),
            pending: VecDeque::new(),
            blocked_until: None,
        });
        let violation = state.is_violation(now);
        if !settings.enabled {
            return Admission::Allowed {
                limit_percentage: None,
                violation,
            };
        }
        state.requests.refill(now);
        state.writes.refill(now);
        let mut wait = state.requests.wait();
        let mut information = "ResourceUnitLimitExceeded";
        if is_write && state.writes.wait() > wait {
            wait = state.writes.wait();
            information = "WriteLimitExceeded";
        }
        if wait > Duration::ZERO {
            let retry_after_secs = (wait.as_secs_f64().ceil() as u64)
                .max(settings.retry_after_min_secs)
                .max(1);
            open_window(state, &settings, now, retry_after_secs);
            return Admission::Throttled {
                retry_after_secs,
                information,
                violation,
            };
        }
        state.requests.tokens -= 1.0;
        let mut used = state.requests.used_percent();
        if is_write {
            state.writes.tokens -= 1.0;
            used = used.max(state.writes.used_percent());
        }
        // Rounded: refill between two requests must not hide a bucket at 80 % behind 79.99.
        let used = used.round();
        Admission::Allowed {
            limit_percentage: (used >= 80.0).then_some(used as u32),
            violation,
        }
    }

    /// Record a 429 sent for another reason (a ghost success) so that it opens a window too.
    pub fn record_429(&self, app: &str, now: Instant, retry_after_secs: u64) {
        let settings = self.settings();
        let mut apps = lock(&self.apps);
        if let Some(state) = apps.get_mut(app) {
            open_window(state, &settings, now, retry_after_secs);
        }
    }
}

fn open_window(state: &mut AppState, settings: &ThrottleSettings, now: Instant, secs: u64) {
    state.pending.push_back((
        now + settings.violation_grace,
        now + Duration::from_secs(secs),
    ));
}

/// Lock, recovering from a poisoned mutex: the simulator's state stays usable after a
/// panicking handler (which only tests could cause).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(requests: u32, writes: u32) -> ThrottleSettings {
        ThrottleSettings {
            requests_per_period: requests,
            requests_period: Duration::from_secs(10),
            writes_per_period: writes,
            writes_period: Duration::from_secs(100),
            ..ThrottleSettings::default()
        }
    }

    #[test]
    fn an_empty_bucket_refuses_with_the_ceiled_wait_and_a_refusal_costs_nothing() {
        let t = Throttle::new(small(2, 100));
        let now = Instant::now();
        assert!(matches!(
            t.admit("a", false, now),
            Admission::Allowed { .. }
        ));
        assert!(matches!(
            t.admit("a", false, now),
            Admission::Allowed { .. }
        ));
        // One token refills in 5 s; the window of that 429 closes at 5.1 s.
        let refused = t.admit("a", false, now + Duration::from_millis(100));
        assert!(matches!(
            refused,
            Admission::Throttled {
                retry_after_secs: 5,
                ..
            }
        ));
        assert!(matches!(
            t.admit("a", false, now + Duration::from_millis(5_200)),
            Admission::Allowed {
                violation: false,
                ..
            }
        ));
    }

    #[test]
    fn writes_have_their_own_bucket() {
        let t = Throttle::new(small(100, 1));
        let now = Instant::now();
        assert!(matches!(t.admit("a", true, now), Admission::Allowed { .. }));
        let refused = t.admit("a", true, now);
        assert!(matches!(
            refused,
            Admission::Throttled {
                information: "WriteLimitExceeded",
                retry_after_secs: 100,
                ..
            }
        ));
        assert!(matches!(
            t.admit("a", false, now),
            Admission::Allowed { .. }
        ));
    }

    #[test]
    fn requests_inside_a_retry_after_are_violations_after_the_grace() {
        let t = Throttle::new(small(1, 100));
        let now = Instant::now();
        t.admit("a", false, now);
        assert!(matches!(
            t.admit("a", false, now),
            Admission::Throttled {
                violation: false,
                ..
            }
        ));
        let on_the_wire = t.admit("a", false, now + Duration::from_millis(10));
        assert!(matches!(
            on_the_wire,
            Admission::Throttled {
                violation: false,
                ..
            }
        ));
        let ignored = t.admit("a", false, now + Duration::from_millis(500));
        assert!(matches!(
            ignored,
            Admission::Throttled {
                violation: true,
                ..
            }
        ));
    }

    #[test]
    fn usage_from_eighty_percent_is_reported() {
        let t = Throttle::new(small(10, 100));
        let now = Instant::now();
        for _ in 0..7 {
            assert!(matches!(
                t.admit("a", false, now),
                Admission::Allowed {
                    limit_percentage: None,
                    ..
                }
            ));
        }
        assert_eq!(
            t.admit("a", false, now),
            Admission::Allowed {
                limit_percentage: Some(80),
                violation: false
            }
        );
    }
}
