//! The attempt machine of one Graph call: after each attempt, what to do next.
//!
//! [`Attempts::next_step`] is the whole retry policy of the client, as a function from the
//! attempt's [`Outcome`], the call's state so far, the retry settings and the time to a
//! [`Step`]; it does no I/O and reads no clock. The client's send loop only carries the steps
//! out (`GraphClient::execute` in `client.rs`). The policy, following Microsoft's throttling
//! guidance (<https://learn.microsoft.com/en-us/graph/throttling>) and the error answers of
//! <https://learn.microsoft.com/en-us/graph/errors>:
//!
//! - a success is [`Step::Done`];
//! - a 404 to a DELETE whose earlier attempt may have been applied (it was answered 429/5xx or
//!   not at all) is [`Step::AlreadyApplied`]: the method is gone, which is what was asked;
//! - the first 401 to a sent request is [`Step::RenewToken`], retried at once without using up
//!   an attempt (the token expired or was revoked early);
//! - an error whose [`Class`] is `Permanent` or `Halt` is [`Step::GiveUp`] at once;
//! - a throttling answer (429, 503/504 with Retry-After) is [`Step::PauseEveryone`] for its
//!   Retry-After, or without one for the next backoff delay: Graph throttles the app, so every
//!   task of the process waits;
//! - any other `Outage` or `Retry` error is [`Step::BackOff`] of this call only;
//! - after `retry.max_attempts` sent attempts, or when the next wait would pass
//!   `retry.max_elapsed`, the error is given up — a throttling one still pauses everyone
//!   first ([`Step::PauseEveryoneThenGiveUp`]). The caller hands retryable errors to a broker
//!   delay tier.
//!
//! The backoff ([`backoff`]) is backon's exponential schedule: `retry.base_delay` doubling up
//! to `retry.max_delay`, each delay drawn from `[d/2, d]` ("equal jitter").

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use super::{Class, Error};
use crate::config::RetrySettings;

/// How one call treats a 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnNotFound {
    /// An error like any other.
    Error,
    /// Success when an earlier attempt may have been applied (a DELETE answered 429/5xx or
    /// timed out, then 404 on the retry: it was already gone).
    GoneAfterRetry,
}

/// What one attempt came to.
#[derive(Debug)]
pub(super) enum Outcome<T> {
    /// Graph answered with a success.
    Answered(T),
    /// No token could be had: nothing was sent.
    NoToken(Error),
    /// The request was sent and failed. Unless Graph answered, it may have been applied.
    Failed(Error),
    /// Not sent: the write's request was taken back while it waited ([`Error::Withheld`]).
    Withheld(Error),
}

/// What the send loop does next.
#[derive(Debug)]
pub(super) enum Step<T> {
    /// Return the answer.
    Done(T),
    /// An earlier attempt did what was asked (a 404 on a retried DELETE): return success.
    AlreadyApplied,
    /// Graph refused the token: drop it and try again at once, with a new one.
    RenewToken,
    /// Graph throttled the app: hold every task of the process until `until`, then try again
    /// (this call waits at the pause like every other task).
    PauseEveryone {
        /// When the pause ends.
        until: Instant,
    },
    /// Wait `delay`, this call only, then try again.
    BackOff {
        /// How long.
        delay: Duration,
    },
    /// Hand the error back to the caller.
    GiveUp(Error),
    /// Graph throttled the app and this call is out of attempts or time: hold every task until
    /// `until` (the others must not send into the throttle either), and hand `error` back.
    PauseEveryoneThenGiveUp {
        /// When the pause ends.
        until: Instant,
        /// The throttling error.
        error: Error,
    },
}

/// The state of one call across its attempts.
#[derive(Debug)]
pub(super) struct Attempts {
    on_not_found: OnNotFound,
    started: Instant,
    backoff: ExponentialBackoff,
    /// Sent attempts that count against `retry.max_attempts` (a token renewal does not).
    attempts: u32,
    /// Attempts after the first, for Graph's `Retry-Attempt` header.
    retries: u32,
    /// The token was renewed once already.
    renewed: bool,
    /// A sent attempt failed without an answer that rules out its having been applied.
    maybe_applied: bool,
}

