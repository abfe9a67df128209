//! A broker restart mid-enqueue and mid-batch. It runs against a second RabbitMQ node of its
//! own (`mfa-test@localhost` on 127.0.0.1:5673, started here when it is not running) so that
//! restarting it never pulls the broker from under the other tests. Restarting means
//! `rabbitmqctl stop_app` / `start_app`: every connection drops and the port closes, the
//! durable queues and the stream come back. A guard stops the whole node when the test ends,
//! even when it fails, so a run leaves no broker behind.
//!
//! The restart comes at a point the test controls: producer and workers talk to the node
//! through an [`AmqpHold`] relay that lets a set number of publishes through and holds the
//! next one, so the broker stops while they are provably half-way, however fast they are.

#[path = "it/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::amqp_hold::AmqpHold;
use common::env::{csv_of_generated, TestEnv};
use common::graph_front::GraphFront;
use common::proc;
use graph_sim::{GenOptions, SimConfig};
use mfa_reset::domain::{Record, ResetRequest, Status};

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

/// Wait until the port is open (or closed); false when it is not after `secs`.
fn wait_port(open: bool, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while port_open() != open {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The second node. Created before the node is started, so that it stops it whatever
/// happens next: dropping it (at the end of the test, or when it fails) stops the node.
struct Node;

impl Node {
    /// The second node, started unless it already runs.
    fn up() -> Node {
        let node = Node;
        if !port_open() {
            start_node();
        }
        node
    }

    /// `stop_app`: every connection drops, the port closes.
    fn stop_app(&self) {
        assert!(ctl(&["stop_app"]), "rabbitmqctl stop_app");
        assert!(wait_port(false, 30), "port {PORT} still open");
    }

    /// `start_app`: the node listens again, with its durable queues and stream.
    fn start_app(&self) {
        assert!(ctl(&["start_app"]), "rabbitmqctl start_app");
        assert!(wait_port(true, 60), "port {PORT} still closed");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // With the pid file, `stop` returns once the node's process is gone.
        let stopped = ctl(&["stop", &format!("{DIR}/pid")]);
        if !stopped || !wait_port(false, 30) {
            eprintln!("could not stop the test broker node {NODE}; stop it with `rabbitmqctl -n {NODE} stop`");
        }
    }
}

fn start_node() {
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
    assert!(
        wait_port(true, 90),
        "the test broker node never listened on {PORT}"
    );
}

/// Consumers of `queue` on the node, as `rabbitmqctl list_queues` reports them (0 when it
/// cannot tell).
fn consumers(queue: &str) -> u64 {
    let Ok(out) = Command::new("rabbitmqctl")
        .args([
            "-n",
            NODE,
            "list_queues",
            "name",
            "consumers",
            "--formatter",
            "json",
        ])
        .output()
    else {
        return 0;
    };
    let queues: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    queues
        .iter()
        .find(|q| q["name"] == queue)
        .and_then(|q| q["consumers"].as_u64())
        .unwrap_or(0)
}

fn node_address() -> std::net::SocketAddr {
    ([127, 0, 0, 1], PORT).into()
}

/// Wait until the outcomes stream answers again: it takes a moment to come back after the
/// node does ("home node … is down").
async fn wait_stream_back(env: &TestEnv, batch: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while mfa_reset::commands::status::load(&env.settings, batch)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the outcomes stream never came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn settings_on_second_node(env: &mut TestEnv) {
    env.settings.broker.url = format!("amqp://guest:guest@127.0.0.1:{PORT}/%2f");
    env.settings.broker.connect_timeout = Duration::from_secs(60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_workers_and_status_wait_ride_out_a_broker_restart_without_losing_a_request() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mfa_reset=info")
        .with_test_writer()
        .try_init();
    let node = Node::up();

    // 1. The producer: a restart in the middle of enqueueing 20,000 users. It reconnects,
    //    republishes what was not confirmed, and every request is on the queue at least once.
    let mut producer_env = TestEnv::new("restart-producer", SimConfig::default()).await;
    settings_on_second_node(&mut producer_env);
    producer_env.settings.intake.confirm_above = 1_000_000;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("users.csv");
    std::fs::write(&path, csv_of_generated(20_000)).expect("write");
    producer_env.setup().await;
    // 2,000 publishes reach the broker, then the producer is held: the stop comes mid-enqueue.
    let hold = AmqpHold::start(node_address(), 2_000).await;
    let mut through_hold = producer_env.settings.clone();
    through_hold.broker.url = hold.url();
    let enqueue = proc::mfa_reset(
        &through_hold,
        &["enqueue", "--csv", &path.to_string_lossy(), "--yes"],
    )
    .env("MFA_RESET__BROKER__CONFIRM_WINDOW", "50")
    .spawn()
    .expect("enqueue");
    tokio::time::timeout(Duration::from_secs(120), hold.held())
        .await
        .expect("the producer reached its 2,001st publish");
    node.stop_app();
    // The broker stays away a moment: the producer's reconnections fail meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.start_app();
    let (code, out, err) = proc::finish(enqueue).await;
    assert_eq!(code, Some(0), "enqueue survives the restart:\n{err}");
    assert!(out.contains("enqueued: 20000"), "{out}");
    assert!(
        err.contains("republishing"),
        "the producer republished what the restart left unconfirmed:\n{err}"
    );
    let requests = producer_env.topology().requests();
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
    drop(hold);

    // 2. The workers: a restart in the middle of a batch. They reconnect with backoff and
    //    finish it; duplicates are absorbed by request id; nobody is reset twice.
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
    let front = GraphFront::start(&env.sim.url()).await;
    front.point(&mut env.settings);
    let removable_before: HashMap<String, usize> = env
        .sim
        .users_snapshot()
        .iter()
        // Keyed by object id: workers address every call by the id they resolved.
        .map(|u| (u.id.to_lowercase(), removable(&u.methods)))
        .collect();
    let enqueued = env
        .enqueue_csv(&csv_of_generated(200))
        .await
        .expect("enqueue");
    // 150 publishes (plans, outcomes, markers) reach the broker, then both workers are held:
    // at most 150 of the 200 outcomes can be recorded before the stop.
    let hold = AmqpHold::start(node_address(), 150).await;
    let mut through_hold = env.settings.clone();
    through_hold.broker.url = hold.url();
    env.start_worker_with(through_hold.clone(), 8);
    env.start_worker_with(through_hold, 8);
    tokio::time::timeout(Duration::from_secs(120), hold.held())
        .await
        .expect("the workers reached their 151st publish");
    let view = mfa_reset::commands::status::load(&env.settings, &enqueued.batch)
        .await
        .expect("status");
    assert!(view.finished() < 200, "the restart comes mid-batch");
    // `status --wait`, started before the restart, rides it out: it reconnects, goes on
    // after the last record it read, and returns when the batch is complete.
    let outcomes = env.topology().outcomes();
    let consumers_before = tokio::task::block_in_place(|| consumers(&outcomes));
    let waiting = {
        let settings = env.settings.clone();
        let batch = enqueued.batch.clone();
        tokio::spawn(async move {
            mfa_reset::commands::status::watch(
                &settings,
                &batch,
                Some(Duration::from_secs(240)),
                None,
            )
            .await
        })
    };
    // Its follower consumes the outcomes stream before the node goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::task::block_in_place(|| consumers(&outcomes)) <= consumers_before {
        assert!(Instant::now() < deadline, "status --wait never attached");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.stop_app();
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.start_app();
    wait_stream_back(&env, &enqueued.batch).await;

    let view = env.wait_batch(&enqueued.batch, 180).await;
    assert_eq!(view.finished(), 200);
    let waited = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("status --wait returned once the batch was complete")
        .expect("status --wait did not panic")
        .expect("status --wait rode out the restart");
    assert_eq!(waited.finished(), 200, "status --wait saw every outcome");
    assert!(waited.is_complete());
    let not_reset: Vec<_> = view
        .outcomes()
        .filter(|o| o.status != Status::Reset)
        .map(|o| (o.user.to_string(), o.status, o.error_code.clone()))
        .collect();
    assert!(not_reset.is_empty(), "{not_reset:?}");
    // Every user was reset once: each removable method got exactly one successful DELETE
    // and no DELETE ever found a method already gone (a second execution deleting again).
    let mut deleted_ok: HashMap<String, usize> = HashMap::new();
    for call in front.calls() {
        if call.method != axum::http::Method::DELETE {
            continue;
        }
        let user = call.user.clone().expect("a user's method");
        assert_ne!(call.status, 404, "a method was deleted twice: {call:?}");
        if (200..300).contains(&call.status) {
            *deleted_ok.entry(user).or_default() += 1;
        }
    }
    for (user, methods) in &removable_before {
        assert_eq!(
            deleted_ok.get(user).copied().unwrap_or(0),
            *methods,
            "{user}: successful DELETEs"
        );
    }
    // The report lists exactly what the simulator deleted. A request in flight during the
    // restart may have a second outcome record (an outcome held through the outage and the
    // redelivered copy's); none claims more than was deleted.
    let deleted: HashMap<String, HashSet<String>> = env
        .sim
        .users_snapshot()
        .iter()
        .map(|u| {
            let ids = u
                .deleted_methods
                .iter()
                .map(|m| m["id"].as_str().expect("an id").to_string())
                .collect();
            (u.user_principal_name.to_lowercase(), ids)
        })
        .collect();
    for o in view.outcomes() {
        assert_eq!(
            method_ids(&o.methods_removed),
            deleted[&o.user.key()],
            "{}",
            o.user
        );
    }
    let mut seen = HashSet::new();
    for record in env.stream_records().await {
        if let Record::Outcome(o) = record {
            seen.insert(o.request_id);
            assert!(
                method_ids(&o.methods_removed).is_subset(&deleted[&o.user.key()]),
                "{o:?}"
            );
        }
    }
    assert_eq!(seen.len(), 200);
    for user in env.sim.users_snapshot() {
        assert_eq!(
            removable(&user.methods),
            0,
            "{} keeps a method",
            user.user_principal_name
        );
    }
    env.cleanup().await;
    drop(hold);
    drop(node);
}

fn removable(methods: &[serde_json::Value]) -> usize {
    methods
        .iter()
        .filter(|m| m["@odata.type"] != "#microsoft.graph.passwordAuthenticationMethod")
        .count()
}

fn method_ids(methods: &[mfa_reset::domain::MethodRecord]) -> HashSet<String> {
    methods.iter().map(|m| m.id.clone()).collect()
}
