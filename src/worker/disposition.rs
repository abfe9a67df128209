//! What becomes of a delivery, decided as a value.
//!
//! [`decide`] is a pure function: from the request (or why the body is not one), what came
//! of trying it ([`Attempt`]) and the deployment's [`Rules`], it returns one [`Disposition`].
//! It touches no broker, no Graph and no clock of its own, so every branch is unit-tested
//! here. Carrying a disposition out against the broker is `delivery::carry_out`'s job, and
//! the order of its steps there is part of the contract each variant documents.
//!
//! The rules it encodes:
//! - a request that failed verification ([`crate::trust::requests::Verdict::Refused`]) is
//!   rejected: dead-lettered with its reason, never claimed, never sent to Graph;
//! - a request whose outcome someone already owns is acked without touching Graph;
//! - a Graph error is judged by its [`Class`]: an outage waits in the first delay tier
//!   *without* using up an attempt; a retryable error uses one and waits longer each time,
//!   until the tiers run out (`retries_exhausted`); a permanent error is the outcome; an
//!   app-wide error halts the worker and leaves the request queued, attempt unused;
//! - a `failed` outcome is dead-lettered before it is recorded;
//! - trouble with the broker, a crash of the handler, or a halt or hourly cap that came
//!   into force before the request started hands the delivery back.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::ResetSettings;
use crate::domain::{
    Carry, MethodRecord, Outcome, ResetRequest, Status, TapOutcome, REQUEST_VERSION,
};
use crate::graph::Class;
use crate::reset::{self, Executed, Interrupted, RetryLater};
use crate::trust::requests::{Refusal, Verified};

/// Why: a machine-readable code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `invalid_message`, `unknown_version`, Graph's error code, …
    pub code: String,
    /// What happened.
    pub message: String,
}

impl Cause {
    /// A cause from its code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What to do with one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Someone already owns this request's outcome (it is recorded, or a copy is being
    /// executed here): ack, Graph untouched.
    Ack,
    /// A retryable error: publish `request` (its `carry` holds what was done so far) to delay
    /// tier `tier` as attempt `attempt`, then ack.
    Retry {
        /// Index into `retry.tiers`.
        tier: usize,
        /// The attempt number it comes back with (one more than this one).
        attempt: u32,
        /// The request to publish, with its carry.
        request: Box<ResetRequest>,
        /// The error, for the message headers.
        cause: Cause,
    },
    /// Graph unreachable or throttling: publish `request` to the first delay tier with the
    /// same attempt number (an outage is not the request's fault), then ack.
    RequeueOutage {
        /// This attempt's number, unchanged.
        attempt: u32,
        /// The request to publish, with its carry.
        request: Box<ResetRequest>,
        /// The error, for the message headers.
        cause: Cause,
    },
    /// Record the outcome (confirmed; held through a broker outage), then ack.
    Record(Box<Outcome>),
    /// A failed outcome: a dead-letter copy first, then record the outcome, then ack. (A
    /// crash in between re-executes and may dead-letter twice; it never leaves a failed
    /// request out of the dead-letter queue.)
    DeadLetterThenRecord(Box<Outcome>),
    /// The body is not a request this worker can run: dead-letter it with why, then ack.
    DeadLetterInvalid(Cause),
    /// A request that fails verification (signature, batch, approval, date): dead-lettered
    /// with why (code = the reason: `unsigned`, `bad_signature`, `signer_not_allowed`,
    /// `not_in_batch`, `not_approved`, `future_request`) and never executed.
    Reject(Cause),
    /// Graph refuses the app itself (credential, consent, tenant): nothing can succeed until
    /// someone fixes it. Put `request` back on the requests queue as attempt `attempt` (no
    /// attempt used), ack, and stop taking requests.
    Halt {
        /// This attempt's number, unchanged.
        attempt: u32,
        /// The request to put back, with its carry.
        request: Box<ResetRequest>,
        /// The error, for the operator.
        cause: Cause,
    },
    /// Broker trouble or a crashed handler: requeue the delivery now (`basic.nack`); the
    /// broker's delivery limit dead-letters one that keeps coming back.
    HandBack {
        /// Why, for the log.
        reason: String,
    },
}

