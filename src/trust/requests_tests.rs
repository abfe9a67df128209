use chrono::{Duration, TimeZone};

use super::*;
use crate::domain::{Carry, UserRef, REQUEST_VERSION};
use crate::trust::test_keys::{allowed, ed25519, signer};
use crate::trust::{AllowedSigners, Principal};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn request(batch: &str, i: usize) -> ResetRequest {
    let user = UserRef::parse(&format!("user{i}@contoso.com")).unwrap();
    ResetRequest {
        version: REQUEST_VERSION,
        request_id: ResetRequest::id_for(batch, &user),
        batch: batch.into(),
        user,
        ticket: None,
        reason: Some("incident".into()),
        requested_by: None,
        dry_run: false,
        revoke_sessions: true,
        requested_at: now() - Duration::minutes(1),
        replay: 0,
        tap: None,
        carry: None,
        proof: None,
    }
}

fn batch(name: &str, n: usize) -> Vec<ResetRequest> {
    (0..n).map(|i| request(name, i)).collect()
}

/// alice and bob request and approve; worker signs records only; mallory is not listed.
struct World {
    allowed: AllowedSigners,
    alice: Signer,
    bob: Signer,
    worker: Signer,
    mallory: Signer,
}

fn world() -> World {
    let (alice, bob, worker, mallory) = (ed25519(1), ed25519(2), ed25519(3), ed25519(4));
    let both = r#"namespaces="mfa-reset-request,mfa-reset-approve""#;
    let allowed = allowed(&[
        ("alice@contoso.com", both, alice.public_key()),
        ("bob@contoso.com", both, bob.public_key()),
        (
            "worker@contoso.com",
            r#"namespaces="mfa-reset-worker""#,
            worker.public_key(),
        ),
    ]);
    World {
        allowed,
        alice: signer(alice),
        bob: signer(bob),
        worker: signer(worker),
        mallory: signer(mallory),
    }
}

fn policy(world: &World) -> Policy<'_> {
    Policy {
        allowed: &world.allowed,
        approval_above: 3,
    }
}

fn check(
    world: &World,
    request: &ResetRequest,
    sealed: &SealedBatch,
    index: usize,
    approval: Option<&str>,
) -> Verdict {
    let manifest = sealed.manifest.to_header();
    let proof = sealed.proof_header(index);
    let seal = Seal {
        manifest: Some(&manifest),
        proof: Some(&proof),
        leaf: None,
        approval,
        replay: None,
    };
    verdict(request, seal, &policy(world), now())
}

fn refused(verdict: Verdict) -> Reason {
    match verdict {
        Verdict::Refused(refusal) => refusal.reason,
        Verdict::Verified(who) => panic!("verified as {who:?}"),
    }
}

#[test]
fn reasons_have_the_names_of_the_contract() {
    let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "unsigned",
            "bad_signature",
            "signer_not_allowed",
            "not_in_batch",
            "not_approved",
            "future_request"
        ]
    );
}

#[test]
fn every_request_of_a_signed_batch_verifies_as_its_requester() {
    let w = world();
    let requests = batch("b1", 3);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    for (i, request) in requests.iter().enumerate() {
        let Verdict::Verified(who) = check(&w, request, &sealed, i, None) else {
            panic!("request {i} refused");
        };
        assert_eq!(who.requested_by.as_str(), "alice@contoso.com");
        assert_eq!(who.approved_by, None);
        assert_eq!(who.manifest, sealed.manifest.digest().unwrap());
    }
}

#[test]
fn a_ticket_event_is_a_batch_of_one_whose_root_is_its_leaf_hash() {
    let w = world();
    let requests = batch("t1", 1);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    let leaf = crate::trust::merkle::leaf_hash(&leaf_bytes(&requests[0]).unwrap());
    assert_eq!(sealed.manifest.manifest.root, leaf);
    assert!(sealed.proofs[0].path.is_empty());
    assert!(matches!(
        check(&w, &requests[0], &sealed, 0, None),
        Verdict::Verified(_)
    ));
}

