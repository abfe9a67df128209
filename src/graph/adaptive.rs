//! [`Law`]: the control law of one of the budget's limits (all requests, or writes), a pure
//! state machine (time and counts are passed in).
//!
//! The law moves a factor f ∈ [[`FACTOR_MIN`], 1] that scales this process's share of the
//! configured limit. Graph's real budget may be far below the configured one (its tenant-wide
//! write limit is shared with every other app; small tenants get smaller buckets:
//! <https://learn.microsoft.com/en-us/graph/throttling-limits>), so the law does not cut by a
//! fixed fraction per 429. It *measures*:
//!
//! - **Served rate.** A 429 means Graph's bucket is empty. Between two throttling episodes
//!   (a 429 of this process, or a pause announced by another worker: same bucket) Graph let
//!   through exactly what it refilled, so the answers served since an earlier episode, divided
//!   by the time since, is this process's share of the real budget, whatever its size or its
//!   refill granularity. The latest earlier episode at least [`MIN_SPAN`] ago (within
//!   [`LOOKBACK`]) is the anchor.
//!   Counted over the whole span it is a lower bound (a pause longer than the bucket takes to
//!   fill wastes refill); counted over the time not paused, an upper bound. With no episode
//!   in the last [`LOOKBACK`], the served rate of that window is the estimate.
//! - **On an episode** f is set halfway between the bounds, between [`MAX_CUT`] and
//!   [`MIN_CUT`] of its value (a short span may have seen no refill step at all), and to at
//!   least [`PROBE_CUT`] of it when the episode ends a probe above the last throttled rate.
//!   The first episode, with nothing to measure from, halves f.
//! - **Memory.** The rate that was throttled is remembered (`throttled_at`): what Graph
//!   served in its best recent [`PEAK_SPAN`], at least [`PEAK_FLOOR`] of the rate sent. When
//!   that is less than the rate sent (a bucket refilled in steps caps every step at its
//!   budget while f climbed past it), f goes straight to [`SET_BELOW_SERVED`] of it: the
//!   pause is the episode's whole cost.
//!   Also the served rate (`served_at`, a lower bound). Below the served rate f recovers fast
//!   ([`FAST_STEP`] of it per window), then climbs [`CLIMB_STEP`] of the gap per window to
//!   [`SET_BELOW_SERVED`] of the throttled rate, then only probes ([`PROBE_STEP`] per
//!   window, doubling each [`PROBE_DOUBLING`] without a throttling, up to
//!   [`PROBE_MAX_DOUBLINGS`] times); Graph's `x-ms-throttle-limit-percentage` warnings stop
//!   the probe and start it again at its first step. Probed
//!   [`FORGET_ABOVE`] past the throttled rate without a 429, the budget has grown: forgotten.
//! - **Probes that fail rest longer.** Every 429 costs its Retry-After of nothing sent (on a
//!   1 s bucket, 1–5 s of lost budget), so after a probe that ends in a 429 (or an episode
//!   that measured the rate, or one above the proven rate) the next waits
//!   [`PROBE_REST_FIRST`], doubling after each failed probe up to [`PROBE_REST_MAX`]; f holds
//!   just below the throttled rate meanwhile. Forgetting the memory (the budget grew)
//!   resets the rest. A budget that grows is found again after the probe's climb to
//!   [`FORGET_ABOVE`] (about 40 s) and [`RECOVERY_STEP`]s, plus the rest after failed
//!   probes (up to 8 min more).
//! - **Counted as the fleet's.** Each answer served (and each request sent) counts
//!   1/(this process's share per second) when it comes, so a rate measured across a change
//!   of the live count is the fleet's, as a factor, not this process's share read at the new
//!   count (a kill once made the remembered rate two thirds of the real one).
//! - **Right after a pause.** A 429 within [`RESUMED_SPAN`] of sending again, after at
//!   least [`RESUMED_FEWEST`] requests, bounds the rate by what was sent since (the bucket
//!   refilled at least a second of its rate during the pause, and that emptied it): the
//!   warm-up against a small bucket takes two 429s, not five halvings. Throttled at once
//!   instead, the bucket refills in steps longer than the pause (`stepped`): from then on
//!   an episode holds the rate Graph served over the last [`LONG_RUN`] or more, which a
//!   step's budget allows. So does an episode whose predecessor (within [`LOOKBACK`]) also
//!   came while Graph had served all that was sent over its best 2 s (a window longer than
//!   that; graph-sim's Retry-After lasts until its next step, so its pauses never end on an
//!   empty bucket): at most [`LONG_RUN_CUT`] below the rate sent unless [`LONG_RUN_FAR`]
//!   below it.
//! - **Proven rate.** A factor in force for [`HELD_FOR`] without an episode (and served)
//!   is proven (`held_at`): after an episode above it, f goes back to it (the pause was the
//!   cost); an episode at it lowers it by [`HELD_CUT`] (or to what Graph served when that
//!   is lower), except within [`CENSUS_SETTLE`] of a change in the live count, when a
//!   joiner counted late, not the rate, filled the bucket (then no cut deeper than
//!   [`HELD_CUT`] either, once the rate is known). A peak is never measured across a pause
//!   or [`PEAK_AFTER_PAUSE`] after one (the answers are still on the wire).
//! - **One law per fleet.** A follower (another worker leads the fleet: `follower`) never
//!   probes; it takes the leader's factor and proven rate ([`Law::follow`]), so whoever
//!   leads next starts from the fleet's view, below the throttled rate and resting before
//!   its own first probe ([`Law::take_lead`]). In a fleet (`shared`) the long-run rule only
//!   follows a `stepped` learned alone: a worker's share of the peak, and of what was sent
//!   after a pause, is too noisy to show Graph's window.
//! - **The fleet's peak.** In a fleet, the best span's rate an episode judges by is at least
//!   the average of this process's and the ones the other busy workers last reported in
//!   their heartbeats ([`Learned::peak`]): each is a share read at the live count, so the
//!   average is what Graph served the fleet, whichever worker won the race for a refill
//!   step.
//! - **Warnings without memory.** Before any 429, a warning (the percentage at or above
//!   `rate.slow_down_at_percent`) cuts f by [`FACTOR_SLOW_DOWN`], once per window.
//!
//! f only moves at window boundaries ([`FACTOR_WINDOW`]) and episodes; the [`Budget`](super::Budget)
//! rebuilds its limiter when it moves.
//!
//! Why one file of this size: the law is one state machine whose rules interact (a rule's
//! constant is tuned against the others); about a third of the file is the explanation above
//! and the doc comments of its constants.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::Learned;

