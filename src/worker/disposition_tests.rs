//! Every branch of [`decide`], [`gate`], [`attempt_number`] and [`parse_request`], without a
//! broker or Graph.

use super::*;
use crate::domain::UserRef;
use crate::graph::{self, NoAnswer};
use crate::trust::requests::Reason;

const WORKER: &str = "w1";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn rules(tiers: usize) -> Rules<'static> {
    Rules {
        tiers,
        max_request_age: Duration::from_secs(86_400),
        worker: WORKER,
        now: now(),
    }
}

fn request() -> ResetRequest {
    let user = UserRef::parse("adele@contoso.com").unwrap();
    ResetRequest {
        version: REQUEST_VERSION,
        request_id: ResetRequest::id_for("b1", &user),
        batch: "b1".into(),
        user,
        ticket: Some("INC1".into()),
        reason: Some("lost phone".into()),
        requested_by: Some("whoever the body claims".into()),
        dry_run: false,
        revoke_sessions: true,
        requested_at: now() - chrono::Duration::minutes(5),
        replay: 2,
        tap: None,
        carry: None,
        proof: None,
    }
}

fn method(id: &str) -> MethodRecord {
    MethodRecord {
        kind: "phone".into(),
        id: id.into(),
        ..MethodRecord::default()
    }
}

fn executed(status: Status, removed: Vec<MethodRecord>) -> Executed {
    Executed {
        status,
        removed,
        remaining: vec![method("left")],
        sessions_revoked: true,
        error: None,
        graph_calls: 7,
        notes: vec!["kept a method".into()],
        tap: None,
    }
}

fn server_error() -> graph::Error {
    graph::Error::Transient {
        status: 500,
        code: "generalException".into(),
        message: "boom".into(),
    }
}

fn no_answer() -> graph::Error {
    graph::Error::NoAnswer {
        cause: NoAnswer::Timeout,
        message: "timed out".into(),
    }
}

fn interrupted_by(error: graph::Error, removed: Vec<MethodRecord>) -> Attempt {
    Attempt::Interrupted(RetryLater {
        cause: Interrupted::Graph(error),
        removed,
        sessions_revoked: true,
    })
}

fn verified() -> Verified {
    Verified {
        requested_by: serde_json::from_str("\"alice@contoso.com\"").unwrap(),
        approved_by: Some(serde_json::from_str("\"bob@contoso.com\"").unwrap()),
        manifest: crate::trust::Digest::ZERO,
        item: 7,
        replayed_by: None,
    }
}

fn decide_for(result: Attempt, attempt: u32, tiers: usize) -> Disposition {
    decide(
        Delivered::Tried(&request(), &verified(), result),
        attempt,
        &rules(tiers),
    )
}

fn recorded(disposition: Disposition) -> Outcome {
    match disposition {
        Disposition::Record(outcome) => *outcome,
        other => panic!("expected Record, got {other:?}"),
    }
}

fn dead_lettered(disposition: Disposition) -> Outcome {
    match disposition {
        Disposition::DeadLetterThenRecord(outcome) => *outcome,
        other => panic!("expected DeadLetterThenRecord, got {other:?}"),
    }
}

fn carry(removed: Vec<MethodRecord>, last_error: &str) -> Option<Carry> {
    Some(Carry {
        removed,
        sessions_revoked: true,
        last_error: Some(last_error.into()),
    })
}

#[test]
fn an_invalid_body_is_dead_lettered_with_its_cause() {
    let cause = Cause::new("invalid_message", "not JSON");
    let got = decide(Delivered::Invalid(cause.clone()), 1, &rules(2));
    assert_eq!(got, Disposition::DeadLetterInvalid(cause));
}

#[test]
fn a_duplicate_is_acked() {
    assert_eq!(decide_for(Attempt::Duplicate, 1, 2), Disposition::Ack);
}

#[test]
fn a_request_refused_by_verification_is_rejected_with_its_reason_as_the_code() {
    for reason in Reason::ALL {
        let refusal = Refusal {
            reason,
            message: "why".into(),
        };
        let got = decide(Delivered::Refused(refusal), 3, &rules(2));
        assert_eq!(got, Disposition::Reject(Cause::new(reason.as_str(), "why")));
    }
}