/// What came of trying a request.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// Not run: its outcome is recorded already, or a copy of it is in flight here.
    Duplicate,
    /// Not run: older than `reset.max_request_age`.
    Expired,
    /// Not run: listed in `reset.protected_users`.
    Protected,
    /// The reset concluded.
    Executed(Executed),
    /// The reset stopped before it could conclude.
    Interrupted(RetryLater),
    /// Not run: an admin halted the workers, or the hourly cap is reached (why). It goes
    /// back to the queue unexecuted, no attempt used, and waits there.
    Paused(String),
    /// The broker failed us before the reset could start (catching up with the outcomes
    /// stream): nothing was done.
    BrokerTrouble(String),
    /// The handler panicked (the panic's message).
    Panicked(String),
}

/// A delivery as the decision sees it.
#[derive(Debug, Clone)]
pub enum Delivered<'a> {
    /// The body is not a request this worker runs; nothing was tried.
    Invalid(Cause),
    /// A request that failed verification; nothing was tried.
    Refused(Refusal),
    /// A verified request (who requested and approved it), and what came of trying it.
    Tried(&'a ResetRequest, &'a Verified, Attempt),
}

/// What the decision needs to know besides the delivery.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    /// How many broker delay tiers there are (`retry.tiers`).
    pub tiers: usize,
    /// `reset.max_request_age`.
    pub max_request_age: Duration,
    /// This worker's name, for outcomes.
    pub worker: &'a str,
    /// The time the decision is made, for outcomes and expiry.
    pub now: DateTime<Utc>,
}

/// Decide what becomes of a delivery. `attempt` is its attempt number (1 for the first).
pub fn decide(delivered: Delivered<'_>, attempt: u32, rules: &Rules<'_>) -> Disposition {
    let attempt = attempt.max(1);
    let (request, who, result) = match delivered {
        Delivered::Invalid(cause) => return Disposition::DeadLetterInvalid(cause),
        Delivered::Refused(refusal) => {
            return Disposition::Reject(Cause::new(refusal.reason.as_str(), refusal.message))
        }
        Delivered::Tried(request, who, result) => (request, who, result),
    };
    match result {
        Attempt::Duplicate => Disposition::Ack,
        Attempt::BrokerTrouble(reason) | Attempt::Paused(reason) => {
            Disposition::HandBack { reason }
        }
        Attempt::Panicked(message) => Disposition::HandBack {
            reason: format!("the handler panicked: {message}"),
        },
        Attempt::Expired => conclude(request, who, expired(request, rules), attempt, rules),
        Attempt::Protected => conclude(request, who, protected(), attempt, rules),
        Attempt::Executed(executed) => conclude(request, who, executed, attempt, rules),
        Attempt::Interrupted(later) => interrupted(request, who, later, attempt, rules),
    }
}

/// Before running a request: is it too old, or protected? `None`: run it.
pub fn gate(
    request: &ResetRequest,
    settings: &ResetSettings,
    rules: &Rules<'_>,
) -> Option<Attempt> {
    let max_age =
        chrono::Duration::from_std(rules.max_request_age).unwrap_or(chrono::Duration::days(1));
    if rules.now - request.requested_at > max_age {
        Some(Attempt::Expired)
    } else if reset::is_protected(settings, &request.user) {
        Some(Attempt::Protected)
    } else {
        None
    }
}

/// A delivery the session stopped before it started (it was waiting for a slot). When the
/// worker halted, a request goes back onto the requests queue as the same attempt (`Halt`:
/// republished and acked, so handing it back does not count towards the broker's delivery
/// limit however long the halt lasts); otherwise it is handed back.
pub fn not_started(
    request: Option<ResetRequest>,
    attempt: u32,
    halted: Option<Cause>,
) -> Disposition {
    match (request, halted) {
        (Some(request), Some(cause)) => Disposition::Halt {
            attempt: attempt.max(1),
            request: Box::new(request),
            cause,
        },
        _ => Disposition::HandBack {
            reason: "not started before the worker stopped".into(),
        },
    }
}

