//! Signed fleet messages, against the real broker: what someone holding broker credentials
//! (and at most a key that is not a worker's) publishes on `{p}.fleet` changes nothing in a
//! running worker; a message sealed by a worker key is taken, once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use graph_sim::SimConfig;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use mfa_reset::broker;
use mfa_reset::domain::Status;
use mfa_reset::graph::{GraphClient, Learned, Limit};
use mfa_reset::trust::signer::generate_ed25519;
use mfa_reset::trust::{ChainWriter, KeySet, Namespace, Signer};
use mfa_reset::worker::fleet::envelope::{fleet_chain, FleetSeal, Sent};
use mfa_reset::worker::fleet::FleetMessage;
use mfa_reset::worker::WorkerMetrics;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::common::env::{csv_of_generated, TestEnv};
use crate::common::eventually;

/// The reasons a worker gives for what the forgers below send.
const FORGED: [&str; 3] = ["unsigned", "signer_not_allowed", "bad_signature"];

/// Ask `client`'s budget for a cell every 100 ms until aborted: a worker with work (an idle
/// one takes no share and leads nothing).
fn keep_busy(client: &GraphClient) -> JoinHandle<()> {
    let (budget, gate) = (client.budget(), client.gate());
    tokio::spawn(async move {
        loop {
            budget.acquire(false, &gate).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A publisher on `{p}.fleet` with the test's broker credentials.
#[derive(Clone)]
struct Publisher {
    channel: lapin::Channel,
    exchange: String,
    _conn: Arc<lapin::Connection>,
}

impl Publisher {
    async fn connect(env: &TestEnv) -> Publisher {
        let conn = broker::connect(&env.settings.broker, "fleet forger")
            .await
            .expect("broker");
        let channel = conn.create_channel().await.expect("channel");
        Publisher {
            channel,
            exchange: env.topology().fleet(),
            _conn: Arc::new(conn),
        }
    }

    async fn publish(&self, body: &[u8]) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
}

/// `message` as forgers send it, sent now: unsigned (today's plain JSON), sealed by a key on
/// no line of allowed_signers, sealed by an operator's key (allowed to request, not to speak
/// for a worker), and signed by that key in its own request namespace.
fn forgeries(
    exchange: &str,
    keys: &KeySet,
    stranger: &Arc<Signer>,
    message: &FleetMessage,
) -> Vec<Vec<u8>> {
    let now = Utc::now();
    let instance = message.instance();
    let operator = Arc::new(Signer::from_key_file(&keys.requester.path).expect("operator key"));
    let sent = Sent {
        exchange: exchange.to_string(),
        sent_at: now,
        message: serde_json::to_string(message).expect("json"),
    };
    let in_request_namespace = ChainWriter::new(fleet_chain(instance), Namespace::Request)
        .seal(&sent, &operator)
        .expect("seal");
    vec![
        serde_json::to_vec(message).expect("json"),
        FleetSeal::new(exchange, instance, stranger.clone())
            .seal(message, now)
            .expect("seal"),
        FleetSeal::new(exchange, instance, operator)
            .seal(message, now)
            .expect("seal"),
        serde_json::to_vec(&in_request_namespace).expect("json"),
    ]
}

/// Publish every forgery of `make()` every 200 ms until aborted.
fn keep_forging(
    publisher: &Publisher,
    keys: &KeySet,
    make: impl Fn() -> FleetMessage + Send + 'static,
) -> JoinHandle<()> {
    let (publisher, keys) = (publisher.clone(), keys.clone());
    let stranger = Arc::new(
        Signer::from_private_key(generate_ed25519("mallory@evil.invalid").expect("key"))
            .expect("signer"),
    );
    tokio::spawn(async move {
        loop {
            for body in forgeries(&publisher.exchange, &keys, &stranger, &make()) {
                publisher.publish(&body).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Every reason of [`FORGED`] counted at least `n` times by `metrics`.
fn refused_each(metrics: &WorkerMetrics, n: u64) -> bool {
    FORGED
        .iter()
        .all(|reason| metrics.fleet_refusals(reason) >= n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pauses_pause_no_worker_and_requests_keep_being_served_through_them() {
    let mut env = TestEnv::new("fleet-forged-pause", SimConfig::default()).await;
    // Were one honoured, each forged pause would hold the worker for a minute.
    env.settings.retry.max_retry_after = Duration::from_secs(60);
    env.setup().await;
    let a = env.graph_client();
    let metrics = Arc::new(WorkerMetrics::default());
    env.start_worker_counted(env.settings.clone(), a.clone(), 4, metrics.clone());
    let publisher = Publisher::connect(&env).await;
    let forging = keep_forging(&publisher, &env.keys, || FleetMessage::Pause {
        instance: Uuid::new_v4(),
        // Text a forger chose, with a terminal escape (logged escaped, if at all).
        worker: "w1\u{1b}[2J".into(),
        sent_at: Utc::now(),
        retry_after_ms: 60_000,
        limit: Limit::Requests,
    });
    assert!(
        eventually(30, || refused_each(&metrics, 2)).await,
        "the worker receives and refuses every kind of forgery: {:?}",
        FORGED.map(|r| metrics.fleet_refusals(r))
    );

    // Requests are served while the forged pauses keep coming.
    let users = 20;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(users))
        .await
        .expect("enqueue");
    let view = env.wait_batch(&enqueued.batch, 45).await;
    let refused_meanwhile = FORGED.map(|r| metrics.fleet_refusals(r));
    forging.abort();

    assert_eq!(view.finished(), users as u64);
    assert!(
        view.counts()
            .keys()
            .all(|s| matches!(s, Status::Reset | Status::AlreadyClean)),
        "{:?}",
        view.counts()
    );
    let stats = a.stats().snapshot();
    assert_eq!(stats.throttled, 0, "Graph never throttled this worker");
    assert_eq!(stats.pause_secs, 0.0, "no pause was taken from a forgery");
    assert!(a.gate().paused_until().is_none());
    assert!(
        refused_meanwhile.iter().all(|n| *n >= 2),
        "{refused_meanwhile:?}"
    );
    env.cleanup().await;
}

/// A heartbeat from the lowest id there is (the fleet's leader, as every worker sees it), busy,
/// claiming Graph throttled it at 5 % of its share.
fn leader_heartbeat() -> FleetMessage {
    let low = Learned {
        factor: 0.05,
        throttled_at: Some(0.05),
        held_at: None,
        peak: None,
    };
    FleetMessage::Heartbeat {
        instance: Uuid::nil(),
        worker: "leader".into(),
        requests: low,
        writes: low,
        pause_ms: 0,
        pause_limit: Limit::Requests,
        idle: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_leader_heartbeat_changes_neither_the_workers_share_nor_its_rate() {
    let mut env = TestEnv::new("fleet-forged-leader", SimConfig::default()).await;
    env.setup().await;
    let a = env.graph_client();
    let busy = keep_busy(&a);
    let metrics = Arc::new(WorkerMetrics::default());
    env.start_worker_counted(env.settings.clone(), a.clone(), 2, metrics.clone());
    let before = a.budget().learned();
    let publisher = Publisher::connect(&env).await;

    let forging = keep_forging(&publisher, &env.keys, leader_heartbeat);
    // Five rounds refused: forged heartbeats arrived all through a PEER_TTL.
    assert!(
        eventually(30, || refused_each(&metrics, 5)).await,
        "the worker receives and refuses every kind of forgery: {:?}",
        FORGED.map(|r| metrics.fleet_refusals(r))
    );
    assert_eq!(a.budget().processes(), 1, "no forged worker takes a share");
    assert_eq!(a.stats().snapshot().workers, 1);
    assert_eq!(
        a.budget().learned(),
        before,
        "the forged leader's rate is not taken"
    );
    forging.abort();

    // The same heartbeat sealed with a worker's key (a second worker, as far as this one can
    // tell) is taken: the observables above do move.
    let mut seal = FleetSeal::new(
        &env.topology().fleet(),
        Uuid::nil(),
        Arc::new(Signer::from_key_file(&env.keys.worker.path).expect("worker key")),
    );
    let genuine = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            loop {
                let body = seal.seal(&leader_heartbeat(), Utc::now()).expect("seal");
                publisher.publish(&body).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    assert!(
        eventually(15, || a.budget().processes() == 2).await,
        "a worker's heartbeat counts"
    );
    assert!(
        eventually(15, || a.budget().factor() < before.0.factor).await,
        "the leader's rate is followed"
    );
    genuine.abort();
    busy.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_sealed_by_a_worker_key_holds_no_longer_than_the_cap_and_its_replay_extends_nothing(
) {
    let mut env = TestEnv::new("fleet-signed-pause", SimConfig::default()).await;
    let cap = Duration::from_secs(4);
    env.settings.retry.max_retry_after = cap;
    env.setup().await;
    let a = env.graph_client();
    let metrics = Arc::new(WorkerMetrics::default());
    env.start_worker_counted(env.settings.clone(), a.clone(), 1, metrics.clone());
    let publisher = Publisher::connect(&env).await;
    // The worker's fleet queue is bound once its fleet task runs: until it counts a probe.
    let probe = serde_json::to_vec(&leader_heartbeat()).expect("json");
    let mut bound = false;
    for _ in 0..100 {
        publisher.publish(&probe).await;
        if eventually(0, || metrics.fleet_refusals("unsigned") > 0).await {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bound, "the worker listens on the fleet exchange");
    assert!(a.gate().paused_until().is_none());

    // A year-long pause, sealed by a worker key.
    let instance = Uuid::new_v4();
    let mut seal = FleetSeal::new(
        &env.topology().fleet(),
        instance,
        Arc::new(Signer::from_key_file(&env.keys.worker.path).expect("worker key")),
    );
    let sent_at = Utc::now();
    let pause = FleetMessage::Pause {
        instance,
        worker: "w9".into(),
        sent_at,
        retry_after_ms: 365 * 86_400_000,
        limit: Limit::Requests,
    };
    let body = seal.seal(&pause, sent_at).expect("seal");
    publisher.publish(&body).await;
    let sent = Instant::now();
    assert!(
        eventually(10, || a.gate().paused_until().is_some()).await,
        "a worker's pause is taken"
    );
    let until = a.gate().paused_until().expect("paused");
    assert!(
        until <= sent + cap + Duration::from_millis(100),
        "held {:?} past the cap",
        until.saturating_duration_since(sent + cap)
    );

    // A second later (still fresh), the same message again: taken, each copy would pause
    // for the cap from its arrival, a second past the first's end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        publisher.publish(&body).await;
    }
    assert!(
        eventually(10, || metrics.fleet_refusals("replayed") >= 3).await,
        "each copy is refused as replayed"
    );
    // (None: the first copy's pause is over, and nothing started another.)
    let now_until = a.gate().paused_until();
    assert!(
        now_until.is_none_or(|u| u <= until),
        "the pause ends when the first copy said, not {:?} later",
        now_until.map(|u| u.saturating_duration_since(until))
    );
    env.cleanup().await;
}
