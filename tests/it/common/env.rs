//! [`TestEnv`]: a simulator, a unique broker prefix and settings pointing at both, so
//! tests never see each other's messages.

use std::sync::Arc;
use std::time::Duration;

use graph_sim::{SimConfig, SimServer};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use mfa_reset::batch::BatchView;
use mfa_reset::broker::headers::Headers;
use mfa_reset::broker::{self, Topology};
use mfa_reset::cli::EnqueueArgs;
use mfa_reset::commands;
use mfa_reset::config::Settings;
use mfa_reset::domain::ResetRequest;
use mfa_reset::graph::GraphClient;
use mfa_reset::trust::requests::{SealedBatch, MANIFEST_HEADER, PROOF_HEADER};
use mfa_reset::trust::{KeySet, Signer};
use mfa_reset::worker::{self, WorkOptions, WorkerMetrics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One test's world.
pub struct TestEnv {
    /// The simulator.
    pub sim: SimServer,
    /// Settings pointing at the simulator and a fresh prefix.
    pub settings: Settings,
    /// Throw-away keys of two operators, a worker and an admin, named in the
    /// `security.allowed_signers` of `settings` (the worker's is `worker.key`).
    pub keys: KeySet,
    /// Where the keys live (removed with the test's world).
    _key_dir: Arc<tempfile::TempDir>,
    /// Workers started with [`TestEnv::start_worker`].
    workers: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

/// A fresh prefix for this test.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "mfa-test-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Settings for `sim` under a fresh prefix, with short retry tiers and no admin check.
pub fn settings_for(sim: &SimServer, test: &str) -> Settings {
    let defaults = SimConfig::default();
    let mut s = Settings::default();
    s.broker.prefix = unique_prefix(test);
    s.broker.connect_timeout = Duration::from_secs(20);
    s.graph.base_url = format!("{}/v1.0", sim.url());
    s.graph.beta_url = format!("{}/beta", sim.url());
    s.graph.authority = sim.url();
    s.graph.tenant_id = defaults.tenant_id;
    s.graph.client_id = defaults.client_id;
    s.graph.client_secret = Some(defaults.client_secret.into());
    s.retry.base_delay = Duration::from_millis(200);
    s.retry.max_delay = Duration::from_secs(2);
    s.retry.max_elapsed = Duration::from_secs(10);
    s.retry.tiers = vec![Duration::from_secs(1), Duration::from_secs(2)];
    s.reset.skip_admins = false;
    s.reset.consistency_wait = Duration::from_secs(2);
    s.worker.shutdown_grace = Duration::from_secs(20);
    s.intake.confirm_above = 100_000;
    // The two-person rule is tested on its own (tests/it/requests.rs); other tests enqueue
    // hundreds of users without a second operator.
    s.security.approval_above = 1_000_000;
    s
}

impl TestEnv {
    /// A simulator with `config` and settings for it.
    pub async fn new(test: &str, config: SimConfig) -> TestEnv {
        let sim = super::start_sim(config).await;
        let mut settings = settings_for(&sim, test);
        let key_dir = tempfile::tempdir().expect("key dir");
        let keys = KeySet::generate(key_dir.path()).expect("test keys");
        settings.security.allowed_signers = keys.allowed_signers.display().to_string();
        settings.worker.key = keys.worker.path.display().to_string();
        // Everything the tests enqueue is signed by the requester (the suite runs signed).
        settings.intake.key = keys.requester.path.display().to_string();
        TestEnv {
            sim,
            settings,
            keys,
            _key_dir: Arc::new(key_dir),
            workers: Vec::new(),
        }
    }

    /// The topology of this test's prefix.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.settings.broker, &self.settings.retry)
    }

    /// Declare the topology.
    pub async fn setup(&self) {
        commands::setup::run(&self.settings).await.expect("setup");
    }

    /// Write `content` to a temp file and enqueue it as CSV.
    pub async fn enqueue_csv(&self, content: &str) -> anyhow::Result<commands::enqueue::Enqueued> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("users.csv");
        std::fs::write(&path, content)?;
        commands::enqueue::run(&self.settings, &enqueue_args(Some(path), None)).await
    }

    /// Enqueue ticket events from a temp file.
    pub async fn enqueue_tickets(
        &self,
        content: &str,
    ) -> anyhow::Result<commands::enqueue::Enqueued> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tickets.jsonl");
        std::fs::write(&path, content)?;
        commands::enqueue::run(&self.settings, &enqueue_args(None, Some(path))).await
    }

    /// A Graph client with the test's settings, as a worker builds its own.
    pub fn graph_client(&self) -> GraphClient {
        let s = &self.settings;
        GraphClient::new(&s.graph, &s.rate, &s.retry).expect("graph client")
    }

    /// Start an in-process worker with its own Graph client.
    pub fn start_worker(&mut self, concurrency: usize) {
        self.start_worker_with(self.settings.clone(), concurrency);
    }

    /// Start an in-process worker with `settings` (e.g. another broker URL) instead of the
    /// test's; stopped with the others.
    pub fn start_worker_with(&mut self, settings: Settings, concurrency: usize) {
        match GraphClient::new(&settings.graph, &settings.rate, &settings.retry) {
            Ok(graph) => {
                self.start_worker_on(settings, graph, concurrency);
            }
            // As the worker itself would end: with the error.
            Err(err) => self
                .workers
                .push((CancellationToken::new(), tokio::spawn(async { Err(err) }))),
        }
    }

    /// Start an in-process worker on `graph` (the test keeps a clone to watch its budget and
    /// pause); returns its index for [`TestEnv::stop_worker`].
    pub fn start_worker_on(
        &mut self,
        settings: Settings,
        graph: GraphClient,
        concurrency: usize,
    ) -> usize {
        self.start_worker_counted(
            settings,
            graph,
            concurrency,
            Arc::new(WorkerMetrics::default()),
        )
    }

    /// [`TestEnv::start_worker_on`], counting into `metrics` (the test keeps a clone to watch
    /// what the worker counts).
    pub fn start_worker_counted(
        &mut self,
        mut settings: Settings,
        graph: GraphClient,
        concurrency: usize,
        metrics: Arc<WorkerMetrics>,
    ) -> usize {
        let index = self.workers.len();
        settings.worker.name = format!("test-worker-{}", index + 1);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let handle = tokio::spawn(async move {
            let options = WorkOptions {
                concurrency,
                exit_when_idle: None,
            };
            worker::run(&settings, graph, options, metrics, token).await
        });
        self.workers.push((cancel, handle));
        index
    }

    /// Stop the worker `index` (graceful) and wait for it; the others keep running.
    pub async fn stop_worker(&mut self, index: usize) {
        let (cancel, handle) = &mut self.workers[index];
        cancel.cancel();
        handle
            .await
            .expect("worker task")
            .expect("worker ends cleanly");
        // Keep the slot (indexes stay valid): a finished handle.
        self.workers[index].1 = tokio::spawn(async { Ok(()) });
    }

    /// Stop every worker started here (graceful) and wait for them.
    pub async fn stop_workers(&mut self) {
        for (cancel, handle) in self.workers.drain(..) {
            cancel.cancel();
            handle
                .await
                .expect("worker task")
                .expect("worker ends cleanly");
        }
    }

    /// Wait until the batch is complete (or fail the test after `secs`).
    pub async fn wait_batch(&self, batch: &str, secs: u64) -> BatchView {
        commands::status::watch(&self.settings, batch, Some(Duration::from_secs(secs)), None)
            .await
            .expect("batch completes in time")
    }

    /// Messages ready in a queue of this test's prefix.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let conn = broker::connect(&self.settings.broker, "test")
            .await
            .expect("broker");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = conn.close(200, "bye".into()).await;
        q.message_count()
    }

    /// The signing headers `enqueue` would give `requests` (one batch, in order), signed by
    /// the requester's key: the manifest and each request's proof.
    pub fn sign(&self, requests: &[ResetRequest]) -> Vec<FieldTable> {
        let signer = Signer::from_key_file(&self.keys.requester.path).expect("requester key");
        let sealed = SealedBatch::seal(
            requests,
            &self.keys.requester.principal,
            &signer,
            chrono::Utc::now(),
        )
        .expect("seal the batch");
        let manifest = sealed.manifest.to_header();
        (0..requests.len())
            .map(|i| {
                Headers::default()
                    .str(MANIFEST_HEADER, &manifest)
                    .str(PROOF_HEADER, &sealed.proof_header(i))
                    .build()
            })
            .collect()
    }

    /// Publish `requests` (one batch) signed by the requester, as `enqueue` would, straight
    /// to the requests queue.
    pub async fn publish_signed(&self, requests: &[ResetRequest]) {
        for (request, headers) in requests.iter().zip(self.sign(requests)) {
            let body = serde_json::to_vec(request).expect("json");
            self.publish_raw_with(&self.topology().exchange(), "request", &body, headers)
                .await;
        }
    }

    /// Publish raw bytes to the requests queue (for poison-message tests).
    pub async fn publish_raw(&self, body: &[u8]) {
        self.publish_raw_with(
            &self.topology().exchange(),
            "request",
            body,
            FieldTable::default(),
        )
        .await;
    }

    /// Publish `body` with `headers` through `exchange` (`""`: the default exchange, where
    /// the routing key is a queue name) as anybody holding broker credentials could.
    pub async fn publish_raw_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) {
        let conn = broker::connect(&self.settings.broker, "test")
            .await
            .expect("broker");
        let ch = conn.create_channel().await.expect("channel");
        let topo = self.topology();
        topo.declare(&ch).await.expect("declare");
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        let _ = conn.close(200, "bye".into()).await;
    }

    /// How many outcome records the stream holds per request id (all batches).
    pub async fn outcome_counts(&self) -> std::collections::HashMap<uuid::Uuid, u32> {
        let seen: Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, u32>>> =
            Arc::default();
        let sink = seen.clone();
        for record in self.stream_records().await {
            if let mfa_reset::domain::Record::Outcome(o) = record {
                *sink.lock().unwrap().entry(o.request_id).or_default() += 1;
            }
        }
        let counts = seen.lock().unwrap().clone();
        counts
    }

    /// Every record on this test's outcomes stream that a reader believes (verified worker
    /// records, manifests), oldest first.
    pub async fn stream_records(&self) -> Vec<mfa_reset::domain::Record> {
        let records: Arc<std::sync::Mutex<Vec<mfa_reset::domain::Record>>> = Arc::default();
        let sink = records.clone();
        let reader = mfa_reset::records::RecordReader::from_settings(&self.settings.security)
            .expect("the test's allowed signers");
        let conn = broker::connect(&self.settings.broker, "test")
            .await
            .expect("broker");
        mfa_reset::broker::stream::read_until_now(
            &conn,
            &self.topology(),
            mfa_reset::broker::stream::Offset::First,
            move |message| match reader.read(&message.body) {
                mfa_reset::records::Read::Verified { record, .. }
                | mfa_reset::records::Read::Unsealed(record) => sink.lock().unwrap().push(record),
                mfa_reset::records::Read::Ignored { .. } => {}
            },
        )
        .await
        .expect("read the outcomes stream");
        let _ = conn.close(200, "bye".into()).await;
        let out = records.lock().unwrap().clone();
        out
    }

    /// Every message body on this test's outcomes stream, raw (verified or not), oldest first.
    pub async fn stream_bodies(&self) -> Vec<Vec<u8>> {
        let bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = bodies.clone();
        let conn = broker::connect(&self.settings.broker, "test raw")
            .await
            .expect("broker");
        mfa_reset::broker::stream::read_until_now(
            &conn,
            &self.topology(),
            mfa_reset::broker::stream::Offset::First,
            move |message| sink.lock().unwrap().push(message.body.to_vec()),
        )
        .await
        .expect("read the outcomes stream");
        let _ = conn.close(200, "bye".into()).await;
        let out = bodies.lock().unwrap().clone();
        out
    }

    /// Take every message now in `queue` off it (acked) and return the bodies.
    pub async fn drain_queue(&self, queue: &str) -> Vec<Vec<u8>> {
        let conn = broker::connect(&self.settings.broker, "test drain")
            .await
            .expect("broker");
        let ch = conn.create_channel().await.expect("channel");
        let mut bodies = Vec::new();
        loop {
            let got = ch
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get");
            match got {
                Some(m) => bodies.push(m.delivery.data.clone()),
                None => break,
            }
        }
        let _ = conn.close(200, "bye".into()).await;
        bodies
    }

    /// Delete this test's queues and exchange.
    pub async fn cleanup(mut self) {
        self.stop_workers().await;
        let Ok(conn) = broker::connect(&self.settings.broker, "test cleanup").await else {
            return;
        };
        if let Ok(ch) = conn.create_channel().await {
            let topo = self.topology();
            for q in topo.all_queues() {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in topo.exchanges() {
                let _ = ch
                    .exchange_delete(exchange.as_str().into(), Default::default())
                    .await;
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// `enqueue` arguments for a file, confirmed, not a dry run.
pub fn enqueue_args(
    csv: Option<std::path::PathBuf>,
    tickets: Option<std::path::PathBuf>,
) -> EnqueueArgs {
    EnqueueArgs {
        csv,
        tickets,
        group: None,
        transitive: false,
        batch: None,
        dry_run: false,
        revoke_sessions: false,
        tap: false,
        yes: true,
        requested_by: Some("tests".into()),
        reason: None,
        key: None,
        check: false,
    }
}

/// A CSV of the first `n` generated users (header `userPrincipalName`).
pub fn csv_of_generated(n: usize) -> String {
    let mut s = String::from("userPrincipalName\n");
    for i in 0..n {
        s.push_str(&graph_sim::tenant::upn_for_index(i));
        s.push('\n');
    }
    s
}
