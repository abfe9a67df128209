//! A broker restart mid-batch. It runs against a second RabbitMQ node of its own
//! (`mfa-test@localhost` on 127.0.0.1:5673, started here when it is not running) so that
//! restarting it never pulls the broker from under the other tests. Restarting means
//! `rabbitmqctl stop_app` / `start_app`: every connection drops and the port closes, the
//! durable queues and the stream come back. A guard restarts the node even when the test fails.

#[path = "it/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::env::{csv_of_generated, TestEnv};
use common::proc;
use graph_sim::{GenOptions, SimConfig};
use mfa_reset::domain::{ResetRequest, Status};

const NODE: &str = "mfa-test@localhost";
const PORT: u16 = 5673;
const DIR: &str = "/tmp/mfa-reset-test-broker";

fn ctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["-n", NODE])
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn port_open() -> bool {
    std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok()
}

fn wait_port(open: bool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while port_open() != open {
        assert!(
            Instant::now() < deadline,
            "port {PORT} still {}",
            if open { "closed" } else { "open" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Start the second node unless it already runs.
fn ensure_node() {
    if port_open() {
        return;
    }
    std::fs::create_dir_all(format!("{DIR}/mnesia")).expect("broker dir");
    std::fs::create_dir_all(format!("{DIR}/log")).expect("broker dir");
    std::fs::write(
        format!("{DIR}/rabbitmq.conf"),
        format!("listeners.tcp.local = 127.0.0.1:{PORT}\n"),
    )
    .expect("broker config");
    // The Debian scripts run the node as the `rabbitmq` user when started by root.
    let _ = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq", DIR])
        .status();
    let started = Command::new("rabbitmq-server")
        .arg("-detached")
        .env("RABBITMQ_NODENAME", NODE)
        .env("RABBITMQ_NODE_PORT", PORT.to_string())
        .env("RABBITMQ_DIST_PORT", "25673")
        .env("RABBITMQ_CONFIG_FILE", format!("{DIR}/rabbitmq.conf"))
        .env("RABBITMQ_MNESIA_BASE", format!("{DIR}/mnesia"))
        .env("RABBITMQ_LOG_BASE", format!("{DIR}/log"))
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            format!("{DIR}/enabled_plugins"),
        )
        .env("RABBITMQ_PID_FILE", format!("{DIR}/pid"))
        .current_dir(DIR)
        .status()
        .expect("rabbitmq-server (install RabbitMQ to run this test)");
    assert!(started.success(), "rabbitmq-server -detached failed");
    wait_port(true, 90);
}

/// Brings the node back when dropped, whatever happened in between.
struct Restarter;

impl Restarter {
    fn stop(&self) {
        assert!(ctl(&["stop_app"]), "rabbitmqctl stop_app");
        wait_port(false, 30);
    }
    fn start(&self) {
        assert!(ctl(&["start_app"]), "rabbitmqctl start_app");
        wait_port(true, 60);
    }
}

impl Drop for Restarter {
    fn drop(&mut self) {
        if !port_open() {
            let _ = ctl(&["start_app"]);
        }
    }
}

fn settings_on_second_node(env: &mut TestEnv) {
    env.settings.broker.url = format!("amqp://guest:guest@127.0.0.1:{PORT}/%2f");
    env.settings.broker.connect_timeout = Duration::from_secs(60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_workers_ride_out_a_broker_restart_without_losing_a_request() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mfa_reset=info")
        .with_test_writer()
        .try_init();
    ensure_node();
    let broker = Restarter;

    // 1. The producer: a restart in the middle of enqueueing 20,000 users. It reconnects,
    //    republishes what was not confirmed, and every request is on the queue at least once.
    let mut producer_env = TestEnv::new("restart-producer", SimConfig::default()).await;
    settings_on_second_node(&mut producer_env);
    producer_env.settings.intake.confirm_above = 1_000_000;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("users.csv");
    std::fs::write(&path, csv_of_generated(20_000)).expect("write");
    producer_env.setup().await;
    let enqueue = proc::mfa_reset(
        &producer_env.settings,
        &["enqueue", "--csv", &path.to_string_lossy(), "--yes"],
    )
    .env("MFA_RESET__BROKER__CONFIRM_WINDOW", "50")
    .spawn()
    .expect("enqueue");
    let requests = producer_env.topology().requests();
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer_env.queue_len(&requests).await < 2_000 {
        assert!(Instant::now() < deadline, "enqueue never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.start();
    let (code, out, err) = proc::finish(enqueue).await;
    assert_eq!(code, Some(0), "enqueue survives the restart:\n{err}");
    assert!(out.contains("enqueued: 20000"), "{out}");
    assert!(
        err.contains("republishing") || err.contains("reconnect"),
        "the restart happened mid-enqueue:\n{err}"
    );
    let bodies = producer_env.drain_queue(&requests).await;
    let ids: HashSet<uuid::Uuid> = bodies
        .iter()
        .map(|b| {
            serde_json::from_slice::<ResetRequest>(b)
                .expect("a request")
                .request_id
        })
        .collect();
    assert_eq!(ids.len(), 20_000, "a request was lost");
    producer_env.cleanup().await;

    // 2. The workers: a restart in the middle of a batch. They reconnect with backoff and
    //    finish it; duplicates are absorbed by request id.
    let mut env = TestEnv::new(
        "restart-workers",
        SimConfig {
            users: 200,
            latency_ms: 40,
            generation: GenOptions {
                methods_min: 1,
                ..GenOptions::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    settings_on_second_node(&mut env);
    let enqueued = env
        .enqueue_csv(&csv_of_generated(200))
        .await
        .expect("enqueue");
    env.start_worker(8);
    env.start_worker(8);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = mfa_reset::commands::status::load(&env.settings, &enqueued.batch)
            .await
            .expect("status");
        if view.finished() >= 30 {
            assert!(view.finished() < 200, "the restart must come mid-batch");
            break;
        }
        assert!(Instant::now() < deadline, "workers never got going");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start();
    // The stream takes a moment to come back after the node does ("home node … is down").
    let deadline = Instant::now() + Duration::from_secs(60);
    while mfa_reset::commands::status::load(&env.settings, &enqueued.batch)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the outcomes stream never came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let view = env.wait_batch(&enqueued.batch, 180).await;
    assert_eq!(view.finished(), 200);
    let not_reset: Vec<_> = view
        .outcomes()
        .filter(|o| o.status != Status::Reset)
        .map(|o| (o.user.to_string(), o.status, o.error_code.clone()))
        .collect();
    assert!(not_reset.is_empty(), "{not_reset:?}");
    // A request in flight during the restart may be redelivered to the other worker before
    // its first worker records the outcome it held through the outage: the second execution
    // finds nothing left to remove. The report keeps the outcome that removed the methods.
    let records = env.stream_records().await;
    let mut seen = HashSet::new();
    for record in records {
        if let mfa_reset::domain::Record::Outcome(o) = record {
            if !seen.insert(o.request_id) {
                assert!(
                    o.methods_removed.is_empty() || o.status == Status::Reset,
                    "{o:?}"
                );
            }
        }
    }
    assert_eq!(seen.len(), 200);
    for user in env.sim.users_snapshot() {
        assert!(
            user.methods
                .iter()
                .all(|m| m["@odata.type"] == "#microsoft.graph.passwordAuthenticationMethod"),
            "{} keeps a method",
            user.user_principal_name
        );
    }
    env.cleanup().await;
    drop(broker);
}
