//! [`Budget`]: the proactive rate budget of one process, on tokio's clock.
//!
//! Every request of the process goes `budget.acquire(write, gate)` (which waits out the pause
//! before and after taking its cells) → send. The budget keeps us under Graph's buckets so 429s are rare (the identity limits:
//! <https://learn.microsoft.com/en-us/graph/throttling-limits>); the
//! [`PauseGate`](super::PauseGate) holds every task when Graph does announce a Retry-After.
//!
//! The limiters are governor's, on [`TokioClock`]: their time is tokio's, so a test under
//! `tokio::time::pause()` drives them like every other timer of the process.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::adaptive::{Law, CENSUS_SETTLE, FACTOR_MIN, FACTOR_WINDOW};
use super::{lock, PauseGate, ThrottleStats};
use crate::config::RateSettings;

/// A budget nobody asked a cell of for this long is idle: the other workers of the fleet
/// need not leave it a share (see [`Budget::idle`]).
pub const IDLE_AFTER: Duration = Duration::from_secs(2);

/// A factor that grew by less than this fraction keeps the limiters in force: a rebuilt
/// limiter starts empty, and rebuilt at every step of a slow probe (twice a second) that
/// costs up to one interval each time (≈ 3 % of the rate at 30/s), so the rate sent is below
/// the one the law believes in and the rate it remembers as throttled is too high.
pub const REBUILD_ABOVE: f64 = 0.01;

/// Burst of the limiters once throttled, in seconds of their rate (at least
/// [`SLOWED_BURST_CELLS`]): a small bucket refilled in steps has no room for bunched requests.
pub const SLOWED_BURST_SECS: f64 = 0.05;
/// Fewest cells of burst once throttled: with one, every request taken late (a timer's
/// millisecond, a busy runtime) delays all later ones, and a worker sending ten a second
/// loses a few percent of its rate so; a second cell lets the next request catch up.
pub const SLOWED_BURST_CELLS: u32 = 2;

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

/// Which of Graph's limits a throttling hit: all requests (resource units) or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    /// The all-requests bucket (`rate.requests`).
    Requests,
    /// The writes bucket (`rate.writes`).
    Writes,
}

/// What one limit's law learned, as other workers are told it (heartbeats).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    /// The factor in force.
    pub factor: f64,
    /// The served rate at the last throttling, as a factor; `None` = never throttled.
    pub throttled_at: Option<f64>,
}

/// The limiters in force and what they were built from.
#[derive(Debug)]
struct Limiters {
    key: Key,
    all: Limiter,
    writes: Limiter,
    /// The bursts of `all` and `writes`.
    all_burst: u32,
    writes_burst: u32,
}

/// What the limiters depend on: rebuilt when it changes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key {
    processes: u32,
    requests: f64,
    writes: f64,
    /// Bursts of a fraction of the bucket (never throttled) or small ones.
    full_burst: bool,
}

/// The laws and the share, under one lock.
#[derive(Debug)]
struct State {
    requests: Law,
    writes: Law,
    processes: u32,
    /// When the running pause ends: the first request after it takes the limiter as it is
    /// then, emptied (a pause must not bank a burst for the tasks it held).
    drain_at: Option<Instant>,
    /// When the live count last changed.
    census_at: Option<Instant>,
    /// Tasks inside [`Budget::acquire`] now.
    acquiring: u32,
    /// When a task last left [`Budget::acquire`] (at first: [`IDLE_AFTER`] before the budget
    /// was made).
    last_acquired: Instant,
}

impl Key {
    /// The limiters built for `self` serve `next` too: the same share and burst, each
    /// factor at or above the one in force by less than [`REBUILD_ABOVE`].
    fn serves(&self, next: &Key) -> bool {
        let close = |now: f64, next: f64| next >= now && next < now * (1.0 + REBUILD_ABOVE);
        self.processes == next.processes
            && self.full_burst == next.full_burst
            && close(self.requests, next.requests)
            && close(self.writes, next.writes)
    }
}

impl State {
    fn key(&self) -> Key {
        Key {
            processes: self.processes,
            requests: self.requests.factor,
            writes: self.writes.factor,
            full_burst: self.requests.factor >= 1.0
                && self.writes.factor >= 1.0
                && self.requests.throttled_at.is_none()
                && self.writes.throttled_at.is_none(),
        }
    }

    fn law(&mut self, limit: Limit) -> &mut Law {
        match limit {
            Limit::Requests => &mut self.requests,
            Limit::Writes => &mut self.writes,
        }
    }
}