#[test]
fn broker_trouble_and_panics_hand_the_delivery_back() {
    assert_eq!(
        decide_for(Attempt::BrokerTrouble("stream gone".into()), 1, 2),
        Disposition::HandBack {
            reason: "stream gone".into()
        }
    );
    assert_eq!(
        decide_for(Attempt::Panicked("index out of bounds".into()), 1, 2),
        Disposition::HandBack {
            reason: "the handler panicked: index out of bounds".into()
        }
    );
}

#[test]
fn an_attempt_whose_delivery_was_taken_back_hands_it_back_without_a_retry_or_an_outcome() {
    let result = Attempt::Interrupted(RetryLater {
        cause: Interrupted::TakenBack,
        removed: vec![method("m1")],
        sessions_revoked: false,
    });
    assert_eq!(
        decide_for(result, 1, 2),
        Disposition::HandBack {
            reason: super::TAKEN_BACK.into()
        }
    );
}

#[test]
fn a_plan_the_broker_would_not_take_hands_the_delivery_back() {
    let result = Attempt::Interrupted(RetryLater {
        cause: Interrupted::Journal("no confirm".into()),
        removed: Vec::new(),
        sessions_revoked: false,
    });
    assert_eq!(
        decide_for(result, 1, 2),
        Disposition::HandBack {
            reason: "no confirm".into()
        }
    );
}

#[test]
fn an_executed_reset_is_recorded_with_every_field_of_the_request_and_the_reset_and_who_asked_why() {
    let request = request();
    let got = recorded(decide(
        Delivered::Tried(
            &request,
            &verified(),
            Attempt::Executed(executed(Status::Reset, vec![method("a")])),
        ),
        3,
        &rules(2),
    ));
    let expected = Outcome {
        request_id: request.request_id,
        batch: "b1".into(),
        user: request.user.clone(),
        status: Status::Reset,
        methods_removed: vec![method("a")],
        methods_remaining: vec![method("left")],
        sessions_revoked: true,
        attempts: 3,
        error_code: None,
        error_message: None,
        ticket: Some("INC1".into()),
        finished_at: now(),
        worker: WORKER.into(),
        graph_calls: 7,
        replay: 2,
        dry_run: false,
        notes: vec!["kept a method".into()],
        // The verified signers, not what the request body claims.
        requested_by: Some("alice@contoso.com".into()),
        approved_by: Some("bob@contoso.com".into()),
        replayed_by: None,
        replay_key: None,
        reason: Some("lost phone".into()),
        item: Some(7),
        tap: None,
    };
    assert_eq!(got, expected);
}

#[test]
fn a_failed_reset_is_dead_lettered_before_it_is_recorded_and_a_partial_one_is_not() {
    let mut failed = executed(Status::Failed, Vec::new());
    failed.error = Some(("Request_ResourceNotFound".into(), "no such user".into()));
    let outcome = dead_lettered(decide_for(Attempt::Executed(failed), 1, 2));
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.error_code.as_deref(),
        Some("Request_ResourceNotFound")
    );
    assert_eq!(outcome.error_message.as_deref(), Some("no such user"));

    let partial = executed(Status::Partial, vec![method("a")]);
    let outcome = recorded(decide_for(Attempt::Executed(partial), 1, 2));
    assert_eq!(outcome.status, Status::Partial);
}

#[test]
fn a_retryable_error_uses_an_attempt_and_waits_in_the_next_tier() {
    for (attempt, tier) in [(1, 0), (2, 1)] {
        let got = decide_for(
            interrupted_by(server_error(), vec![method("a")]),
            attempt,
            2,
        );
        let mut next = request();
        next.carry = carry(
            vec![method("a")],
            "transient Graph error generalException: boom",
        );
        assert_eq!(
            got,
            Disposition::Retry {
                tier,
                attempt: attempt + 1,
                request: Box::new(next),
                cause: Cause::new(
                    "generalException",
                    "transient Graph error generalException: boom"
                ),
            },
            "attempt {attempt}"
        );
    }
}

