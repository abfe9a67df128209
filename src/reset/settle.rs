//! Waiting out Graph's eventual consistency: a method deleted with a 204 may still be listed
//! for a few seconds (observed; Microsoft documents no bound), so the reset re-lists with a
//! doubling pause (`backon`) until the deleted methods are gone or the wait is spent.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// First pause before listing again.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Longest pause between two listings.
const LONGEST_PAUSE: Duration = Duration::from_secs(4);

enum Listing<T, E> {
    /// Listed, but some deleted method is still there.
    Lagging(T),
    /// The listing itself failed.
    Failed(E),
}

/// Call `list` until `lagging` says the listing has settled, pausing 0.5 s, 1 s, 2 s, 4 s, 4 s …
/// in between, but never past `wait` since the first call. Returns the last listing (settled
/// or not: after the bound, the caller trusts its 204s), or the first listing error.
pub(super) async fn until_settled<T, E, F, Fut>(
    wait: Duration,
    mut list: F,
    lagging: impl Fn(&T) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let lagging = &lagging;
    let attempt = || {
        let listing = list();
        async move {
            match listing.await {
                Ok(listed) if lagging(&listed) => Err(Listing::Lagging(listed)),
                Ok(listed) => Ok(listed),
                Err(err) => Err(Listing::Failed(err)),
            }
        }
    };
    let pauses = ExponentialBuilder::default()
        .with_min_delay(FIRST_PAUSE)
        .with_max_delay(LONGEST_PAUSE)
        .without_max_times();
    let settled = attempt
        .retry(pauses)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Listing::Lagging(_)))
        .adjust(|_, pause| pause.filter(|p| started.elapsed() + *p <= wait))
        .await;
    match settled {
        Ok(listed) | Err(Listing::Lagging(listed)) => Ok(listed),
        Err(Listing::Failed(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A listing that lags `lagging_for` times, recording when each call was made.
    struct Script {
        lagging_for: usize,
        calls: Mutex<Vec<Duration>>,
        started: tokio::time::Instant,
    }

    impl Script {
        fn new(lagging_for: usize) -> Script {
            Script {
                lagging_for,
                calls: Mutex::new(Vec::new()),
                started: tokio::time::Instant::now(),
            }
        }

        async fn list(&self) -> Result<usize, String> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(self.started.elapsed());
            Ok(calls.len())
        }

        fn calls(&self) -> Vec<Duration> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn secs(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_listing_is_returned_at_once() {
        let script = Script::new(0);
        let listed = until_settled(
            Duration::from_secs(10),
            || script.list(),
            |n| *n <= script.lagging_for,
        )
        .await;
        assert_eq!(listed, Ok(1));
        assert_eq!(script.calls(), secs(&[0.0]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_doubles_between_listings_until_settled() {
        let script = Script::new(3);
        let listed = until_settled(
            Duration::from_secs(10),
            || script.list(),
            |n| *n <= script.lagging_for,
        )
        .await;
        assert_eq!(listed, Ok(4));
        assert_eq!(script.calls(), secs(&[0.0, 0.5, 1.5, 3.5]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_stops_growing_at_four_seconds_and_the_wait_bounds_it_all() {
        let script = Script::new(usize::MAX);
        let listed = until_settled(
            Duration::from_secs(16),
            || script.list(),
            |n| *n <= script.lagging_for,
        )
        .await;
        // 0.5 + 1 + 2 + 4 + 4 = 11.5 s; one more 4 s pause would end at 15.5 s, the next at 19.5 s.
        assert_eq!(listed, Ok(7), "the last (lagging) listing is returned");
        assert_eq!(script.calls(), secs(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5]));
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_ends_past_the_wait() {
        let script = Script::new(usize::MAX);
        let listed = until_settled(
            Duration::from_millis(1_400),
            || script.list(),
            |n| *n <= script.lagging_for,
        )
        .await;
        // 0.5 s fits; 0.5 + 1 = 1.5 s would not.
        assert_eq!(listed, Ok(2));
        assert_eq!(script.calls(), secs(&[0.0, 0.5]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_error_is_returned_without_retrying() {
        let calls = Mutex::new(0);
        let listed: Result<(), &str> = until_settled(
            Duration::from_secs(10),
            || {
                *calls.lock().unwrap() += 1;
                async { Err("403") }
            },
            |_| true,
        )
        .await;
        assert_eq!(listed, Err("403"));
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