/// The proactive budget of one process: all requests (`rate.requests` per
/// `rate.requests_period`) and writes (`rate.writes` per `rate.writes_period`), each divided
/// among the live workers (`rate.processes`, or the count the fleet reports) and scaled by its
/// [`Law`](super::adaptive)'s factor. Share one per process through `Arc`.
///
/// **Limiters.** governor's quotas are fixed, so the pair of limiters is rebuilt whenever the
/// share or a factor changes (at most once per [`FACTOR_WINDOW`](super::adaptive::FACTOR_WINDOW)
/// and per episode). A rebuilt limiter starts empty: steps never add a burst on top of the
/// rate, and waiting tasks look the current pair up on every wake-up. Never throttled, a burst
/// is `rate.burst_fraction` of each bucket (Graph's buckets start full); once throttled, it
/// is [`SLOWED_BURST_SECS`] of the rate, at least [`SLOWED_BURST_CELLS`].
///
/// **Pauses.** [`Budget::acquire`] waits out the [`PauseGate`] before and after taking a cell,
/// so no task holds a cell through a pause; after a pause, the limiter starts empty and the
/// tasks it held leave at the rate, one after the other.
#[derive(Debug)]
pub struct Budget {
    settings: RateSettings,
    clock: TokioClock,
    state: Mutex<State>,
    limiters: RwLock<Arc<Limiters>>,
    stats: Arc<ThrottleStats>,
    /// Signalled when a task asks for a cell after [`IDLE_AFTER`] without any.
    woke: Notify,
}

impl Budget {
    /// A budget with its own stats.
    pub fn new(rate: &RateSettings) -> anyhow::Result<Budget> {
        Budget::with_stats(rate, Arc::new(ThrottleStats::default()))
    }

    /// A budget reporting its waits and factors into `stats`. `rate.processes` = 0 (count
    /// the workers) starts as one process until [`Budget::set_processes`] says otherwise.
    pub fn with_stats(rate: &RateSettings, stats: Arc<ThrottleStats>) -> anyhow::Result<Budget> {
        anyhow::ensure!(rate.requests > 0, "rate.requests must be at least 1");
        anyhow::ensure!(rate.writes > 0, "rate.writes must be at least 1");
        anyhow::ensure!(
            !rate.requests_period.is_zero() && !rate.writes_period.is_zero(),
            "rate.requests_period and rate.writes_period must be longer than zero"
        );
        let clock = TokioClock::new();
        let now = Instant::now();
        let state = State {
            requests: Law::new(now),
            writes: Law::new(now),
            processes: rate.processes.max(1),
            drain_at: None,
            census_at: None,
            acquiring: 0,
            // Idle until the first request: a worker is counted by the others once it sends.
            last_acquired: now.checked_sub(IDLE_AFTER).unwrap_or(now),
        };
        let limiters = Self::limiters(rate, state.key(), clock);
        stats.set_factors(1.0, 1.0);
        stats.set_workers(state.processes);
        Ok(Budget {
            settings: rate.clone(),
            clock,
            state: Mutex::new(state),
            limiters: RwLock::new(Arc::new(limiters)),
            stats,
            woke: Notify::new(),
        })
    }

    fn limiters(rate: &RateSettings, key: Key, clock: TokioClock) -> Limiters {
        // Never throttled, a burst is a fraction of each bucket (Graph's buckets start full);
        // once throttled, bursts stay small so a rebuilt limiter cannot dump a bucket's worth
        // of requests into a Graph that is already pushing back.
        let burst_secs = |count: u32, period: Duration, factor: f64| {
            let period = period.as_secs_f64().max(1e-3);
            if key.full_burst {
                rate.burst_fraction.clamp(0.0, 1.0) * period
            } else {
                let per_sec = f64::from(count.max(1)) / f64::from(key.processes.max(1))
                    * factor.clamp(FACTOR_MIN, 1.0)
                    / period;
                // Just under SLOWED_BURST_CELLS cells, which the quota rounds up to them.
                SLOWED_BURST_SECS.max((f64::from(SLOWED_BURST_CELLS) - 0.5) / per_sec)
            }
        };
        let all = process_quota(
            rate.requests,
            rate.requests_period,
            key.processes,
            burst_secs(rate.requests, rate.requests_period, key.requests),
            key.requests,
        );
        let writes = process_quota(
            rate.writes,
            rate.writes_period,
            key.processes,
            burst_secs(rate.writes, rate.writes_period, key.writes),
            key.writes,
        );
        Limiters {
            key,
            all_burst: all.burst_size().get(),
            writes_burst: writes.burst_size().get(),
            all: RateLimiter::direct_with_clock(all, clock),
            writes: RateLimiter::direct_with_clock(writes, clock),
        }
    }

    /// The stats this budget reports into.
    pub fn stats(&self) -> &Arc<ThrottleStats> {
        &self.stats
    }

    /// The factor of the all-requests limit.
    pub fn factor(&self) -> f64 {
        lock(&self.state).requests.factor
    }

    /// What each limit's law learned (for the other workers).
    pub fn learned(&self) -> (Learned, Learned) {
        let state = lock(&self.state);
        let learned = |law: &Law| Learned {
            factor: law.factor,
            throttled_at: law.throttled_at,
        };
        (learned(&state.requests), learned(&state.writes))
    }

    /// Start from what another worker learned, if this one has learned nothing itself
    /// (only ever lowers a factor).
    pub fn adopt(&self, requests: Learned, writes: Learned) {
        self.update(|s| {
            for (law, peer) in [(&mut s.requests, requests), (&mut s.writes, writes)] {
                if let Some(at) = peer.throttled_at {
                    law.adopt(peer.factor, at);
                }
            }
        });
    }