#[test]
fn a_retryable_error_after_the_last_tier_fails_with_retries_exhausted_and_is_dead_lettered() {
    let outcome = dead_lettered(decide_for(interrupted_by(server_error(), Vec::new()), 3, 2));
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.attempts, 3);
    assert_eq!(outcome.error_code.as_deref(), Some("retries_exhausted"));
    assert_eq!(
        outcome.error_message.as_deref(),
        Some("gave up after 3 attempts: transient Graph error generalException: boom")
    );
    assert!(outcome.sessions_revoked);
    assert_eq!(outcome.graph_calls, 0);
}

#[test]
fn retries_exhausted_after_removing_something_is_partial_and_keeps_what_was_removed() {
    let outcome = recorded(decide_for(
        interrupted_by(server_error(), vec![method("a")]),
        3,
        2,
    ));
    assert_eq!(outcome.status, Status::Partial);
    assert_eq!(outcome.methods_removed, vec![method("a")]);
    assert_eq!(outcome.error_code.as_deref(), Some("retries_exhausted"));
}

#[test]
fn without_tiers_a_retryable_error_or_an_outage_fails_at_once() {
    for error in [server_error(), no_answer()] {
        let outcome = dead_lettered(decide_for(interrupted_by(error, Vec::new()), 1, 0));
        assert_eq!(outcome.error_code.as_deref(), Some("retries_exhausted"));
        assert_eq!(outcome.attempts, 1);
    }
}

#[test]
fn an_outage_waits_in_the_first_tier_keeping_its_attempt_even_past_the_last_tier() {
    for attempt in [1, 3, 9] {
        let got = decide_for(interrupted_by(no_answer(), vec![method("a")]), attempt, 2);
        let mut next = request();
        next.carry = carry(
            vec![method("a")],
            "no answer from Graph (timeout): timed out",
        );
        assert_eq!(
            got,
            Disposition::RequeueOutage {
                attempt,
                request: Box::new(next),
                cause: Cause::new("timeout", "no answer from Graph (timeout): timed out"),
            }
        );
    }
}

#[test]
fn a_permanent_error_that_stopped_the_reset_is_its_outcome() {
    let not_found = || graph::Error::NotFound {
        code: "Request_ResourceNotFound".into(),
        message: "gone".into(),
    };
    let outcome = dead_lettered(decide_for(interrupted_by(not_found(), Vec::new()), 1, 2));
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.error_code.as_deref(),
        Some("Request_ResourceNotFound")
    );
    assert_eq!(
        outcome.error_message.as_deref(),
        Some("not found (Request_ResourceNotFound): gone")
    );
    let outcome = recorded(decide_for(
        interrupted_by(not_found(), vec![method("a")]),
        1,
        2,
    ));
    assert_eq!(outcome.status, Status::Partial);
}

#[test]
fn an_app_wide_error_halts_and_puts_the_request_back_without_using_an_attempt() {
    let request = request();
    let done = Done {
        removed: vec![method("a")],
        sessions_revoked: true,
    };
    let cause = Cause::new("AADSTS7000215", "invalid client secret");
    let got = after_graph_error(
        Class::Halt,
        cause.clone(),
        done,
        (&request, &verified()),
        2,
        &rules(2),
    );
    let mut next = request.clone();
    next.carry = carry(vec![method("a")], "invalid client secret");
    assert_eq!(
        got,
        Disposition::Halt {
            attempt: 2,
            request: Box::new(next),
            cause,
        }
    );
}