/// One window of the law: at most one warning cut per window, one recovery step per window
/// without any throttling signal.
pub const FACTOR_WINDOW: Duration = Duration::from_millis(500);
/// A rate this close above the proven one is the proven one (the limiters are rebuilt
/// only for rises of 1 %: `REBUILD_ABOVE` of the budget).
pub const REBUILD_MARGIN: f64 = 0.01;
/// Lowest factor (1 % of the configured share: a budget far below the published one still
/// gets requests through; below that the operator should lower `[rate]` itself).
pub const FACTOR_MIN: f64 = 0.01;
/// Multiplier on a warning while no throttled rate is known.
pub const FACTOR_SLOW_DOWN: f64 = 0.9;
/// Recovery and probes stop short of the last throttled rate by this fraction.
pub const SET_BELOW_SERVED: f64 = 0.975;
/// An episode cuts f to at least this fraction of its value (a short span, or one that saw
/// no refill step, cannot take it lower at once).
pub const MAX_CUT: f64 = 0.5;
/// An episode cuts f to at most this fraction of its value.
pub const MIN_CUT: f64 = 0.95;
/// An episode met while probing above the last throttled rate cuts f to no less than this
/// fraction of its value: the probe went past the real budget by little (it was held for long
/// just below), so the cut need not be deeper than the probe's last steps.
pub const PROBE_CUT: f64 = 0.93;
/// How long since the last episode an episode must come to count as ending a probe.
pub const PROBE_HELD: Duration = Duration::from_secs(10);
/// The throttled rate remembered is what Graph served in its best recent span
/// ([`PEAK_SPAN`]) when less than the rate sent, but at least this fraction of the rate sent
/// (far below it, this process may have had less to send than its rate).
pub const PEAK_FLOOR: f64 = 0.9;
/// Graph served less than the rate sent when its best span's rate was below this fraction
/// of it (what it serves of a rate it does not cap varies by a request or so).
pub const PEAK_BELOW: f64 = 0.99;
/// The span the served rate is measured over for that: two seconds, so that a span's
/// misalignment with Graph's refill steps adds at most half a step's budget per second
/// (and a worker's share of a fleet's steps averages over two of them).
pub const PEAK_SPAN: Duration = Duration::from_secs(2);
/// A span measured for the peak starts this long after a pause at the earliest (the answers
/// to the first requests after it are on the wire meanwhile).
pub const PEAK_AFTER_PAUSE: Duration = Duration::from_millis(500);
/// How far back the best span is looked for.
pub const PEAK_LOOKBACK: Duration = Duration::from_secs(6);
/// The first episode (nothing measured yet) multiplies f by this.
pub const FIRST_CUT: f64 = 0.5;
/// Recovery per quiet window up to the served rate, as a fraction of it.
pub const FAST_STEP: f64 = 0.05;
/// Growth per quiet window between the served rate and just below the throttled one: this
/// fraction of the gap (about 20 %/s of it), at least [`PROBE_STEP`].
pub const CLIMB_STEP: f64 = 0.25;
/// Growth per quiet window past that: the probe (0.125 %/s). Each throttling costs its
/// Retry-After (up to seconds of nothing sent), so the probe is slow enough to meet one
/// about once a minute.
pub const PROBE_STEP: f64 = 0.000625;
/// A probe that meets no throttling (no 429, no warning) for this long doubles its step, up
/// to [`PROBE_MAX_DOUBLINGS`] times: a throttled rate remembered far too low (a worker's
/// share of a race after a pause, a leader with less work than its share) is forgotten
/// after about 40 s of probing instead of 146 s, while a probe from just below the real
/// rate meets it at about twice the first step.
pub const PROBE_DOUBLING: Duration = Duration::from_secs(10);
/// Most doublings of the probe's step (32 × [`PROBE_STEP`]: 4 % a second).
pub const PROBE_MAX_DOUBLINGS: i32 = 5;
/// Recovery per quiet window when no throttled rate is known (4 % of the share per second).
pub const RECOVERY_STEP: f64 = 0.02;
/// After the first probe that ends in a 429, the next one waits this long (from the end of
/// its pause) at the rate just below the throttled one.
pub const PROBE_REST_FIRST: Duration = Duration::from_secs(120);
/// The rest between probes doubles after each one that ends in a 429, up to this.
pub const PROBE_REST_MAX: Duration = Duration::from_secs(480);
/// Episodes older than this are no anchor for the served rate (the budget may have changed).
pub const LOOKBACK: Duration = Duration::from_secs(30);
/// A served rate is only measured over a span at least this long.
pub const MIN_SPAN: Duration = Duration::from_secs(1);
/// Once f is this far above the last throttled rate without a 429, the memory is dropped.
pub const FORGET_ABOVE: f64 = 1.2;
/// No recovery for this long after a pause ends: the first requests after it show whether
/// the new rate holds.
pub const SETTLE: Duration = Duration::from_secs(1);
/// An episode this soon after sending resumed bounds the rate by what was sent since: the
/// bucket held at least a second of Graph's rate then, and that was emptied.
pub const RESUMED_SPAN: Duration = Duration::from_secs(1);
/// Once the bucket is known to refill in long steps, an episode holds the rate Graph served
/// over at least this long (two of Graph's 10 s windows).
pub const LONG_RUN: Duration = Duration::from_secs(20);
/// A long-run rate below this fraction of the rate sent is held as it is…
pub const LONG_RUN_FAR: f64 = 0.8;
/// …and above it, the cut is at most to this fraction of the rate sent.
pub const LONG_RUN_CUT: f64 = 0.95;
/// Fewest requests sent since resuming for that bound to hold.
pub const RESUMED_FEWEST: u64 = 5;
/// A rate in force this long without any episode held: Graph's window (10 s for its request
/// buckets) passed twice at it, so it is a proven rate (`held_at`) the law comes back to
/// after an episode above it, instead of climbing from a cut.
pub const HELD_FOR: Duration = Duration::from_secs(20);
/// An episode at the proven rate (jitter of arrivals in a small bucket, or the budget fell)
/// lowers it to this fraction of the rate that was throttled.
pub const HELD_CUT: f64 = 0.98;
/// An episode within this long of a change in the live count is the change's (a joiner
/// counted late, a dead worker's share handed out), not the rate's: the proven rate stays.
pub const CENSUS_SETTLE: Duration = Duration::from_secs(5);
/// Recovery per quiet window up to the proven rate, as a fraction of it (after the pause's
/// settle, back in two seconds).
pub const HELD_STEP: f64 = 0.25;

