//! [`Gate`]: whether this worker may take requests now. Two things close it:
//! - an admin's **halt** on the control stream (until their `resume`): see [`crate::control`];
//! - the **hourly cap** (`security.max_resets_per_hour`), counted across every worker
//!   through the outcomes stream every worker already follows for its ledger: a user counts
//!   once per hour from the first verified plan (written before the first DELETE) or
//!   verified outcome that removed methods, plus the requests in flight here.
//!
//! A closed gate never loses a request: the worker stops consuming, deliveries already taken
//! but not started go back unexecuted (no attempt used), and those in flight finish. The
//! cap's count reaches other workers through the stream within milliseconds, so all workers
//! together may pass the cap by at most the requests they start in that time (their
//! concurrency, at worst).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

use crate::control::{ControlState, Issued};
use crate::domain::Record;

use super::ledger::Key;

/// The cap's window.
const WINDOW_HOURS: i64 = 1;

/// Why the worker does not take requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// An admin halted the workers.
    Halted {
        /// Who.
        by: String,
        /// When.
        at: DateTime<Utc>,
        /// Why, if they said.
        reason: Option<String>,
    },
    /// `security.max_resets_per_hour` reached.
    Capped {
        /// Users reset in the last hour (and in flight here).
        count: u64,
        /// The cap.
        cap: u64,
        /// When the window frees a place.
        until: DateTime<Utc>,
    },
}

impl Stop {
    /// `halted` or `capped`, for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Stop::Halted { .. } => "halted",
            Stop::Capped { .. } => "capped",
        }
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Halted { by, at, reason } => {
                write!(f, "halted by {by} at {}", at.to_rfc3339())?;
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                write!(f, "; `mfa-reset resume` lets the workers go on")
            }
            Stop::Capped { count, cap, until } => write!(
                f,
                "hourly cap reached: {count} users reset in the last hour \
                 (security.max_resets_per_hour = {cap}); taking requests again at {}",
                until.to_rfc3339()
            ),
        }
    }
}

/// Users reset in the last hour, as the stream says.
#[derive(Debug, Default)]
struct Window {
    /// When each request first counted.
    seen: HashMap<Key, DateTime<Utc>>,
}

impl Window {
    fn note(&mut self, key: Key, at: DateTime<Utc>, now: DateTime<Utc>) {
        if at <= now - Duration::hours(WINDOW_HOURS) {
            return;
        }
        let first = self.seen.entry(key).or_insert(at);
        *first = (*first).min(at);
        // Forget what left the window now and then, not on every record.
        if self.seen.len().is_power_of_two() {
            self.prune(now);
        }
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        let cutoff = now - Duration::hours(WINDOW_HOURS);
        self.seen.retain(|_, at| *at > cutoff);
    }

    /// The cap's verdict at `now`, counting `in_flight` (but not `own`) too.
    fn verdict(
        &self,
        cap: u64,
        now: DateTime<Utc>,
        in_flight: &HashSet<Key>,
        own: Option<Key>,
    ) -> Option<Stop> {
        if cap == 0 {
            return None;
        }
        let cutoff = now - Duration::hours(WINDOW_HOURS);
        let mut times: Vec<DateTime<Utc>> = self
            .seen
            .values()
            .copied()
            .filter(|at| *at > cutoff)
            .collect();
        let here = in_flight
            .iter()
            .filter(|key| Some(**key) != own && !self.seen.contains_key(key))
            .count() as u64;
        let count = times.len() as u64 + here;
        if count < cap {
            return None;
        }
        // A place frees when the oldest counted user leaves the window; with more than
        // `cap` counted, when enough of them have. In-flight ones leave it last.
        times.sort_unstable();
        let leaving = usize::try_from(count - cap).unwrap_or(usize::MAX);
        let until = times
            .get(leaving)
            .map_or(now + Duration::hours(WINDOW_HOURS), |at| {
                *at + Duration::hours(WINDOW_HOURS)
            });
        Some(Stop::Capped { count, cap, until })
    }
}

/// Whether requests may be taken: the control stream's halt and the hourly cap.
#[derive(Debug)]
pub struct Gate {
    cap: u64,
    control: Mutex<ControlState>,
    window: Mutex<Window>,
}

impl Gate {
    /// A gate with `security.max_resets_per_hour` = `cap` (0: no cap), open.
    pub fn new(cap: u64) -> Gate {
        Gate {
            cap,
            control: Mutex::new(ControlState::default()),
            window: Mutex::new(Window::default()),
        }
    }

    /// A verified command from the control stream; true when it changes what is in force.
    pub fn command(&self, issued: Issued) -> bool {
        self.control
            .lock()
            .map(|mut state| state.apply(issued))
            .unwrap_or(false)
    }