#[test]
fn an_attempt_number_of_zero_counts_as_the_first() {
    match decide_for(interrupted_by(server_error(), Vec::new()), 0, 1) {
        Disposition::Retry { tier, attempt, .. } => assert_eq!((tier, attempt), (0, 2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_request_is_recorded_with_what_earlier_attempts_removed() {
    let mut request = request();
    request.carry = carry(vec![method("a")], "throttled");
    let got = recorded(decide(
        Delivered::Tried(&request, &verified(), Attempt::Expired),
        2,
        &rules(2),
    ));
    assert_eq!(got.status, Status::Expired);
    assert_eq!(got.methods_removed, vec![method("a")]);
    assert!(got.sessions_revoked);
    assert_eq!(got.error_code.as_deref(), Some("expired"));
    assert_eq!(
        got.error_message.as_deref(),
        Some(
            "requested at 2025-03-01T11:55:00+00:00, older than reset.max_request_age (1day); \
             not executed further (last error: throttled)"
        )
    );

    let plain = recorded(decide_for(Attempt::Expired, 1, 2));
    assert!(plain.methods_removed.is_empty() && !plain.sessions_revoked);
    assert!(
        plain.error_message.unwrap().ends_with("; not executed"),
        "no last error to mention"
    );
}

#[test]
fn a_protected_user_is_recorded_as_skipped() {
    let got = recorded(decide_for(Attempt::Protected, 1, 2));
    assert_eq!(got.status, Status::SkippedProtected);
    assert_eq!(got.error_code.as_deref(), Some("protected_user"));
    assert_eq!(
        got.error_message.as_deref(),
        Some("listed in reset.protected_users; not touched")
    );
    assert!(got.methods_removed.is_empty() && !got.sessions_revoked);
}

#[test]
fn the_gate_stops_requests_older_than_the_max_age_then_protected_users() {
    let protected = ResetSettings {
        protected_users: vec!["Adele@contoso.com".into()],
        ..ResetSettings::default()
    };
    let open = ResetSettings::default();
    let mut request = request();
    assert!(gate(&request, &open, &rules(2)).is_none());
    assert!(matches!(
        gate(&request, &protected, &rules(2)),
        Some(Attempt::Protected)
    ));
    request.requested_at = now() - chrono::Duration::days(1);
    assert!(
        gate(&request, &open, &rules(2)).is_none(),
        "exactly the max age is not older than it"
    );
    request.requested_at = now() - chrono::Duration::days(1) - chrono::Duration::seconds(1);
    assert!(matches!(
        gate(&request, &protected, &rules(2)),
        Some(Attempt::Expired)
    ));
}

#[test]
fn attempt_numbers_start_at_one() {
    assert_eq!(attempt_number(None), 1);
    assert_eq!(attempt_number(Some(0)), 1);
    assert_eq!(attempt_number(Some(4)), 4);
    assert_eq!(attempt_number(Some(u64::MAX)), u32::MAX);
}

#[test]
fn garbage_wrong_shapes_and_unknown_versions_are_told_apart() {
    let cause = |body: &[u8]| parse_request(body).unwrap_err();
    let garbage = cause(b"\xff\x00garbage");
    assert_eq!(garbage.code, "invalid_message");
    assert!(garbage.message.starts_with("not JSON"), "{garbage:?}");
    let unknown = cause(br#"{"version": 99, "user": "a@b.com"}"#);
    assert_eq!(
        unknown,
        Cause::new(
            "unknown_version",
            "request version 99; this worker understands version 1"
        )
    );
    let shape = cause(br#"{"version": 1, "user": "a@b.com"}"#);
    assert_eq!(shape.code, "invalid_message");
    assert!(
        shape.message.starts_with("not a reset request"),
        "{shape:?}"
    );
    assert_eq!(
        cause(br#"{"user": "a@b.com"}"#),
        Cause::new("invalid_message", "no numeric \"version\" field")
    );
    let request = request();
    assert_eq!(
        parse_request(&serde_json::to_vec(&request).unwrap()),
        Ok(request)
    );
}

#[test]
fn oversized_bodies_and_overlong_fields_are_refused_before_anything_else() {
    // A valid request padded with JSON whitespace to `len` bytes.
    let padded = |len: usize| {
        let mut body = serde_json::to_vec(&request()).unwrap();
        body.resize(len, b' ');
        body
    };
    assert_eq!(
        parse_request(&padded(super::MAX_REQUEST_BYTES)),
        Ok(request()),
        "the largest body allowed is read"
    );
    let cause = parse_request(&padded(super::MAX_REQUEST_BYTES + 1)).unwrap_err();
    assert_eq!(cause.code, "invalid_message");
    assert!(cause.message.contains("bytes"), "{cause:?}");

    let with_ticket = |chars: usize| ResetRequest {
        ticket: Some("x".repeat(chars)),
        ..request()
    };
    let longest = with_ticket(super::MAX_FIELD_CHARS);
    assert_eq!(
        parse_request(&serde_json::to_vec(&longest).unwrap()),
        Ok(longest),
        "a field of the longest length allowed is read"
    );
    let cause =
        parse_request(&serde_json::to_vec(&with_ticket(super::MAX_FIELD_CHARS + 1)).unwrap())
            .unwrap_err();
    assert_eq!(cause.code, "invalid_message");
    assert!(cause.message.contains("\"ticket\""), "{cause:?}");
}

#[test]
fn a_delivery_not_started_goes_back_unchanged_when_halted_and_is_handed_back_otherwise() {
    let cause = Cause::new("AADSTS7000215", "the client secret was rejected");

    let halted = not_started(Some(request()), 3, Some(cause.clone()));
    let running = not_started(Some(request()), 3, None);
    let unreadable = not_started(None, 3, Some(cause.clone()));

    assert_eq!(
        halted,
        Disposition::Halt {
            attempt: 3,
            request: Box::new(request()),
            cause
        },
        "same attempt, same request: a halt uses no attempt"
    );
    assert!(matches!(running, Disposition::HandBack { .. }));
    assert!(matches!(unreadable, Disposition::HandBack { .. }));
}

#[test]
fn a_request_met_by_a_halt_or_the_hourly_cap_goes_back_unexecuted_with_its_attempt_unused() {
    let why = "halted by carol@contoso.com".to_string();
    assert_eq!(
        decide_for(Attempt::Paused(why.clone()), 3, 2),
        Disposition::HandBack { reason: why },
        "handed back as it came: no outcome, no retry tier, no attempt used"
    );
}

#[test]
fn a_pass_asked_for_is_reported_whatever_the_reset_did_and_absent_when_not_asked() {
    let asked = ResetRequest {
        tap: Some(crate::domain::TapRequest {
            lifetime_minutes: 60,
            usable_once: true,
        }),
        ..request()
    };
    let issued = TapOutcome {
        issued: true,
        lifetime_minutes: 60,
        usable_once: true,
        sealed: Some("-----BEGIN AGE ENCRYPTED FILE-----".into()),
        ..TapOutcome::default()
    };
    let outcome_of = |request: &ResetRequest, status: Status, tap: Option<TapOutcome>| {
        let executed = Executed {
            tap: tap.map(Box::new),
            ..executed(status, vec![method("a")])
        };
        recorded(decide(
            Delivered::Tried(request, &verified(), Attempt::Executed(executed)),
            1,
            &rules(2),
        ))
    };

    // Issued by the reset: carried as it is.
    let got = outcome_of(&asked, Status::Reset, Some(issued.clone()));
    assert_eq!(
        (got.tap.clone(), got.tap_issued()),
        (Some(issued), Some(true))
    );
    // The reset ended otherwise: not issued, and why.
    let got = outcome_of(&asked, Status::Partial, None);
    let tap = got.tap.clone().expect("reported");
    assert_eq!(
        (tap.issued, tap.error_code.as_deref()),
        (false, Some("tap_not_after_reset"))
    );
    assert_eq!(
        (tap.lifetime_minutes, tap.usable_once),
        (60, true),
        "what was asked for is reported with the reason it was not issued"
    );
    assert!(tap.error_message.unwrap_or_default().contains("partial"));
    // A dry run says so.
    let dry = ResetRequest {
        dry_run: true,
        ..asked.clone()
    };
    let got = outcome_of(&dry, Status::DryRun, None);
    assert_eq!(
        got.tap.and_then(|t| t.error_code).as_deref(),
        Some("dry_run")
    );
    // Not asked: nothing about a pass.
    assert_eq!(
        outcome_of(&request(), Status::Reset, None).tap_issued(),
        None
    );
}
