//! [`Adaptive`]: the budget's adaptive factor f, a pure state machine (time is passed in).
//!
//! Graph warns with `x-ms-throttle-limit-percentage` from 80 % of a limit and throttles with
//! 429 at 100 % (<https://learn.microsoft.com/en-us/graph/throttling-limits>). The factor
//! scales the [`Budget`](super::Budget) down on either signal and back up, a step per quiet
//! window, once Graph stops pushing back.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest window of the adaptive factor: at most one slow-down step per window, and one
/// recovery step per window without any throttling signal.
pub const FACTOR_WINDOW: Duration = Duration::from_millis(500);
/// Lowest adaptive factor.
pub const FACTOR_MIN: f64 = 0.05;
/// Multiplier when Graph reports the limit percentage at or above the threshold.
pub const FACTOR_SLOW_DOWN: f64 = 0.9;
/// Multiplier on a 429 (once per pause).
pub const FACTOR_THROTTLED: f64 = 0.75;
/// Additive recovery per quiet window.
pub const FACTOR_RECOVERY_STEP: f64 = 0.02;

/// The adaptive factor and the windows it moves in.
#[derive(Debug)]
pub(super) struct Adaptive {
    pub(super) factor: f64,
    window_start: Instant,
    signalled: bool,
    last_slow_down: Option<Instant>,
    throttle_cut_until: Option<Instant>,
}

impl Adaptive {
    /// f = 1, the first window starting at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            factor: 1.0,
            window_start: now,
            signalled: false,
            last_slow_down: None,
            throttle_cut_until: None,
        }
    }

    /// Close every window that ended by `now`; each one without a signal recovers a step.
    pub(super) fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        let windows = (elapsed.as_nanos() / FACTOR_WINDOW.as_nanos()) as u64;
        if windows == 0 {
            return;
        }
        let quiet = if self.signalled { windows - 1 } else { windows };
        self.factor = (self.factor + FACTOR_RECOVERY_STEP * quiet as f64).min(1.0);
        if self.factor > 0.999 {
            self.factor = 1.0;
        }
        self.signalled = false;
        let remainder =
            Duration::from_nanos((elapsed.as_nanos() % FACTOR_WINDOW.as_nanos()) as u64);
        self.window_start = now - remainder;
    }

    /// Graph reported the limit percentage at or above the threshold.
    pub(super) fn slow_down(&mut self, now: Instant) {
        self.roll(now);
        self.signalled = true;
        if self
            .last_slow_down
            .is_none_or(|t| now.saturating_duration_since(t) >= FACTOR_WINDOW)
        {
            self.factor = (self.factor * FACTOR_SLOW_DOWN).max(FACTOR_MIN);
            self.last_slow_down = Some(now);
        }
    }

    /// A 429 that started (or joined) a pause ending at `pause_end`.
    pub(super) fn throttled(&mut self, now: Instant, pause_end: Instant) {
        self.roll(now);
        self.signalled = true;
        // 429s answered to requests that were already in flight belong to the same pause.
        if self.throttle_cut_until.is_none_or(|t| now >= t) {
            self.factor = (self.factor * FACTOR_THROTTLED).max(FACTOR_MIN);
            self.throttle_cut_until = Some(pause_end.max(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn factor_drops_on_high_percentage_once_per_window_and_recovers() {
        let t0 = Instant::now();
        let mut a = Adaptive::new(t0);
        a.slow_down(t0);
        a.slow_down(t0 + Duration::from_millis(100));
        assert!(
            (a.factor - 0.9).abs() < 1e-9,
            "one step per window: {}",
            a.factor
        );
        a.slow_down(t0 + Duration::from_millis(600));
        assert!((a.factor - 0.81).abs() < 1e-9);
        // The window holding the signal does not recover; each quiet one adds a step.
        a.roll(t0 + Duration::from_millis(1000));
        assert!((a.factor - 0.81).abs() < 1e-9, "{}", a.factor);
        // Two quiet windows: [1.0 s, 1.5 s) and [1.5 s, 2.0 s).
        a.roll(t0 + Duration::from_millis(2000));
        assert!((a.factor - 0.85).abs() < 1e-9, "{}", a.factor);
        a.roll(t0 + Duration::from_secs(60));
        assert_eq!(a.factor, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn factor_drops_once_per_pause_on_429_and_never_below_the_floor() {
        let t0 = Instant::now();
        let mut a = Adaptive::new(t0);
        let pause_end = t0 + Duration::from_secs(2);
        a.throttled(t0, pause_end);
        a.throttled(t0 + Duration::from_millis(50), pause_end);
        assert!((a.factor - 0.75).abs() < 1e-9);
        // A later pause cuts again (after five quiet windows recovered 0.75 to 0.85).
        a.throttled(t0 + Duration::from_secs(3), t0 + Duration::from_secs(4));
        assert!((a.factor - 0.85 * 0.75).abs() < 1e-9, "{}", a.factor);
        for i in 0..100 {
            let at = t0 + Duration::from_secs(5) + Duration::from_millis(100 * i);
            a.throttled(at, at);
        }
        assert_eq!(a.factor, FACTOR_MIN);
    }
}