impl Attempts {
    /// A call starting at `started`, with the backoff of `retry`.
    pub(super) fn new(retry: &RetrySettings, on_not_found: OnNotFound, started: Instant) -> Self {
        Self::with_backoff(backoff(retry, None), on_not_found, started)
    }

    fn with_backoff(
        backoff: ExponentialBackoff,
        on_not_found: OnNotFound,
        started: Instant,
    ) -> Self {
        Self {
            on_not_found,
            started,
            backoff,
            attempts: 0,
            retries: 0,
            renewed: false,
            maybe_applied: false,
        }
    }

    /// Attempts after the first so far (the value of the next request's `Retry-Attempt`).
    pub(super) fn retries(&self) -> u32 {
        self.retries
    }

    /// The step after an attempt that came to `outcome` at `now` (see the module docs).
    pub(super) fn next_step<T>(
        &mut self,
        outcome: Outcome<T>,
        retry: &RetrySettings,
        now: Instant,
    ) -> Step<T> {
        let (error, sent) = match outcome {
            Outcome::Answered(answer) => return Step::Done(answer),
            Outcome::Withheld(error) => return Step::GiveUp(error),
            Outcome::NoToken(error) => (error, false),
            Outcome::Failed(error) => (error, true),
        };
        if matches!(error, Error::NotFound { .. })
            && self.on_not_found == OnNotFound::GoneAfterRetry
            && self.maybe_applied
        {
            return Step::AlreadyApplied;
        }
        if sent && matches!(error, Error::Auth { .. }) && !self.renewed {
            // Renewed once only: a second 401 with a fresh token is the app's own problem.
            self.renewed = true;
            self.retries += 1;
            return Step::RenewToken;
        }
        if sent {
            self.attempts += 1;
        }
        match error.class() {
            Class::Outage | Class::Retry => {}
            // Halt: the app itself cannot work (its credential, consent, permissions, tenant:
            // `Error::App`, `Error::Auth`). Retrying in process cannot help; the caller stops
            // taking requests.
            Class::Permanent | Class::Halt => return Step::GiveUp(error),
        }
        // Only a request that was sent can have been applied.
        self.maybe_applied |= sent;
        let throttled = match &error {
            Error::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let delay = match throttled {
            Some(Some(retry_after)) => capped_retry_after(retry_after, retry),
            _ => self.backoff.next().unwrap_or(retry.max_delay),
        };
        let out_of_budget = self.attempts >= retry.max_attempts
            || now.saturating_duration_since(self.started) + delay > retry.max_elapsed;
        match (throttled.is_some(), out_of_budget) {
            (true, false) => {
                self.retries += 1;
                Step::PauseEveryone { until: now + delay }
            }
            (true, true) => Step::PauseEveryoneThenGiveUp {
                until: now + delay,
                error,
            },
            (false, false) => {
                self.retries += 1;
                Step::BackOff { delay }
            }
            (false, true) => Step::GiveUp(error),
        }
    }
}

/// Graph's Retry-After is untrusted input: a pause longer than `retry.max_retry_after`
/// (a broken proxy's `Retry-After: 99999999999`) would stop every task of the process for
/// as long, and past `Instant`'s range would panic. Capped, and the cap is logged.
fn capped_retry_after(asked: Duration, retry: &RetrySettings) -> Duration {
    if asked > retry.max_retry_after {
        tracing::warn!(
            retry_after = ?asked,
            capped_to = ?retry.max_retry_after,
            "Graph's Retry-After is longer than retry.max_retry_after; pausing for the cap instead"
        );
        return retry.max_retry_after;
    }
    asked
}

/// The backoff of one call when Graph gives no Retry-After: `retry.base_delay`, doubling,
/// capped at `retry.max_delay`, each delay drawn from `[d/2, d]` ("equal jitter": it never
/// exceeds the cap, yet spreads processes that were throttled together).
///
/// backon's jitter adds up to the delay on top of it, so the schedule is built on half the
/// delays: `d/2 + [0, d/2)`. `seed` fixes the jitter (tests).
pub(super) fn backoff(retry: &RetrySettings, seed: Option<u64>) -> ExponentialBackoff {
    let builder = schedule(retry).with_jitter();
    match seed {
        Some(seed) => builder.with_jitter_seed(seed),
        None => builder,
    }
    .build()
}

/// Half of the nominal schedule, without jitter (see [`backoff`]).
fn schedule(retry: &RetrySettings) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(retry.base_delay / 2)
        .with_max_delay(retry.max_delay / 2)
        .with_factor(2.0)
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(base: u64, max: u64) -> RetrySettings {
        RetrySettings {
            base_delay: Duration::from_secs(base),
            max_delay: Duration::from_secs(max),
            ..RetrySettings::default()
        }
    }

