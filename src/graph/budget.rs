//! [`Budget`]: the proactive rate budget of one process, on tokio's clock.
//!
//! Every request of the process goes `budget.acquire(write, gate)` (which waits out the pause
//! before and after taking its cells) → send. The budget keeps us under Graph's buckets so 429s are rare (the identity limits:
//! <https://learn.microsoft.com/en-us/graph/throttling-limits>); the
//! [`PauseGate`](super::PauseGate) holds every task when Graph does announce a Retry-After.
//!
//! The limiters are governor's, on [`TokioClock`]: their time is tokio's, so a test under
//! `tokio::time::pause()` drives them like every other timer of the process.
//!
//! Why one file of this size: [`Budget`] is one shared object whose acquire, learn-from-429
//! and fleet-share paths all touch the same limiters under one lock; the control law is
//! `adaptive.rs`, the pause `pause.rs`, the statistics `stats.rs`.

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
/// A worker that comes back to work while others are busy (it joins the fleet, or idled
/// beside it) sends nothing for this long after announcing itself: the others count it
/// first. Sent at once, its first requests reached Graph before they shrank their shares,
/// and at the fleet's rate (within 1 % of Graph's) the few extra overfilled a 1 s refill
/// step: a 429 and a pause of 1-5 s for everyone at nearly every join of the comego
/// benchmark. A heartbeat crosses the broker in milliseconds; this leaves room for a
/// loaded host and costs the joiner a fraction of a second of its share.
pub const JOIN_SETTLE: Duration = Duration::from_millis(250);

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

/// What one limit's law learned, as other workers are told it (heartbeats). Fields a newer
/// version adds are ignored (see [`FleetMessage`](crate::worker::fleet::FleetMessage)).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Learned {
    /// The factor in force.
    pub factor: f64,
    /// The served rate at the last throttling, as a factor; `None` = never throttled.
    pub throttled_at: Option<f64>,
    /// The proven rate, as a factor: in force for long without a 429 (`None`: none yet). A
    /// follower keeps the leader's, so the worker that leads after it (the leader died)
    /// returns to the fleet's proven rate after a throttling, not to its own view of it.
    #[serde(default)]
    pub held_at: Option<f64>,
    /// The best rate Graph served the sender over two seconds lately, as a factor: its share
    /// of what Graph served the fleet, read at the live count (`None`: no such span since its
    /// last pause). One worker's share of a refill step after a pause is a race it may lose
    /// (a leader once got 6 of 30 and took 12/s for Graph's rate), so a worker never judges
    /// Graph's rate below the fleet's average of these ([`Law`](super::adaptive)).
    /// Left out when `None`, so a heartbeat without it reads as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<f64>,
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
    /// Nothing is sent before this: the process woke beside busy workers, which count it
    /// first ([`JOIN_SETTLE`]).
    joining_until: Option<Instant>,
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
        let shared = rate.processes > 1;
        let mut state = State {
            requests: Law::new(now),
            writes: Law::new(now),
            processes: rate.processes.max(1),
            drain_at: None,
            census_at: None,
            acquiring: 0,
            // Idle until the first request: a worker is counted by the others once it sends.
            last_acquired: now.checked_sub(IDLE_AFTER).unwrap_or(now),
            joining_until: None,
        };
        state.requests.shared = shared;
        state.writes.shared = shared;
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
        let now = Instant::now();
        let learned = |law: &Law| Learned {
            factor: law.factor,
            throttled_at: law.throttled_at,
            held_at: law.held_at,
            peak: law.peak(now),
        };
        (learned(&state.requests), learned(&state.writes))
    }

    /// Start from what another worker learned, if this one has learned nothing itself
    /// (only ever lowers a factor).
    pub fn adopt(&self, requests: Learned, writes: Learned) {
        self.update(|s| {
            s.requests.adopt(requests);
            s.writes.adopt(writes);
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
            s.requests.shared = s.processes > 1;
            s.writes.shared = s.processes > 1;
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
        // Set only by the task that woke an idle budget, before any other is inside: read
        // once, on the way in.
        let joining = lock(&self.state).joining_until;
        if let Some(until) = joining.filter(|u| Instant::now() < *u) {
            tokio::time::sleep_until(until).await;
        }
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
    ///
    /// A follower that comes to lead (the leader died or went idle, or this worker's id is
    /// the lowest of the busy ones now) holds below the throttled rate and rests before it
    /// probes ([`Law::take_lead`](super::adaptive)).
    pub fn set_leader(&self, leader: bool) {
        let now = Instant::now();
        self.update(|s| {
            for law in [&mut s.requests, &mut s.writes] {
                if leader && law.follower {
                    law.take_lead(now);
                }
                law.follower = !leader;
            }
        });
    }

    /// The best recent served rates the other busy workers reported ([`Learned::peak`]) for
    /// each limit: what an episode measures the fleet's rate by, with this worker's own.
    pub fn set_peer_peaks(&self, requests: Vec<f64>, writes: Vec<f64>) {
        let mut state = lock(&self.state);
        state.requests.peer_peaks = requests;
        state.writes.peer_peaks = writes;
    }

    /// Take the leader's view of both limits (see [`Budget::set_leader`]).
    pub fn follow(&self, requests: Learned, writes: Learned) {
        self.update(|s| {
            let now = Instant::now();
            s.requests.follow(now, requests);
            s.writes.follow(now, writes);
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
            let woke = state.acquiring == 1 && state.last_acquired.elapsed() >= IDLE_AFTER;
            // Others busy, counted through the broker: they learn of this one from the
            // heartbeat the wake sends (a fixed `rate.processes` counts nobody).
            if woke && budget.settings.processes == 0 && state.processes > 1 {
                state.joining_until = Some(Instant::now() + JOIN_SETTLE);
            }
            woke
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
#[path = "budget_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "budget_changes_tests.rs"]
mod budget_changes;

/// A Graph stand-in for the control law's tests (paused tokio time): one bucket of `budget`
/// requests per second, refilled in steps of `step`, answering 429 with a Retry-After
/// cycling through 3, 1, 5, 2, 4 s when empty; it records what it served each second and
/// counts the requests that arrive inside a Retry-After it announced (violations).
#[cfg(test)]
#[path = "budget_stand_in.rs"]
pub(crate) mod stand_in;
