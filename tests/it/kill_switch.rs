//! `halt`/`resume` and the hourly cap against the real broker: workers stop taking requests
//! within seconds, lose nothing, and go on when let.

use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_sim::tenant::GenOptions;
use graph_sim::SimConfig;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use mfa_reset::broker;
use mfa_reset::cli::AdminArgs;
use mfa_reset::commands;
use mfa_reset::config::Settings;
use mfa_reset::control::{Action, SignedCommand};
use mfa_reset::domain::Status;
use mfa_reset::graph::GraphClient;
use mfa_reset::trust::Signer;
use mfa_reset::worker::{self, WorkOptions, WorkerMetrics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::env::{csv_of_generated, TestEnv};

/// (messages ready, consumers) of a queue.
async fn queue_state(env: &TestEnv, queue: &str) -> (u32, u32) {
    let conn = broker::connect(&env.settings.broker, "test")
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    let _ = conn.close(200, "bye".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Poll `check` every 100 ms until it holds or `secs` pass; whether it held.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker whose metrics the test can read.
fn spawn_worker(
    settings: &Settings,
    name: &str,
    concurrency: usize,
    metrics: Arc<WorkerMetrics>,
    cancel: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let mut settings = settings.clone();
    settings.worker.name = name.into();
    tokio::spawn(async move {
        let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
        let options = WorkOptions {
            concurrency,
            exit_when_idle: None,
        };
        worker::run(&settings, graph, options, metrics, cancel).await
    })
}

fn admin(env: &TestEnv) -> AdminArgs {
    AdminArgs {
        key: env.keys.admin.path.clone(),
        reason: Some("incident drill".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_stops_running_workers_within_five_seconds_losing_nothing_and_resume_lets_them_finish()
{
    let users = 60;
    let mut env = TestEnv::new(
        "halt",
        SimConfig {
            users,
            latency_ms: 100,
            ..SimConfig::default()
        },
    )
    .await;
    env.setup().await;
    // A halt signed by an operator (not an admin) is already on the control stream: ignored.
    let operator = Signer::from_key_file(&env.keys.requester.path).expect("key");
    let forged = SignedCommand::sign(Action::Halt, &env.settings.broker.prefix, None, &operator)
        .expect("sign");
    {
        let conn = broker::connect(&env.settings.broker, "attacker")
            .await
            .expect("broker");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .basic_publish(
                env.settings.broker.prefix.as_str().into(),
                "control".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&forged).unwrap(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        let _ = conn.close(200, "bye".into()).await;
    }
    let batch = env
        .enqueue_csv(&csv_of_generated(users))
        .await
        .expect("enqueue")
        .batch;
    env.start_worker(2);
    env.start_worker(2);
    let requests = env.topology().requests();
    assert!(
        eventually(60, || async { env.outcome_counts().await.len() >= 4 }).await,
        "the workers take requests despite the forged halt"
    );

    let halted = Instant::now();
    commands::halt::run(&env.settings, Action::Halt, &admin(&env))
        .await
        .expect("halt");
    assert!(
        eventually(5, || async { queue_state(&env, &requests).await.1 == 0 }).await,
        "no worker consumes 5 s after the halt"
    );
    let stopped_in = halted.elapsed();
    // Those in flight finish; every other request waits in the queue, unexecuted.
    let settled = eventually(30, || async {
        let ready = queue_state(&env, &requests).await.0 as usize;
        ready + env.outcome_counts().await.len() == users
    })
    .await;
    assert!(settled, "every request is either recorded or waiting");
    let done_while_halted = env.outcome_counts().await.len();
    assert!(done_while_halted < users, "the halt left work undone");

    commands::halt::run(&env.settings, Action::Resume, &admin(&env))
        .await
        .expect("resume");
    let view = env.wait_batch(&batch, 120).await;
    env.stop_workers().await;
    assert_eq!(view.finished() as usize, users);
    let counts = env.outcome_counts().await;
    assert!(counts.values().all(|n| *n == 1), "nobody was reset twice");
    assert_eq!(
        env.queue_len(&env.topology().dead()).await,
        0,
        "nothing dead-lettered"
    );
    eprintln!(
        "halt: consumers gone after {stopped_in:?}; {done_while_halted}/{users} done before resume"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_cap_stops_every_worker_with_nothing_lost() {
    let mut env = TestEnv::new(
        "cap",
        SimConfig {
            users: 10,
            generation: GenOptions {
                methods_min: 1,
                ..GenOptions::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    env.settings.security.max_resets_per_hour = 3;
    env.setup().await;
    let batch = env
        .enqueue_csv(&csv_of_generated(8))
        .await
        .expect("enqueue")
        .batch;
    let requests = env.topology().requests();
    let cancel = CancellationToken::new();
    let first = Arc::new(WorkerMetrics::default());
    let one = spawn_worker(&env.settings, "capped-1", 1, first.clone(), cancel.clone());

    assert!(
        eventually(60, || async { first.paused.get() == 1 }).await,
        "the worker stops at the cap"
    );
    let because = first.paused_because().expect("says why");
    assert!(because.contains("hourly cap"), "{because}");
    assert!(
        eventually(10, || async {
            let (ready, consumers) = queue_state(&env, &requests).await;
            ready == 5 && consumers == 0
        })
        .await,
        "three users reset, five requests waiting, nobody consuming"
    );
    let view = commands::status::load(&env.settings, &batch)
        .await
        .expect("status");
    assert_eq!(view.finished(), 3);
    assert!(view.outcomes().all(|o| o.status == Status::Reset));

    // A worker started now counts the first one's resets through the stream: it takes nothing.
    let second = Arc::new(WorkerMetrics::default());
    let two = spawn_worker(&env.settings, "capped-2", 1, second.clone(), cancel.clone());
    assert!(
        eventually(60, || async {
            second.connected.get() == 1 && second.paused.get() == 1
        })
        .await,
        "the second worker is paused by the first one's resets"
    );
    assert_eq!(
        queue_state(&env, &requests).await,
        (5, 0),
        "nothing lost, nothing taken"
    );
    assert_eq!(env.queue_len(&env.topology().dead()).await, 0);
    cancel.cancel();
    for handle in [one, two] {
        handle.await.expect("task").expect("worker ends cleanly");
    }
    env.cleanup().await;
}
