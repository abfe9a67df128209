//! A three-node RabbitMQ cluster loses the node that leads the requests queue mid-batch.
//!
//! The test starts a cluster of its own on this machine (`mfa-c1..3@localhost`, AMQP on
//! 127.0.0.1:5681-5683, distribution ports 25681-25683, files under `/tmp/mfa-reset-cluster`),
//! never the shared broker on 5672 nor the restart test's node on 5673. The topology is
//! declared through node 1, so every queue and the outcomes stream are led from there. Three
//! workers know all three nodes (`broker.urls`) and start on different ones. Mid-batch, node 1
//! (the requests queue's leader) is stopped: the quorum queues and the stream elect new
//! leaders on the two nodes left, the workers that were connected to node 1 fail over to
//! another node (a worker whose consumer the broker cancels subscribes again in a new
//! session), and every user ends reset exactly once.
//!
//! [`Cluster`] is created before any node starts and stops all three and deletes their files
//! when dropped, also when the test fails. It holds an exclusive `flock` on
//! `/tmp/mfa-reset-cluster.lock` for its life, so two runs on one machine never share the
//! ports (a lock of its own: `flock -o /tmp/mfa-cluster.lock cargo test --test cluster` may
//! hold that one around the run).

#[path = "it/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::env::{csv_of_generated, TestEnv};
use common::graph_front::GraphFront;
use graph_sim::{GenOptions, SimConfig};
use mfa_reset::domain::{Record, Status};

const BASE: &str = "/tmp/mfa-reset-cluster";
const LOCK: &str = "/tmp/mfa-reset-cluster.lock";
const NODES: usize = 3;

fn node(i: usize) -> String {
    format!("mfa-c{}@localhost", i + 1)
}

fn port(i: usize) -> u16 {
    5681 + i as u16
}

fn dir(i: usize) -> String {
    format!("{BASE}/c{}", i + 1)
}

fn url(i: usize) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", port(i))
}

/// `rabbitmqctl -n NODE ARGS`: its stdout when it succeeded.
fn ctl(i: usize, args: &[&str]) -> Option<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-n", &node(i)])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn port_open(i: usize) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port(i))).is_ok()
}

