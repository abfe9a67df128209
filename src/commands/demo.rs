//! `mfa-reset demo`: the whole path in one command, against a simulated tenant.
//!
//! Starts the Graph simulator in-process, generates throw-away SSH keys for two operators, a
//! worker and an admin, enqueues the shipped example CSV (signed by the first operator)
//! through the real broker under a fresh prefix, approves it as the second operator (it is
//! above `security.approval_above`), runs workers in-process, shows live progress, then
//! prints a summary and writes the outcome report. Only a reachable RabbitMQ is needed.

// Everything but `DemoArgs` and `Settings` serves only the simulated run, present with the
// `demo` feature (a default one); without it `run` only explains why there is no demo.
#[cfg(feature = "demo")]
use std::sync::Arc;
#[cfg(feature = "demo")]
use std::time::{Duration, Instant};

#[cfg(feature = "demo")]
use anyhow::Context;
#[cfg(feature = "demo")]
use graph_sim::{self as sim, SimConfig};
#[cfg(feature = "demo")]
use lapin::options::QueueDeleteOptions;
#[cfg(feature = "demo")]
use tokio_util::sync::CancellationToken;

#[cfg(feature = "demo")]
use crate::broker::{self, Topology};
use crate::cli::DemoArgs;
#[cfg(feature = "demo")]
use crate::cli::{ApproveArgs, EnqueueArgs};
use crate::config::Settings;
#[cfg(feature = "demo")]
use crate::domain::Status;
#[cfg(feature = "demo")]
use crate::graph::GraphClient;
#[cfg(feature = "demo")]
use crate::trust::KeySet;
#[cfg(feature = "demo")]
use crate::worker::{self, WorkOptions, WorkerMetrics};

/// The example input: a few hundred users of the simulated tenant, some guests, one
/// unknown user and one break-glass account.
pub const DEMO_CSV: &str = include_str!("../../examples/demo-users.csv");

/// The break-glass account in the example input, protected in the demo's settings.
pub const DEMO_BREAK_GLASS: &str = "breakglass.admin@contoso.com";