    /// Worker processes sharing the budget.
    pub fn processes(&self) -> u32 {
        lock(&self.state).processes
    }

    /// Share the budget among `n` processes from now on (the fleet's live count).
    pub fn set_processes(&self, n: u32) {
        self.update(|s| {
            if s.processes != n.max(1) {
                s.census_at = Some(Instant::now());
            }
            s.processes = n.max(1);
        });
        self.stats.set_workers(n.max(1));
    }

    /// This process's full share of `limit`, per second.
    fn share_rate(&self, state: &State, limit: Limit) -> f64 {
        let (count, period) = match limit {
            Limit::Requests => (self.settings.requests, self.settings.requests_period),
            Limit::Writes => (self.settings.writes, self.settings.writes_period),
        };
        f64::from(count) / period.as_secs_f64().max(1e-3) / f64::from(state.processes.max(1))
    }

    /// Wait until one request (and one write, for DELETE/POST/PATCH) fits the budget and no
    /// pause is running. Returns how long it waited.
    pub async fn acquire(&self, write: bool, gate: &PauseGate) -> Duration {
        let start = Instant::now();
        let _acquiring = Acquiring::enter(self);
        // The write cell taken from this pair of limiters, if any (kept across waits for the
        // all-requests cell; a replaced pair is asked again).
        let mut write_from: Option<Arc<Limiters>> = None;
        loop {
            gate.wait().await;
            self.update(|s| {
                let now = Instant::now();
                s.requests.roll(now);
                s.writes.roll(now);
                s.requests.sending(now);
                if write {
                    s.writes.sending(now);
                }
            });
            self.drain_after_pause();
            let limiters = self
                .limiters
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if write
                && !write_from
                    .as_ref()
                    .is_some_and(|w| Arc::ptr_eq(w, &limiters))
            {
                match limiters.writes.check() {
                    Ok(()) => write_from = Some(limiters.clone()),
                    Err(not_until) => {
                        sleep_until_ready(not_until.wait_time_from(self.clock.now())).await;
                        continue;
                    }
                }
            }
            match limiters.all.check() {
                // A pause that began while this task waited: its cell is spent, it waits again.
                Ok(()) if gate.paused_until().is_some() => write_from = None,
                Ok(()) => break,
                Err(not_until) => {
                    sleep_until_ready(not_until.wait_time_from(self.clock.now())).await;
                }
            }
        }
        {
            let mut state = lock(&self.state);
            let share = self.share_rate(&state, Limit::Requests);
            state.requests.sent(share);
            if write {
                let share = self.share_rate(&state, Limit::Writes);
                state.writes.sent(share);
            }
        }
        let waited = start.elapsed();
        self.stats.add_budget_wait(waited);
        waited
    }

    /// Empty the limiters once, at the first request after a pause.
    fn drain_after_pause(&self) {
        let due = {
            let mut state = lock(&self.state);
            match state.drain_at {
                Some(at) if at <= Instant::now() => {
                    state.drain_at = None;
                    true
                }
                _ => false,
            }
        };
        if due {
            let limiters = self
                .limiters
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            drain(&limiters.all);
            drain(&limiters.writes);
        }
    }

    /// Graph answered a request (any status but 429): it was served from its buckets.
    pub fn observe_answer(&self, write: bool, status: u16) {
        if status == 429 {
            return;
        }
        let mut state = lock(&self.state);
        let share = self.share_rate(&state, Limit::Requests);
        state.requests.served(share);
        if write {
            let share = self.share_rate(&state, Limit::Writes);
            state.writes.served(share);
        }
    }

    /// Graph's `x-ms-throttle-limit-percentage` of an answer: at or above
    /// `rate.slow_down_at_percent`, a warning to the all-requests law. The header does not say
    /// which limit it measures, and every request (writes too) counts against that one, so
    /// slowing it down slows down whichever limit is close; the writes law moves on 429s
    /// that name the writes limit.
    pub fn observe_limit_percentage(&self, percent: f64) {
        if percent >= self.settings.slow_down_at_percent {
            self.update(|s| s.requests.warned(Instant::now()));
        }
    }

    /// A 429 of this process on `limit` that paused it until `pause_end`.
    pub fn on_throttled(&self, pause_end: Instant, limit: Limit) {
        self.throttled(pause_end, limit, true);
    }

    /// Another worker announced a throttling of `limit` that paused this process until
    /// `pause_end`.
    pub fn on_peer_throttled(&self, pause_end: Instant, limit: Limit) {
        self.throttled(pause_end, limit, false);
    }

    fn throttled(&self, pause_end: Instant, limit: Limit, own: bool) {
        let in_force = self.in_force();
        self.update(|s| {
            let law = s.law(limit);
            // The rate that was throttled is the limiters' (a factor grown by less than
            // REBUILD_ABOVE was not in force yet).
            law.factor = law.factor.min(match limit {
                Limit::Requests => in_force.requests,
                Limit::Writes => in_force.writes,
            });
            let now = Instant::now();
            let census_moved = s
                .census_at
                .is_some_and(|at| now.saturating_duration_since(at) < CENSUS_SETTLE);
            let saturated = s.acquiring > 0;
            let law = s.law(limit);
            law.throttled(now, pause_end, census_moved, saturated, own);
            s.drain_at = Some(s.drain_at.map_or(pause_end, |d| d.max(pause_end)));
        });
    }

