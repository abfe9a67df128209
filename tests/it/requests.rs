//! Signed requests and the two-person rule against the real broker and the simulator: what
//! somebody holding only broker credentials publishes is dead-lettered with its reason and
//! never executed, by either route; a big batch waits for a second, different person.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use graph_sim::{GenOptions, SimConfig};
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use mfa_reset::broker::headers::{self, Headers};
use mfa_reset::broker::topology::{RK_OUTCOME, RK_REQUEST};
use mfa_reset::broker::{OutMessage, Publisher};
use mfa_reset::cli::ApproveArgs;
use mfa_reset::commands;
use mfa_reset::domain::{BatchManifest, Record};
use mfa_reset::domain::{ResetRequest, Status, UserRef, REQUEST_VERSION};
use mfa_reset::trust::requests::{
    approve, sign_replay, CompactProof, SealedBatch, APPROVAL_HEADER, MANIFEST_HEADER,
    PROOF_HEADER, REPLAY_HEADER,
};
use mfa_reset::trust::signer::generate_ed25519;
use mfa_reset::trust::Signer;

use crate::common::env::{csv_of_generated, TestEnv};

fn tenant(users: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// A request for generated user `i` in `batch`.
fn request(batch: &str, i: usize) -> ResetRequest {
    let user = UserRef::parse(&graph_sim::tenant::upn_for_index(i)).expect("user");
    ResetRequest {
        version: REQUEST_VERSION,
        request_id: ResetRequest::id_for(batch, &user),
        batch: batch.into(),
        user,
        ticket: None,
        reason: Some("forged".into()),
        requested_by: None,
        dry_run: false,
        revoke_sessions: true,
        requested_at: Utc::now(),
        replay: 0,
        tap: None,
        carry: None,
        proof: None,
    }
}

/// The headers of request `i` of `sealed`, plus `approval` when given.
fn headers_of(sealed: &SealedBatch, i: usize, approval: Option<&str>) -> FieldTable {
    let mut h = Headers::default()
        .str(MANIFEST_HEADER, &sealed.manifest.to_header())
        .str(PROOF_HEADER, &sealed.proof_header(i));
    if let Some(approval) = approval {
        h = h.str(APPROVAL_HEADER, approval);
    }
    h.build()
}

fn body(request: &ResetRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("json")
}

/// Take every dead letter off the queue: (error code, user) of each.
async fn dead_letters(env: &TestEnv) -> Vec<(String, String)> {
    let conn = mfa_reset::broker::connect(&env.settings.broker, "test dead")
        .await
        .expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            env.topology().dead().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        let code =
            headers::get_str(&m.delivery.properties, headers::ERROR_CODE).unwrap_or_default();
        assert_eq!(
            headers::get_str(&m.delivery.properties, headers::REASON).as_deref(),
            Some(code.as_str()),
            "a refused request carries its reason in x-mfa-reason too"
        );
        let user = serde_json::from_slice::<serde_json::Value>(&m.delivery.data)
            .ok()
            .and_then(|v| v["user"].as_str().map(str::to_string))
            .unwrap_or_default();
        out.push((code, user));
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

/// Wait until the dead-letter queue holds `n` messages (or fail after a generous deadline).
async fn wait_dead(env: &TestEnv, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let len = env.queue_len(&env.topology().dead()).await;
        if len >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{len} of {n} dead letters after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One forged message of each kind for users from `first` on; returns them with the
/// reason each must be refused with.
fn forgeries(env: &TestEnv, route: &str, first: usize) -> Vec<(Vec<u8>, FieldTable, &'static str)> {
    let requester = Signer::from_key_file(&env.keys.requester.path).expect("requester key");
    let principal = env.keys.requester.principal.as_str();
    let batch = |name: &str| format!("forged-{route}-{name}");
    let mut out = Vec::new();

    // Unsigned: the request JSON alone, as it was executed before issue 10.
    out.push((
        body(&request(&batch("unsigned"), first)),
        FieldTable::default(),
        "unsigned",
    ));

    // Bad signature: a real signed manifest of one user, its count raised to fit two.
    let small = vec![request(&batch("bad"), first + 1)];
    let sealed = SealedBatch::seal(&small, principal, &requester, Utc::now()).expect("seal");
    let mut tampered = sealed.clone();
    tampered.manifest.manifest.count = 2;
    out.push((
        body(&small[0]),
        headers_of(&tampered, 0, None),
        "bad_signature",
    ));

    // Signer not allowed: a key of the attacker's own, and the worker's key (not a requester).
    let own = Signer::from_private_key(generate_ed25519("mallory").expect("key")).expect("signer");
    let worker = Signer::from_key_file(&env.keys.worker.path).expect("worker key");
    for (i, signer) in [own, worker].iter().enumerate() {
        let one = vec![request(&batch(&format!("outsider{i}")), first + 2 + i)];
        let sealed = SealedBatch::seal(&one, principal, signer, Utc::now()).expect("seal");
        out.push((
            body(&one[0]),
            headers_of(&sealed, 0, None),
            "signer_not_allowed",
        ));
    }

    // Not in batch: a genuinely signed request for one user, its body pointed at another.
    let genuine = vec![request(&batch("swap"), first + 4)];
    let sealed = SealedBatch::seal(&genuine, principal, &requester, Utc::now()).expect("seal");
    let mut victim = request(&batch("swap"), first + 5);
    victim.request_id = genuine[0].request_id;
    out.push((body(&victim), headers_of(&sealed, 0, None), "not_in_batch"));

    // Not approved: a signed batch of three (above the threshold of two), no approval.
    let big: Vec<_> = (0..3)
        .map(|i| request(&batch("big"), first + 6 + i))
        .collect();
    let sealed = SealedBatch::seal(&big, principal, &requester, Utc::now()).expect("seal");
    for (i, r) in big.iter().enumerate() {
        out.push((body(r), headers_of(&sealed, i, None), "not_approved"));
    }

    // Future request: signed, but dated an hour ahead to outlive reset.max_request_age.
    let mut later = vec![request(&batch("future"), first + 9)];
    later[0].requested_at = Utc::now() + chrono::Duration::hours(1);
    let sealed = SealedBatch::seal(&later, principal, &requester, Utc::now()).expect("seal");
    out.push((
        body(&later[0]),
        headers_of(&sealed, 0, None),
        "future_request",
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_by_either_route_are_dead_lettered_with_their_reason_and_never_executed() {
    let mut env = TestEnv::new("req-forged", tenant(20)).await;
    env.settings.security.approval_above = 2;
    env.setup().await;
    let before = env.sim.users_snapshot();
    let topology = env.topology();

    // Straight into the queue through the default exchange, and through the intake.
    let direct = forgeries(&env, "direct", 0);
    let intake = forgeries(&env, "intake", 10);
    for (body, headers, _) in &direct {
        env.publish_raw_with("", &topology.requests(), body, headers.clone())
            .await;
    }
    for (body, headers, _) in &intake {
        env.publish_raw_with(&topology.intake(), "request", body, headers.clone())
            .await;
    }
    env.start_worker(4);
    let total = (direct.len() + intake.len()) as u32;
    wait_dead(&env, total).await;
    env.stop_workers().await;

    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for (body, _, reason) in direct.iter().chain(&intake) {
        let user = serde_json::from_slice::<serde_json::Value>(body).unwrap()["user"]
            .as_str()
            .unwrap()
            .to_string();
        expected.insert(user, reason.to_string());
    }
    let got: BTreeMap<String, String> = dead_letters(&env)
        .await
        .into_iter()
        .map(|(code, user)| (user, code))
        .collect();
    assert_eq!(got, expected);
    let stats = env.sim.stats();
    assert_eq!(stats.methods_deleted, 0);
    assert_eq!(stats.sessions_revoked, 0);
    assert_eq!(
        env.sim.users_snapshot(),
        before,
        "nothing changed in the tenant"
    );
    assert!(
        env.outcome_counts().await.is_empty(),
        "no outcome recorded for a refused request"
    );
    assert_eq!(env.queue_len(&topology.requests()).await, 0);
    env.cleanup().await;
}

/// `mfa-reset approve --batch BATCH --key KEY --yes`.
async fn approve_as(
    env: &TestEnv,
    batch: &str,
    key: &std::path::Path,
) -> anyhow::Result<commands::approve::Approved> {
    let args = ApproveArgs {
        batch: batch.to_string(),
        key: key.to_path_buf(),
        yes: true,
    };
    commands::approve::run(&env.settings, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_waits_until_a_second_person_approves_it_and_only_that_list() {
    let mut env = TestEnv::new("req-approve", tenant(12)).await;
    env.settings.security.approval_above = 3;
    env.setup().await;
    env.start_worker(4);

    let enqueued = env
        .enqueue_csv(&csv_of_generated(5))
        .await
        .expect("enqueue");
    assert!(enqueued.awaiting_approval);
    // Confirmed into the awaiting stream: nothing is on the requests queue for the worker.
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);

    // The requester cannot approve their own batch.
    let own = approve_as(&env, &enqueued.batch, &env.keys.requester.path)
        .await
        .expect_err("self-approval refused");
    assert!(
        format!("{own:#}").contains("nobody approves their own batch"),
        "{own:#}"
    );

    // An approval of another list (one user swapped) does not verify for this one.
    let requester = Signer::from_key_file(&env.keys.requester.path).expect("key");
    let approver = Signer::from_key_file(&env.keys.approver.path).expect("key");
    let principal = env.keys.requester.principal.as_str();
    let list: Vec<_> = (5..9).map(|i| request("req-approve-other", i)).collect();
    let mut other = list.clone();
    other[3] = request("req-approve-other", 11);
    let sealed = SealedBatch::seal(&list, principal, &requester, Utc::now()).expect("seal");
    let other_sealed = SealedBatch::seal(&other, principal, &requester, Utc::now()).expect("seal");
    let wrong = approve(&other_sealed.manifest.digest().unwrap(), &approver).expect("sign");
    for (i, r) in list.iter().enumerate() {
        env.publish_raw_with(
            &env.topology().intake(),
            "request",
            &body(r),
            headers_of(&sealed, i, Some(&wrong)),
        )
        .await;
    }
    wait_dead(&env, 4).await;
    let refused = dead_letters(&env).await;
    assert!(
        refused.iter().all(|(code, _)| code == "not_approved"),
        "{refused:?}"
    );
    assert_eq!(env.sim.stats().methods_deleted, 0, "nothing ran unapproved");

    // The second person approves: the batch runs, approved for exactly its five users.
    let approved = approve_as(&env, &enqueued.batch, &env.keys.approver.path)
        .await
        .expect("approve");
    assert_eq!(approved.count, 5);
    assert_eq!(approved.approved_by, env.keys.approver.principal);
    let view = env.wait_batch(&enqueued.batch, 60).await;
    assert_eq!(view.counts().get(&Status::Reset).copied(), Some(5));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_names_the_batch_users_holding_directory_roles_and_the_workers_skip_them() {
    let mut env = TestEnv::new("req-approve-admins", crate::fidelity::fixture_tenant()).await;
    env.settings.security.approval_above = 2;
    env.settings.reset.skip_admins = true;
    env.setup().await;
    let enqueued = env
        .enqueue_csv(
            "userPrincipalName\nadele.vance@contoso.com\nglobal.admin@contoso.com\n\
         eligible.admin@contoso.com\nevery.method@contoso.com\n",
        )
        .await
        .expect("enqueue");
    assert!(enqueued.awaiting_approval);

    let approved = approve_as(&env, &enqueued.batch, &env.keys.approver.path)
        .await
        .expect("approve");
    let check = approved
        .admins
        .expect("Graph settings are present: checked");
    assert_eq!(check.checked, 4);
    let admins: Vec<&str> = check.admins.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        admins,
        ["eligible.admin@contoso.com", "global.admin@contoso.com"]
    );
    assert!(
        check.admins[1].1.contains("Global Administrator"),
        "{check:?}"
    );
    assert!(check.unchecked.is_empty(), "{check:?}");

    // What approve warned about is what the workers do.
    env.start_worker(4);
    let view = env.wait_batch(&enqueued.batch, 60).await;
    let skipped: Vec<String> = view
        .outcomes()
        .filter(|o| o.status == Status::SkippedProtected)
        .map(|o| o.user.to_string())
        .collect();
    let mut skipped = skipped;
    skipped.sort();
    assert_eq!(skipped, admins);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_names_a_protected_user_the_batch_writes_otherwise_by_object_id() {
    let mut env = TestEnv::new("req-approve-protected", crate::fidelity::fixture_tenant()).await;
    env.settings.security.approval_above = 1;
    // Protected by object id; the batch names her by UPN (and the other by UPN in capitals).
    let adele_id = env.sim.user("adele.vance@contoso.com").unwrap().id;
    env.settings.reset.protected_users =
        vec![adele_id.to_string(), "EVERY.METHOD@CONTOSO.COM".to_string()];
    env.setup().await;
    let enqueued = env
        .enqueue_csv("userPrincipalName\nadele.vance@contoso.com\nevery.method@contoso.com\n")
        .await
        .expect("enqueue");
    assert!(enqueued.awaiting_approval);

    let approved = approve_as(&env, &enqueued.batch, &env.keys.approver.path)
        .await
        .expect("approve");

    // One by spelling, one by object id: both named, as the workers will skip both.
    let mut protected = approved.protected.clone();
    protected.sort();
    assert_eq!(
        protected,
        ["adele.vance@contoso.com", "every.method@contoso.com"]
    );
    let check = approved
        .admins
        .expect("Graph settings are present: checked");
    assert_eq!(
        check.protected,
        [("adele.vance@contoso.com".to_string(), adele_id.to_string())]
    );
    assert!(check.protected_note.is_none(), "{check:?}");
    env.start_worker(2);
    let view = env.wait_batch(&enqueued.batch, 60).await;
    assert_eq!(
        view.counts().get(&Status::SkippedProtected).copied(),
        Some(2)
    );
    env.cleanup().await;
}

/// Wait until the outcomes stream holds `n` outcomes of `id` (or fail after a generous deadline).
async fn wait_outcomes(env: &TestEnv, id: uuid::Uuid, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = env.outcome_counts().await.get(&id).copied().unwrap_or(0);
        if got >= n {
            assert_eq!(got, n, "more outcomes of {id} than runs allowed");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{got} of {n} outcomes of {id} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_request_republished_with_a_higher_replay_runs_only_with_an_admin_grant_and_names_the_admin(
) {
    let mut env = TestEnv::new("req-replay", tenant(3)).await;
    env.setup().await;
    let topology = env.topology();
    let requester = Signer::from_key_file(&env.keys.requester.path).expect("requester key");
    let original = vec![request("replay-grant", 0)];
    let id = original[0].request_id;
    let sealed = SealedBatch::seal(
        &original,
        &env.keys.requester.principal,
        &requester,
        Utc::now(),
    )
    .expect("seal");
    env.publish_raw_with(
        &topology.intake(),
        "request",
        &body(&original[0]),
        headers_of(&sealed, 0, None),
    )
    .await;
    env.start_worker(2);
    wait_outcomes(&env, id, 1).await;
    let after_first = env.sim.stats();
    assert!(
        after_first.methods_deleted > 0,
        "the first run reset the user"
    );

    // Anyone with broker credentials re-sends the verified request as replay 1, unsigned.
    let mut again = original[0].clone();
    again.replay = 1;
    env.publish_raw_with(
        &topology.intake(),
        "request",
        &body(&again),
        headers_of(&sealed, 0, None),
    )
    .await;
    wait_dead(&env, 1).await;
    let after_forged = env.sim.stats();
    assert_eq!(
        (after_forged.methods_deleted, after_forged.graph_requests),
        (after_first.methods_deleted, after_first.graph_requests),
        "the unsigned replay never reached Graph: no second deletion"
    );
    assert_eq!(env.outcome_counts().await.get(&id).copied(), Some(1));
    assert_eq!(
        dead_letters(&env).await,
        vec![("unsigned".to_string(), original[0].user.to_string())]
    );

    // The same replay granted by the admin (`dlq replay --yes --key`) runs.
    let admin = Signer::from_key_file(&env.keys.admin.path).expect("admin key");
    let mut granted = original[0].clone();
    granted.replay = 2;
    let grant = sign_replay(&granted, &admin).expect("grant");
    let headers = Headers::default()
        .str(MANIFEST_HEADER, &sealed.manifest.to_header())
        .str(PROOF_HEADER, &sealed.proof_header(0))
        .str(REPLAY_HEADER, &grant);
    env.publish_raw_with(
        &topology.intake(),
        "request",
        &body(&granted),
        headers.build(),
    )
    .await;
    wait_outcomes(&env, id, 2).await;
    env.stop_workers().await;
    assert_eq!(env.queue_len(&topology.dead()).await, 0);

    // The replay's outcome names the admin who signed it, and their key, beside the
    // requester; the first run's names no admin.
    let outcomes: Vec<_> = env
        .stream_records()
        .await
        .into_iter()
        .filter_map(|r| match r {
            mfa_reset::domain::Record::Outcome(o) if o.request_id == id => Some(o),
            _ => None,
        })
        .collect();
    let first = outcomes.iter().find(|o| o.replay == 0).expect("first run");
    assert_eq!((&first.replayed_by, &first.replay_key), (&None, &None));
    let replayed = outcomes.iter().find(|o| o.replay == 2).expect("replay 2");
    assert_eq!(
        replayed.replayed_by.as_deref(),
        Some(env.keys.admin.principal.as_str())
    );
    assert_eq!(
        replayed.replay_key.as_deref(),
        Some(admin.fingerprint().as_str())
    );
    assert_eq!(
        replayed.requested_by.as_deref(),
        Some(env.keys.requester.principal.as_str())
    );

    // The report and the audit export show it.
    // (Published by hand, the batch has no manifest on the stream for `status::load`.)
    let mut view = mfa_reset::batch::BatchView::new("replay-grant");
    for record in env.stream_records().await {
        view.apply(record);
    }
    let mut csv = Vec::new();
    commands::report::write_csv(&view, &mut csv).expect("csv");
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with(",replay,replayed_by,replay_key,tap_issued,tap_error_code"));
    // No pass was asked for: the two TAP columns are empty.
    let row = format!(",2,{},{},,", env.keys.admin.principal, admin.fingerprint());
    assert!(csv.lines().any(|line| line.ends_with(&row)), "{csv}");
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.jsonl");
    commands::audit::export(&env.settings, None, Some(&export))
        .await
        .expect("export");
    let exported = std::fs::read_to_string(&export).unwrap();
    let line = exported
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| {
            l["verified"] == true && l["record"]["kind"] == "outcome" && l["record"]["replay"] == 2
        })
        .expect("the replay's outcome is exported");
    assert_eq!(
        line["record"]["replayed_by"],
        env.keys.admin.principal.as_str()
    );
    assert_eq!(line["record"]["replay_key"], admin.fingerprint().as_str());
    env.cleanup().await;
}

/// The manifest record `enqueue` writes for the compact batch `sealed` (its signed manifest
/// and cap), with `cap` in place of the batch's own when given.
fn manifest_record(sealed: &SealedBatch, cap: Option<mfa_reset::trust::MerkleCap>) -> Vec<u8> {
    let manifest = &sealed.manifest.manifest;
    serde_json::to_vec(&Record::Manifest(BatchManifest {
        batch: manifest.batch.clone(),
        count: manifest.count,
        source: "test".into(),
        dry_run: false,
        revoke_sessions: true,
        requested_by: None,
        created_at: manifest.created_at,
        sealed: Some(sealed.manifest.clone()),
        cap: Some(cap.unwrap_or_else(|| sealed.cap.clone())),
    }))
    .expect("json")
}

/// The body of `request` in the compact form: with the `proof` of request `i` of `sealed`.
fn compact_body(request: &ResetRequest, sealed: &SealedBatch, i: usize) -> Vec<u8> {
    let mut request = request.clone();
    request.proof = Some(sealed.compact_proof(i));
    body(&request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_requests_run_only_against_a_manifest_record_that_verifies_and_forgeries_are_dead_lettered_never_executed(
) {
    let mut env = TestEnv::new("req-compact", tenant(20)).await;
    env.setup().await;
    // The worker is running before anything is published: it learns the manifests as they
    // come, and a request that outruns its manifest waits for the follower to catch up.
    env.start_worker(4);
    let requester = Signer::from_key_file(&env.keys.requester.path).expect("requester key");
    let principal = env.keys.requester.principal.as_str();
    let seal = |requests: &[ResetRequest], signer: &Signer| {
        // A cap of two nodes: every request carries a path of hashes up to it.
        SealedBatch::seal_capped(requests, principal, signer, Utc::now(), 2).expect("seal")
    };
    let mut records: Vec<Vec<u8>> = Vec::new();
    // (body, headers, the reason it must be refused with; None: it runs)
    let mut requests: Vec<(Vec<u8>, FieldTable, Option<&str>)> = Vec::new();

    // Genuine: five users, after a forged copy of its record whose cap was changed (it must
    // neither verify nor stop the genuine record from being learnt).
    let genuine: Vec<_> = (0..5).map(|i| request("compact-ok", i)).collect();
    let sealed = seal(&genuine, &requester);
    // Every request but the last (alone at the end of each level below the cap) has a path.
    assert_eq!(sealed.cap.level, 2);
    assert!(sealed.cap_paths[..4].iter().all(|path| !path.is_empty()));
    let mut bent = sealed.cap.clone();
    bent.nodes[0].0[0] ^= 1;
    records.push(manifest_record(&sealed, Some(bent)));
    records.push(manifest_record(&sealed, None));
    for (i, r) in genuine.iter().enumerate() {
        requests.push((compact_body(r, &sealed, i), FieldTable::default(), None));
    }
    // Another user's body with request 0's proof: not in the batch.
    let mut victim = request("compact-ok", 6);
    victim.request_id = genuine[0].request_id;
    requests.push((
        compact_body(&victim, &sealed, 0),
        FieldTable::default(),
        Some("not_in_batch"),
    ));

    // A signed batch whose manifest record was never published: its manifest is unknown.
    let unknown = vec![request("compact-unknown", 7)];
    let sealed = seal(&unknown, &requester);
    requests.push((
        compact_body(&unknown[0], &sealed, 0),
        FieldTable::default(),
        Some("unsigned"),
    ));

    // A record signed by a key of the attacker's own, with its requests.
    let own = Signer::from_private_key(generate_ed25519("mallory").expect("key")).expect("signer");
    let outsider: Vec<_> = (8..10).map(|i| request("compact-outsider", i)).collect();
    let sealed = seal(&outsider, &own);
    records.push(manifest_record(&sealed, None));
    for (i, r) in outsider.iter().enumerate() {
        requests.push((
            compact_body(r, &sealed, i),
            FieldTable::default(),
            Some("unsigned"),
        ));
    }

    // A genuine signature over another manifest: the requester changed after signing.
    let altered: Vec<_> = (10..12).map(|i| request("compact-altered", i)).collect();
    let mut sealed = seal(&altered, &requester);
    sealed.manifest.manifest.requested_by = env.keys.approver.principal.clone();
    records.push(manifest_record(&sealed, None));
    for (i, r) in altered.iter().enumerate() {
        requests.push((
            compact_body(r, &sealed, i),
            FieldTable::default(),
            Some("unsigned"),
        ));
    }

    // A genuinely signed manifest whose cap does not fold up to its root.
    let capped: Vec<_> = (12..14).map(|i| request("compact-cap", i)).collect();
    let sealed = seal(&capped, &requester);
    let mut other = sealed.cap.clone();
    other.nodes.reverse();
    records.push(manifest_record(&sealed, Some(other)));
    for (i, r) in capped.iter().enumerate() {
        requests.push((
            compact_body(r, &sealed, i),
            FieldTable::default(),
            Some("unsigned"),
        ));
    }

    let untouched: Vec<_> = (6..14)
        .map(|i| {
            env.sim
                .user(&graph_sim::tenant::upn_for_index(i))
                .expect("user")
        })
        .collect();
    // As enqueue does: the records confirmed first, then the requests, through the intake.
    let topology = env.topology();
    let mut publisher = Publisher::connect(&env.settings.broker, &topology, "test")
        .await
        .expect("publisher");
    for record in records {
        publisher
            .send(OutMessage::json(RK_OUTCOME, record).via(topology.intake()))
            .await
            .expect("record");
    }
    publisher.flush().await.expect("records confirmed");
    for (body, headers, _) in &requests {
        let msg = OutMessage::json(RK_REQUEST, body.clone())
            .with_headers(headers.clone())
            .via(topology.intake());
        publisher.send(msg).await.expect("request");
    }
    publisher.flush().await.expect("requests confirmed");
    publisher.close().await.expect("close");

    let view = env.wait_batch("compact-ok", 60).await;
    assert_eq!(view.counts().get(&Status::Reset).copied(), Some(5));
    let refused = requests
        .iter()
        .filter(|(_, _, reason)| reason.is_some())
        .count();
    wait_dead(&env, refused as u32).await;
    env.stop_workers().await;

    let mut expected: Vec<(String, String)> = requests
        .iter()
        .filter_map(|(body, _, reason)| {
            let user = serde_json::from_slice::<serde_json::Value>(body).unwrap()["user"]
                .as_str()
                .unwrap()
                .to_string();
            reason.map(|reason| (reason.to_string(), user))
        })
        .collect();
    let mut got = dead_letters(&env).await;
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    let after: Vec<_> = (6..14)
        .map(|i| {
            env.sim
                .user(&graph_sim::tenant::upn_for_index(i))
                .expect("user")
        })
        .collect();
    assert_eq!(after, untouched, "no refused request reached Graph");
    let ran = env.outcome_counts().await;
    assert_eq!(ran.len(), 5, "outcomes only for the genuine batch: {ran:?}");
    assert!(genuine.iter().all(|r| ran.contains_key(&r.request_id)));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_publishes_compact_requests_without_headers_and_the_worker_runs_them() {
    let mut env = TestEnv::new("req-compact-enqueue", tenant(6)).await;
    env.setup().await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(4))
        .await
        .expect("enqueue");

    // Every request carries only its compact proof, in its body: no header at all.
    let conn = mfa_reset::broker::connect(&env.settings.broker, "test peek")
        .await
        .expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let peeked = ch
        .basic_get(
            env.topology().requests().as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .expect("basic.get")
        .expect("a request");
    // (The quorum queue adds its own x-delivery-count.)
    let names: Vec<String> = peeked
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(|table| table.inner().keys().map(|key| key.to_string()).collect())
        .unwrap_or_default();
    assert!(
        names.iter().all(|name| name == "x-delivery-count"),
        "no header of ours: {names:?}"
    );
    let sent: ResetRequest = serde_json::from_slice(&peeked.delivery.data).expect("request");
    let proof = CompactProof::from_text(sent.proof.as_deref().expect("a proof field"))
        .expect("a compact proof");
    // A batch of up to 4096 has its leaves as the cap: a digest and an index, no path.
    assert!(proof.path.is_empty());
    assert!(proof.index < 4);
    let _ = conn.close(200, "bye".into()).await;

    env.start_worker(2);
    let view = env.wait_batch(&enqueued.batch, 60).await;
    assert_eq!(view.counts().get(&Status::Reset).copied(), Some(4));
    let manifest = view.manifest().expect("manifest record");
    let cap = manifest.cap.as_ref().expect("the record holds the cap");
    assert_eq!((cap.level, cap.nodes.len()), (0, 4));
    env.cleanup().await;
}

/// Publish `messages` (routing key, body, headers) through the intake, confirmed, in order.
async fn publish_in_order(env: &TestEnv, messages: Vec<(&str, Vec<u8>, FieldTable)>) {
    let topology = env.topology();
    let mut publisher = Publisher::connect(&env.settings.broker, &topology, "test")
        .await
        .expect("publisher");
    for (routing_key, body, headers) in messages {
        let msg = OutMessage::json(routing_key, body)
            .with_headers(headers)
            .via(topology.intake());
        publisher.send(msg).await.expect("publish");
    }
    publisher.flush().await.expect("confirmed");
    publisher.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_batch_the_worker_forgot_is_looked_up_on_the_stream_and_runs() {
    let mut env = TestEnv::new("req-compact-lookup", tenant(6)).await;
    // One batch kept in memory: learning the second forgets the first.
    env.settings.security.known_batches = 1;
    env.setup().await;
    env.start_worker(2);
    let requester = Signer::from_key_file(&env.keys.requester.path).expect("requester key");
    let principal = env.keys.requester.principal.as_str();
    let first: Vec<_> = (0..2).map(|i| request("compact-first", i)).collect();
    let second = vec![request("compact-second", 2)];
    let first_sealed = SealedBatch::seal(&first, principal, &requester, Utc::now()).expect("seal");
    let second_sealed =
        SealedBatch::seal(&second, principal, &requester, Utc::now()).expect("seal");
    let none = FieldTable::default;
    publish_in_order(
        &env,
        vec![
            (RK_OUTCOME, manifest_record(&first_sealed, None), none()),
            (RK_OUTCOME, manifest_record(&second_sealed, None), none()),
            (
                RK_REQUEST,
                compact_body(&second[0], &second_sealed, 0),
                FieldTable::default(),
            ),
        ],
    )
    .await;
    // The second batch ran: the worker has read past both records, so it forgot the first.
    let view = env.wait_batch("compact-second", 60).await;
    assert_eq!(view.counts().get(&Status::Reset).copied(), Some(1));

    // The follower read the first record once and the worker forgot it: the first batch's
    // requests can only verify by finding their manifest on the stream again; a request naming a
    // manifest that is nowhere on it is still refused after the lookup.
    let never = vec![request("compact-never", 4)];
    let never_sealed = SealedBatch::seal(&never, principal, &requester, Utc::now()).expect("seal");
    let mut messages: Vec<_> = first
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                RK_REQUEST,
                compact_body(r, &first_sealed, i),
                FieldTable::default(),
            )
        })
        .collect();
    messages.push((
        RK_REQUEST,
        compact_body(&never[0], &never_sealed, 0),
        FieldTable::default(),
    ));
    publish_in_order(&env, messages).await;
    let view = env.wait_batch("compact-first", 60).await;
    assert_eq!(view.counts().get(&Status::Reset).copied(), Some(2));
    wait_dead(&env, 1).await;
    env.stop_workers().await;
    assert_eq!(
        dead_letters(&env).await,
        vec![("unsigned".to_string(), never[0].user.to_string())]
    );
    env.cleanup().await;
}