    fn settings() -> RetrySettings {
        RetrySettings {
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(300),
            ..RetrySettings::default()
        }
    }

    fn attempts(on_not_found: OnNotFound) -> Attempts {
        Attempts::new(&settings(), on_not_found, Instant::now())
    }

    fn throttled(retry_after: Option<u64>) -> Error {
        Error::Throttled {
            status: 429,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn transient() -> Error {
        Error::Transient {
            status: 500,
            code: "generalException".into(),
            message: "m".into(),
        }
    }

    fn no_answer() -> Error {
        Error::NoAnswer {
            cause: super::super::NoAnswer::Timeout,
            message: "timed out".into(),
        }
    }

    fn not_found() -> Error {
        Error::NotFound {
            code: "Request_ResourceNotFound".into(),
            message: "m".into(),
        }
    }

    fn unauthorized() -> Error {
        Error::Auth {
            code: "InvalidAuthenticationToken".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn a_retry_after_beyond_the_cap_pauses_for_the_cap_and_never_overflows() {
        let mut a = attempts(OnNotFound::Error);
        let now = Instant::now();
        let cap = settings().max_retry_after;
        for asked in [
            Duration::from_secs(u64::MAX),
            Duration::MAX,
            cap + Duration::from_secs(1),
        ] {
            let huge = Error::Throttled {
                status: 429,
                retry_after: Some(asked),
            };
            let step = a.next_step(Outcome::<()>::Failed(huge), &settings(), now);
            let until = match step {
                Step::PauseEveryone { until } | Step::PauseEveryoneThenGiveUp { until, .. } => {
                    until
                }
                _ => panic!("a 429 pauses everyone"),
            };
            assert_eq!(until, now + cap, "{asked:?}");
        }
    }

    /// The next step after a failed sent attempt, now.
    fn after(a: &mut Attempts, error: Error) -> Step<()> {
        a.next_step(Outcome::Failed(error), &settings(), Instant::now())
    }

    #[test]
    fn backoff_schedule_doubles_and_caps() {
        // The nominal schedule is twice backon's half-schedule.
        let delays: Vec<u64> = schedule(&retry(3, 180))
            .build()
            .take(9)
            .map(|d| (d * 2).as_secs())
            .collect();
        assert_eq!(delays, [3, 6, 12, 24, 48, 96, 180, 180, 180]);
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        let nominal = [3, 6, 12, 24, 48, 96, 180, 180, 180].map(Duration::from_secs);
        for _ in 0..200 {
            for (d, nominal) in backoff(&retry(3, 180), None).zip(nominal) {
                assert!(d >= nominal / 2 && d <= nominal, "{d:?} for {nominal:?}");
            }
        }
        // And it does spread: two processes (two seeds) draw different delays.
        let first = |seed| backoff(&retry(10, 10), Some(seed)).next();
        assert_ne!(first(1), first(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_is_done() {
        let mut a = attempts(OnNotFound::Error);
        let step = a.next_step(Outcome::Answered("answer"), &settings(), Instant::now());
        assert!(matches!(step, Step::Done("answer")), "{step:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_404_after_an_attempt_that_may_have_applied_is_already_applied() {
        for first in [throttled(Some(1)), transient(), no_answer()] {
            let mut a = attempts(OnNotFound::GoneAfterRetry);
            assert!(!matches!(after(&mut a, first.clone()), Step::GiveUp(_)));
            let step = after(&mut a, not_found());
            assert!(
                matches!(step, Step::AlreadyApplied),
                "after {first}: {step:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_404_is_an_error_on_a_first_attempt_on_a_read_and_after_an_unsent_one() {
        let mut first = attempts(OnNotFound::GoneAfterRetry);
        assert!(matches!(
            after(&mut first, not_found()),
            Step::GiveUp(Error::NotFound { .. })
        ));

        let mut read = attempts(OnNotFound::Error);
        after(&mut read, transient());
        assert!(matches!(
            after(&mut read, not_found()),
            Step::GiveUp(Error::NotFound { .. })
        ));

        // A token endpoint that failed sent nothing to Graph: nothing can have been applied.
        let mut unsent = attempts(OnNotFound::GoneAfterRetry);
        let step =
            unsent.next_step::<()>(Outcome::NoToken(no_answer()), &settings(), Instant::now());
        assert!(matches!(step, Step::BackOff { .. }), "{step:?}");
        assert!(matches!(
            after(&mut unsent, not_found()),
            Step::GiveUp(Error::NotFound { .. })
        ));
    }

    #[test]
    fn a_withheld_write_is_handed_back_at_once_not_retried() {
        let mut a = attempts(OnNotFound::GoneAfterRetry);
        after(&mut a, transient());
        let step = a.next_step::<()>(
            Outcome::Withheld(Error::Withheld),
            &settings(),
            Instant::now(),
        );
        assert!(matches!(step, Step::GiveUp(Error::Withheld)), "{step:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_401_renews_the_token_without_using_an_attempt_and_the_second_gives_up() {
        let mut a = attempts(OnNotFound::Error);
        assert!(matches!(after(&mut a, unauthorized()), Step::RenewToken));
        assert_eq!(a.retries(), 1, "the renewed request carries Retry-Attempt");
        // Three attempts remain: two back-offs, then the third gives up.
        assert!(matches!(after(&mut a, transient()), Step::BackOff { .. }));
        assert!(matches!(after(&mut a, transient()), Step::BackOff { .. }));
        assert!(matches!(after(&mut a, transient()), Step::GiveUp(_)));

        let mut twice = attempts(OnNotFound::Error);
        after(&mut twice, unauthorized());
        assert!(matches!(
            after(&mut twice, unauthorized()),
            Step::GiveUp(Error::Auth { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_that_cannot_be_had_is_given_up_not_renewed() {
        // A wrong secret: the token endpoint's 401 is not Graph refusing a token.
        let mut a = attempts(OnNotFound::Error);
        let step = a.next_step::<()>(
            Outcome::NoToken(unauthorized()),
            &settings(),
            Instant::now(),
        );
        assert!(matches!(step, Step::GiveUp(Error::Auth { .. })), "{step:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_given_up_at_once() {
        let permanent = [
            Error::Forbidden {
                code: "Authorization_RequestDenied".into(),
                message: "m".into(),
            },
            Error::BadRequest {
                status: 400,
                code: "badRequest".into(),
                message: "m".into(),
            },
            Error::NotDeletable {
                stem: "password".into(),
            },
        ];
        for error in permanent {
            let mut a = attempts(OnNotFound::GoneAfterRetry);
            let step = after(&mut a, error);
            assert!(matches!(step, Step::GiveUp(_)), "{step:?}");
            assert_eq!(a.retries(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_pauses_everyone_for_exactly_that_long() {
        let mut a = attempts(OnNotFound::Error);
        tokio::time::advance(Duration::from_secs(7)).await;
        let now = Instant::now();
        let step = a.next_step::<()>(Outcome::Failed(throttled(Some(30))), &settings(), now);
        assert!(
            matches!(step, Step::PauseEveryone { until } if until == now + Duration::from_secs(30)),
            "{step:?}"
        );
        assert_eq!(a.retries(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_without_retry_after_pauses_everyone_for_the_backoff() {
        let mut a = attempts(OnNotFound::Error);
        let now = Instant::now();
        let step = a.next_step::<()>(Outcome::Failed(throttled(None)), &settings(), now);
        // base 2 s: the first delay is in [1 s, 2 s].
        assert!(
            matches!(step, Step::PauseEveryone { until }
                if until >= now + Duration::from_secs(1) && until <= now + Duration::from_secs(2)),
            "{step:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_and_no_answer_back_off_this_call_along_the_schedule() {
        let mut a = Attempts::with_backoff(
            backoff(&settings(), Some(7)),
            OnNotFound::Error,
            Instant::now(),
        );
        let mut same = backoff(&settings(), Some(7));
        for error in [transient(), no_answer()] {
            let expected = same.next().unwrap();
            let step = after(&mut a, error);
            assert!(
                matches!(step, Step::BackOff { delay } if delay == expected),
                "{step:?}, expected {expected:?}"
            );
        }
        assert_eq!(a.retries(), 2, "each back-off is a retry");
        // A 502 is an outage rather than this request's fault, but backs off all the same.
        let gateway = Error::Transient {
            status: 502,
            code: "badGateway".into(),
            message: "m".into(),
        };
        assert_eq!(gateway.class(), Class::Outage);
        let mut b = attempts(OnNotFound::Error);
        assert!(matches!(after(&mut b, gateway), Step::BackOff { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_answer_backs_off_as_its_class_says() {
        let mut a = attempts(OnNotFound::Error);
        let invalid = Error::InvalidResponse {
            status: 200,
            message: "not JSON".into(),
        };
        assert_eq!(invalid.class(), Class::Retry);
        assert!(matches!(after(&mut a, invalid), Step::BackOff { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_attempt_gives_up_and_a_throttled_one_still_pauses_everyone() {
        let mut a = attempts(OnNotFound::Error);
        after(&mut a, transient());
        after(&mut a, transient());
        assert!(matches!(
            after(&mut a, transient()),
            Step::GiveUp(Error::Transient { .. })
        ));

        let mut b = attempts(OnNotFound::Error);
        after(&mut b, throttled(Some(1)));
        after(&mut b, throttled(Some(1)));
        let now = Instant::now();
        let step = b.next_step::<()>(Outcome::Failed(throttled(Some(5))), &settings(), now);
        assert!(
            matches!(&step, Step::PauseEveryoneThenGiveUp { until, error: Error::Throttled { .. } }
                if *until == now + Duration::from_secs(5)),
            "{step:?}"
        );
        assert_eq!(b.retries(), 2, "a call that gives up does not retry");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_to_get_a_token_do_not_use_up_attempts_but_do_use_up_time() {
        let settings = settings();
        let mut a = attempts(OnNotFound::Error);
        for _ in 0..10 {
            let step = a.next_step::<()>(Outcome::NoToken(transient()), &settings, Instant::now());
            assert!(matches!(step, Step::BackOff { .. }), "{step:?}");
        }
        tokio::time::advance(Duration::from_secs(299)).await;
        let step = a.next_step::<()>(Outcome::NoToken(transient()), &settings, Instant::now());
        assert!(matches!(step, Step::GiveUp(_)), "{step:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_would_pass_max_elapsed_gives_up_now() {
        let mut a = attempts(OnNotFound::Error);
        tokio::time::advance(Duration::from_secs(290)).await;
        // 290 s + a 30 s Retry-After > 300 s: give up, but everyone still pauses.
        let step = after(&mut a, throttled(Some(30)));
        assert!(
            matches!(step, Step::PauseEveryoneThenGiveUp { .. }),
            "{step:?}"
        );
        // 290 s + 10 s = 300 s: still within.
        let mut b = attempts(OnNotFound::Error);
        let step = b.next_step::<()>(
            Outcome::Failed(throttled(Some(10))),
            &settings(),
            Instant::now() + Duration::from_secs(290),
        );
        assert!(matches!(step, Step::PauseEveryone { .. }), "{step:?}");
    }
}