    /// What the limiters in force were built from.
    fn in_force(&self) -> Key {
        self.limiters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .key
    }

    /// Nobody asked a cell for [`IDLE_AFTER`] and nobody is waiting for one: this process
    /// needs no share of the fleet's budget now.
    pub fn idle(&self) -> bool {
        let state = lock(&self.state);
        state.acquiring == 0 && state.last_acquired.elapsed() >= IDLE_AFTER
    }

    /// Notified when an idle budget is asked for a cell again (the fleet tells the others
    /// at once, before they keep its share any longer).
    pub fn woke(&self) -> &Notify {
        &self.woke
    }

    /// This process leads the fleet's law (alone, or the lowest id of the busy workers):
    /// only a leader probes above the throttled rate; a follower takes the leader's view
    /// ([`Budget::follow`]).
    pub fn set_leader(&self, leader: bool) {
        let mut state = lock(&self.state);
        state.requests.follower = !leader;
        state.writes.follower = !leader;
    }

    /// Take the leader's view of both limits (see [`Budget::set_leader`]).
    pub fn follow(&self, requests: Learned, writes: Learned) {
        self.update(|s| {
            let now = Instant::now();
            s.requests
                .follow(now, requests.factor, requests.throttled_at);
            s.writes.follow(now, writes.factor, writes.throttled_at);
        });
    }

    /// Apply `step` to the state and rebuild the limiters if what they depend on moved.
    fn update(&self, step: impl FnOnce(&mut State)) {
        let mut state = lock(&self.state);
        step(&mut state);
        let key = state.key();
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limiters.key.serves(&key) {
            return;
        }
        // A new limiter starts with its burst available; rebuilt at every step (up to
        // twice a second), that burst would come on top of the rate each time (+40 % at
        // 0.2 s per 0.5 s window: measured in the storm benchmark as a 429 every few
        // seconds). The tasks are already sending at the old rate, so start empty.
        // Except when only the share moved on a budget never throttled (a worker joined or
        // left): then what was left of the burst carries over, capped by the new one. It
        // is no new burst, and a fleet starting together does not lose Graph's full bucket
        // to its first census (each worker starts alone, then learns the others).
        let carried = (limiters.key.full_burst && key.full_burst)
            .then(|| (drain(&limiters.all), drain(&limiters.writes)));
        let rebuilt = Self::limiters(&self.settings, key, self.clock);
        let (all, writes) = carried.unwrap_or((0, 0));
        keep(&rebuilt.all, rebuilt.all_burst, all);
        keep(&rebuilt.writes, rebuilt.writes_burst, writes);
        *limiters = Arc::new(rebuilt);
        self.stats.set_factors(key.requests, key.writes);
        tracing::debug!(
            processes = key.processes,
            requests = key.requests,
            writes = key.writes,
            "graph budget changed"
        );
    }
}

/// A task inside [`Budget::acquire`] (counted until it leaves, however it leaves).
struct Acquiring<'a> {
    budget: &'a Budget,
}

impl<'a> Acquiring<'a> {
    fn enter(budget: &'a Budget) -> Self {
        let woke = {
            let mut state = lock(&budget.state);
            state.acquiring += 1;
            state.acquiring == 1 && state.last_acquired.elapsed() >= IDLE_AFTER
        };
        if woke {
            budget.woke.notify_one();
        }
        Acquiring { budget }
    }
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.budget.state);
        state.acquiring -= 1;
        state.last_acquired = Instant::now();
    }
}

/// Take every cell `limiter` has available now (its burst, bounded by the quota); how many.
fn drain(limiter: &Limiter) -> u32 {
    let mut taken = 0;
    while limiter.check().is_ok() {
        taken += 1;
    }
    taken
}

/// Leave at most `cells` of a fresh limiter's `burst` available.
fn keep(limiter: &Limiter, burst: u32, cells: u32) {
    for _ in 0..burst.saturating_sub(cells) {
        if limiter.check().is_err() {
            break;
        }
    }
}

/// Sleep until a limiter's next cell, on tokio's timer (governor's own `until_ready` uses
/// futures-timer; tokio's keeps every wait on one runtime, and on its clock). At most
/// [`FACTOR_WINDOW`](super::adaptive::FACTOR_WINDOW), so a waiting task sees a replaced
/// limiter (or a pause) soon.
async fn sleep_until_ready(wait: Duration) {
    tokio::time::sleep(wait.clamp(Duration::from_micros(100), FACTOR_WINDOW)).await;
}

#[cfg(test)]
mod tests {
    use super::stand_in::StandIn;
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

    fn key(processes: u32, requests: f64, writes: f64, full_burst: bool) -> Key {
        Key {
            processes,
            requests,
            writes,
            full_burst,
        }
    }

