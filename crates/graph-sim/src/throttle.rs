//! Graph's throttling, as token buckets per app+tenant: one for all requests (resource units)
//! and one for writes. Buckets are checked when a request arrives, before any simulated
//! latency; a refused request consumes nothing.
//!
//! A bucket refills continuously, or in steps of `refill_granularity` (Graph does not document
//! its refill; a 1 s or 10 s step is a stand-in for a tenant whose budget the client cannot
//! know). Retry-After is the time until a token is back, raised to a draw from
//! `[retry_after_min_secs, retry_after_max_secs]` (Graph documents Retry-After as a delay to
//! honour, not as the bucket's state: <https://learn.microsoft.com/en-us/graph/throttling>).
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
    /// Largest Retry-After drawn (uniformly, from `retry_after_min_secs`) when above the
    /// minimum; the bucket's own wait is sent when it is longer. 0 = no draw.
    pub retry_after_max_secs: u64,
    /// Buckets refill in steps of this (a step's worth of tokens at once); zero = continuously.
    pub refill_granularity: Duration,
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
            retry_after_max_secs: 0,
            refill_granularity: Duration::ZERO,
            retry_after_http_date: false,
            violation_grace: Duration::from_millis(50),
        }
    }
}

/// A token bucket, refilling continuously or in steps of `granularity`.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
    /// Zero: continuous refill. Otherwise tokens come in steps, at `origin + k × granularity`.
    granularity: Duration,
    origin: Instant,
}

impl Bucket {
    fn new(capacity: u32, period: Duration, granularity: Duration, now: Instant) -> Bucket {
        let capacity = f64::from(capacity.max(1));
        Bucket {
            capacity,
            tokens: capacity,
            per_second: capacity / period.as_secs_f64().max(0.001),
            last: now,
            granularity,
            origin: now,
        }
    }

    /// Steps completed between the bucket's origin and `t`.
    fn steps(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.origin).as_nanos() / self.granularity.as_nanos()
    }

    fn refill(&mut self, now: Instant) {
        let added = if self.granularity.is_zero() {
            now.saturating_duration_since(self.last).as_secs_f64() * self.per_second
        } else {
            let steps = self.steps(now).saturating_sub(self.steps(self.last));
            steps as f64 * self.step_tokens()
        };
        self.tokens = (self.tokens + added).min(self.capacity);
        self.last = self.last.max(now);
    }

    fn step_tokens(&self) -> f64 {
        self.per_second * self.granularity.as_secs_f64()
    }

    /// How long from `now` (the last refill) until one token is available (zero when it is now).
    fn wait(&self, now: Instant) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let missing = 1.0 - self.tokens;
        if self.granularity.is_zero() {
            return Duration::from_secs_f64(missing / self.per_second);
        }
        let steps_needed = (missing / self.step_tokens()).ceil().max(1.0) as u32;
        let next =
            self.origin + self.granularity * u32::try_from(self.steps(now) + 1).unwrap_or(u32::MAX);
        next.saturating_duration_since(now) + self.granularity * (steps_needed - 1)
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
            requests: Bucket::new(
                settings.requests_per_period,
                settings.requests_period,
                settings.refill_granularity,
                now,
            ),
            writes: Bucket::new(
                settings.writes_per_period,
                settings.writes_period,
                settings.refill_granularity,
                now,
            ),
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
        let mut wait = state.requests.wait(now);
        let mut information = "ResourceUnitLimitExceeded";
        if is_write && state.writes.wait(now) > wait {
            wait = state.writes.wait(now);
            information = "WriteLimitExceeded";
        }
        if wait > Duration::ZERO {
            let retry_after_secs =
                (wait.as_secs_f64().ceil() as u64).max(retry_after_draw(&settings));
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

/// The Retry-After floor of one 429: `retry_after_min_secs`, or a uniform draw up to
/// `retry_after_max_secs` when that is larger; at least 1 s.
fn retry_after_draw(settings: &ThrottleSettings) -> u64 {
    let min = settings.retry_after_min_secs.max(1);
    if settings.retry_after_max_secs > min {
        rand::Rng::random_range(&mut rand::rng(), min..=settings.retry_after_max_secs)
    } else {
        min
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
    fn a_granular_bucket_refills_in_whole_steps_and_says_when_the_next_one_comes() {
        // 30 per 10 s in 1 s steps: 3 tokens each second, none in between.
        let t = Throttle::new(ThrottleSettings {
            requests_per_period: 30,
            requests_period: Duration::from_secs(10),
            refill_granularity: Duration::from_secs(1),
            ..ThrottleSettings::default()
        });
        let now = Instant::now();
        for _ in 0..30 {
            assert!(matches!(
                t.admit("a", false, now),
                Admission::Allowed { .. }
            ));
        }
        // 0.9 s later nothing came back (a continuous bucket would hold 2.7 tokens).
        let at = now + Duration::from_millis(900);
        assert!(matches!(
            t.admit("a", false, at),
            Admission::Throttled {
                retry_after_secs: 1,
                ..
            }
        ));
        // At 1 s three tokens arrive at once.
        let at = now + Duration::from_millis(1_000);
        for _ in 0..3 {
            assert!(matches!(t.admit("a", false, at), Admission::Allowed { .. }));
        }
        assert!(matches!(
            t.admit("a", false, at),
            Admission::Throttled { .. }
        ));
    }

    #[test]
    fn a_step_smaller_than_a_token_waits_for_as_many_steps_as_it_takes() {
        // 1 per 10 s in 1 s steps: 0.1 token per step, 10 steps to one token.
        let mut b = Bucket::new(
            1,
            Duration::from_secs(10),
            Duration::from_secs(1),
            Instant::now(),
        );
        b.tokens = 0.0;
        let at = b.origin + Duration::from_millis(300);
        b.refill(at);
        assert_eq!(b.wait(at), Duration::from_millis(9_700));
    }

    #[test]
    fn retry_after_is_drawn_between_its_bounds_but_never_below_the_buckets_wait() {
        let settings = ThrottleSettings {
            requests_per_period: 1,
            requests_period: Duration::from_secs(1),
            retry_after_min_secs: 2,
            retry_after_max_secs: 5,
            ..ThrottleSettings::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(retry_after_draw(&settings));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [2, 3, 4, 5]);
        let t = Throttle::new(ThrottleSettings {
            requests_period: Duration::from_secs(100),
            ..settings
        });
        let now = Instant::now();
        t.admit("a", false, now);
        assert!(matches!(
            t.admit("a", false, now),
            Admission::Throttled {
                retry_after_secs: 100,
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