/// Poll `ready` every 200 ms until it holds; false when it still does not after `secs`.
fn wait_for(secs: u64, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The cluster's three nodes (see the module doc).
struct Cluster {
    _lock: std::fs::File,
}

impl Cluster {
    /// Take the lock, clear what an interrupted run may have left, start three nodes and
    /// join nodes 2 and 3 to node 1.
    fn start() -> Cluster {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .expect("lock file");
        // SAFETY: flock on a file descriptor we own; it blocks until the lock is ours.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock {LOCK}");
        let cluster = Cluster { _lock: lock };
        cluster.stop_all();
        for i in 0..NODES {
            start_node(i);
        }
        for i in 0..NODES {
            assert!(
                wait_for(120, || port_open(i) && ctl(i, &["await_startup"]).is_some()),
                "{} never started; the end of its log:\n{}",
                node(i),
                log_tail(i)
            );
        }
        for i in 1..NODES {
            assert!(ctl(i, &["stop_app"]).is_some(), "stop_app on {}", node(i));
            assert!(
                ctl(i, &["join_cluster", &node(0)]).is_some(),
                "{} joins {}",
                node(i),
                node(0)
            );
            assert!(ctl(i, &["start_app"]).is_some(), "start_app on {}", node(i));
        }
        assert!(
            wait_for(120, || cluster.running_nodes().len() == NODES
                && (0..NODES).all(port_open)),
            "the cluster never had its three nodes running: {:?}",
            cluster.running_nodes()
        );
        cluster
    }

    /// The nodes running, as node 2 sees them (node 1 is the one the test stops).
    fn running_nodes(&self) -> Vec<String> {
        let Some(out) = ctl(1, &["cluster_status", "--formatter", "json"]) else {
            return Vec::new();
        };
        let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        status["running_nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node leading `queue`, asked of node `via`.
    fn leader(&self, via: usize, queue: &str) -> Option<String> {
        let out = ctl(
            via,
            &["list_queues", "name", "leader", "--formatter", "json"],
        )?;
        let queues: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        queues
            .iter()
            .find(|q| q["name"] == queue)
            .and_then(|q| q["leader"].as_str().map(str::to_string))
    }

    /// Stop node `i` (the whole node: its connections drop, its port closes). `rabbitmqctl
    /// stop` first; if it fails (it can time out on a loaded machine), the node's process is
    /// killed, which stops it as surely.
    fn stop_node(&self, i: usize) {
        let pid_file = format!("{}/pid", dir(i));
        let out = Command::new("rabbitmqctl")
            .args(["-n", &node(i), "stop", &pid_file])
            .output()
            .expect("rabbitmqctl");
        if !out.status.success() {
            eprintln!(
                "rabbitmqctl stop {} failed ({}): {}{}; killing it",
                node(i),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            let pid = pid.trim();
            assert!(!pid.is_empty(), "no pid file for {}", node(i));
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        assert!(
            wait_for(60, || !port_open(i) && !registered(i)),
            "{} still runs; the end of its log:\n{}",
            node(i),
            log_tail(i)
        );
    }

    /// Stop every node still running and delete the cluster's files.
    fn stop_all(&self) {
        // Only nodes that run: `rabbitmqctl stop` waits for a node that is not there, and
        // stops it when it comes up.
        let stops: Vec<_> = (0..NODES)
            .filter(|i| registered(*i))
            .filter_map(|i| {
                Command::new("rabbitmqctl")
                    .args(["-n", &node(i), "stop", &format!("{}/pid", dir(i))])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut stop in stops {
            let _ = stop.wait();
        }
        if !wait_for(60, || !(0..NODES).any(|i| port_open(i) || registered(i))) {
            eprintln!(
                "a cluster test node still runs; stop it with `rabbitmqctl -n mfa-cN@localhost stop`"
            );
        }
        let _ = std::fs::remove_dir_all(BASE);
    }
}

/// The last lines of node `i`'s log (the guard deletes it).
fn log_tail(i: usize) -> String {
    let log =
        std::fs::read_to_string(format!("{}/log/{}.log", dir(i), node(i))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// True while node `i` is registered with epmd (its Erlang VM runs).
fn registered(i: usize) -> bool {
    let name = format!("name mfa-c{} at port", i + 1);
    Command::new("epmd")
        .arg("-names")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&name))
        .unwrap_or(false)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn start_node(i: usize) {
    let d = dir(i);
    std::fs::create_dir_all(format!("{d}/mnesia")).expect("node dir");
    std::fs::create_dir_all(format!("{d}/log")).expect("node dir");
    std::fs::write(
        format!("{d}/rabbitmq.conf"),
        format!("listeners.tcp.local = 127.0.0.1:{}\n", port(i)),
    )
    .expect("node config");
    // The Debian scripts run the node as the `rabbitmq` user when started by root.
    let _ = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq", BASE])
        .status();
    let started = Command::new("rabbitmq-server")
        .arg("-detached")
        .env("RABBITMQ_NODENAME", node(i))
        .env("RABBITMQ_NODE_PORT", port(i).to_string())
        .env("RABBITMQ_DIST_PORT", (25681 + i).to_string())
        .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq.conf"))
        .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
        .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            format!("{d}/enabled_plugins"),
        )
        .env("RABBITMQ_PID_FILE", format!("{d}/pid"))
        .current_dir(&d)
        .status()
        .expect("rabbitmq-server (install RabbitMQ to run this test)");
    assert!(
        started.success(),
        "rabbitmq-server -detached for {}",
        node(i)
    );
}

const USERS: usize = 300;
/// DELETEs Graph answers before the front holds the rest until node 1 is stopped.
const HOLD_AFTER_DELETES: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_the_requests_queue_to_a_new_leader_when_its_node_stops_mid_batch() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mfa_reset=info")
        .with_test_writer()
        .try_init();
    let cluster = blocking(Cluster::start);

    let mut env = TestEnv::new(
        "cluster",
        SimConfig {
            users: USERS,
            latency_ms: 100,
            generation: GenOptions {
                methods_min: 1,
                ..GenOptions::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    let front = GraphFront::start(&env.sim.url()).await;
    front.point(&mut env.settings);
    env.settings.broker.connect_timeout = Duration::from_secs(90);
    // Setup and enqueue through node 1 alone: every queue and the stream are led from there.
    env.settings.broker.url = url(0);
    env.setup().await;
    let requests = env.topology().requests();
    assert_eq!(
        blocking(|| cluster.leader(1, &requests)).as_deref(),
        Some(node(0).as_str()),
        "node 1 leads the requests queue"
    );
    let removable_before: HashMap<String, usize> = env
        .sim
        .users_snapshot()
        .iter()
        // Keyed by object id: workers address every call by the id they resolved.
        .map(|u| (u.id.to_lowercase(), removable(&u.methods)))
        .collect();
    let enqueued = env
        .enqueue_csv(&csv_of_generated(USERS))
        .await
        .expect("enqueue");

    // From here on everyone knows the three nodes. Each worker lists them from a different
    // one: connecting starts at the same position of each list, so they start on three
    // different nodes and one of them is on node 1.
    let all: Vec<String> = (0..NODES).map(url).collect();
    env.settings.broker.urls = all.clone();
    for w in 0..NODES {
        let mut settings = env.settings.clone();
        settings.broker.urls = (0..NODES).map(|k| all[(w + k) % NODES].clone()).collect();
        env.start_worker_with(settings, 2);
    }

    // Mid-batch, whatever the machine's speed: the Graph front lets 60 DELETEs through, then
    // holds every later call on the wire until the node is gone. The workers are then in the
    // middle of resets (requests taken, calls unanswered) when their node stops.
    front.hold_after_deletes(HOLD_AFTER_DELETES);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(front.holding() && front.waiting() > 0) {
        assert!(
            Instant::now() < deadline,
            "the workers never reached {HOLD_AFTER_DELETES} DELETEs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_stop = mfa_reset::commands::status::load(&env.settings, &enqueued.batch)
        .await
        .expect("status")
        .finished();
    assert!(
        before_stop < USERS as u64 / 2,
        "the stop must come mid-batch ({before_stop} finished already)"
    );
    let stopping: DateTime<Utc> = Utc::now();
    blocking(|| cluster.stop_node(0));
    let stopped: DateTime<Utc> = Utc::now();
    front.release();
    let new_leader = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match blocking(|| cluster.leader(1, &requests)) {
                Some(l) if l != node(0) => break l,
                _ => {
                    assert!(Instant::now() < deadline, "no new leader for {requests}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    eprintln!(
        "requests queue: leader {} stopped, {new_leader} leads now",
        node(0)
    );

    let view = env.wait_batch(&enqueued.batch, 150).await;
    assert_eq!(view.finished(), USERS as u64);
    let not_reset: Vec<_> = view
        .outcomes()
        .filter(|o| o.status != Status::Reset)
        .map(|o| (o.user.to_string(), o.status, o.error_code.clone()))
        .collect();
    assert!(not_reset.is_empty(), "{not_reset:?}");
    // How long the outcomes paused: the first one after the stop began and after the node
    // was gone, and the longest gap between two outcomes from the stop on.
    let mut times: Vec<DateTime<Utc>> = view.outcomes().map(|o| o.finished_at).collect();
    times.sort();
    let first_after = times
        .iter()
        .copied()
        .find(|t| *t > stopped)
        .expect("outcomes after the node was gone: the stop came mid-batch");
    let from_stop: Vec<DateTime<Utc>> = std::iter::once(stopping)
        .chain(times.iter().copied().filter(|t| *t > stopping))
        .collect();
    let longest_gap = from_stop
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .max()
        .unwrap_or(0);
    eprintln!(
        "cluster failover: {before_stop} of {USERS} finished before the stop; stopping the \
         leader took {} ms; first outcome {} ms after the node was gone; longest pause between \
         outcomes from the stop on: {longest_gap} ms",
        (stopped - stopping).num_milliseconds(),
        (first_after - stopped).num_milliseconds(),
    );

    // Reset exactly once: each removable method got exactly one successful DELETE, and no
    // DELETE ever found a method already gone (a second execution deleting again).
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
    assert_eq!(removable_before.len(), USERS);
    for (user, methods) in &removable_before {
        assert_eq!(
            deleted_ok.get(user).copied().unwrap_or(0),
            *methods,
            "{user}: successful DELETEs"
        );
    }
    // The outcomes on the stream claim no more than the simulator deleted; every request
    // has one.
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
    assert_eq!(seen.len(), USERS);
    for user in env.sim.users_snapshot() {
        assert_eq!(
            removable(&user.methods),
            0,
            "{} keeps a method",
            user.user_principal_name
        );
    }
    env.stop_workers().await;
    drop(env);
    blocking(move || drop(cluster));
}

/// Run a blocking call (rabbitmqctl, polling a port) without holding up the workers' tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
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