    fn current(budget: &Budget) -> Arc<Limiters> {
        budget.limiters.read().unwrap().clone()
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
        let full = Budget::limiters(&rate, key(1, 1.0, 1.0, true), TokioClock::new());
        let burst = (0..5000)
            .take_while(|_| full.writes.check().is_ok())
            .count();
        assert_eq!(burst, 1500);
        // Slowed to half: 10 writes/s, a burst of 0.05 s of that (one cell), raised to the
        // SLOWED_BURST_CELLS that let a late request's successor catch up.
        let slowed = Budget::limiters(&rate, key(1, 1.0, 0.5, false), TokioClock::new());
        let burst = (0..5000)
            .take_while(|_| slowed.writes.check().is_ok())
            .count();
        assert_eq!(burst, SLOWED_BURST_CELLS as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_joining_an_unthrottled_fleet_carries_the_burst_left_not_an_empty_one() {
        let rate = RateSettings {
            writes: 3000,
            writes_period: Duration::from_secs(150),
            burst_fraction: 0.5,
            processes: 0,
            ..RateSettings::default()
        };
        let writes_now = |budget: &Budget| {
            let limiters = budget.limiters.read().unwrap().clone();
            (0..5000)
                .take_while(|_| limiters.writes.check().is_ok())
                .count()
        };
        // Alone: half of Graph's 3,000-write bucket. A second worker appears: this one's
        // share of the burst (750) is left, not nothing.
        let budget = Budget::new(&rate).unwrap();
        budget.set_processes(2);
        assert_eq!(writes_now(&budget), 750);
        // What was used stays used: 700 of the 750 gone, then a third worker: 50 left.
        let budget = Budget::new(&rate).unwrap();
        budget.set_processes(2);
        {
            let limiters = budget.limiters.read().unwrap().clone();
            for _ in 0..700 {
                limiters.writes.check().unwrap();
            }
        }
        budget.set_processes(3);
        assert_eq!(writes_now(&budget), 50);
        // A throttled budget's limiters still start empty when the share moves.
        let budget = Budget::new(&rate).unwrap();
        budget.on_throttled(Instant::now() + Duration::from_secs(1), Limit::Writes);
        tokio::time::advance(Duration::from_secs(2)).await;
        budget.set_processes(2);
        assert_eq!(writes_now(&budget), 0);
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
        let gate = PauseGate::default();
        for _ in 0..5 {
            assert_eq!(budget.acquire(true, &gate).await, Duration::ZERO);
        }
        let start = Instant::now();
        for _ in 0..10 {
            budget.acquire(false, &gate).await;
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
    async fn a_warning_rebuilds_the_limiters_empty_and_a_recovered_budget_gets_its_burst_back() {
        // 100 per 10 s: at f = 0.9 one cell per 111 ms.
        let budget = Budget::new(&rate(100, 10, 100, 10, 1, 0.5)).unwrap();
        assert!(current(&budget).all.check().is_ok(), "a full budget bursts");
        budget.observe_limit_percentage(50.0);
        assert_eq!(budget.factor(), 1.0);
        budget.observe_limit_percentage(85.0);
        assert!((budget.factor() - 0.9).abs() < 1e-9);
        assert!((budget.stats().snapshot().factor - 0.9).abs() < 1e-9);
        let slowed = current(&budget);
        assert!(slowed.all.check().is_err(), "rebuilt empty");
        assert!(slowed.writes.check().is_err());
        budget.update(|s| s.requests.roll(Instant::now() + Duration::from_secs(60)));
        assert_eq!(budget.factor(), 1.0);
        assert!(current(&budget).key.full_burst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_task_follows_the_limiters_that_replaced_the_ones_it_waited_on() {
        let budget = Arc::new(Budget::new(&rate(10, 1, 10, 1, 1, 0.5)).unwrap());
        let gate = Arc::new(PauseGate::default());
        budget.observe_limit_percentage(85.0); // f = 0.9: 9/s, the next cell in 111 ms
        let waiter = {
            let (budget, gate) = (budget.clone(), gate.clone());
            tokio::spawn(async move { budget.acquire(false, &gate).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        budget.update(|s| s.requests.factor = 0.1); // 1/s, rebuilt empty: the next cell in 1 s
        let rebuilt = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !waiter.is_finished(),
            "let through at the replaced limiter's rate"
        );
        waiter.await.unwrap();
        assert!(
            rebuilt.elapsed() >= Duration::from_secs(1),
            "{:?}",
            rebuilt.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_is_idle_until_asked_and_again_after_idle_after_and_its_waking_is_signalled() {
        let budget = Budget::new(&rate(100, 1, 100, 1, 0, 0.0)).unwrap();
        let gate = PauseGate::default();
        assert!(
            budget.idle(),
            "a new worker is counted from its first request"
        );
        budget.acquire(false, &gate).await;
        // The first request after idling signals (a permit is kept for the fleet's task).
        tokio::time::timeout(Duration::from_millis(1), budget.woke().notified())
            .await
            .expect("woke");
        assert!(!budget.idle());
        tokio::time::advance(IDLE_AFTER - Duration::from_millis(1)).await;
        budget.acquire(false, &gate).await;
        let quiet = tokio::time::timeout(Duration::from_millis(1), budget.woke().notified());
        assert!(quiet.await.is_err(), "not idle in between: no signal");
        tokio::time::advance(IDLE_AFTER).await;
        assert!(budget.idle());
    }

    #[tokio::test(start_paused = true)]
    async fn the_share_follows_the_live_number_of_processes() {
        let budget = Budget::new(&rate(100, 1, 100, 1, 0, 0.0)).unwrap();
        assert_eq!(budget.processes(), 1, "counted processes start as one");
        let gate = PauseGate::default();
        budget.set_processes(4);
        assert_eq!(budget.stats().snapshot().workers, 4);
        // 25/s: 10 requests take 360 ms (the one cell of burst left carries over: the first
        // goes at once, each next 40 ms later).
        let start = Instant::now();
        for _ in 0..10 {
            budget.acquire(false, &gate).await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(360));
        // Back to one: nothing was left to carry, 100/s from an empty limiter.
        budget.set_processes(1);
        let start = Instant::now();
        for _ in 0..10 {
            budget.acquire(false, &gate).await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_releases_the_tasks_it_held_through_the_budget_not_all_at_once() {
        // 20/s; 16 tasks waiting when a 2 s pause starts.
        let budget = Arc::new(Budget::new(&rate(20, 1, 20, 1, 1, 0.5)).unwrap());
        let gate = Arc::new(PauseGate::default());
        // Spend the opening burst.
        for _ in 0..10 {
            budget.acquire(false, &gate).await;
        }
        let pause_end = Instant::now() + Duration::from_secs(2);
        gate.pause_until(pause_end);
        budget.on_throttled(pause_end, Limit::Requests);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (budget, gate) = (budget.clone(), gate.clone());
                tokio::spawn(async move {
                    budget.acquire(false, &gate).await;
                    Instant::now()
                })
            })
            .collect();
        let mut left = Vec::new();
        for task in tasks {
            left.push(task.await.unwrap());
        }
        left.sort();
        assert!(left[0] >= pause_end, "nobody leaves inside the pause");
        // Halved to 10/s, the limiter emptied at the pause's end: one per 100 ms after it,
        // 16 tasks over 1.5 s.
        let last = left[15] - pause_end;
        assert!(last >= Duration::from_millis(1500), "{last:?}");
        let in_first_100ms = left
            .iter()
            .filter(|t| **t - pause_end < Duration::from_millis(100))
            .count();
        assert!(in_first_100ms <= 1, "{in_first_100ms} left at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_holding_a_cell_when_a_pause_starts_waits_for_the_pause() {
        // 1/s, no burst: a task waits ~1 s for its cell; a pause starts meanwhile.
        let budget = Arc::new(Budget::new(&rate(1, 1, 1, 1, 1, 0.0)).unwrap());
        let gate = Arc::new(PauseGate::default());
        budget.acquire(false, &gate).await;
        let waiter = {
            let (budget, gate) = (budget.clone(), gate.clone());
            tokio::spawn(async move {
                budget.acquire(false, &gate).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pause_end = Instant::now() + Duration::from_secs(5);
        gate.pause_until(pause_end);
        assert!(waiter.await.unwrap() >= pause_end);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_small_budget_is_reached_after_a_few_throttlings_and_held() {
        // Configured for 350/s; Graph serves 30/s in 1 s steps, Retry-After 1-5 s; 32 tasks,
        // 100 ms per request, for 150 s (the `unknown` benchmark).
        let graph = StandIn::new(30, Duration::from_secs(1));
        let budget = Arc::new(Budget::new(&rate(3500, 10, 3500, 10, 1, 0.5)).unwrap());
        let gate = Arc::new(PauseGate::default());
        let tasks = graph.spawn_tasks(32, &budget, &gate, |_| {});
        for second in 0..150 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trace(&budget, second);
        }
        for task in tasks {
            task.abort();
        }
        let run = graph.summary(20, 150);
        eprintln!("{run}");
        // After the 20 s warm-up (the benchmark's): at least 95 % of 30/s (measured: 98.1 %,
        // no 429 after the warm-up: the second 429 bounds the rate by what was sent since the
        // first pause, then the rate held is 97.5 % of what Graph served in its best two
        // seconds), none sent inside a pause.
        assert_eq!(run.violations, 0, "{run}");
        assert!(run.efficiency >= 0.95, "{run}");
        assert!(run.throttled_after <= 1, "{run}");
    }

    /// With LAW_TRACE set: the rate in force each second (requests/s of a 350/s share).
    fn trace(budget: &Budget, second: u64) {
        if std::env::var("LAW_TRACE").is_ok() {
            let (r, _) = budget.learned();
            eprintln!(
                "{second}: rate {:.2} at {:.2}",
                r.factor * 350.0,
                r.throttled_at.unwrap_or(0.0) * 350.0
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_budget_refilled_in_10_s_steps_is_held_at_90_percent_or_more() {
        // The same, but Graph refills 300 at once every 10 s (the `unknown` benchmark with
        // BENCH_UNKNOWN_GRANULARITY_MS=10000).
        let graph = StandIn::new(30, Duration::from_secs(10));
        let budget = Arc::new(Budget::new(&rate(3500, 10, 3500, 10, 1, 0.5)).unwrap());
        let gate = Arc::new(PauseGate::default());
        let tasks = graph.spawn_tasks(32, &budget, &gate, |_| {});
        for second in 0..180 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trace(&budget, second);
        }
        for task in tasks {
            task.abort();
        }
        let run = graph.summary(60, 180);
        eprintln!("{run}");
        // Measured: 92.6 %, five 429s in seconds 60-180 (as graph-sim, a Retry-After lasts
        // until the next step at least, so a pause never ends on an empty bucket; two 429s
        // in a row where Graph had served all that was sent over its best 2 s hold the rate
        // it served over the last 20-30 s, and the law comes down to it in a few windows).
        // The goal, 429s near zero after convergence, is not met.
        assert_eq!(run.violations, 0, "{run}");
        assert!(run.efficiency >= 0.90, "{run}");
        assert!(run.throttled_after <= 6, "{run}");
    }
}

#[cfg(test)]
mod budget_changes {
    use super::stand_in::StandIn;
    use super::*;

    fn configured(requests: u32) -> RateSettings {
        RateSettings {
            requests,
            requests_period: Duration::from_secs(1),
            writes: requests,
            writes_period: Duration::from_secs(1),
            processes: 1,
            ..RateSettings::default()
        }
    }

    /// Run 32 tasks against `graph` for `secs`, calling `at_second` at each whole second.
    async fn run(graph: &StandIn, budget: &Arc<Budget>, secs: u64, at_second: impl Fn(u64)) {
        let gate = Arc::new(PauseGate::default());
        let tasks = graph.spawn_tasks(32, budget, &gate, |_| {});
        for second in 0..secs {
            at_second(second);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for task in tasks {
            task.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_at_half_the_configured_budget_settles_without_429s() {
        // The `storm` benchmark: configured 200/s, Graph serves 100/s in 1 s steps.
        let graph = StandIn::new(100, Duration::from_secs(1));
        let budget = Arc::new(Budget::new(&configured(200)).unwrap());
        run(&graph, &budget, 120, |_| {}).await;
        let run = graph.summary(20, 120);
        eprintln!("{run}");
        // Measured: 89.4 %, two 429s after 20 s (one failed probe).
        assert_eq!(run.violations, 0, "{run}");
        assert!(run.throttled_after <= 3, "{run}");
        assert!(run.efficiency >= 0.85, "{run}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_that_grows_is_found_again_after_the_probe_rest() {
        // 30/s learned in the first minute; then Graph allows 60/s. The law probes past the
        // old rate, forgets it 20 % above and recovers without memory (measured: 95 % of 60/s in seconds 440-480).
        let graph = StandIn::new(30, Duration::from_secs(1));
        let budget = Arc::new(Budget::new(&configured(350)).unwrap());
        run(&graph, &budget, 480, |second| {
            if second == 60 {
                graph.set_per_second(60);
            }
        })
        .await;
        let run = graph.summary(440, 480);
        eprintln!("{run}");
        assert_eq!(run.violations, 0, "{run}");
        assert!(run.efficiency >= 0.8, "{run}");
    }
}

/// A Graph stand-in for the control law's tests (paused tokio time): one bucket of `budget`
/// requests per second, refilled in steps of `step`, answering 429 with a Retry-After
/// cycling through 3, 1, 5, 2, 4 s when empty; it records what it served each second and
/// counts the requests that arrive inside a Retry-After it announced (violations).
#[cfg(test)]
pub(crate) mod stand_in {
    use std::fmt;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::{Budget, Limit};
    use crate::graph::{lock, PauseGate};

    /// Retry-After of successive 429s, in seconds (the benchmark draws from 1-5 s).
    const RETRY_AFTER: [u64; 5] = [3, 1, 5, 2, 4];
    /// Requests take 0 to this long on the wire (in µs), so a rate a hair below the budget
    /// does not pass by the sheer regularity of the simulation.
    const WIRE_JITTER_MICROS: u64 = 10_000;
    /// Graph's time to answer a request it serves.
    pub(crate) const LATENCY: Duration = Duration::from_millis(100);

    #[derive(Debug)]
    struct Bucket {
        /// Requests per refill step (the bucket's size).
        per_step: u32,
        tokens: u32,
        /// The last refill step seen.
        step_index: u64,
        /// Served and throttled requests per second since `origin`.
        served: Vec<u32>,
        throttled: Vec<u32>,
        /// The Retry-After windows announced: (opens, closes).
        windows: Vec<(Instant, Instant)>,
        violations: u32,
        answered_429: usize,
    }

    /// The stand-in, shared by every simulated worker.
    #[derive(Debug, Clone)]
    pub(crate) struct StandIn {
        bucket: Arc<Mutex<Bucket>>,
        origin: Instant,
        step: Duration,
    }

    /// What a run got.
    #[derive(Debug)]
    pub(crate) struct Summary {
        /// Served ÷ budget over the seconds measured.
        pub efficiency: f64,
        /// 429s before and within the seconds measured.
        pub throttled_before: u32,
        pub throttled_after: u32,
        pub violations: u32,
        pub served: Vec<u32>,
    }

    impl fmt::Display for Summary {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "efficiency {:.3}, 429s {} + {}, violations {}, served per second {:?}",
                self.efficiency,
                self.throttled_before,
                self.throttled_after,
                self.violations,
                self.served
            )
        }
    }

    impl StandIn {
        /// `per_second` requests a second, refilled in steps of `step`.
        pub(crate) fn new(per_second: u32, step: Duration) -> Self {
            let per_step = (f64::from(per_second) * step.as_secs_f64()).round() as u32;
            StandIn {
                bucket: Arc::new(Mutex::new(Bucket {
                    per_step,
                    tokens: per_step,
                    step_index: 0,
                    served: Vec::new(),
                    throttled: Vec::new(),
                    windows: Vec::new(),
                    violations: 0,
                    answered_429: 0,
                })),
                origin: Instant::now(),
                step,
            }
        }

        /// From the next refill step on, `per_second` requests a second.
        pub(crate) fn set_per_second(&self, per_second: u32) {
            lock(&self.bucket).per_step =
                (f64::from(per_second) * self.step.as_secs_f64()).round() as u32;
        }

        /// A request arrives now: `Ok` if served, `Err(retry_after)` if throttled.
        pub(crate) fn arrive(&self) -> Result<(), Duration> {
            let now = Instant::now();
            let since = now - self.origin;
            let mut b = lock(&self.bucket);
            let step_index = (since.as_nanos() / self.step.as_nanos()) as u64;
            if step_index > b.step_index {
                b.tokens = b.per_step;
                b.step_index = step_index;
            }
            if b.windows
                .iter()
                .any(|(opens, closes)| *opens <= now && now < *closes)
            {
                b.violations += 1;
            }
            let second = since.as_secs() as usize;
            if b.served.len() <= second {
                b.served.resize(second + 1, 0);
                b.throttled.resize(second + 1, 0);
            }
            if b.tokens > 0 {
                b.tokens -= 1;
                b.served[second] += 1;
                return Ok(());
            }
            b.throttled[second] += 1;
            // As graph-sim: at least until the next refill step.
            let next_step = self.step * u32::try_from(step_index + 1).unwrap_or(u32::MAX);
            let retry_after = Duration::from_secs(RETRY_AFTER[b.answered_429 % RETRY_AFTER.len()])
                .max(Duration::from_secs(
                    (next_step - since).as_secs_f64().ceil() as u64,
                ));
            b.answered_429 += 1;
            // Requests on the wire (the grace of graph-sim, 50 ms) are no violations.
            b.windows
                .push((now + Duration::from_millis(50), now + retry_after));
            Err(retry_after)
        }

        /// `n` tasks sending through `budget` and `gate` until aborted: each request takes
        /// [`LATENCY`] when served; a 429 pauses the gate, tells the budget and is handed to
        /// `announce` (the other workers) with its pause's end.
        pub(crate) fn spawn_tasks(
            &self,
            n: usize,
            budget: &Arc<Budget>,
            gate: &Arc<PauseGate>,
            announce: impl Fn(Instant) + Send + Sync + Clone + 'static,
        ) -> Vec<JoinHandle<()>> {
            (0..n)
                .map(|task| {
                    let (graph, budget, gate, announce) =
                        (self.clone(), budget.clone(), gate.clone(), announce.clone());
                    // The wire's jitter: 0-10 ms, drawn from a generator seeded by the task.
                    let mut seed = task as u64 + 1;
                    let mut jitter = move || {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        Duration::from_micros((seed >> 33) % WIRE_JITTER_MICROS)
                    };
                    tokio::spawn(async move {
                        loop {
                            budget.acquire(false, &gate).await;
                            tokio::time::sleep(jitter()).await;
                            match graph.arrive() {
                                Ok(()) => {
                                    tokio::time::sleep(LATENCY).await;
                                    budget.observe_answer(false, 200);
                                }
                                Err(retry_after) => {
                                    let end = Instant::now() + retry_after;
                                    if !gate.pause_until(end).is_zero() {
                                        announce(end);
                                    }
                                    budget.on_throttled(end, Limit::Requests);
                                }
                            }
                        }
                    })
                })
                .collect()
        }

        /// Served ÷ budget (the budget now) over seconds `from..to`, and the 429s before
        /// and within them.
        pub(crate) fn summary(&self, from: usize, to: usize) -> Summary {
            let b = lock(&self.bucket);
            let per_second = f64::from(b.per_step) / self.step.as_secs_f64();
            let at = |v: &Vec<u32>, s: usize| v.get(s).copied().unwrap_or(0);
            let served: u32 = (from..to).map(|s| at(&b.served, s)).sum();
            Summary {
                efficiency: f64::from(served) / (per_second * (to - from) as f64),
                throttled_before: (0..from).map(|s| at(&b.throttled, s)).sum(),
                throttled_after: (from..to).map(|s| at(&b.throttled, s)).sum(),
                violations: b.violations,
                served: b.served.clone(),
            }
        }
    }
}