/// The law of one limit.
#[derive(Debug)]
pub(super) struct Law {
    /// The factor applied to this process's share of the limit.
    pub(super) factor: f64,
    /// The rate (as a factor) Graph throttled at, last time: an upper bound of the real one.
    pub(super) throttled_at: Option<f64>,
    /// The rate (as a factor) Graph served between the last episodes, pauses included: a
    /// lower bound of the real one.
    pub(super) served_at: Option<f64>,
    /// Answers Graph served for this limit (429s excluded), counted by this process, each
    /// divided by this process's full share of the limit per second when it was served: the
    /// fleet's served rate as a factor, whatever the live count was then (a worker that
    /// joins or dies changes every share, and a span measured across the change in requests
    /// would be read at the new share: after a kill, two thirds of the rate).
    served: f64,
    window_start: Instant,
    signalled: bool,
    last_slow_down: Option<Instant>,
    /// 429s before this belong to the episode that set it (requests already on the wire).
    episode_until: Option<Instant>,
    /// No recovery before this (the end of the last pause plus [`SETTLE`]).
    hold_until: Option<Instant>,
    /// Time spent paused by episodes so far (each pause counted when it starts).
    paused: Duration,
    /// End of the last pause counted in `paused`.
    paused_until: Option<Instant>,
    /// The episodes of the last [`LOOKBACK`].
    anchors: VecDeque<Anchor>,
    /// One point per window of the last [`LOOKBACK`]: where the served rate is measured
    /// from when no episode is that recent (a bucket not known to be empty then: an
    /// estimate, not a bound).
    checkpoints: VecDeque<Anchor>,
    /// The rest after the last probe that ended in a 429 (zero: none yet).
    probe_rest: Duration,
    /// No probe above the throttled rate before this.
    probe_after: Option<Instant>,
    /// When the probe under way began (its step doubles each [`PROBE_DOUBLING`]); `None`:
    /// no probe, or one that a throttling, a warning or a rest ended.
    probe_from: Option<Instant>,
    /// Another worker of the fleet leads: this one never probes above the throttled rate, it
    /// takes the leader's factor instead ([`Law::follow`]).
    pub(super) follower: bool,
    /// Other workers share the budget. This process's best span is its share of what Graph
    /// served the fleet, which varies by a request or two a second: "Graph served all that
    /// was sent" twice in a row says nothing of Graph's window then, so the long-run rule
    /// waits for `stepped` (a long run spans the pauses, which waste a 1 s bucket: it once
    /// held a fleet at 57 % of the budget, and at 94 % after every failed probe).
    pub(super) shared: bool,
    /// The highest factor held for [`HELD_FOR`] without an episode: Graph served it
    /// (a lower bound of the real rate, unlike `served_at` not lowered by pauses).
    pub(super) held_at: Option<f64>,
    /// The factor at each window's end since the last episode's pause settled, for
    /// [`HELD_FOR`] back.
    factors: VecDeque<(Instant, f64, f64)>,
    /// No proven rate is measured from before this (the last pause's end plus [`SETTLE`]).
    steady_from: Instant,
    /// The pauses of the last [`LOOKBACK`] (start, end): no peak is measured across one.
    pauses: VecDeque<(Instant, Instant)>,
    /// Requests this process sent for this limit, counted like `served` (each divided by
    /// the share when sent).
    sent: f64,
    /// Requests this process sent for this limit.
    sent_count: u64,
    /// Graph's bucket refills in steps longer than a pause: throttled right after one.
    stepped: bool,
    /// The last episode where Graph had served all that was sent over its best 2 s.
    uncapped_at: Option<Instant>,
    /// When sending resumed after the last pause (or began), and `sent` and `sent_count`
    /// then.
    resumed: Option<(Instant, f64, u64)>,
    /// The best recent served rates the other busy workers reported (their
    /// [`Learned::peak`]): in a fleet, an episode takes the average of these and this
    /// process's own for the rate Graph served, not this process's share alone.
    pub(super) peer_peaks: Vec<f64>,
}

