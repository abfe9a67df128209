//! [`PauseGate`]: the one Retry-After pause shared by every task of the process, and the
//! announcements of its throttlings to whoever tells the other workers (the fleet).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::budget::Limit;
use super::lock;

/// A throttling this process saw: its pause ends at `until`, on `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttling {
    /// When the pause ends.
    pub until: Instant,
    /// The limit Graph named.
    pub limit: Limit,
}

/// One pause shared by every task of the process: a Retry-After (or a throttling backoff)
/// seen by any task holds back all of them, because Graph throttles the app, not the request
/// (<https://learn.microsoft.com/en-us/graph/throttling>).
///
/// Uses tokio's clock, so tests can drive it with `tokio::time::pause()`.
#[derive(Debug)]
pub struct PauseGate {
    until: Mutex<Option<Instant>>,
    announced: broadcast::Sender<Throttling>,
}

impl Default for PauseGate {
    fn default() -> Self {
        Self {
            until: Mutex::new(None),
            // A subscriber that lags loses the oldest announcements: only the latest matter.
            announced: broadcast::channel(16).0,
        }
    }
}

impl PauseGate {
    /// The throttlings this process announces from now on ([`PauseGate::announce`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Throttling> {
        self.announced.subscribe()
    }

    /// Tell the subscribers that Graph throttled this process until `until` on `limit`.
    pub fn announce(&self, until: Instant, limit: Limit) {
        // No subscriber (one process alone, tests): nobody to tell.
        let _ = self.announced.send(Throttling { until, limit });
    }

    /// Pause every task until `until`. Extends a running pause, never shortens it.
    /// Returns the wall time the pause grew by (zero when it was already longer).
    pub fn pause_until(&self, until: Instant) -> Duration {
        let now = Instant::now();
        let mut current = lock(&self.until);
        let end = current.map_or(now, |c| c.max(now));
        if until > end {
            *current = Some(until);
            until - end
        } else {
            Duration::ZERO
        }
    }

    /// Pause every task for `d` from now (see [`PauseGate::pause_until`]).
    pub fn pause_for(&self, d: Duration) -> Duration {
        self.pause_until(Instant::now() + d)
    }

    /// When the running pause ends; `None` when no pause is running.
    pub fn paused_until(&self) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.until).filter(|until| *until > now)
    }

    /// Return once no pause is running. A pause extended while waiting is waited out too.
    /// Returns how long this call waited.
    pub async fn wait(&self) -> Duration {
        let start = Instant::now();
        // Each iteration sleeps to the end known at that moment; pauses only grow, so
        // re-reading after waking is enough to catch an extension (no notification needed).
        while let Some(until) = self.paused_until() {
            tokio::time::sleep_until(until).await;
        }
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn pause_extends_but_never_shortens() {
        let gate = PauseGate::default();
        let t0 = Instant::now();
        assert_eq!(
            gate.pause_until(t0 + Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            gate.pause_until(t0 + Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(gate.paused_until(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            gate.pause_until(t0 + Duration::from_secs(12)),
            Duration::from_secs(2)
        );
        assert_eq!(gate.paused_until(), Some(t0 + Duration::from_secs(12)));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_at_once_without_a_pause() {
        let gate = PauseGate::default();
        assert_eq!(gate.wait().await, Duration::ZERO);
        gate.pause_until(Instant::now() - Duration::from_secs(1));
        assert_eq!(gate.wait().await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn announcements_reach_subscribers() {
        let gate = PauseGate::default();
        gate.announce(Instant::now(), Limit::Writes); // nobody listening yet: dropped
        let mut rx = gate.subscribe();
        let until = Instant::now() + Duration::from_secs(3);
        gate.announce(until, Limit::Requests);
        assert_eq!(
            rx.recv().await.unwrap(),
            Throttling {
                until,
                limit: Limit::Requests
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_waiter_until_it_ends_even_when_extended() {
        let gate = Arc::new(PauseGate::default());
        let t0 = Instant::now();
        gate.pause_for(Duration::from_secs(10));
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.wait().await;
                    Instant::now()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Extended while they wait: nobody may leave at 10 s.
        gate.pause_for(Duration::from_secs(25));
        for waiter in waiters {
            let woke = waiter.await.unwrap();
            assert_eq!(woke - t0, Duration::from_secs(30));
        }
    }
}