/// The attempt number in a delivery's header: 1 when absent, and never 0 (a header from
/// outside could say anything).
pub fn attempt_number(header: Option<u64>) -> u32 {
    u32::try_from(header.unwrap_or(1))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The largest request body a worker parses. A request is a few hundred bytes; with the
/// carry of earlier attempts a few kilobytes. Anything larger is not ours.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The longest batch id, ticket, reason and `requested_by` a request may carry (what
/// `enqueue` accepts), re-checked here: the queue is not trusted to hold only what it wrote.
pub const MAX_FIELD_CHARS: usize = 1024;

/// A request, or why the body is not one (`invalid_message` | `unknown_version`). The size
/// is checked before parsing, the lengths of free-text fields after.
pub fn parse_request(body: &[u8]) -> Result<ResetRequest, Cause> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Cause::new(
            "invalid_message",
            format!(
                "the body is {} bytes; a request is at most {MAX_REQUEST_BYTES}",
                body.len()
            ),
        ));
    }
    let request = parse_json(body)?;
    let fields = [
        ("batch", Some(&request.batch)),
        ("ticket", request.ticket.as_ref()),
        ("reason", request.reason.as_ref()),
        ("requested_by", request.requested_by.as_ref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            if value.chars().count() > MAX_FIELD_CHARS {
                return Err(Cause::new(
                    "invalid_message",
                    format!("\"{name}\" is longer than {MAX_FIELD_CHARS} characters"),
                ));
            }
        }
    }
    Ok(request)
}

fn parse_json(body: &[u8]) -> Result<ResetRequest, Cause> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Cause::new("invalid_message", format!("not JSON: {e}")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(REQUEST_VERSION) => {}
        Some(v) => {
            return Err(Cause::new(
                "unknown_version",
                format!("request version {v}; this worker understands version {REQUEST_VERSION}"),
            ))
        }
        None => {
            return Err(Cause::new(
                "invalid_message",
                "no numeric \"version\" field",
            ))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| Cause::new("invalid_message", format!("not a reset request: {e}")))
}

/// Why an attempt stopped once its delivery's channel closed.
pub const TAKEN_BACK: &str = "the broker took the delivery back (its channel closed) and may \
     have given it to another worker: stopped before the next write to Graph; whoever runs it \
     next finds what this attempt removed on its plan";

/// A reset that stopped: retry, wait out an outage, halt, or conclude.
fn interrupted(
    request: &ResetRequest,
    who: &Verified,
    later: RetryLater,
    attempt: u32,
    rules: &Rules<'_>,
) -> Disposition {
    let error = match later.cause {
        // The broker would not take the plan: nothing was deleted in this attempt.
        Interrupted::Journal(reason) => return Disposition::HandBack { reason },
        // The broker has the delivery already; the hand-back finds its channel closed.
        Interrupted::TakenBack => {
            return Disposition::HandBack {
                reason: TAKEN_BACK.into(),
            }
        }
        Interrupted::Graph(error) => error,
    };
    let cause = Cause::new(error.code(), error.to_string());
    let done = Done {
        removed: later.removed,
        sessions_revoked: later.sessions_revoked,
    };
    after_graph_error(error.class(), cause, done, (request, who), attempt, rules)
}

/// What earlier attempts and this one did before stopping.
struct Done {
    removed: Vec<MethodRecord>,
    sessions_revoked: bool,
}

/// The decision for a reset stopped by a Graph error of `class`.
fn after_graph_error(
    class: Class,
    cause: Cause,
    done: Done,
    (request, who): (&ResetRequest, &Verified),
    attempt: u32,
    rules: &Rules<'_>,
) -> Disposition {
    let tried_again = |done: Done| {
        let mut next = request.clone();
        next.carry = Some(Carry {
            removed: done.removed,
            sessions_revoked: done.sessions_revoked,
            last_error: Some(cause.message.clone()),
        });
        Box::new(next)
    };
    match class {
        Class::Halt => Disposition::Halt {
            attempt,
            request: tried_again(done),
            cause,
        },
        Class::Outage if rules.tiers > 0 => Disposition::RequeueOutage {
            attempt,
            request: tried_again(done),
            cause,
        },
        Class::Retry if attempt as usize <= rules.tiers => Disposition::Retry {
            tier: attempt as usize - 1,
            attempt: attempt.saturating_add(1),
            request: tried_again(done),
            cause,
        },
        Class::Permanent => {
            let executed = stopped(done, cause.code, cause.message);
            conclude(request, who, executed, attempt, rules)
        }
        Class::Outage | Class::Retry => {
            let message = format!("gave up after {attempt} attempts: {}", cause.message);
            let executed = stopped(done, "retries_exhausted".into(), message);
            conclude(request, who, executed, attempt, rules)
        }
    }
}

/// A reset that ended on an error: `failed` if nothing was removed, `partial` otherwise.
fn stopped(done: Done, code: String, message: String) -> Executed {
    let status = if done.removed.is_empty() {
        Status::Failed
    } else {
        Status::Partial
    };
    Executed {
        status,
        removed: done.removed,
        remaining: Vec::new(),
        sessions_revoked: done.sessions_revoked,
        error: Some((code, message)),
        graph_calls: 0,
        notes: Vec::new(),
        tap: None,
    }
}