/// An episode as a starting point of the served rate.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    /// `Law::served` then.
    served: f64,
    /// `Law::paused` before its own pause.
    paused: Duration,
    /// The factor in force then.
    factor: f64,
}

impl Law {
    /// f = 1, nothing learned, the first window starting at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            factor: 1.0,
            throttled_at: None,
            served_at: None,
            served: 0.0,
            window_start: now,
            signalled: false,
            last_slow_down: None,
            episode_until: None,
            hold_until: None,
            paused: Duration::ZERO,
            paused_until: None,
            anchors: VecDeque::new(),
            checkpoints: VecDeque::new(),
            probe_rest: Duration::ZERO,
            probe_after: None,
            probe_from: None,
            follower: false,
            shared: false,
            held_at: None,
            factors: VecDeque::new(),
            steady_from: now,
            pauses: VecDeque::new(),
            sent: 0.0,
            sent_count: 0,
            stepped: false,
            uncapped_at: None,
            resumed: None,
            peer_peaks: Vec::new(),
        }
    }

    /// Graph served one request of this limit (any answer but a throttling one);
    /// `share_rate` is this process's full share of the limit per second now (the
    /// configured rate divided by the live workers).
    pub(super) fn served(&mut self, share_rate: f64) {
        self.served += 1.0 / share_rate.max(1e-9);
    }

    /// Close every window that ended by `now`; each quiet one recovers a step.
    pub(super) fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        let windows = (elapsed.as_nanos() / FACTOR_WINDOW.as_nanos()) as u64;
        if windows == 0 {
            return;
        }
        let quiet = if self.signalled { windows - 1 } else { windows };
        let held = self.hold_until.is_some_and(|h| now < h);
        if !held {
            // The quiet windows are the last ones before `now`; each rests if it ended
            // before the next probe is due.
            for k in (0..quiet).rev() {
                let ended = now - FACTOR_WINDOW * k as u32;
                let resting = self.follower || self.probe_after.is_some_and(|p| ended < p);
                self.recover_step(resting, ended);
            }
        }
        self.signalled = false;
        self.prove(now);
        let remainder =
            Duration::from_nanos((elapsed.as_nanos() % FACTOR_WINDOW.as_nanos()) as u64);
        self.window_start = now - remainder;
        self.checkpoints.push_back(self.anchor(now));
        while self
            .checkpoints
            .front()
            .is_some_and(|a| now.saturating_duration_since(a.at) > LOOKBACK)
        {
            self.checkpoints.pop_front();
        }
    }

    /// A task asks to send at `now`: the first one since the last pause (or ever) marks when
    /// sending resumed.
    pub(super) fn sending(&mut self, now: Instant) {
        if self.resumed.is_none() && self.paused_until.is_none_or(|p| now >= p) {
            self.resumed = Some((now, self.sent, self.sent_count));
        }
    }

    /// A request of this limit leaves now (see [`Law::served`] for `share_rate`).
    pub(super) fn sent(&mut self, share_rate: f64) {
        self.sent += 1.0 / share_rate.max(1e-9);
        self.sent_count += 1;
    }

    /// Record the factor at `now` and raise the proven rate to the lowest factor of the last
    /// [`HELD_FOR`] when that long passed without an episode.
    fn prove(&mut self, now: Instant) {
        if now < self.steady_from {
            return;
        }
        self.factors.push_back((now, self.factor, self.served));
        while self
            .factors
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > HELD_FOR)
        {
            self.factors.pop_front();
        }
        if now.saturating_duration_since(self.steady_from) >= HELD_FOR {
            // The lowest factor in force, and no more than Graph served meanwhile (a
            // process with less to send than its rate proves only what it sent).
            let served = self.factors.front().map_or(0.0, |(at, _, served)| {
                (self.served - served) / now.saturating_duration_since(*at).as_secs_f64().max(1.0)
            });
            let lowest = self
                .factors
                .iter()
                .map(|(_, f, _)| *f)
                .fold(served, f64::min);
            if lowest.is_finite() && self.held_at.is_none_or(|h| lowest > h) {
                self.held_at = Some(lowest);
            }
        }
    }

    /// One quiet window's recovery, the window ending at `ended`; `resting`: no probe above
    /// the throttled rate now.
    fn recover_step(&mut self, resting: bool, ended: Instant) {
        let f = self.factor;
        // Kept only by a window that probes: any other ends the probe under way.
        let probe_from = self.probe_from.take();
        let held = self.held_at.filter(|h| f < *h);
        let next = match (self.served_at, self.throttled_at) {
            // Back to the rate that held (Graph served it for long), quickly.
            _ if held.is_some() => (f + held.unwrap_or(f) * HELD_STEP).min(held.unwrap_or(f)),
            (Some(served), _) if f < served => (f + served * FAST_STEP).min(served),
            (_, Some(at)) if f < at * SET_BELOW_SERVED => {
                let target = at * SET_BELOW_SERVED;
                (f + ((target - f) * CLIMB_STEP).max(f * PROBE_STEP)).min(target)
            }
            (_, Some(_)) if resting => f,
            (_, Some(_)) => {
                let from = probe_from.unwrap_or(ended);
                self.probe_from = Some(from);
                let periods =
                    ended.saturating_duration_since(from).as_nanos() / PROBE_DOUBLING.as_nanos();
                let doublings = i32::try_from(periods)
                    .map_or(PROBE_MAX_DOUBLINGS, |p| p.min(PROBE_MAX_DOUBLINGS));
                f * (1.0 + PROBE_STEP * 2f64.powi(doublings))
            }
            (_, None) => f + RECOVERY_STEP,
        };
        self.factor = next.min(1.0);
        if self.factor > 0.999 {
            self.factor = 1.0;
        }
        if self
            .throttled_at
            .is_some_and(|at| self.factor >= at * FORGET_ABOVE || self.factor >= 1.0)
        {
            self.throttled_at = None;
            self.served_at = None;
            self.probe_rest = Duration::ZERO;
            self.probe_after = None;
            self.probe_from = None;
            self.held_at = None;
        }
    }

    /// Graph reported the limit percentage at or above the threshold.
    pub(super) fn warned(&mut self, now: Instant) {
        self.roll(now);
        match self.throttled_at {
            // Known: only a probe above the last throttled rate stops (a small bucket warns
            // even below its rate, so a warning there says nothing new).
            Some(at) => {
                if self.factor >= at {
                    self.signalled = true;
                    // Near Graph's limit: the probe starts again at its first step.
                    self.probe_from = None;
                }
            }
            None => {
                self.signalled = true;
                if self
                    .last_slow_down
                    .is_none_or(|t| now.saturating_duration_since(t) >= FACTOR_WINDOW)
                {
                    self.factor = (self.factor * FACTOR_SLOW_DOWN).max(FACTOR_MIN);
                    self.last_slow_down = Some(now);
                }
            }
        }
    }

    /// A throttling episode of this limit at `now` (a 429 here or a pause announced by another
    /// worker), pausing until `pause_end`; `census_moved`: the live count changed within
    /// [`CENSUS_SETTLE`].
    /// `saturated`: tasks were waiting for the budget then (the rate bound what was sent);
    /// `own`: a 429 of this process (not a pause another worker announced).
    pub(super) fn throttled(
        &mut self,
        now: Instant,
        pause_end: Instant,
        census_moved: bool,
        saturated: bool,
        own: bool,
    ) {
        self.roll(now);
        self.signalled = true;
        self.probe_from = None;
        let pause_end = pause_end.max(now);
        let settled = pause_end + SETTLE;
        // Nothing is proven from before the pause is over.
        self.steady_from = self.steady_from.max(settled);
        self.factors.clear();
        self.hold_until = Some(self.hold_until.map_or(settled, |h| h.max(settled)));
        // Another worker's pause before this process sent anything (it joined the fleet
        // mid-pause): its rate is not what Graph throttled, and it has nothing to measure
        // from; it waits the pause out at the rate it took from the fleet (halved here, a
        // joiner once started at half its share).
        // The pause is still one: no peak is measured across it (a leader that joined so
        // once took a span half inside it for Graph's rate: 14.7/s of 30, and held there).
        if !own && self.sent_count == 0 {
            self.count_pause(now, pause_end);
            self.pauses.push_back((now, pause_end));
            return;
        }
        // 429s answered to requests that were already in flight belong to the same episode,
        // and so does another worker's pause announced within SETTLE of this one's end (the
        // same throttling, its Retry-After counted from a 429 a little later).
        if let Some(until) = self.episode_until {
            if now < until || (!own && now < until + SETTLE) {
                self.episode_until = Some(until.max(pause_end));
                // A later 429 of the episode may announce a longer Retry-After: the pause
                // grew, and the served rate is measured over the time not paused (counted
                // short, the next episode's upper bound came out at half the rate sent and
                // halved a fleet's rate).
                self.count_pause(now, pause_end);
                return;
            }
        }
        self.episode_until = Some(pause_end);
        let last_episode = self.anchors.back().map(|a| a.at);
        while self
            .anchors
            .front()
            .is_some_and(|a| now.saturating_duration_since(a.at) > LOOKBACK)
        {
            self.anchors.pop_front();
        }
        // From the latest anchor: served over the whole span (pauses included, when the
        // bucket may have refilled past its capacity: a lower bound) and over the time not
        // paused (a bucket that was full at a pause's end counts as sent: an upper bound).
        let far_enough = |a: &&Anchor| now.saturating_duration_since(a.at) >= MIN_SPAN;
        let estimate = self
            .anchors
            .iter()
            .rev()
            .find(far_enough)
            .or_else(|| self.checkpoints.iter().find(far_enough))
            .map(|a| {
                let span = now.saturating_duration_since(a.at);
                let active = span.saturating_sub(self.paused - a.paused);
                let served = self.served - a.served;
                (
                    served / span.as_secs_f64(),
                    served / active.as_secs_f64().max(0.1),
                )
            });
        self.anchors.push_back(self.anchor(now));
        while self
            .pauses
            .front()
            .is_some_and(|(_, until)| now.saturating_duration_since(*until) > LOOKBACK)
        {
            self.pauses.pop_front();
        }
        self.count_pause(now, pause_end);
        let before = self.factor;
        // The rate that was throttled: what Graph served in its best recent span, but never
        // below PEAK_FLOOR of the rate sent (a
        // bucket refilled by the second caps every second at its budget, while f may have
        // climbed a few percent past it before the second that overflowed came; far below,
        // this process may simply have had less to send).
        let own_peak = self.peak_span(now);
        let peak_span =
            own_peak.and_then(|(peak, lowest)| self.fleet_peak(peak).map(|p| (p, lowest)));
        let peak = peak_span.map(|(peak, _)| peak);
        // The rate was known before this episode (a measured one, or a proven rate).
        let known = self.probe_after.is_some() || self.held_at.is_some();
        // The pause sending resumed from, if it lasted a second or more.
        let long_pause = self
            .pauses
            .back()
            .is_some_and(|(from, until)| until.saturating_duration_since(*from) >= MIN_SPAN);
        self.pauses.push_back((now, pause_end));
        // Graph throttled within RESUMED_SPAN of sending again after a pause (or of the
        // first request): its bucket held at least a second of its rate then (it refilled
        // during the pause, and Retry-After is 1 s at least; Graph's buckets hold 10 s and
        // more), and what was sent since emptied it: the rate is at most that per second, a
        // bound a bucket refilled in 1 s steps reaches (it holds one second). Counted as sent
        // (the answers to the requests served just before the 429 are still on the wire;
        // the few sent after it make the bound higher, never lower).
        // Fewer than RESUMED_FEWEST requests: the bucket did not refill during the pause (a
        // longer refill step), and says nothing of the rate.
        let resumed = self.resumed.take().and_then(|(at, sent, count)| {
            let soon = now.saturating_duration_since(at) <= RESUMED_SPAN;
            let few = self.sent_count - count < RESUMED_FEWEST;
            // Throttled at once after a pause of a second or more: the bucket refills in
            // steps longer than that (Graph's 10 s windows); learned for good. Not in a
            // fleet: there the others resume too, a few milliseconds apart, and empty a
            // 1 s step before this process sends five (a comego run learned it so and held
            // the fleet at 92 % of the budget for three minutes by the long-run rule).
            if own && soon && few && long_pause && !self.shared {
                self.stepped = true;
            }
            (soon && !few).then_some(self.sent - sent)
        });
        // Graph served all that was sent over its best 2 s, and did so at the episode before
        // too (within LOOKBACK): its window is longer than that, and the rate is above what
        // it refills over the window, not above what it serves in a burst.
        let uncapped = peak.is_some_and(|peak| peak >= before * PEAK_BELOW);
        let recurring = uncapped
            && self
                .uncapped_at
                .is_some_and(|t| now.saturating_duration_since(t) <= LOOKBACK);
        if uncapped {
            self.uncapped_at = Some(now);
        }
        // In steps that long, a rate a little above the budget empties each step before
        // its end (one 429 a window) while Graph served all that was sent in any 2 s: what
        // it served over the last LOOKBACK (several steps) is the rate to hold.
        let long_run = self
            .checkpoints
            .front()
            .filter(|a| now.saturating_duration_since(a.at) >= LONG_RUN)
            .map(|a| (self.served - a.served) / now.saturating_duration_since(a.at).as_secs_f64())
            .filter(|_| self.stepped || (recurring && !self.shared));
        // Never below that best span either: Graph served it, so a rate sent lower was not
        // what emptied the bucket (a burst after a pause, another worker's start was).
        // Tasks were waiting for the budget (the rate, not the work, bound what was sent)
        // and Graph served less than that rate over its best span: it capped the span, and
        // what it served is its rate (a span never holds a pause, so a bucket refilled in
        // steps serves at most its rate; a longer bucket serves more, never less).
        // Compared with the lowest rate in force over that span, not the rate now: a rate
        // that climbed through it sent less than it does now (a fleet climbing back after a
        // pause met a 429 2 s into the climb, took what it served then, 28.4/s of 30, for
        // Graph's rate, and rested there for two minutes).
        let capped = saturated
            && peak_span.is_some_and(|(peak, lowest)| peak < lowest.min(before) * PEAK_BELOW);
        let throttled_at = match peak {
            Some(peak) if capped => peak,
            // Never above the rate sent: in a fleet, this process's share of what Graph
            // served varies by a request or two a second, and its best span's rate can
            // come out above the rate that was throttled.
            Some(peak) => peak.max(before * PEAK_FLOOR).min(before),
            None => before,
        };
        // Graph served less than was sent, but at least PEAK_FLOOR of it: a bucket refilled
        // in steps capped the seconds, and the real rate is measured (served all that was
        // sent, it says nothing of how far below the real rate is).
        let measured = capped
            || peak.is_some_and(|peak| peak >= before * PEAK_FLOOR && peak < before * PEAK_BELOW);
        // A probe: at or above the last throttled rate's target, long after that episode.
        let probing = self
            .throttled_at
            .is_some_and(|at| before >= at * SET_BELOW_SERVED * 0.999)
            && last_episode.is_some_and(|t| now.saturating_duration_since(t) >= PROBE_HELD);
        // A failed probe found the budget where it was: the next one waits. (Not after
        // other episodes: their remembered rate may be too low, the rate sent then or a
        // peer's, and a fleet held there for minutes in the comego benchmark.)
        // Above the proven rate (by more than the limiters' rounding): the budget lies
        // between the two.
        let above_held = self
            .held_at
            .is_some_and(|h| before > h * (1.0 + REBUILD_MARGIN));
        // The budget is known (Graph capped what was sent, or it lies between the proven
        // rate and this one): the next probe waits too. (Before the served counts followed
        // the live count, a remembered rate could be a fraction of the fleet's, and a fleet
        // rested on it at 12-20/s of 30 for minutes in the comego benchmark.)
        if probing || measured || (above_held && !census_moved) {
            self.probe_rest = (self.probe_rest * 2).clamp(PROBE_REST_FIRST, PROBE_REST_MAX);
            self.probe_after = Some(pause_end + self.probe_rest);
        }
        // The proven rate itself was throttled: the arrivals' jitter in a small bucket, or
        // the budget fell (then what Graph served says by how much). Not when the live
        // count just changed: a joiner counted late, not the rate, overfilled the bucket.
        if let Some(h) = self.held_at {
            if !above_held && !census_moved {
                let fell = peak
                    .filter(|peak| *peak < before * PEAK_BELOW)
                    .map_or(f64::INFINITY, |peak| peak * SET_BELOW_SERVED);
                self.held_at = Some((before * HELD_CUT).min(h).min(fell).max(FACTOR_MIN));
            }
        }
        match estimate {
            Some((lower, upper)) => {
                // Halfway between the bounds: the lower one is exact while pauses stay
                // shorter than the bucket takes to fill (Graph's 10 s buckets); past that the
                // bucket overflowed during them and the upper one is the closer. Never above
                // MIN_CUT of the rate that was throttled, nor below MAX_CUT of it.
                // Graph served all that was sent over its best 2 s and its steps are short
                // (not `stepped`): the rate was a few percent above its budget at most (a
                // climb's last steps, a share's jitter), not far (a fleet's leader once cut
                // to 70 % there and spent 7 s climbing back).
                let floor = if probing || (uncapped && !self.stepped) {
                    PROBE_CUT
                } else {
                    MAX_CUT
                };
                self.factor = ((lower + upper.max(lower)) / 2.0)
                    .clamp(before * floor, before * MIN_CUT)
                    .max(FACTOR_MIN);
                self.throttled_at = Some(throttled_at);
                // Never above the new target (Graph served less than the rate sent), and
                // right at it when Graph's rate was measured: the pause is the whole cost.
                let target = throttled_at * SET_BELOW_SERVED;
                // Graph served far less than was sent (it capped the steps, or this
                // process had less to send): no deeper than SET_BELOW_SERVED of what it
                // served, which it just served.
                let served_floor = peak
                    .filter(|peak| *peak < before * PEAK_FLOOR)
                    .map_or(0.0, |peak| peak * SET_BELOW_SERVED);
                self.factor = if measured {
                    target
                } else {
                    self.factor.max(served_floor).min(target)
                }
                .max(FACTOR_MIN);
                self.served_at = Some(lower.min(self.factor));
            }
            None => {
                self.factor = (before * FIRST_CUT).max(FACTOR_MIN);
                self.throttled_at = Some(throttled_at);
                self.served_at = None;
            }
        }
        // Only far below the rate sent (a second's content is one step of a bucket
        // refilled in steps, give or take the requests on the wire at the pause).
        if let Some(bound) = resumed.filter(|b| *b > 0.0 && *b < before * PEAK_FLOOR) {
            self.factor = self.factor.min(bound).max(FACTOR_MIN);
            self.throttled_at = self.throttled_at.map(|at| at.min(bound));
        }
        // Graph served that on average, steps and pauses included: held without a margin
        // (a step sees that rate times its length, what it served). A pause that outlasted
        // a step's end wasted some of it, so close to the rate sent the cut is LONG_RUN_CUT.
        if let Some(rate) = long_run.filter(|r| *r > 0.0) {
            let rate = if rate < before * LONG_RUN_FAR {
                rate
            } else {
                rate.max(before * LONG_RUN_CUT)
            };
            self.throttled_at = self.throttled_at.map(|at| at.min(rate));
            self.factor = self.factor.min(rate).max(FACTOR_MIN);
        }
        // The live count just changed (a joiner sent before the others counted it) while
        // the rate was known: that rate was not what overfilled the bucket, so no deeper
        // than HELD_CUT.
        if census_moved && known {
            self.factor = self.factor.max(before * HELD_CUT);
            self.throttled_at = self.throttled_at.map(|at| at.max(before));
        }
        // Back at the proven rate once the pause is over: Graph served it for long, and the
        // pause emptied whatever burst filled the bucket.
        if let Some(h) = self.held_at {
            self.factor = self.factor.max(h.min(before));
            self.throttled_at = self.throttled_at.map(|at| at.max(h));
        }
        tracing::debug!(
            own,
            follower = self.follower,
            census_moved,
            before,
            factor = self.factor,
            throttled_at = ?self.throttled_at,
            held_at = ?self.held_at,
            peak = ?peak,
            own_peak = ?own_peak.map(|(peak, _)| peak),
            estimate = ?estimate,
            resumed = ?resumed,
            long_run = ?long_run,
            "graph budget episode"
        );
    }

    /// Count the pause from `now` to `pause_end` in `paused`, less what is counted already.
    fn count_pause(&mut self, now: Instant, pause_end: Instant) {
        let counted_from = self.paused_until.map_or(now, |p| p.max(now));
        self.paused += pause_end.saturating_duration_since(counted_from);
        self.paused_until = Some(self.paused_until.map_or(pause_end, |p| p.max(pause_end)));
    }

    /// Where the law stands at `now`: what was served, paused, and the factor in force.
    fn anchor(&self, now: Instant) -> Anchor {
        Anchor {
            at: now,
            served: self.served,
            paused: self.paused,
            factor: self.factor,
        }
    }

    /// The best rate Graph served over [`PEAK_SPAN`] (as a factor) within the last
    /// [`PEAK_LOOKBACK`], between the windows' checkpoints, and the lowest factor in force
    /// over that span (a factor that climbed through it sent less than the factor at its
    /// end); `None` without any.
    fn peak_span(&self, now: Instant) -> Option<(f64, f64)> {
        let now_point = self.anchor(now);
        let points: Vec<&Anchor> = self
            .checkpoints
            .iter()
            .filter(|a| now.saturating_duration_since(a.at) <= PEAK_LOOKBACK)
            .chain([&now_point])
            .collect();
        let mut peak: Option<(f64, f64)> = None;
        for (i, end) in points.iter().enumerate() {
            // The latest start at least PEAK_SPAN before this end.
            let Some(first) = points[..i]
                .iter()
                .rposition(|a| end.at.saturating_duration_since(a.at) >= PEAK_SPAN)
            else {
                continue;
            };
            let start = points[first];
            // Nothing was sent during a pause, and the answers to what was sent at its end
            // come a latency later: a span holding either says nothing of the rate.
            if self
                .pauses
                .iter()
                .any(|(from, until)| *from < end.at && *until + PEAK_AFTER_PAUSE > start.at)
            {
                continue;
            }
            let span = end.at.saturating_duration_since(start.at).as_secs_f64();
            let rate = (end.served - start.served) / span;
            if peak.is_none_or(|(p, _)| rate > p) {
                let lowest = points[first..=i]
                    .iter()
                    .map(|a| a.factor)
                    .fold(f64::INFINITY, f64::min);
                peak = Some((rate, lowest));
            }
        }
        peak
    }

    /// The best rate Graph served this process over [`PEAK_SPAN`] lately (as a factor), for
    /// the other workers ([`Learned::peak`]).
    pub(super) fn peak(&self, now: Instant) -> Option<f64> {
        self.peak_span(now).map(|(peak, _)| peak)
    }

    /// What Graph served the fleet over its best recent span, as a factor, from this
    /// process's `own`: in a fleet, at least the average of it and the peaks the other busy
    /// workers reported. Each is a worker's share of what Graph served, read at the live
    /// count, so their average is the fleet's rate whichever worker won the race for a
    /// refill step (alone, a leader once read 6 of a step's 30 answers as Graph's rate:
    /// 12/s of 30, and held the fleet there for 280 s). Only ever raised: a peer's peak is
    /// up to a heartbeat old (taken alone, the average held the paused-time fleet of
    /// `fleet_tests` at 94.8 % of the budget where its own share held it at 96.0 %), and a
    /// share read too high costs a 429 and a measure, one too low minutes below the budget.
    /// A peer's value that is not a rate is left out, and none counts above 1 (the
    /// configured share): a key holder's heartbeat can turn "Graph served less than was
    /// sent" into "served all", the rule without a measure, never into a lower rate.
    /// `None` in a fleet whose other workers reported none (their spans all touched a
    /// pause): this process's share alone is no measure (a leader that got a third of the
    /// steps after a pause, the other worker none it could report, took 64 % of the budget
    /// for Graph's rate and held the fleet there for two minutes).
    fn fleet_peak(&self, own: f64) -> Option<f64> {
        if !self.shared {
            return Some(own);
        }
        let (sum, count) = self
            .peer_peaks
            .iter()
            .filter(|p| p.is_finite() && **p >= 0.0)
            .fold((own, 1.0), |(sum, count), p| {
                (sum + p.min(1.0), count + 1.0)
            });
        (count > 1.0).then(|| own.max(sum / count))
    }

    /// This law leads the fleet from `now` on; it followed another worker's until then. What
    /// it took from that leader may be a probe under way above the throttled rate, unproven
    /// (a joiner that came to lead probed at once, 1.5 % over Graph's budget 25 s later, and
    /// the fleet met a 429 as soon as the count changed): it holds at the target below the
    /// throttled rate (or the proven rate, if higher) and rests before it probes itself.
    pub(super) fn take_lead(&mut self, now: Instant) {
        self.follower = false;
        let Some(at) = self.throttled_at else {
            return;
        };
        let target = (at * SET_BELOW_SERVED).max(self.held_at.unwrap_or(0.0));
        self.factor = self.factor.min(target).max(FACTOR_MIN);
        let rest_until = now + PROBE_REST_FIRST;
        self.probe_after = Some(self.probe_after.map_or(rest_until, |p| p.max(rest_until)));
    }

    /// Take what another worker learned, when this one has learned nothing itself: a
    /// worker joining a throttled fleet starts at the fleet's rate, not at the configured one.
    /// Only ever lowers f.
    /// Its proven rate comes with it.
    pub(super) fn adopt(&mut self, peer: Learned) {
        let Some(throttled_at) = peer.throttled_at else {
            return;
        };
        let valid = |f: f64| f.is_finite() && f > 0.0;
        if self.throttled_at.is_some()
            || !(valid(peer.factor) && valid(throttled_at))
            || peer.held_at.is_some_and(|h| !valid(h))
        {
            return;
        }
        let factor = peer.factor.clamp(FACTOR_MIN, 1.0);
        if factor < self.factor {
            self.factor = factor;
            self.throttled_at = Some(throttled_at.clamp(factor, 1.0));
            self.held_at = peer.held_at.map(|h| h.clamp(FACTOR_MIN, 1.0));
        }
    }

    /// Take the fleet leader's factor and throttled rate (a follower's view of the budget is
    /// the leader's: the fleet probes once, not once per worker). Up or down, except while
    /// this law is held after an episode: the leader's view may be older than it (its
    /// heartbeat crossed the pause announcement), so then only lower.
    ///
    /// The leader's proven rate is taken too, in either case: it is what the fleet held for
    /// long, and the worker that leads next (this one, should the leader die) returns to it
    /// after a throttling instead of to its own measure of its share, which a fleet's noise
    /// makes low (a kill once left the survivors at 23-24/s of 30 for minutes).
    pub(super) fn follow(&mut self, now: Instant, leader: Learned) {
        let Learned {
            factor,
            throttled_at,
            held_at,
            ..
        } = leader;
        let valid = |f: f64| f.is_finite() && f > 0.0;
        if !valid(factor)
            || throttled_at.is_some_and(|at| !valid(at))
            || held_at.is_some_and(|h| !valid(h))
        {
            return;
        }
        self.roll(now);
        // A leader that knows a throttled rate but proved none yet (it joined, or just took
        // the lead) leaves this worker's own; one that forgot its throttled rate (the budget
        // grew) forgot the proven one too.
        if held_at.is_some() || throttled_at.is_none() {
            self.held_at = held_at.map(|h| h.clamp(FACTOR_MIN, 1.0));
        }
        let factor = factor.clamp(FACTOR_MIN, 1.0);
        let held = self.hold_until.is_some_and(|h| now < h);
        if held && factor >= self.factor {
            return;
        }
        self.factor = factor;
        match throttled_at {
            Some(at) => self.throttled_at = Some(at.clamp(FACTOR_MIN, 1.0)),
            // The leader forgot (the budget grew) or never met a throttling.
            None => {
                self.throttled_at = None;
                self.served_at = None;
            }
        }
    }
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
