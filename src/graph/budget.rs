//! [`Budget`]: the proactive rate budget of one process, on tokio's clock.
//!
//! Every request of the process goes `gate.wait()` → `budget.acquire(..)` → `gate.wait()` →
//! send. The budget keeps us under Graph's buckets so 429s are rare (the identity limits:
//! <https://learn.microsoft.com/en-us/graph/throttling-limits>); the
//! [`PauseGate`](super::PauseGate) holds every task when Graph does announce a Retry-After.
//!
//! The limiters are governor's, on [`TokioClock`]: their time is tokio's, so a test under
//! `tokio::time::pause()` drives them like every other timer of the process.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::adaptive::{Adaptive, FACTOR_MIN};
use super::{lock, ThrottleStats};
use crate::config::RateSettings;

/// Burst of the slowed-down limiters, in seconds of their rate.
pub const SLOWED_BURST_SECS: f64 = 0.2;

/// A governor clock reading tokio's: the time since `origin` on [`tokio::time::Instant`],
/// which follows `tokio::time::pause()` / `advance()` in tests and is the monotonic clock
/// otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock counting from now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

/// A direct (unkeyed) limiter on tokio's clock.
type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The governor quota of one bucket for one process: `count / processes` cells per `period`,
/// scaled by `factor`, with a burst of `burst_secs` worth of that rate (at least 1 cell, at
/// most the process's share of the bucket).
pub fn process_quota(
    count: u32,
    period: Duration,
    processes: u32,
    burst_secs: f64,
    factor: f64,
) -> Quota {
    let per_process =
        f64::from(count.max(1)) / f64::from(processes.max(1)) * factor.clamp(FACTOR_MIN, 1.0);
    let period_secs = period.as_secs_f64().max(1e-3);
    let interval = Duration::from_secs_f64(period_secs / per_process).max(Duration::from_nanos(1));
    let per_sec = per_process / period_secs;
    let burst = (per_sec * burst_secs.max(0.0))
        .ceil()
        .min(per_process.floor())
        .max(1.0);
    // `burst` is in [1, u32::MAX] by the clamps above, and `interval` is non-zero.
    let burst = NonZeroU32::new(burst as u32).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Limiters at `factor` × the budget, used on top of the full-budget ones while f < 1.
#[derive(Debug)]
struct Scaled {
    factor: f64,
    all: Limiter,
    writes: Limiter,
}

/// The proactive budget of one process: all requests (`rate.requests` per
/// `rate.requests_period`) and writes (`rate.writes` per `rate.writes_period`), each divided
/// by `rate.processes`, with bursts of `rate.burst_fraction` of each bucket. Share one per
/// process through `Arc`.
///
/// **Adaptive factor.** governor's quotas are fixed, so f < 1 is realised by a second pair
/// of limiters at f × the budget, built anew whenever f changes (at most a couple of times
/// per [`FACTOR_WINDOW`](super::adaptive::FACTOR_WINDOW)) and dropped when f is back at 1; a request then passes both the
/// full-budget limiters and the scaled ones. A rebuilt scaled limiter starts empty, so steps
/// of f never add a burst on top of the rate.
#[derive(Debug)]
pub struct Budget {
    all: Limiter,
    writes: Limiter,
    settings: RateSettings,
    clock: TokioClock,
    adaptive: Mutex<Adaptive>,
    factor_bits: AtomicU64,
    scaled: RwLock<Option<Arc<Scaled>>>,
    stats: Arc<ThrottleStats>,
}

impl Budget {
    /// A budget with its own stats.
    pub fn new(rate: &RateSettings) -> anyhow::Result<Budget> {
        Budget::with_stats(rate, Arc::new(ThrottleStats::default()))
    }

    /// A budget reporting its waits and factor into `stats`.
    pub fn with_stats(rate: &RateSettings, stats: Arc<ThrottleStats>) -> anyhow::Result<Budget> {
        anyhow::ensure!(rate.requests > 0, "rate.requests must be at least 1");
        anyhow::ensure!(rate.writes > 0, "rate.writes must be at least 1");
        anyhow::ensure!(rate.processes > 0, "rate.processes must be at least 1");
        anyhow::ensure!(
            !rate.requests_period.is_zero() && !rate.writes_period.is_zero(),
            "rate.requests_period and rate.writes_period must be longer than zero"
        );
        let clock = TokioClock::new();
        let (all, writes) = Self::limiters(rate, 1.0, clock);
        stats.set_factor(1.0);
        Ok(Budget {
            all,
            writes,
            settings: rate.clone(),
            clock,
            adaptive: Mutex::new(Adaptive::new(Instant::now())),
            factor_bits: AtomicU64::new(1.0f64.to_bits()),
            scaled: RwLock::new(None),
            stats,
        })
    }

    fn limiters(rate: &RateSettings, factor: f64, clock: TokioClock) -> (Limiter, Limiter) {
        // At full budget a burst is a fraction of each bucket (Graph's buckets start full);
        // once slowed down, bursts stay small so a rebuilt limiter cannot dump a bucket's
        // worth of requests into a Graph that is already pushing back.
        let burst_secs = |period: Duration| {
            if factor >= 1.0 {
                rate.burst_fraction.clamp(0.0, 1.0) * period.as_secs_f64()
            } else {
                SLOWED_BURST_SECS
            }
        };
        let all = process_quota(
            rate.requests,
            rate.requests_period,
            rate.processes,
            burst_secs(rate.requests_period),
            factor,
        );
        let writes = process_quota(
            rate.writes,
            rate.writes_period,
            rate.processes,
            burst_secs(rate.writes_period),
            factor,
        );
        (
            RateLimiter::direct_with_clock(all, clock),
            RateLimiter::direct_with_clock(writes, clock),
        )
    }

    /// The stats this budget reports into.
    pub fn stats(&self) -> &Arc<ThrottleStats> {
        &self.stats
    }

    /// The current adaptive factor f.
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor_bits.load(Relaxed))
    }

    /// Wait until one request (and one write, for DELETE/POST/PATCH) fits the budget.
    /// Returns how long it waited.
    pub async fn acquire(&self, write: bool) -> Duration {
        let start = Instant::now();
        // The tighter limiters first, so a cell of a looser one is not held while waiting.
        if write {
            self.until_slowed_ready(|s| &s.writes).await;
        }
        self.until_slowed_ready(|s| &s.all).await;
        if write {
            until_ready(&self.writes).await;
        }
        until_ready(&self.all).await;
        let waited = start.elapsed();
        self.stats.add_budget_wait(waited);
        waited
    }

    /// Wait for one cell of the slowed limiter `pick` selects, while f < 1. The current
    /// limiter is looked up again on every wake-up: a task that kept waiting on one replaced
    /// since would be let through at the old rate, next to the tasks on the new one (measured
    /// in the storm benchmark: +30 % over the factor's rate during recovery, then a 429).
    async fn until_slowed_ready(&self, pick: impl Fn(&Scaled) -> &Limiter) {
        loop {
            if self.factor() >= 1.0 {
                return;
            }
            self.update(|a| a.roll(Instant::now()));
            let Some(scaled) = self
                .scaled
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
            else {
                return;
            };
            let limiter = pick(&scaled);
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
                }
            }
        }
    }

    /// Graph's `x-ms-throttle-limit-percentage` of an answer: at or above
    /// `rate.slow_down_at_percent`, slow down (at most one step per window).
    pub fn observe_limit_percentage(&self, percent: f64) {
        if percent >= self.settings.slow_down_at_percent {
            self.update(|a| a.slow_down(Instant::now()));
        }
    }

    /// A 429 (or 503/504 with Retry-After) that paused the process until `pause_end`.
    pub fn on_throttled(&self, pause_end: Instant) {
        self.update(|a| a.throttled(Instant::now(), pause_end));
    }

    fn update(&self, step: impl FnOnce(&mut Adaptive)) {
        let factor = {
            let mut adaptive = lock(&self.adaptive);
            step(&mut adaptive);
            adaptive.factor
        };
        if factor == self.factor() {
            return;
        }
        self.factor_bits.store(factor.to_bits(), Relaxed);
        self.stats.set_factor(factor);
        let mut scaled = self
            .scaled
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if factor >= 1.0 {
            *scaled = None;
        } else if scaled.as_ref().is_none_or(|s| s.factor != factor) {
            // A new limiter starts with its burst available; rebuilt at every step of the
            // factor (up to twice a second), that burst would come on top of the rate each
            // time (+40 % at 0.2 s per 0.5 s window: measured in the storm benchmark as a 429
            // every few seconds). The tasks are already sending at the old rate, so start empty.
            let (all, writes) = Self::limiters(&self.settings, factor, self.clock);
            drain(&all);
            drain(&writes);
            *scaled = Some(Arc::new(Scaled {
                factor,
                all,
                writes,
            }));
        }
        tracing::debug!(factor, "graph budget factor changed");
    }
}