/// Run the demo.
#[cfg(feature = "demo")]
pub async fn run(base: &Settings, args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut probe = base.broker.clone();
    probe.connect_timeout = Duration::from_secs(3);
    let conn = broker::connect(&probe, "mfa-reset demo").await?;

    let server = sim::spawn(
        SimConfig {
            users: args.tenant_users,
            seed: 1,
            latency_ms: args.latency_ms,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("starting the Graph simulator")?;
    // The break-glass account exists in the tenant (the last generated user, renamed): workers
    // resolve every reset.protected_users entry to its object id and refuse to start on one
    // that names no user.
    if let Some(last) = args.tenant_users.checked_sub(1) {
        server
            .rename_user(&sim::tenant::upn_for_index(last), DEMO_BREAK_GLASS)
            .map_err(|e| anyhow::anyhow!("creating the demo's break-glass account: {e}"))?;
    }
    let sim_defaults = SimConfig::default();

    let mut settings = base.clone();
    settings.broker.prefix = format!(
        "mfa-reset-demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    settings.graph.base_url = format!("{}/v1.0", server.url());
    settings.graph.beta_url = format!("{}/beta", server.url());
    settings.graph.authority = server.url();
    settings.graph.tenant_id = sim_defaults.tenant_id.clone();
    settings.graph.client_id = sim_defaults.client_id.clone();
    settings.graph.client_secret = Some(sim_defaults.client_secret.clone().into());
    settings.graph.client_certificate = None;
    settings.retry.tiers = vec![Duration::from_secs(5), Duration::from_secs(30)];
    settings
        .reset
        .protected_users
        .push(DEMO_BREAK_GLASS.to_string());
    // Throw-away keys: two operators (alice requests, bob approves), a worker and an admin,
    // and the allowed_signers naming them. Removed with the folder at the end.
    let key_dir = tempfile::tempdir().context("creating a folder for the demo's keys")?;
    let keys = KeySet::generate(key_dir.path()).context("generating the demo's keys")?;
    settings.security.allowed_signers = keys.allowed_signers.display().to_string();
    settings.worker.key = keys.worker.path.display().to_string();
    settings.intake.key = keys.requester.path.display().to_string();
    if settings.reset.backup && settings.reset.backup_recipient.trim().is_empty() {
        // Backups are only ever kept encrypted: a throw-away restore key for the demo's.
        let restore = crate::backup::BackupIdentity::generate();
        settings.reset.backup_recipient = restore.recipient().to_string();
    }

    eprintln!(
        "Graph simulator: {} ({} users)",
        server.url(),
        args.tenant_users
    );
    eprintln!(
        "RabbitMQ:        {} (prefix {})",
        settings.broker.shown_addresses(),
        settings.broker.prefix
    );

    let csv_path = match &args.csv {
        Some(p) => p.clone(),
        None => {
            let path = std::env::temp_dir().join(format!("{}-users.csv", settings.broker.prefix));
            std::fs::write(&path, DEMO_CSV)?;
            path
        }
    };
    eprintln!(
        "Keys:            {} (throw-away: {} requests, {} approves)",
        key_dir.path().display(),
        keys.requester.principal,
        keys.approver.principal
    );
    eprintln!();
    eprintln!(
        "$ mfa-reset enqueue --csv demo-users.csv --key {}   # as {}",
        keys.requester.path.display(),
        keys.requester.principal
    );
    let enqueued = super::enqueue::run(
        &settings,
        &EnqueueArgs {
            csv: Some(csv_path.clone()),
            tickets: None,
            group: None,
            transitive: false,
            batch: None,
            dry_run: false,
            revoke_sessions: true,
            tap: false,
            yes: true,
            requested_by: Some("demo".into()),
            reason: Some("demo: mass re-registration after an incident".into()),
            key: None,
            check: false,
        },
    )
    .await?;
    if args.csv.is_none() {
        let _ = std::fs::remove_file(&csv_path);
    }
    eprintln!();
    if enqueued.awaiting_approval {
        // The two-person rule: the batch waits until a second operator approves it.
        eprintln!(
            "$ mfa-reset approve --batch {} --key {}   # as {}",
            enqueued.batch,
            keys.approver.path.display(),
            keys.approver.principal
        );
        super::approve::run(
            &settings,
            &ApproveArgs {
                batch: enqueued.batch.clone(),
                key: keys.approver.path.clone(),
                yes: true,
            },
        )
        .await?;
        eprintln!();
    }

    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    let cancel = CancellationToken::new();
    let metrics = Arc::new(WorkerMetrics::default());
    let mut workers = Vec::new();
    for i in 0..args.workers.max(1) {
        let mut s = settings.clone();
        s.worker.name = format!("demo-worker-{}", i + 1);
        let graph = graph.clone();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        let options = WorkOptions {
            concurrency: settings.worker.concurrency,
            exit_when_idle: None,
        };
        workers.push(tokio::spawn(async move {
            worker::run(&s, graph, options, metrics, cancel).await
        }));
    }
    eprintln!(
        "{} workers resetting {} users …",
        args.workers.max(1),
        enqueued.count
    );
    let work_started = Instant::now();
    let view = super::status::watch(
        &settings,
        &enqueued.batch,
        Some(Duration::from_secs(600)),
        Some(enqueued.count),
    )
    .await;
    let work_secs = work_started.elapsed().as_secs_f64();
    cancel.cancel();
    for w in workers {
        let _ = w.await;
    }
    let view = view?;

    super::private_file::write_with(&args.out, |out| super::report::write_csv(&view, out))?;

    println!();
    print!("{}", super::status::summary_table(&view));
    let stats = server.stats();
    println!();
    println!(
        "{} users in {:.1}s ({:.0} users/s) by {} workers.",
        view.finished(),
        work_secs,
        view.finished() as f64 / work_secs.max(0.001),
        args.workers.max(1),
    );
    println!(
        "Graph (simulated): {} requests, {} methods deleted, {} sessions revoked, peak {} requests/s, \
         {} throttled (429), {} requests sent during a Retry-After",
        stats.requests_total,
        stats.methods_deleted,
        stats.sessions_revoked,
        stats.peak_requests_per_second,
        stats.throttled,
        stats.violations
    );
    println!();
    println!("Not reset, and why:");
    for o in view
        .outcomes()
        .filter(|o| !matches!(o.status, Status::Reset | Status::AlreadyClean))
        .take(8)
    {
        println!(
            "  {:<45} {:<18} {}",
            o.user.to_string(),
            o.status.as_str(),
            o.error_message.as_deref().unwrap_or("")
        );
    }
    println!();
    println!(
        "Report: {} (one row per user: what was removed, what failed and why)",
        args.out.display()
    );
    println!("Total time {:.1}s.", started.elapsed().as_secs_f64());

    // The demo's queues served their purpose; leave the broker as we found it.
    let topology = Topology::new(&settings.broker, &settings.retry);
    let channel = conn.create_channel().await?;
    for q in topology.all_queues() {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in topology.exchanges() {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
    drop(server);
    drop(key_dir);
    Ok(())
}

/// This build has no Graph simulator (built with `--no-default-features`), so no demo.
#[cfg(not(feature = "demo"))]
pub async fn run(_base: &Settings, _args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this mfa-reset was built without the Graph simulator (cargo feature `demo` off, \
         e.g. --no-default-features), so it has no demo: build it with the default features \
         (cargo build --release) to run `mfa-reset demo`"
    )
}
