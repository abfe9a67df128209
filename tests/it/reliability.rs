//! Reliability and operations: graceful shutdown, crashes, redeliveries, a Graph outage,
//! poison messages, dead-letter operations, visibility, safety rails and hostile files.
//! Workers run as real `mfa-reset work` processes where the test needs signals, logs or
//! `/metrics`; the broker is the real RabbitMQ. Broker restarts are in `tests/broker_restart.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_sim::{FaultPatch, GenOptions, SimConfig};
use mfa_reset::commands::dlq;
use mfa_reset::domain::{Record, ResetRequest, Status, UserRef};
use mfa_reset::graph::{AuthMethod, GraphClient};
use mfa_reset::worker::{self, WorkOptions, WorkerMetrics};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use crate::common::amqp_cut::AmqpCut;
use crate::common::amqp_hold::{broker_address, AmqpHold};
use crate::common::env::{csv_of_generated, TestEnv};
use crate::common::graph_front::GraphFront;
use crate::common::proc::{self, finish, free_port, run, signal, spawn_worker};

fn tenant(users: usize, latency_ms: u64) -> SimConfig {
    SimConfig {
        users,
        latency_ms,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// A tenant of `users` users with at least `methods_min` methods each.
fn tenant_with_methods(users: usize, methods_min: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// A Graph client on the test's tenant, and `user`'s removable methods (at least three).
async fn removable_methods(env: &TestEnv, user: &UserRef) -> (GraphClient, Vec<AuthMethod>) {
    let graph = GraphClient::new(&env.settings.graph, &env.settings.rate, &env.settings.retry)
        .expect("client");
    let targets: Vec<AuthMethod> = graph
        .list_methods(user)
        .await
        .expect("list")
        .into_iter()
        .filter(|m| m.is_removable())
        .collect();
    assert!(targets.len() >= 3, "{} methods to remove", targets.len());
    (graph, targets)
}

/// What a crashed worker got done: one of `targets` deleted, whichever Graph lets go first
/// (not the default, not a mobile with an alternate); its `type:id`.
async fn delete_one_out_of_band(
    graph: &GraphClient,
    user: &UserRef,
    targets: &[AuthMethod],
) -> String {
    for method in targets {
        if graph.delete_method(user, method).await.is_ok() {
            return format!("{}:{}", method.stem(), method.id());
        }
    }
    panic!("Graph let none of {} methods go", targets.len());
}

fn removable(user: &graph_sim::UserView) -> usize {
    user.methods
        .iter()
        .filter(|m| m["@odata.type"] != "#microsoft.graph.passwordAuthenticationMethod")
        .count()
}

/// Wait until the batch has at least `n` outcomes (or panic after `secs`).
async fn wait_for_outcomes(env: &TestEnv, batch: &str, n: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let view = mfa_reset::commands::status::load(&env.settings, batch)
            .await
            .expect("status");
        if view.finished() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} outcomes after {secs}s",
            view.finished()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until `condition` holds (or panic after `secs`, naming what was awaited).
async fn wait_until(what: &str, secs: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not after {secs}s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dead-letter queue holds `n` messages once the letters a `dlq` command kept are back:
/// it returns them by closing its channel, and the quorum queue counts them again a moment
/// later (asynchronously), so the count is awaited, not read once. A count that stays off
/// for 30 s fails.
async fn assert_dead_letters(env: &TestEnv, n: u32, what: &str) {
    let dead = env.topology().dead();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut len = env.queue_len(&dead).await;
    while len != n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        len = env.queue_len(&dead).await;
    }
    assert_eq!(len, n, "{what}");
}

/// The method ids in the `methods_removed` column of a CSV report (`type:id;type:id`), by user.
fn removed_by_report(csv: &str) -> HashMap<String, HashSet<String>> {
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().expect("a header row").clone();
    let column = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let (user, removed) = (column("user"), column("methods_removed"));
    reader
        .records()
        .map(|row| {
            let row = row.expect("a row");
            let ids = row[removed]
                .split(';')
                .filter(|m| !m.is_empty())
                .map(|m| m.split_once(':').expect("type:id").1.to_string())
                .collect();
            (row[user].to_lowercase(), ids)
        })
        .collect()
}

/// The batch id `enqueue` printed.
fn batch_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch: "))
        .expect("enqueue prints the batch")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown, crash, no second execution

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_users_in_flight_records_them_and_exits_zero() {
    // 200 ms per Graph call and ~5 calls per user: a user takes about a second.
    let env = TestEnv::new("rel-sigterm", tenant(60, 200)).await;
    let before: HashMap<String, usize> = env
        .sim
        .users_snapshot()
        .iter()
        .map(|u| (u.user_principal_name.to_lowercase(), removable(u)))
        .collect();
    let enqueued = env
        .enqueue_csv(&csv_of_generated(60))
        .await
        .expect("enqueue");
    let worker = spawn_worker(&env.settings, "sigterm-worker", 8);
    wait_for_outcomes(&env, &enqueued.batch, 3, 60).await;

    signal(&worker, Signal::SIGTERM);
    let started = Instant::now();
    let (code, _, stderr) = tokio::time::timeout(Duration::from_secs(30), finish(worker))
        .await
        .expect("the worker exits within the grace period");

    assert_eq!(code, Some(0), "exit code; stderr:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(stderr.contains("shutdown requested"), "{stderr}");
    // Nothing lost: every request has an outcome or is back in the queue, ready.
    let view = mfa_reset::commands::status::load(&env.settings, &enqueued.batch)
        .await
        .expect("status");
    let ready = env.queue_len(&env.topology().requests()).await;
    assert!(
        view.finished() < 60,
        "the test must stop the worker mid-batch"
    );
    assert_eq!(view.finished() + u64::from(ready), 60);
    // Nothing half-done: a user without an outcome still has every method it had.
    let recorded: HashSet<String> = view.outcomes().map(|o| o.user.key()).collect();
    for user in env.sim.users_snapshot() {
        let key = user.user_principal_name.to_lowercase();
        if !recorded.contains(&key) {
            assert_eq!(removable(&user), before[&key], "{key} was left half-done");
        }
    }
    // A new worker finishes the rest; every request ends with exactly one outcome.
    let mut env = env;
    env.start_worker(8);
    let view = env.wait_batch(&enqueued.batch, 120).await;
    assert_eq!(view.finished(), 60);
    let counts = env.outcome_counts().await;
    assert_eq!(counts.len(), 60);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_every_user_ends_with_one_outcome() {
    let env = TestEnv::new("rel-kill", tenant(150, 60)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(150))
        .await
        .expect("enqueue");
    let victim = spawn_worker(&env.settings, "victim", 16);
    let survivor = spawn_worker(&env.settings, "survivor", 8);
    wait_for_outcomes(&env, &enqueued.batch, 20, 60).await;

    signal(&victim, Signal::SIGKILL);
    let _ = finish(victim).await;
    let newcomer = spawn_worker(&env.settings, "newcomer", 8);
    let view = env.wait_batch(&enqueued.batch, 180).await;
    signal(&survivor, Signal::SIGTERM);
    signal(&newcomer, Signal::SIGTERM);
    assert_eq!(finish(survivor).await.0, Some(0));
    assert_eq!(finish(newcomer).await.0, Some(0));

    assert_eq!(view.finished(), 150);
    let workers: HashSet<String> = view.outcomes().map(|o| o.worker.clone()).collect();
    assert!(workers.contains("victim"), "{workers:?}");
    // Exactly one outcome record per request on the stream, and one row per user in `report`.
    let counts = env.outcome_counts().await;
    assert_eq!(counts.len(), 150);
    assert!(
        counts.values().all(|n| *n == 1),
        "a request was recorded twice"
    );
    let (code, csv, stderr) = run(&env.settings, &["report", "--batch", &enqueued.batch]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let users: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap_or(""))
        .collect();
    assert_eq!(users.len(), 150);
    assert_eq!(users.iter().collect::<HashSet<_>>().len(), 150);
    // Users the victim held half-way were resumed: nobody keeps a removable method.
    for user in env.sim.users_snapshot() {
        assert_eq!(removable(&user), 0, "{}", user.user_principal_name);
    }
    // What the report says was removed is exactly what the simulator deleted, user by user,
    // including what the victim deleted before it died.
    let reported = removed_by_report(&csv);
    assert_eq!(reported.len(), 150);
    for user in env.sim.users_snapshot() {
        let deleted: HashSet<String> = user
            .deleted_methods
            .iter()
            .map(|m| m["id"].as_str().expect("a method id").to_string())
            .collect();
        let key = user.user_principal_name.to_lowercase();
        assert_eq!(reported[&key], deleted, "{key}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_delivered_again_after_its_outcome_is_recorded_does_not_touch_graph() {
    let mut env = TestEnv::new("rel-dup", tenant(20, 0)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(20))
        .await
        .expect("enqueue");
    env.start_worker(8);
    env.wait_batch(&enqueued.batch, 60).await;
    env.stop_workers().await;
    let requests_before = env.sim.stats().requests_total;

    // The same 20 requests again (as a producer republishing after a lost confirm would).
    let mut again = Vec::new();
    for i in 0..20 {
        let user = UserRef::parse(&graph_sim::tenant::upn_for_index(i)).expect("user");
        let request = ResetRequest {
            version: mfa_reset::domain::REQUEST_VERSION,
            request_id: ResetRequest::id_for(&enqueued.batch, &user),
            batch: enqueued.batch.clone(),
            user,
            ticket: None,
            reason: None,
            requested_by: None,
            dry_run: false,
            revoke_sessions: false,
            requested_at: chrono::Utc::now(),
            replay: 0,
            tap: None,
            carry: None,
            proof: None,
        };
        again.push(request);
    }
    env.publish_signed(&again).await;
    let metrics = Arc::new(WorkerMetrics::default());
    let cancel = CancellationToken::new();
    let handle = {
        let settings = env.settings.clone();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
            let options = WorkOptions {
                concurrency: 4,
                exit_when_idle: Some(Duration::from_secs(1)),
            };
            worker::run(&settings, graph, options, metrics, cancel).await
        })
    };
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("the worker goes idle")
        .expect("worker task")
        .expect("worker ends cleanly");

    assert_eq!(metrics.duplicates.get(), 20);
    assert_eq!(env.sim.stats().requests_total, requests_before);
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);
    let counts = env.outcome_counts().await;
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    drop(cancel);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_whose_outcome_is_recorded_is_acked_without_a_graph_call() {
    let env = TestEnv::new("rel-redelivered", tenant(3, 0)).await;
    env.setup().await;
    let user = UserRef::parse(&graph_sim::tenant::upn_for_index(0)).expect("user");
    let batch = "rel-redelivered-batch";
    let request = ResetRequest {
        version: mfa_reset::domain::REQUEST_VERSION,
        request_id: ResetRequest::id_for(batch, &user),
        batch: batch.into(),
        user: user.clone(),
        ticket: None,
        reason: None,
        requested_by: None,
        dry_run: false,
        revoke_sessions: false,
        requested_at: chrono::Utc::now(),
        replay: 0,
        tap: None,
        carry: None,
        proof: None,
    };
    env.publish_signed(std::slice::from_ref(&request)).await;
    // A worker that will die: it takes the request and keeps it unsettled …
    let dying = mfa_reset::broker::connect(&env.settings.broker, "dying worker")
        .await
        .expect("broker");
    let channel = dying.create_channel().await.expect("channel");
    let taken = channel
        .basic_get(
            env.topology().requests().as_str().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
        .expect("the request");
    assert!(!taken.delivery.redelivered);
    // … while a live worker waits for work.
    let metrics = Arc::new(WorkerMetrics::default());
    let cancel = CancellationToken::new();
    let handle = {
        let settings = env.settings.clone();
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        tokio::spawn(async move {
            let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
            let options = WorkOptions {
                concurrency: 2,
                exit_when_idle: None,
            };
            worker::run(&settings, graph, options, metrics, cancel).await
        })
    };
    wait_until("the live worker is consuming", 60, || {
        metrics.connected.get() == 1
    })
    .await;
    // The dying worker records the outcome, then dies before acking: the broker redelivers.
    let outcome = mfa_reset::domain::Outcome {
        request_id: request.request_id,
        batch: batch.into(),
        user: user.clone(),
        status: Status::Reset,
        methods_removed: Vec::new(),
        methods_remaining: Vec::new(),
        sessions_revoked: false,
        attempts: 1,
        error_code: None,
        error_message: None,
        ticket: None,
        finished_at: chrono::Utc::now(),
        worker: "dying".into(),
        graph_calls: 3,
        replay: 0,
        dry_run: false,
        notes: Vec::new(),
        requested_by: None,
        approved_by: None,
        replayed_by: None,
        replay_key: None,
        reason: None,
        item: None,
        tap: None,
    };
    let publish = dying.create_channel().await.expect("channel");
    publish
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    let record = Record::Outcome(Box::new(outcome));
    // Sealed with the worker key, as a real worker's outcome is.
    let sealer = mfa_reset::records::Sealer::from_key_setting(&env.settings.worker.key)
        .expect("the worker key");
    sealer
        .publish(
            &publish,
            &env.topology().exchange(),
            batch,
            &record,
            request.request_id.to_string(),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("outcome recorded");
    let graph_requests_before = env.sim.stats().requests_total;
    let _ = dying.close(200, "dies".into()).await;

    wait_until("the redelivered copy is absorbed", 60, || {
        metrics.duplicates.get() == 1
    })
    .await;
    cancel.cancel();
    handle
        .await
        .expect("worker task")
        .expect("worker ends cleanly");

    assert_eq!(env.sim.stats().requests_total, graph_requests_before);
    assert_eq!(
        graph_requests_before, 0,
        "no Graph call at all, token included"
    );
    assert_eq!(
        env.outcome_counts().await.get(&request.request_id),
        Some(&1)
    );
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reset_resumes_by_listing_again_and_deleting_only_what_remains() {
    let mut env = TestEnv::new("rel-resume", tenant_with_methods(5, 3)).await;
    let upn = graph_sim::tenant::upn_for_index(0);
    let user = UserRef::parse(&upn).expect("user");
    // A crashed worker got half-way: one method already deleted, no outcome recorded.
    let (graph, targets) = removable_methods(&env, &user).await;
    delete_one_out_of_band(&graph, &user, &targets).await;
    let deleted_before = env.sim.stats().methods_deleted;

    let enqueued = env
        .enqueue_csv(&format!("user\n{upn}\n"))
        .await
        .expect("enqueue");
    env.start_worker(1);
    let view = env.wait_batch(&enqueued.batch, 60).await;

    let outcome = view.outcomes().next().expect("outcome");
    assert_eq!(outcome.status, Status::Reset, "{outcome:?}");
    assert_eq!(outcome.methods_removed.len(), targets.len() - 1);
    assert_eq!(
        env.sim.stats().methods_deleted - deleted_before,
        targets.len() as u64 - 1,
        "only what remained was deleted"
    );
    assert_eq!(removable(&env.sim.user(&upn).expect("user")), 0);
    env.cleanup().await;
}

/// What a worker killed half-way leaves behind (its plan on the stream, one method deleted,
/// no outcome), then the request run by a worker: the outcome, the method the killed worker
/// deleted (`type:id`), how many it planned, and the user. With `consistency_delay_ms`,
/// Graph still lists the deleted method that long (to the next attempt, the killed worker's
/// DELETE landing after its listing looks the same).
async fn after_an_interrupted_attempt(
    name: &str,
    consistency_delay_ms: u64,
) -> (TestEnv, mfa_reset::domain::Outcome, String, usize, String) {
    let mut env = TestEnv::new(
        name,
        SimConfig {
            consistency_delay_ms,
            ..tenant_with_methods(5, 3)
        },
    )
    .await;
    // Waits out the listing's lag: a method still listed after it would be believed remaining.
    env.settings.reset.consistency_wait = Duration::from_secs(20);
    env.setup().await;
    let upn = graph_sim::tenant::upn_for_index(1);
    let user = UserRef::parse(&upn).expect("user");
    let batch = "rel-plan-batch";
    let request_id = ResetRequest::id_for(batch, &user);
    // What a worker killed half-way leaves behind: its plan on the stream, one method deleted,
    // no outcome.
    let (graph, targets) = removable_methods(&env, &user).await;
    let deleted_by_crashed = delete_one_out_of_band(&graph, &user, &targets).await;
    let plan = Record::Plan(mfa_reset::domain::PlanRecord {
        request_id,
        replay: 0,
        batch: batch.into(),
        methods: targets.iter().map(|m| m.record()).collect(),
        at: chrono::Utc::now(),
    });
    let conn = mfa_reset::broker::connect(&env.settings.broker, "test")
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    // Sealed with the worker key, as the crashed worker's plan was.
    mfa_reset::records::Sealer::from_key_setting(&env.settings.worker.key)
        .expect("the worker key")
        .publish(
            &channel,
            &env.topology().exchange(),
            batch,
            &plan,
            request_id.to_string(),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("plan recorded");
    let _ = conn.close(200, "bye".into()).await;

    let mut args = crate::common::env::enqueue_args(None, None);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, format!("user\n{upn}\n")).unwrap();
    args.csv = Some(csv);
    args.batch = Some(batch.into());
    mfa_reset::commands::enqueue::run(&env.settings, &args)
        .await
        .expect("enqueue");
    env.start_worker(1);
    if consistency_delay_ms > 0 {
        // Once the attempt met the lagging method as a 404, Graph catches up with every
        // DELETE (the attempt's own too, so its check after the deletes settles).
        wait_until("a DELETE answered 404", 60, || {
            crate::fidelity::by_status(&env.sim.stats(), "DELETE").contains_key("404")
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            env.sim.settle_deletions();
            let view = mfa_reset::commands::status::load(&env.settings, batch)
                .await
                .expect("status");
            if view.finished() >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "no outcome after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let view = env.wait_batch(batch, 60).await;
    let outcome = view.outcomes().next().expect("outcome").clone();
    (env, outcome, deleted_by_crashed, targets.len(), upn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_interrupted_after_deleting_keeps_the_record_of_what_it_removed() {
    let (env, outcome, deleted_by_crashed, targets, upn) =
        after_an_interrupted_attempt("rel-plan", 0).await;

    assert_eq!(outcome.status, Status::Reset, "{outcome:?}");
    let removed: HashSet<String> = outcome.methods_removed.iter().map(|m| m.short()).collect();
    assert_eq!(
        removed.len(),
        targets,
        "every method is on the record: {removed:?}"
    );
    assert!(
        removed.contains(&deleted_by_crashed),
        "including the one the crashed worker removed"
    );
    assert_eq!(removable(&env.sim.user(&upn).expect("user")), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_method_still_listed_but_answered_404_is_on_the_record_as_removed_by_the_earlier_attempt(
) {
    // The crashed worker's DELETE lands after the next attempt listed the user: Graph lists
    // the method (here for as long as the test likes), then answers its DELETE 404.
    let (env, outcome, deleted_by_crashed, targets, upn) =
        after_an_interrupted_attempt("rel-plan-404", 600_000).await;

    assert_eq!(
        crate::fidelity::by_status(&env.sim.stats(), "DELETE").get("404"),
        Some(&1),
        "the next attempt met the earlier DELETE as a 404"
    );
    assert_eq!(outcome.status, Status::Reset, "{outcome:?}");
    assert!(outcome.methods_remaining.is_empty(), "{outcome:?}");
    let removed: HashSet<String> = outcome.methods_removed.iter().map(|m| m.short()).collect();
    assert_eq!(
        removed.len(),
        targets,
        "every method is on the record: {removed:?}"
    );
    assert!(
        removed.contains(&deleted_by_crashed),
        "including the one the crashed worker removed, though Graph still listed it"
    );
    assert_eq!(removable(&env.sim.user(&upn).expect("user")), 0);
    env.cleanup().await;
}

/// Where worker 1's second DELETE is when its broker connection is cut.
enum Waiting {
    /// Sent, held on the wire by the Graph front until the test releases it.
    OnTheWire,
    /// In the Retry-After pause of the 429 Graph answered to it (its retry due after it).
    InAPause,
    /// None left: every DELETE answered, the check that they are gone held on the wire.
    NoneLeft,
}

/// A user with several methods, reset by worker 1 (through a relay to its broker that the
/// test cuts, and a Graph front) until its second DELETE waits as `waiting` says (or, with
/// none left, its last read); the test cuts the relay, lets the wait end, and checks that
/// worker 1 sent no DELETE after it; worker 2 finishes the user: one outcome, by worker 2,
/// recording what Graph deleted.
async fn cut_mid_reset(name: &str, waiting: Waiting) {
    let mut env = TestEnv::new(name, tenant_with_methods(1, 4)).await;
    let upn = graph_sim::tenant::upn_for_index(0);
    let user = UserRef::parse(&upn).expect("user");
    let targets = removable_methods(&env, &user).await.1.len();

    // Worker 1 reaches the broker through a relay the test cuts, and Graph through a front
    // that holds its second DELETE on the wire, or throttles it.
    let front = GraphFront::start(&env.sim.url()).await;
    let relay = AmqpCut::start(broker_address(&env.settings.broker.url)).await;
    let mut cut_off = env.settings.clone();
    front.point(&mut cut_off);
    cut_off.broker.url = relay.url();
    // Long enough that only the worker's own check can stop it (the grace's end aborts
    // whatever still runs), and that it keeps trying to reconnect until the test reopens.
    cut_off.worker.shutdown_grace = Duration::from_secs(300);
    cut_off.broker.connect_timeout = Duration::from_secs(300);
    match waiting {
        Waiting::OnTheWire => front.hold_after_deletes(1),
        Waiting::NoneLeft => front.hold_after_deletes(targets),
        Waiting::InAPause => {
            // A pause the worker waits out in process (not handed to a delay queue), long
            // enough that the cut surely lands inside it.
            cut_off.retry.max_elapsed = Duration::from_secs(120);
            front.throttle_delete(2, 20)
        }
    }
    let graph = GraphClient::new(&cut_off.graph, &cut_off.rate, &cut_off.retry).expect("client");
    let metrics = Arc::new(WorkerMetrics::default());
    env.start_worker_counted(cut_off, graph, 2, metrics.clone());
    let enqueued = env
        .enqueue_csv(&format!("user\n{upn}\n"))
        .await
        .expect("enqueue");
    match waiting {
        Waiting::OnTheWire | Waiting::NoneLeft => {
            wait_until("a call waits at the front", 60, || front.waiting() >= 1).await
        }
        Waiting::InAPause => {
            wait_until("the second DELETE answered 429", 60, || {
                front.calls().iter().any(|c| c.status == 429)
            })
            .await
        }
    }

    // Cut from its broker mid-reset: the broker takes the request back.
    relay.cut();
    wait_until("worker 1 saw its broker go", 30, || {
        metrics.connected.get() == 0
    })
    .await;
    front.release();
    // On the wire: answered now. In a pause: its retry is due when the pause ends (20 s).
    wait_until("worker 1's attempt ended", 60, || {
        metrics.in_flight.get() == 0
    })
    .await;
    let calls = front.calls();
    let deletes = front.deletes();
    match waiting {
        Waiting::OnTheWire | Waiting::InAPause => assert_eq!(
            deletes, 2,
            "worker 1 sent no DELETE after the second when it was cut: {calls:?}"
        ),
        Waiting::NoneLeft => assert!(deletes >= targets, "{calls:?}"),
    }

    // Worker 2 takes the request back from the queue and finishes it.
    env.start_worker(2);
    let view = env.wait_batch(&enqueued.batch, 60).await;
    // Worker 1 back on its broker: it has nothing held to record.
    relay.reopen();
    wait_until("worker 1 reconnected", 60, || metrics.connected.get() == 1).await;

    let counts = env.outcome_counts().await;
    assert_eq!(counts.len(), 1);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let outcome = view.outcomes().next().expect("outcome");
    assert_eq!(outcome.status, Status::Reset, "{outcome:?}");
    assert_eq!(outcome.worker, "test-worker-2", "{outcome:?}");
    let removed: HashSet<String> = outcome
        .methods_removed
        .iter()
        .map(|m| m.id.clone())
        .collect();
    let user_after = env.sim.user(&upn).expect("user");
    let deleted: HashSet<String> = user_after
        .deleted_methods
        .iter()
        .map(|m| m["id"].as_str().expect("a method id").to_string())
        .collect();
    assert_eq!(removed.len(), targets, "{outcome:?}");
    assert_eq!(removed, deleted, "the record is what Graph deleted");
    // Each method deleted once: no DELETE met a method already gone.
    let deletes = crate::fidelity::by_status(&env.sim.stats(), "DELETE");
    assert_eq!(deletes.get("404"), None, "{deletes:?}");
    assert_eq!(removable(&user_after), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_from_its_broker_sends_no_delete_after_the_one_on_the_wire_and_the_user_ends_with_one_outcome(
) {
    cut_mid_reset("rel-cut-wire", Waiting::OnTheWire).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_from_its_broker_after_its_last_delete_records_no_outcome_and_the_user_ends_with_one(
) {
    cut_mid_reset("rel-cut-done", Waiting::NoneLeft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_from_its_broker_in_a_retry_after_pause_does_not_send_the_retry_and_the_user_ends_with_one_outcome(
) {
    cut_mid_reset("rel-cut-pause", Waiting::InAPause).await;
}

// ---------------------------------------------------------------------------------------------
// Graph outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_outage_pauses_the_workers_and_the_batch_completes_without_failures() {
    // The issue's outage is a minute; 25 s keeps CI short and already outlasts what the test
    // settings' in-process retries (10 s) plus both delay tiers (1 s, 2 s) used to allow.
    // 150 ms a call: the batch takes several seconds, so the outage starts mid-batch.
    let env = TestEnv::new("rel-outage", tenant(120, 150)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(120))
        .await
        .expect("enqueue");
    let metrics = Arc::new(WorkerMetrics::default());
    let cancel = CancellationToken::new();
    let handle = {
        let settings = env.settings.clone();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
            let options = WorkOptions {
                concurrency: 8,
                exit_when_idle: None,
            };
            worker::run(&settings, graph, options, metrics, cancel).await
        })
    };
    // The simulator's own count, read in-process: reading the outcomes stream takes longer
    // than the rest of the batch on a loaded machine, and the outage must come mid-batch.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.sim.stats().methods_deleted < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the workers started deleting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    env.sim.set_faults(FaultPatch {
        outage_secs: Some(25),
        ..FaultPatch::default()
    });
    let view = env.wait_batch(&enqueued.batch, 150).await;
    cancel.cancel();
    handle.await.expect("task").expect("worker ends cleanly");

    assert!(env.sim.stats().faults_injected + env.sim.stats().dropped_connections > 0);
    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(120),
        "{:?}",
        view.outcomes()
            .filter(|o| o.status != Status::Reset)
            .map(|o| (o.user.to_string(), o.error_code.clone(), o.attempts))
            .collect::<Vec<_>>()
    );
    assert!(
        view.outcomes().all(|o| o.attempts == 1),
        "no attempt used up"
    );
    assert!(
        metrics.outage_requeues.get() > 0,
        "the outage reached the delay queue"
    );
    let letters = dlq::list(&env.settings, None).await.expect("dlq list");
    assert!(letters.is_empty(), "{letters:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_graph_keeps_failing_ends_failed_after_every_tier_with_one_dead_letter_and_the_others_reset(
) {
    let mut env = TestEnv::new("rel-500", tenant(6, 0)).await;
    let front = GraphFront::start(&env.sim.url()).await;
    front.point(&mut env.settings);
    env.settings.retry.tiers = vec![Duration::from_millis(200), Duration::from_millis(400)];
    env.settings.retry.max_attempts = 2;
    env.settings.retry.base_delay = Duration::from_millis(20);
    env.settings.retry.max_delay = Duration::from_millis(50);
    let failing = graph_sim::tenant::upn_for_index(2).to_lowercase();
    let before = removable(&env.sim.user(&failing).expect("user"));
    front.fail_user(&failing);
    let enqueued = env
        .enqueue_csv(&csv_of_generated(6))
        .await
        .expect("enqueue");

    env.start_worker(4);
    let view = env.wait_batch(&enqueued.batch, 120).await;

    let tiers = env.settings.retry.tiers.len() as u32;
    let by_user: HashMap<String, _> = view.outcomes().map(|o| (o.user.key(), o.clone())).collect();
    assert_eq!(by_user.len(), 6);
    let failed = &by_user[&failing];
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert_eq!(failed.error_code.as_deref(), Some("retries_exhausted"));
    assert_eq!(failed.attempts, tiers + 1);
    for (user, outcome) in &by_user {
        if *user != failing {
            assert_eq!(
                (outcome.status, outcome.attempts),
                (Status::Reset, 1),
                "{user} was affected: {outcome:?}"
            );
        }
    }
    let letters = dlq::list(&env.settings, None).await.expect("dlq list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].user.as_deref(), Some(failing.as_str()));
    assert_eq!(letters[0].error_code, "retries_exhausted");
    assert_eq!(letters[0].attempts, u64::from(tiers + 1));
    // Graph was asked once per attempt at least, and never let it change anything.
    let asked = front
        .calls()
        .iter()
        .filter(|c| c.user.as_deref() == Some(failing.as_str()))
        .count();
    assert!(asked >= (tiers + 1) as usize, "{asked} requests");
    assert_eq!(removable(&env.sim.user(&failing).expect("user")), before);
    let counts = env.outcome_counts().await;
    assert_eq!(counts.len(), 6);
    assert!(
        counts.values().all(|n| *n == 1),
        "one outcome per user: {counts:?}"
    );
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Poison messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_a_wrong_schema_and_an_unknown_version_are_dead_lettered_with_a_reason() {
    let mut env = TestEnv::new("rel-poison", tenant(5, 0)).await;
    env.setup().await;
    env.publish_raw(b"{\"version\": 1, \"user\": ").await;
    env.publish_raw(br#"{"version": 1, "user": "a@contoso.com", "colour": "red"}"#)
        .await;
    env.publish_raw(br#"{"version": 2, "request_id": "x"}"#)
        .await;
    env.start_worker(2);
    let enqueued = env
        .enqueue_csv(&csv_of_generated(3))
        .await
        .expect("enqueue");

    let view = env.wait_batch(&enqueued.batch, 60).await;

    assert_eq!(view.finished(), 3, "the worker kept going");
    let letters = dlq::list(&env.settings, None).await.expect("dlq list");
    assert_eq!(letters.len(), 3, "{letters:?}");
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.error_code.clone(), l.error_message.clone()))
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "invalid_message");
    assert!(reasons[0].1.contains("not JSON"), "{reasons:?}");
    assert_eq!(reasons[1].0, "invalid_message");
    assert!(reasons[1].1.contains("not a reset request"), "{reasons:?}");
    assert_eq!(reasons[2].0, "unknown_version");
    assert!(reasons[2].1.contains("version 2"), "{reasons:?}");
    assert!(letters.iter().all(|l| l.failed_at.is_some()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_killing_its_worker_is_dead_lettered_by_the_delivery_limit() {
    // Every Graph call takes 3 s: the worker is always mid-request when it is killed.
    let mut env = TestEnv::new("rel-limit", tenant(5, 3000)).await;
    env.settings.broker.delivery_limit = 2;
    let poison = env
        .enqueue_csv(&csv_of_generated(1))
        .await
        .expect("enqueue");
    let requests = env.topology().requests();
    let dead = env.topology().dead();

    let mut kills = 0;
    while env.queue_len(&dead).await == 0 {
        assert!(kills < 8, "still not dead-lettered after {kills} crashes");
        let worker = spawn_worker(&env.settings, "crashing", 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.queue_len(&requests).await > 0 {
            assert!(
                Instant::now() < deadline,
                "the worker never took the message"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Taken (not ready, not dead): the worker holds it, in a Graph call of 3 s.
        signal(&worker, Signal::SIGKILL);
        let _ = finish(worker).await;
        kills += 1;
        // The broker takes it back (or dead-letters it) once it sees the connection gone.
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.queue_len(&requests).await + env.queue_len(&dead).await == 0 {
            assert!(Instant::now() < deadline, "the message never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let letters = dlq::list(&env.settings, Some(&poison.batch))
        .await
        .expect("dlq list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].error_code, "delivery_limit");
    assert!(letters[0].error_message.contains("requests"), "{letters:?}");
    assert_eq!(
        letters[0].user.as_deref(),
        Some(graph_sim::tenant::upn_for_index(0).as_str())
    );
    // Workers keep going with the next batch.
    env.sim.set_faults(FaultPatch {
        latency_ms: Some(0),
        ..FaultPatch::default()
    });
    env.start_worker(4);
    let next = env
        .enqueue_csv(&format!(
            "user\n{}\n{}\n",
            graph_sim::tenant::upn_for_index(1),
            graph_sim::tenant::upn_for_index(2)
        ))
        .await
        .expect("enqueue");
    assert_eq!(env.wait_batch(&next.batch, 60).await.finished(), 2);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Dead-letter operations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_replay_and_purge_work_by_batch_and_error_code_and_an_interrupted_replay_loses_nothing(
) {
    let mut env = TestEnv::new("rel-dlq", tenant(5, 0)).await;
    // Every replay is signed by the admin (namespace mfa-reset-admin).
    let admin_key = env.keys.admin.path.display().to_string();
    // 510 users who do not exist: more dead letters than one prefetch window used to show.
    let mut big = String::from("user\n");
    for i in 0..510 {
        big.push_str(&format!("ghost{i}@contoso.com\n"));
    }
    let a = env.enqueue_csv(&big).await.expect("enqueue a");
    let b = env
        .enqueue_csv("user\nnobody1@contoso.com\nnobody2@contoso.com\nnobody3@contoso.com\n")
        .await
        .expect("enqueue b");
    env.publish_raw(b"not json at all").await;
    env.start_worker(16);
    env.wait_batch(&a.batch, 120).await;
    env.wait_batch(&b.batch, 60).await;
    env.stop_workers().await;
    let dead = env.topology().dead();
    let requests = env.topology().requests();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.queue_len(&dead).await < 514 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // list: user, batch, error, attempts, when — for every letter.
    let (code, out, err) = run(&env.settings, &["dlq", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("514 dead letter(s)"), "{}", &out[..200]);
    let letters = dlq::list(&env.settings, Some(&a.batch))
        .await
        .expect("list");
    assert_eq!(letters.len(), 510);
    for l in &letters {
        assert!(l.user.as_deref().is_some_and(|u| u.starts_with("ghost")));
        assert_eq!(l.error_code, "Request_ResourceNotFound");
        assert_eq!(l.attempts, 1);
        let when = l.failed_at.as_deref().expect("failed_at");
        chrono::DateTime::parse_from_rfc3339(when).expect("an RFC 3339 time");
    }

    // An interrupted replay (kill -9 half-way) loses nothing: every request of batch A is in
    // the dead-letter queue or back on the requests queue (or both).
    // The replay talks to the broker through a relay that lets 20 of its publishes through
    // and holds the 21st: it is killed there, half-way, whatever the machine's speed.
    let hold = AmqpHold::start(broker_address(&env.settings.broker.url), 20).await;
    let mut through_hold = env.settings.clone();
    through_hold.broker.url = hold.url();
    let replay = proc::mfa_reset(
        &through_hold,
        &[
            "dlq", "replay", "--batch", &a.batch, "--yes", "--key", &admin_key,
        ],
    )
    .spawn()
    .expect("dlq replay");
    tokio::time::timeout(Duration::from_secs(60), hold.held())
        .await
        .expect("the replay reached its 21st publish");
    signal(&replay, Signal::SIGKILL);
    let _ = finish(replay).await;
    // The broker takes back what the killed replay held once the relay closes its connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.queue_len(&dead).await < 514 - 20 {
        assert!(Instant::now() < deadline, "the letters never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_dead: HashSet<String> = dlq::list(&env.settings, Some(&a.batch))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|l| l.user)
        .collect();
    let replayed: Vec<ResetRequest> = env
        .drain_queue(&requests)
        .await
        .iter()
        .map(|b| serde_json::from_slice(b).expect("a request"))
        .collect();
    assert_eq!(
        replayed.len(),
        20,
        "what reached the broker is on the requests queue"
    );
    assert_eq!(
        in_dead.len(),
        490,
        "what it had not replayed is still a dead letter"
    );
    assert!(replayed.iter().all(|r| r.replay == 1 && r.carry.is_none()));
    let mut all: HashSet<String> = in_dead;
    all.extend(replayed.iter().map(|r| r.user.to_string()));
    assert_eq!(all.len(), 510, "a dead letter was lost");

    // purge --batch A removes A's letters only.
    let (code, out, err) = run(&env.settings, &["dlq", "purge", "--batch", &a.batch]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("purged: "), "{out}");
    assert_dead_letters(&env, 4, "the other batch's letters stay").await;

    // replay --yes without the admin's key: refused before anything is read.
    let (code, _, err) = run(
        &env.settings,
        &["dlq", "replay", "--batch", &b.batch, "--yes"],
    )
    .await;
    assert_ne!(code, Some(0), "a replay without --key ran");
    assert!(err.contains("--key"), "{err}");
    assert_dead_letters(&env, 4, "nothing replayed without a key").await;
    // An operator's key (request namespace only) would be refused by every worker: refused here.
    let operator_key = env.keys.requester.path.display().to_string();
    let (code, _, err) = run(
        &env.settings,
        &[
            "dlq",
            "replay",
            "--batch",
            &b.batch,
            "--yes",
            "--key",
            &operator_key,
        ],
    )
    .await;
    assert_ne!(code, Some(0), "a replay signed by an operator ran");
    assert!(err.contains("mfa-reset-admin"), "{err}");
    assert_dead_letters(&env, 4, "nothing replayed by an operator").await;
    // replay --batch B --error-code C: back with a fresh attempt count, executed again.
    let (code, out, err) = run(
        &env.settings,
        &[
            "dlq",
            "replay",
            "--batch",
            &b.batch,
            "--error-code",
            "no_such_code",
            "--yes",
            "--key",
            &admin_key,
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (Some(0), "replayed: 0"), "{err}");
    // Without --yes, a replay is a preview: it shows the letters and changes nothing.
    let (code, out, err) = run(
        &env.settings,
        &[
            "dlq",
            "replay",
            "--batch",
            &b.batch,
            "--error-code",
            "Request_ResourceNotFound",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("preview: 3 request(s) would be replayed") && out.contains("--yes"),
        "{out}"
    );
    assert_dead_letters(&env, 4, "the preview changed nothing").await;
    let (code, out, err) = run(
        &env.settings,
        &[
            "dlq",
            "replay",
            "--batch",
            &b.batch,
            "--error-code",
            "Request_ResourceNotFound",
            "--yes",
            "--key",
            &admin_key,
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (Some(0), "replayed: 3"), "{err}");
    assert_dead_letters(&env, 1, "the invalid message stays").await;
    env.start_worker(4);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = mfa_reset::commands::status::load(&env.settings, &b.batch)
            .await
            .expect("status");
        if view.outcomes().filter(|o| o.replay == 1).count() == 3 {
            assert!(view.outcomes().all(|o| o.attempts == 1));
            break;
        }
        assert!(Instant::now() < deadline, "replayed requests not executed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Visibility

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_prints_counts_rate_and_eta_as_plain_lines_without_a_terminal() {
    let mut env = TestEnv::new("rel-status", tenant(40, 100)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(40))
        .await
        .expect("enqueue");
    env.start_worker(4);

    let (code, out, err) = run(
        &env.settings,
        &[
            "status",
            "--batch",
            &enqueued.batch,
            "--wait",
            "--timeout",
            "120",
        ],
    )
    .await;

    assert_eq!(code, Some(0), "{err}");
    let progress: Vec<&str> = err.lines().filter(|l| l.contains("users done")).collect();
    assert!(progress.len() >= 2, "a line every few seconds: {err}");
    let last = progress.last().expect("a final line");
    assert!(last.starts_with("40/40 users done"), "{last}");
    assert!(last.contains("/s") && last.contains("ETA"), "{last}");
    assert!(
        last.contains("reset 40") && last.contains("pending 0"),
        "{last}"
    );
    assert!(!err.contains('\u{1b}'), "no terminal escapes in a log");
    assert!(out.contains("reset") && out.contains("total"), "{out}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_draws_a_progress_bar_on_a_terminal() {
    let mut env = TestEnv::new("rel-bar", tenant(20, 50)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(20))
        .await
        .expect("enqueue");
    env.start_worker(4);
    // `script` gives the command a pseudo-terminal, as an operator's shell would.
    let command = format!(
        "{} status --batch {} --wait --timeout 120",
        env!("CARGO_BIN_EXE_mfa-reset"),
        enqueued.batch
    );
    let out = tokio::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .envs(proc::env_of(&env.settings))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("script runs");

    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("users"), "{text}");
    assert!(text.contains("ETA"), "{text}");
    assert!(text.contains('\u{1b}'), "drawn with terminal control codes");
    assert!(
        !text.contains("users done,"),
        "no plain lines on a terminal"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_metrics_and_healthz_and_writes_json_logs_when_asked() {
    let env = TestEnv::new("rel-metrics", tenant(30, 20)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(30))
        .await
        .expect("enqueue");
    let port = free_port();
    let worker = proc::mfa_reset(&env.settings, &["work", "--concurrency", "4"])
        .env(
            "MFA_RESET__WORKER__METRICS_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .env("MFA_RESET__LOG__FORMAT", "json")
        .spawn()
        .expect("worker");
    env.wait_batch(&enqueued.batch, 60).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        // The queue probe runs every few seconds.
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if text.contains("mfa_reset_queue_ready 0") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the queue probe never saw 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    signal(&worker, Signal::SIGTERM);
    let (code, _, stderr) = finish(worker).await;

    for expected in [
        "mfa_reset_outcomes_total{status=\"reset\"} 30",
        "mfa_reset_graph_responses_total{status=\"200\"} ",
        "mfa_reset_graph_responses_total{status=\"429\"} 0",
        "mfa_reset_graph_throttled_total 0",
        "mfa_reset_graph_pause_seconds_total ",
        "mfa_reset_in_flight 0",
        "mfa_reset_queue_ready 0",
        "mfa_reset_queue_lag_seconds ",
        "mfa_reset_outage_requeues_total 0",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 30, "{stderr}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("every log line is JSON");
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
    }
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Safety rails

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_shows_a_summary_and_refuses_more_than_confirm_above_without_yes() {
    let mut env = TestEnv::new("rel-confirm", tenant(5, 0)).await;
    env.settings.intake.confirm_above = 500;
    env.setup().await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("many.csv");
    std::fs::write(&path, csv_of_generated(501)).expect("write");
    let path = path.to_string_lossy().to_string();

    let (code, _, err) = run(&env.settings, &["enqueue", "--csv", &path]).await;

    assert_eq!(
        code,
        Some(mfa_reset::commands::enqueue::EXIT_NEEDS_CONFIRMATION),
        "{err}"
    );
    assert!(err.contains("users:    501"), "{err}");
    assert!(
        err.contains(&format!(
            "sample:   {}",
            graph_sim::tenant::upn_for_index(0)
        )),
        "{err}"
    );
    assert!(err.contains("action:   delete every registered"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);

    let (code, out, err) = run(&env.settings, &["enqueue", "--csv", &path, "--yes"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("enqueued: 501"), "{out}");
    assert_eq!(env.queue_len(&env.topology().requests()).await, 501);
    env.cleanup().await;
}

/// Runs of 64 ASCII letters and digits: what the simulator's access tokens look like.
///
/// Signatures and digests are meant to be there (signed batch manifests, record chains): SSH
/// SIGNATURE blocks are cut out first, and a run of exactly 64 hex digits (a SHA-256) is not
/// a token.
fn token_like(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
    const END: &str = "-----END SSH SIGNATURE-----";
    let mut text = text.to_string();
    while let Some(start) = text.find(BEGIN) {
        let Some(end) = text[start..].find(END) else {
            break;
        };
        text.replace_range(start..start + end + END.len(), "");
    }
    // A compact batch's Merkle cap (`"nodes":"…"`) and a request's `"proof":"…"` are base64
    // of public hashes, not secrets: taken out as the signatures are (plain or JSON-escaped).
    for key in ["nodes", "proof"] {
        for marker in [format!("\"{key}\":\""), format!("\\\"{key}\\\":\\\"")] {
            let mut from = 0;
            while let Some(at) = text[from..].find(&marker) {
                let start = from + at + marker.len();
                let len = text[start..].find(['"', '\\']).unwrap_or(0);
                text.replace_range(start..start + len, "");
                from = start;
            }
        }
    }
    let is_digest = |run: &str| run.len() == 64 && run.chars().all(|c| c.is_ascii_hexdigit());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            if run.len() >= 64 && !is_digest(&run) {
                return Some(run);
            }
            run.clear();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_or_outcome_record_holds_the_client_secret_or_an_access_token() {
    let secret = format!("s3cr3t~{}", uuid::Uuid::new_v4().simple());
    let mut env = TestEnv::new(
        "rel-secret",
        SimConfig {
            client_secret: secret.clone(),
            ..tenant(10, 0)
        },
    )
    .await;
    env.settings.graph.client_secret = Some(secret.clone().into());
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("users.csv");
    std::fs::write(&path, csv_of_generated(10)).expect("write");

    let mut logs = String::new();
    let (code, out, err) = proc::finish(
        proc::mfa_reset(
            &env.settings,
            &[
                "enqueue",
                "--csv",
                &path.to_string_lossy(),
                "--revoke-sessions",
            ],
        )
        .env("RUST_LOG", "trace")
        .spawn()
        .expect("enqueue"),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let batch = batch_of(&out);
    logs.push_str(&out);
    logs.push_str(&err);
    let (code, out, err) = proc::finish(
        proc::mfa_reset(&env.settings, &["work", "--exit-when-idle", "2"])
            .env("RUST_LOG", "trace")
            .spawn()
            .expect("work"),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    logs.push_str(&out);
    logs.push_str(&err);
    let (code, out, err) = run(
        &env.settings,
        &["report", "--batch", &batch, "--format", "jsonl"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    logs.push_str(&out);

    assert!(env.sim.stats().tokens_issued >= 1, "a token was used");
    assert!(
        logs.contains("outcome recorded"),
        "trace logs were captured"
    );
    assert!(logs.len() > 10_000, "trace logs were captured");
    assert!(!logs.contains(&secret), "the client secret is in the logs");
    assert!(
        !logs.contains("Bearer "),
        "an authorization header is in the logs"
    );
    assert!(
        !logs.contains("access_token"),
        "a token answer is in the logs"
    );
    assert_eq!(
        token_like(&logs),
        None,
        "something token-like is in the logs"
    );
    let records = serde_json::to_string(&env.stream_records().await).expect("json");
    assert!(records.contains("\"outcome\""));
    assert!(!records.contains(&secret));
    assert_eq!(token_like(&records), None);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_cells_that_a_spreadsheet_would_run_as_formulas_are_neutralised() {
    let mut env = TestEnv::new("rel-formula", tenant(5, 0)).await;
    let a = graph_sim::tenant::upn_for_index(0);
    let tickets = format!(
        "{{\"ticket\":\"=HYPERLINK(\\\"http://evil\\\",\\\"x\\\")\",\"user\":\"{a}\"}}\n\
         {{\"ticket\":\"+1-555\",\"user\":\"nobody@contoso.com\"}}\n"
    );
    let enqueued = env.enqueue_tickets(&tickets).await.expect("enqueue");
    env.start_worker(2);
    env.wait_batch(&enqueued.batch, 60).await;

    let (code, csv, err) = run(&env.settings, &["report", "--batch", &enqueued.batch]).await;

    assert_eq!(code, Some(0), "{err}");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 2);
    let cells: Vec<&str> = rows.iter().flat_map(|r| r.iter()).collect();
    assert!(
        cells.contains(&"'=HYPERLINK(\"http://evil\",\"x\")"),
        "{csv}"
    );
    assert!(cells.contains(&"'+1-555"), "{csv}");
    for cell in cells {
        assert!(
            !cell.starts_with(['=', '+', '-', '@']),
            "{cell:?} would run as a formula"
        );
    }
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_files_are_refused_with_a_clear_message_and_nothing_is_enqueued() {
    let env = TestEnv::new("rel-hostile", tenant(5, 0)).await;
    env.setup().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut million = String::with_capacity(40_000_000);
    million.push_str("userPrincipalName\n");
    for i in 0..1_000_000 {
        million.push_str(&format!("user{i}@contoso.com\n"));
    }
    million.push_str("bob@\n");
    let ten_mb_field = format!("user\nalice@contoso.com\n{}\n", "a".repeat(10 << 20));
    let cases: Vec<(&str, &str, Vec<u8>, &[&str])> = vec![
        (
            "invalid UTF-8",
            "csv",
            b"user\nalice@contoso.com\n\xff\xfebob@contoso.com\n".to_vec(),
            &["line 3", "UTF-8"],
        ),
        (
            "no user column",
            "csv",
            b"name,email\nalice,alice@contoso.com\n".to_vec(),
            &["no user column", "userPrincipalName"],
        ),
        ("empty file", "csv", Vec::new(), &["empty"]),
        ("header only", "csv", b"user\n".to_vec(), &["no data rows"]),
        (
            "1,000,001 rows, the last one bad",
            "csv",
            million.into_bytes(),
            &["line 1000002", "bob@"],
        ),
        (
            "a 10 MB single field",
            "csv",
            ten_mb_field.into_bytes(),
            &["line 3", "characters long"],
        ),
        (
            "NUL bytes",
            "csv",
            b"user\nalice@contoso.com\nbo\x00b@contoso.com\n".to_vec(),
            &["line 3", "NUL"],
        ),
        (
            "a ticket file with a truncated last line",
            "tickets",
            b"{\"ticket\":\"INC1\",\"user\":\"alice@contoso.com\"}\n{\"ticket\":\"INC2\",\"user\":\"bo"
                .to_vec(),
            &["line 2", "truncated"],
        ),
    ];

    for (name, kind, content, expected) in cases {
        let path = dir.path().join(format!("input.{kind}"));
        std::fs::write(&path, &content).expect("write");
        let (code, out, err) = run(
            &env.settings,
            &[
                "enqueue",
                &format!("--{kind}"),
                &path.to_string_lossy(),
                "--yes",
            ],
        )
        .await;
        assert_eq!(code, Some(1), "{name}: exit code; {err}");
        for word in expected {
            assert!(err.contains(word), "{name}: {word:?} not in {err}");
        }
        assert!(err.contains("nothing was enqueued"), "{name}: {err}");
        assert!(err.len() < 4000, "{name}: the message stays readable");
        assert!(!out.contains("enqueued:"), "{name}: {out}");
        assert_eq!(
            env.queue_len(&env.topology().requests()).await,
            0,
            "{name}: something was enqueued"
        );
    }
    let records = env.stream_records().await;
    assert!(
        !records.iter().any(|r| matches!(r, Record::Manifest(_))),
        "no batch manifest was written"
    );
    env.cleanup().await;
}