/// Take every cell `limiter` has available now (its burst, bounded by the quota).
fn drain(limiter: &Limiter) {
    while limiter.check().is_ok() {}
}

/// Wait for one cell of `limiter` on tokio's timer (governor's own `until_ready` uses
/// futures-timer; tokio's keeps every wait on one runtime, and on its clock).
async fn until_ready(limiter: &Limiter) {
    loop {
        match limiter.check() {
            Ok(()) => return,
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(
        requests: u32,
        period: u64,
        writes: u32,
        writes_period: u64,
        processes: u32,
        burst: f64,
    ) -> RateSettings {
        RateSettings {
            requests,
            requests_period: Duration::from_secs(period),
            writes,
            writes_period: Duration::from_secs(writes_period),
            processes,
            burst_fraction: burst,
            slow_down_at_percent: 80.0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokios_paused_time() {
        let clock = TokioClock::new();
        assert_eq!(clock.now(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_bursts_a_fraction_of_the_bucket_and_a_slowed_one_bursts_little() {
        let rate = RateSettings {
            writes: 3000,
            writes_period: Duration::from_secs(150),
            burst_fraction: 0.5,
            ..RateSettings::default()
        };
        let (_, writes) = Budget::limiters(&rate, 1.0, TokioClock::new());
        let burst = (0..5000).take_while(|_| writes.check().is_ok()).count();
        assert_eq!(burst, 1500);
        // Slowed to half: 10 writes/s, a burst of 0.2 s of that.
        let (_, slowed) = Budget::limiters(&rate, 0.5, TokioClock::new());
        let burst = (0..5000).take_while(|_| slowed.check().is_ok()).count();
        assert_eq!(burst, 2);
    }

    #[test]
    fn quotas_divide_the_budget_among_processes() {
        // 3,500 per 10 s over 1 process: 350/s, burst 1 s = 350 cells.
        let q = process_quota(3500, Duration::from_secs(10), 1, 1.0, 1.0);
        assert_eq!(
            q.replenish_interval(),
            Duration::from_secs_f64(10.0 / 3500.0)
        );
        assert_eq!(q.burst_size().get(), 350);
        // 3,000 writes per 150 s over 4 processes: 5/s each, burst 0.5 s = 3 cells (rounded up).
        let q = process_quota(3000, Duration::from_secs(150), 4, 0.5, 1.0);
        assert_eq!(q.replenish_interval(), Duration::from_millis(200));
        assert_eq!(q.burst_size().get(), 3);
        // At least one cell, at most the process's share of the bucket.
        assert_eq!(
            process_quota(10, Duration::from_secs(1), 1, 0.0, 1.0)
                .burst_size()
                .get(),
            1
        );
        assert_eq!(
            process_quota(10, Duration::from_secs(1), 1, 60.0, 1.0)
                .burst_size()
                .get(),
            10
        );
        // A factor scales the rate.
        let q = process_quota(200, Duration::from_secs(1), 1, 0.1, 0.5);
        assert_eq!(q.replenish_interval(), Duration::from_millis(10));
        assert_eq!(q.burst_size().get(), 10);
    }

    #[test]
    fn a_quota_allows_its_burst_then_its_rate() {
        let clock = FakeRelativeClock::default();
        let quota = process_quota(200, Duration::from_secs(1), 2, 0.1, 1.0); // 100/s, burst 10
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        let burst = (0..50).take_while(|_| limiter.check().is_ok()).count();
        assert_eq!(burst, 10);
        // Over the next second exactly 100 more pass.
        let mut passed = 0;
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(1));
            while limiter.check().is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_lets_the_burst_through_at_once_then_waits_one_interval_per_request() {
        // 10/s, a burst of half the bucket: 5 at once, then one every 100 ms.
        let budget = Budget::new(&rate(10, 1, 10, 1, 1, 0.5)).unwrap();
        for _ in 0..5 {
            assert_eq!(budget.acquire(true).await, Duration::ZERO);
        }
        let start = Instant::now();
        for _ in 0..10 {
            budget.acquire(false).await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(1010),
            "{elapsed:?}"
        );
        let waited = budget.stats().snapshot().budget_wait_secs;
        assert!((0.99..1.01).contains(&waited), "{waited}");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_builds_scaled_limiters_below_one_and_drops_them_at_one() {
        let budget = Budget::new(&rate(200, 1, 20, 1, 1, 0.1)).unwrap();
        budget.observe_limit_percentage(50.0);
        assert_eq!(budget.factor(), 1.0);
        budget.observe_limit_percentage(85.0);
        assert!((budget.factor() - 0.9).abs() < 1e-9);
        assert!(budget.scaled.read().unwrap().is_some());
        assert!((budget.stats().snapshot().factor - 0.9).abs() < 1e-9);
        budget.update(|a| a.roll(Instant::now() + Duration::from_secs(60)));
        assert_eq!(budget.factor(), 1.0);
        assert!(budget.scaled.read().unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebuilt_scaled_limiter_starts_without_a_burst() {
        // 100 per 10 s: at f = 0.9 one cell per 111 ms; paused time does not move meanwhile.
        let budget = Budget::new(&rate(100, 10, 100, 10, 1, 0.5)).unwrap();
        budget.observe_limit_percentage(85.0);
        let scaled = budget.scaled.read().unwrap().clone().unwrap();
        assert!(scaled.all.check().is_err());
        assert!(scaled.writes.check().is_err());
        // The full-budget limiters keep their burst (they bound the total, not the step).
        assert!(budget.all.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_task_follows_the_limiter_that_replaced_the_one_it_waited_on() {
        let budget = Arc::new(Budget::new(&rate(10, 1, 10, 1, 1, 0.5)).unwrap());
        budget.observe_limit_percentage(85.0); // f = 0.9: 9/s, the next cell in 111 ms
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(false).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        budget.update(|a| a.factor = 0.1); // 1/s, rebuilt empty: the next cell in 1 s
        let rebuilt = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !waiter.is_finished(),
            "let through at the replaced limiter's rate"
        );
        // Not before the new limiter's first cell either (recovery steps only slow it more:
        // each rebuild starts empty).
        waiter.await.unwrap();
        assert!(
            rebuilt.elapsed() >= Duration::from_secs(1),
            "{:?}",
            rebuilt.elapsed()
        );
    }

    #[test]
    fn budget_rejects_empty_buckets() {
        assert!(Budget::new(&rate(0, 1, 20, 1, 1, 0.1)).is_err());
        assert!(Budget::new(&rate(10, 1, 20, 1, 0, 0.1)).is_err());
    }
}