/// Not executed: too old. What earlier attempts removed stays on the record.
fn expired(request: &ResetRequest, rules: &Rules<'_>) -> Executed {
    let carry = request.carry.clone().unwrap_or_default();
    let last_error = carry
        .last_error
        .as_deref()
        .map(|e| format!(" further (last error: {e})"))
        .unwrap_or_default();
    Executed {
        status: Status::Expired,
        removed: carry.removed,
        remaining: Vec::new(),
        sessions_revoked: carry.sessions_revoked,
        error: Some((
            "expired".into(),
            format!(
                "requested at {}, older than reset.max_request_age ({}); not executed{last_error}",
                request.requested_at.to_rfc3339(),
                humantime::format_duration(rules.max_request_age),
            ),
        )),
        graph_calls: 0,
        notes: Vec::new(),
        tap: None,
    }
}

/// Not touched: a protected account.
fn protected() -> Executed {
    Executed {
        status: Status::SkippedProtected,
        removed: Vec::new(),
        remaining: Vec::new(),
        sessions_revoked: false,
        error: Some((
            "protected_user".into(),
            "listed in reset.protected_users; not touched".into(),
        )),
        graph_calls: 0,
        notes: Vec::new(),
        tap: None,
    }
}

/// Record the outcome; a failed one goes to the dead-letter queue first.
fn conclude(
    request: &ResetRequest,
    who: &Verified,
    executed: Executed,
    attempt: u32,
    rules: &Rules<'_>,
) -> Disposition {
    let outcome = Box::new(outcome(request, who, executed, attempt, rules));
    if outcome.status == Status::Failed {
        Disposition::DeadLetterThenRecord(outcome)
    } else {
        Disposition::Record(outcome)
    }
}

/// The outcome: what was done, to whom, on whose request and approval (the verified
/// principals of the batch's signatures, not what the request body claims), and why.
fn outcome(
    request: &ResetRequest,
    who: &Verified,
    executed: Executed,
    attempt: u32,
    rules: &Rules<'_>,
) -> Outcome {
    let (error_code, error_message) = executed.error.unzip();
    let tap = tap_outcome(request, executed.status, executed.tap);
    Outcome {
        request_id: request.request_id,
        batch: request.batch.clone(),
        user: request.user.clone(),
        status: executed.status,
        methods_removed: executed.removed,
        methods_remaining: executed.remaining,
        sessions_revoked: executed.sessions_revoked,
        attempts: attempt,
        error_code,
        error_message,
        ticket: request.ticket.clone(),
        finished_at: rules.now,
        worker: rules.worker.to_string(),
        graph_calls: executed.graph_calls,
        replay: request.replay,
        dry_run: request.dry_run,
        notes: executed.notes,
        requested_by: Some(who.requested_by.to_string()),
        approved_by: who.approved_by.as_ref().map(ToString::to_string),
        replayed_by: who.replayed_by.as_ref().map(|r| r.principal.to_string()),
        replay_key: who.replayed_by.as_ref().map(|r| r.key.clone()),
        reason: request.reason.clone(),
        item: Some(who.item),
        tap,
    }
}

/// What the outcome says about a requested Temporary Access Pass: what the reset did with
/// it, or, when it was not tried, why (a pass is only issued once a reset ended `reset`).
fn tap_outcome(
    request: &ResetRequest,
    status: Status,
    tried: Option<Box<TapOutcome>>,
) -> Option<TapOutcome> {
    let asked = request.tap?;
    if let Some(tried) = tried {
        return Some(*tried);
    }
    let (code, message) = if request.dry_run {
        (
            "dry_run",
            "dry run: a Temporary Access Pass would be issued after the reset".to_string(),
        )
    } else {
        (
            "tap_not_after_reset",
            format!(
                "no Temporary Access Pass: the reset ended {status}, and a pass is issued only \
                 once every method is gone (status reset)"
            ),
        )
    };
    // Every field named: a new one is a decision here, not a default.
    Some(TapOutcome {
        issued: false,
        lifetime_minutes: asked.lifetime_minutes,
        usable_once: asked.usable_once,
        method_id: None,
        start: None,
        sealed: None,
        error_code: Some(code.into()),
        error_message: Some(message),
    })
}

#[cfg(test)]
#[path = "disposition_tests.rs"]
mod tests;