#[test]
fn a_retry_or_replay_still_verifies_but_a_changed_request_does_not() {
    let w = world();
    let requests = batch("b1", 3);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    let mut retried = requests[1].clone();
    retried.carry = Some(Carry {
        last_error: Some("503".into()),
        ..Carry::default()
    });
    retried.replay = 2;
    // The compact form's proof rides in the body: not part of the leaf it proves.
    retried.proof = Some(sealed.compact_proof(1));
    assert_eq!(
        leaf_bytes(&retried).unwrap(),
        leaf_bytes(&requests[1]).unwrap()
    );
    // The leaf leaves `replay` out (the admin's grant covers it: see the replay tests).
    let trusted =
        verify_batch(Some(&sealed.manifest.to_header()), None, &policy(&w), now()).unwrap();
    assert!(matches!(
        verify_request(&retried, Some(&sealed.proof_header(1)), &trusted, now()),
        Verdict::Verified(_)
    ));
    let changes: [fn(&mut ResetRequest); 5] = [
        |r| r.user = UserRef::parse("victim@contoso.com").unwrap(),
        |r| r.dry_run = true,
        |r| r.ticket = Some("INC9".into()),
        |r| r.requested_at += Duration::hours(20),
        |r| r.batch = "b2".into(),
    ];
    for change in changes {
        let mut changed = requests[1].clone();
        change(&mut changed);
        assert_eq!(
            refused(check(&w, &changed, &sealed, 1, None)),
            Reason::NotInBatch
        );
    }
    // Another request's proof does not fit either.
    assert_eq!(
        refused(check(&w, &requests[1], &sealed, 0, None)),
        Reason::NotInBatch
    );
}

#[test]
fn missing_forged_and_foreign_manifests_are_refused_with_their_reason() {
    let w = world();
    let requests = batch("b1", 2);
    let request = &requests[0];
    let policy = policy(&w);
    let by = |manifest: Option<&str>| {
        refused(verdict(
            request,
            Seal {
                manifest,
                proof: None,
                leaf: None,
                approval: None,
                replay: None,
            },
            &policy,
            now(),
        ))
    };
    assert_eq!(by(None), Reason::Unsigned);
    assert_eq!(by(Some("  ")), Reason::Unsigned);
    assert_eq!(by(Some("{not json")), Reason::BadSignature);

    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    // The count raised after signing.
    let mut forged = sealed.manifest.clone();
    forged.manifest.count = 1;
    assert_eq!(by(Some(&forged.to_header())), Reason::BadSignature);
    // Signed for another namespace (a worker record signature replayed as a request).
    let mut other = sealed.manifest.clone();
    other.signature = w
        .alice
        .sign(
            Namespace::Approve,
            &manifest_bytes(&sealed.manifest.manifest).unwrap(),
        )
        .unwrap();
    assert_eq!(by(Some(&other.to_header())), Reason::BadSignature);
    // Signed by a key nobody listed, and by a worker key not allowed to request.
    for outsider in [&w.mallory, &w.worker] {
        let foreign = SealedBatch::seal(&requests, "alice@contoso.com", outsider, now()).unwrap();
        assert_eq!(
            refused(check(&w, request, &foreign, 0, None)),
            Reason::SignerNotAllowed
        );
    }
    // Signed by bob, claiming alice asked.
    let claimed = SealedBatch::seal(&requests, "alice@contoso.com", &w.bob, now()).unwrap();
    assert_eq!(
        refused(check(&w, request, &claimed, 0, None)),
        Reason::SignerNotAllowed
    );
}

#[test]
fn a_request_dated_in_the_future_is_refused_beyond_the_clock_skew() {
    let w = world();
    let mut requests = batch("b1", 2);
    requests[0].requested_at = now() + Duration::minutes(1);
    requests[1].requested_at = now() + Duration::hours(1);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    assert!(matches!(
        check(&w, &requests[0], &sealed, 0, None),
        Verdict::Verified(_)
    ));
    assert_eq!(
        refused(check(&w, &requests[1], &sealed, 1, None)),
        Reason::FutureRequest
    );
}