    /// A verified record from the outcomes stream: a plan, or an outcome that removed
    /// methods, counts its user.
    pub fn record(&self, record: &Record, now: DateTime<Utc>) {
        let counted = match record {
            Record::Plan(plan) => Some(((plan.request_id, plan.replay), plan.at)),
            Record::Outcome(o) if !o.dry_run && !o.methods_removed.is_empty() => {
                Some(((o.request_id, o.replay), o.finished_at))
            }
            _ => None,
        };
        if let Some((key, at)) = counted {
            if let Ok(mut window) = self.window.lock() {
                window.note(key, at, now);
            }
        }
    }

    /// Why requests may not be taken now, if they may not; `in_flight` are the requests
    /// being executed here, `own` the one asking (it does not count against itself).
    pub fn stop(
        &self,
        now: DateTime<Utc>,
        in_flight: &HashSet<Key>,
        own: Option<Key>,
    ) -> Option<Stop> {
        let halted = self.control.lock().ok().and_then(|state| {
            state.halt().map(|issued| Stop::Halted {
                by: issued.by.as_str().to_string(),
                at: issued.command.issued_at,
                reason: issued.command.reason.clone(),
            })
        });
        halted.or_else(|| {
            self.window
                .lock()
                .ok()
                .and_then(|window| window.verdict(self.cap, now, in_flight, own))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PlanRecord;
    use uuid::Uuid;

    fn plan(at: DateTime<Utc>) -> Record {
        Record::Plan(PlanRecord {
            request_id: Uuid::new_v4(),
            replay: 0,
            batch: "b".into(),
            methods: Vec::new(),
            at,
        })
    }

    fn t0() -> DateTime<Utc> {
        "2026-11-28T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_cap_closes_the_gate_at_the_cap_and_opens_it_when_the_oldest_leaves_the_hour() {
        let gate = Gate::new(3);
        let none = HashSet::new();
        gate.record(&plan(t0()), t0());
        gate.record(&plan(t0() + Duration::minutes(10)), t0());
        assert_eq!(gate.stop(t0() + Duration::minutes(20), &none, None), None);
        gate.record(&plan(t0() + Duration::minutes(20)), t0());
        let stop = gate.stop(t0() + Duration::minutes(30), &none, None);
        assert_eq!(
            stop,
            Some(Stop::Capped {
                count: 3,
                cap: 3,
                until: t0() + Duration::hours(1)
            })
        );
        assert!(gate
            .stop(t0() + Duration::minutes(59), &none, None)
            .is_some());
        assert_eq!(gate.stop(t0() + Duration::minutes(61), &none, None), None);
    }

    #[test]
    fn a_user_counts_once_however_many_records_and_dry_runs_or_clean_outcomes_not_at_all() {
        let gate = Gate::new(2);
        let Record::Plan(first) = plan(t0()) else {
            unreachable!()
        };
        let key = (first.request_id, first.replay);
        gate.record(&Record::Plan(first.clone()), t0());
        gate.record(&Record::Plan(first), t0());
        let outcome = |removed: usize, dry_run: bool| {
            Record::Outcome(Box::new(crate::domain::Outcome {
                request_id: key.0,
                batch: "b".into(),
                user: crate::domain::UserRef::parse("a@contoso.com").unwrap(),
                status: crate::domain::Status::Reset,
                methods_removed: vec![crate::domain::MethodRecord::default(); removed],
                methods_remaining: Vec::new(),
                sessions_revoked: false,
                attempts: 1,
                error_code: None,
                error_message: None,
                ticket: None,
                finished_at: t0(),
                worker: "w".into(),
                graph_calls: 0,
                replay: 0,
                dry_run,
                requested_by: None,
                approved_by: None,
                replayed_by: None,
                replay_key: None,
                reason: None,
                item: None,
                notes: Vec::new(),
            }))
        };
        gate.record(&outcome(1, false), t0());
        assert_eq!(
            gate.stop(t0(), &HashSet::new(), None),
            None,
            "one user so far"
        );
        let mut other = outcome(2, true);
        if let Record::Outcome(o) = &mut other {
            o.request_id = Uuid::new_v4();
        }
        gate.record(&other, t0());
        let mut clean = outcome(0, false);
        if let Record::Outcome(o) = &mut clean {
            o.request_id = Uuid::new_v4();
        }
        gate.record(&clean, t0());
        assert_eq!(gate.stop(t0(), &HashSet::new(), None), None);
    }

    #[test]
    fn requests_in_flight_here_count_but_not_the_one_asking() {
        let gate = Gate::new(2);
        gate.record(&plan(t0()), t0());
        let mine = (Uuid::new_v4(), 0);
        let other = (Uuid::new_v4(), 0);
        let in_flight: HashSet<Key> = [mine, other].into();
        assert!(gate.stop(t0(), &in_flight, Some(mine)).is_some());
        let alone: HashSet<Key> = [mine].into();
        assert_eq!(gate.stop(t0(), &alone, Some(mine)), None);
    }

    #[test]
    fn no_cap_means_no_limit() {
        let gate = Gate::new(0);
        for _ in 0..100 {
            gate.record(&plan(t0()), t0());
        }
        assert_eq!(gate.stop(t0(), &HashSet::new(), None), None);
    }
}