#[test]
fn a_big_batch_needs_the_approval_of_another_person_for_this_very_list() {
    let w = world();
    let requests = batch("big", 4);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    let digest = sealed.manifest.digest().unwrap();
    assert_eq!(
        refused(check(&w, &requests[0], &sealed, 0, None)),
        Reason::NotApproved
    );
    // Alice approving her own batch.
    let own = approve(&digest, &w.alice).unwrap();
    assert_eq!(
        refused(check(&w, &requests[0], &sealed, 0, Some(&own))),
        Reason::NotApproved
    );
    // Bob approving another list (one user swapped).
    let mut other = requests.clone();
    other[3] = request("big", 99);
    let other_sealed = SealedBatch::seal(&other, "alice@contoso.com", &w.alice, now()).unwrap();
    let for_other = approve(&other_sealed.manifest.digest().unwrap(), &w.bob).unwrap();
    assert_eq!(
        refused(check(&w, &requests[0], &sealed, 0, Some(&for_other))),
        Reason::NotApproved
    );
    // The worker key may not approve.
    let by_worker = approve(&digest, &w.worker).unwrap();
    assert_eq!(
        refused(check(&w, &requests[0], &sealed, 0, Some(&by_worker))),
        Reason::NotApproved
    );
    // A request signature replayed as an approval.
    let wrong_namespace = w
        .bob
        .sign(Namespace::Request, approval_message(&digest).as_bytes())
        .unwrap();
    assert_eq!(
        refused(check(&w, &requests[0], &sealed, 0, Some(&wrong_namespace))),
        Reason::NotApproved
    );
    // Bob approving this list.
    let approval = approve(&digest, &w.bob).unwrap();
    let Verdict::Verified(who) = check(&w, &requests[2], &sealed, 2, Some(&approval)) else {
        panic!("approved request refused");
    };
    assert_eq!(who.requested_by.as_str(), "alice@contoso.com");
    assert_eq!(
        who.approved_by.as_ref().map(Principal::as_str),
        Some("bob@contoso.com")
    );
}

#[test]
fn oversized_headers_are_refused_before_parsing() {
    let w = world();
    let requests = batch("b1", 1);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &w.alice, now()).unwrap();
    let huge = "x".repeat(MAX_MANIFEST + 1);
    let policy = policy(&w);
    let seal = Seal {
        manifest: Some(&huge),
        proof: None,
        leaf: None,
        approval: None,
        replay: None,
    };
    assert_eq!(
        refused(verdict(&requests[0], seal, &policy, now())),
        Reason::BadSignature
    );
    let manifest = sealed.manifest.to_header();
    let proof = "y".repeat(MAX_PROOF + 1);
    let seal = Seal {
        manifest: Some(&manifest),
        proof: Some(&proof),
        leaf: None,
        approval: None,
        replay: None,
    };
    assert_eq!(
        refused(verdict(&requests[0], seal, &policy, now())),
        Reason::NotInBatch
    );
}

/// alice requests; carol is an admin (namespace mfa-reset-admin only).
fn admin_world() -> (AllowedSigners, Signer, Signer) {
    let (alice, carol) = (ed25519(1), ed25519(5));
    let allowed = allowed(&[
        (
            "alice@contoso.com",
            r#"namespaces="mfa-reset-request,mfa-reset-approve""#,
            alice.public_key(),
        ),
        (
            "carol@contoso.com",
            r#"namespaces="mfa-reset-admin""#,
            carol.public_key(),
        ),
    ]);
    (allowed, signer(alice), signer(carol))
}

#[test]
fn a_replay_runs_only_with_an_admin_grant_of_exactly_this_request_replay_and_batch() {
    let (allowed, alice, carol) = admin_world();
    let requests = batch("b1", 2);
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &alice, now()).unwrap();
    let manifest = sealed.manifest.to_header();
    let proof = sealed.proof_header(0);
    let policy = Policy {
        allowed: &allowed,
        approval_above: 3,
    };
    let run = |request: &ResetRequest, grant: Option<&str>| {
        let seal = Seal {
            manifest: Some(&manifest),
            proof: Some(&proof),
            leaf: None,
            approval: None,
            replay: grant,
        };
        verdict(request, seal, &policy, now())
    };
    let mut replayed = requests[0].clone();
    replayed.replay = 1;

    // A first run needs no grant; a replay with the admin's grant of it runs, and names her.
    assert!(matches!(run(&requests[0], None), Verdict::Verified(_)));
    let grant = sign_replay(&replayed, &carol).unwrap();
    assert!(matches!(run(&replayed, Some(&grant)), Verdict::Verified(_)));
    let replayer = verify_replay(&replayed, Some(&grant), &allowed, now())
        .unwrap()
        .expect("a replay names its admin");
    assert_eq!(replayer.principal.to_string(), "carol@contoso.com");
    assert_eq!(replayer.key, carol.fingerprint());
    match run(&replayed, Some(&grant)) {
        Verdict::Verified(verified) => assert_eq!(verified.replayed_by, Some(replayer)),
        refused => panic!("{refused:?}"),
    }

    // No grant (or an empty one): unsigned.
    assert_eq!(refused(run(&replayed, None)), Reason::Unsigned);
    assert_eq!(refused(run(&replayed, Some("  "))), Reason::Unsigned);

    // Signed by an operator, who may request but not replay: signer_not_allowed.
    let by_operator = alice
        .sign_canonical(Namespace::Admin, &replay_message(&replayed))
        .unwrap();
    assert_eq!(
        refused(run(&replayed, Some(&by_operator))),
        Reason::SignerNotAllowed
    );
    // The operator's request-namespace signature of the same content: not an admin grant.
    let in_request_namespace = alice
        .sign_canonical(Namespace::Request, &replay_message(&replayed))
        .unwrap();
    assert!(matches!(
        run(&replayed, Some(&in_request_namespace)),
        Verdict::Refused(_)
    ));

    // The grant of replay 1 does not run replay 2, nor another request, nor another batch.
    let mut again = replayed.clone();
    again.replay = 2;
    assert_eq!(refused(run(&again, Some(&grant))), Reason::BadSignature);
    let mut other = requests[1].clone();
    other.replay = 1;
    assert_eq!(
        refused(verdict(
            &other,
            Seal {
                manifest: Some(&manifest),
                proof: Some(&sealed.proof_header(1)),
                leaf: None,
                approval: None,
                replay: Some(&grant),
            },
            &policy,
            now()
        )),
        Reason::BadSignature
    );
    let moved = ResetRequest {
        batch: "b2".into(),
        ..replayed.clone()
    };
    assert_eq!(
        verify_replay(&moved, Some(&grant), &allowed, now())
            .err()
            .map(|r| r.reason),
        Some(Reason::BadSignature)
    );
    // Garbage: bad_signature.
    assert_eq!(
        refused(run(&replayed, Some("not a signature"))),
        Reason::BadSignature
    );
}

/// The leaf as first defined: the request as a JSON value, without `carry`, `replay` and
/// `proof`, in canonical JSON (keys sorted at every depth).
fn leaf_by_value(request: &ResetRequest) -> Vec<u8> {
    let mut value = serde_json::to_value(request).unwrap();
    let fields = value.as_object_mut().unwrap();
    for left_out in ["carry", "replay", "proof"] {
        fields.remove(left_out);
    }
    canonical_json_value(&value).unwrap()
}

#[test]
fn the_leaf_written_directly_is_byte_for_byte_the_canonical_json_of_the_request() {
    let texts = [
        None,
        Some(String::new()),
        Some("incident 4711".to_string()),
        // Quotes, backslashes, control characters, non-ASCII, a character outside the BMP.
        Some("\"quoted\" \\ back\u{1}\u{1f}\t\n é 漢字 \u{1F512} \u{7f}".to_string()),
    ];
    let users = [
        "user@contoso.com",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "o'neil+mfa@contoso.com",
    ];
    let taps = [
        None,
        Some(crate::domain::TapRequest {
            lifetime_minutes: 60,
            usable_once: true,
        }),
    ];
    let mut checked = 0;
    for (i, text) in texts.iter().enumerate() {
        for user in users {
            for tap in taps {
                for flags in 0..4u32 {
                    let mut request = request("b-é/1", i);
                    request.user = UserRef::parse(user).unwrap();
                    request.ticket = text.clone();
                    request.reason = texts[(i + 1) % texts.len()].clone();
                    request.requested_by = texts[(i + 2) % texts.len()].clone();
                    request.dry_run = flags & 1 == 1;
                    request.revoke_sessions = flags & 2 == 2;
                    request.requested_at = now() + Duration::nanoseconds(i64::from(flags) * 1_001);
                    request.tap = tap;
                    // Left out of the leaf either way.
                    request.replay = flags;
                    request.carry = (flags == 3).then(Carry::default);
                    request.proof = text.clone();
                    assert_eq!(
                        String::from_utf8(leaf_bytes(&request).unwrap()).unwrap(),
                        String::from_utf8(leaf_by_value(&request)).unwrap(),
                        "{request:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 2 * 4);
}
