//! The worker: consumes requests, resets users through Graph, records outcomes.
//!
//! Per delivery: parse (invalid → dead-letter) → already recorded? (ack, no Graph call) →
//! expired / protected? → reset → outcome on the stream (confirmed) → ack. A request whose
//! Graph errors outlast the in-process retries goes to the next broker delay tier (never
//! held unacked through a long wait); after the last tier it fails and is dead-lettered.
//!
//! An outage is not the request's fault: when the in-process retries end on Graph being
//! unreachable (no answer, 502/503/504) or throttling, the request waits in the first delay
//! tier again *without* using up an attempt. It comes back until Graph answers, bounded by
//! `reset.max_request_age` (past it the request ends `expired`), so a long outage never
//! turns a whole batch into `failed`.
//!
//! # Layout
//! - [`ledger`]: which requests already have an outcome (idempotency).
//! - [`metrics`]: counters for `/metrics` and summaries.

pub mod ledger;
pub mod metrics;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::headers::{self, Headers};
use crate::broker::publisher::publish_confirmed;
use crate::broker::stream::{Offset, StreamFollower};
use crate::broker::topology::{RK_DEAD, RK_OUTCOME};
use crate::broker::{OutMessage, Topology};
use crate::config::Settings;
use crate::domain::{Carry, Outcome, Record, ResetRequest, Status, REQUEST_VERSION};
use crate::graph::{self, GraphClient};
use crate::reset::{self, Scope};

pub use ledger::Ledger;
pub use metrics::WorkerMetrics;

/// How a `work` run is shaped.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// Users in flight.
    pub concurrency: usize,
    /// Exit once nothing has been in flight or waiting for this long.
    pub exit_when_idle: Option<Duration>,
}

/// Everything a delivery handler needs, shared by all tasks of one connection.
struct Ctx {
    settings: Settings,
    topology: Topology,
    graph: GraphClient,
    scope: Scope,
    ledger: Arc<Ledger>,
    follower: StreamFollower,
    publish: Channel,
    name: String,
    metrics: Arc<WorkerMetrics>,
    /// Requests (id, replay) being executed by this process: a duplicate copy arriving
    /// meanwhile is acked at once (the copy in flight owns the outcome).
    in_flight: Mutex<HashSet<(uuid::Uuid, u32)>>,
    outbox: Arc<Outbox>,
}

/// Outcomes decided but not recorded because the broker went away while publishing them.
/// They outlive the connection: the next session records them before it consumes anything,
/// so the redelivered request is then found done instead of being executed again (which would
/// find the methods gone and record `already_clean`, losing what was removed).
type Outbox = Mutex<std::collections::HashMap<(uuid::Uuid, u32), Outcome>>;

/// This worker's name in outcomes and dead letters.
pub fn worker_name(settings: &Settings) -> String {
    if !settings.worker.name.is_empty() {
        return settings.worker.name.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Consume and reset until `cancel` fires (or idle, with `exit_when_idle`).
/// Reconnects with backoff when the broker goes away.
pub async fn run(
    settings: &Settings,
    graph: GraphClient,
    options: WorkOptions,
    metrics: Arc<WorkerMetrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let scope = Scope::from_settings(&settings.reset.methods)?;
    let name = worker_name(settings);
    let ledger = Arc::new(Ledger::with_capacity(
        settings.reset.max_request_age,
        settings.worker.ledger_capacity,
    ));
    let outbox: Arc<Outbox> = Arc::default();
    let mut failures = 0u32;
    loop {
        let conn =
            crate::broker::connect(&settings.broker, &format!("mfa-reset worker {name}")).await?;
        let result = session(
            &conn,
            settings,
            &topology,
            graph.clone(),
            scope.clone(),
            ledger.clone(),
            outbox.clone(),
            &name,
            &options,
            metrics.clone(),
            &cancel,
        )
        .await;
        let _ = conn.close(200, "bye".into()).await;
        match result {
            Ok(()) => return Ok(()),
            Err(err) if cancel.is_cancelled() => {
                tracing::warn!(error = %format!("{err:#}"), "stopped with an error during shutdown");
                return Ok(());
            }
            Err(err) => {
                failures += 1;
                metrics.reconnects.inc();
                let delay = Duration::from_millis(500 * u64::from(failures.min(10)));
                tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "lost the broker; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    conn: &Connection,
    settings: &Settings,
    topology: &Topology,
    graph: GraphClient,
    scope: Scope,
    ledger: Arc<Ledger>,
    outbox: Arc<Outbox>,
    name: &str,
    options: &WorkOptions,
    metrics: Arc<WorkerMetrics>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let publish = conn.create_channel().await?;
    topology
        .declare(&publish)
        .await
        .context("declaring the broker topology")?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // Learn what is already recorded (the last max_request_age of outcomes) before consuming.
    let since = Utc::now()
        - chrono::Duration::from_std(settings.reset.max_request_age)
            .unwrap_or(chrono::Duration::days(1));
    let ledger_in = ledger.clone();
    let follower =
        StreamFollower::start(
            conn,
            topology,
            Offset::Since(since),
            move |record| match record {
                Record::Outcome(o) => ledger_in.record(o.request_id, o.replay, o.finished_at),
                Record::Plan(p) => ledger_in.record_plan(p.request_id, p.replay, p.methods),
                Record::Manifest(_) | Record::Marker { .. } => {}
            },
        )
        .await?;
    follower.sync().await?;
    record_held_outcomes(&publish, topology, &ledger, &outbox).await?;
    tracing::info!(
        known_outcomes = ledger.len(),
        "caught up with the outcomes stream"
    );

    let concurrency = options.concurrency.max(1);
    let prefetch = if settings.broker.prefetch > 0 {
        settings.broker.prefetch
    } else {
        // A little more than in flight, so the next delivery is already here when a slot frees.
        u16::try_from(concurrency + concurrency / 4 + 1).unwrap_or(u16::MAX)
    };
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = consume
        .basic_consume(
            topology.requests().as_str().into(),
            format!("{name}-{}", uuid::Uuid::new_v4().simple())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer_tag = consumer.tag();
    let probe = conn.create_channel().await?;

    let ctx = Arc::new(Ctx {
        settings: settings.clone(),
        topology: topology.clone(),
        graph,
        scope,
        ledger,
        follower,
        publish,
        name: name.to_string(),
        metrics: metrics.clone(),
        in_flight: Mutex::default(),
        outbox,
    });
    metrics.connected.set(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut last_activity = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks = 0u64;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = tick.tick() => {
                while tasks.try_join_next().is_some() {}
                ticks += 1;
                if ticks % 10 == 1 {
                    // Queue lag for /metrics; a failed probe is not worth a reconnect.
                    if let Ok(ready) = queues_ready(&probe, topology).await {
                        metrics.queue_ready.set(ready as i64);
                    }
                }
                if !tasks.is_empty() {
                    last_activity = Instant::now();
                }
                if !ctx.follower.is_running() {
                    break Err(anyhow::anyhow!("the outcomes stream reader stopped"));
                }
                if let Some(idle) = options.exit_when_idle {
                    if tasks.is_empty() && last_activity.elapsed() >= idle {
                        if queues_ready(&probe, topology).await? == 0 {
                            tracing::info!(idle = ?idle, "nothing in flight or waiting; exiting");
                            break Ok(());
                        }
                        last_activity = Instant::now();
                    }
                }
            }
            next = consumer.next() => {
                let delivery = match next {
                    None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
                    Some(Err(err)) => break Err(anyhow::Error::from(err).context("consuming requests")),
                    Some(Ok(d)) => d,
                };
                last_activity = Instant::now();
                let permit = tokio::select! {
                    _ = cancel.cancelled() => {
                        // Not started: hand it back for another worker.
                        let _ = delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                        break Ok(());
                    }
                    permit = slots.clone().acquire_owned() => permit?,
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    ctx.metrics.in_flight.inc();
                    handle(ctx.clone(), delivery).await;
                    ctx.metrics.in_flight.dec();
                });
            }
        }
    };

    // Stop taking deliveries, then let in-flight users finish within the grace period.
    let _ = consume
        .basic_cancel(consumer_tag, BasicCancelOptions::default())
        .await;
    let grace = settings.worker.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutdown grace elapsed; unfinished users will be redelivered to another worker"
        );
        tasks.abort_all();
    }
    metrics.connected.set(0);
    // Closing the consuming channel hands every delivery not acked back to the queue.
    let _ = consume.close(200, "bye".into()).await;
    let _ = probe.close(200, "bye".into()).await;
    if let Ok(ctx) = Arc::try_unwrap(ctx) {
        let _ = ctx.follower.stop().await;
        let _ = ctx.publish.close(200, "bye".into()).await;
    }
    outcome
}

/// Record the outcomes held through a broker outage (see [`Outbox`]). Always, even when the
/// stream already has an outcome for the request: that one may come from another worker that
/// got the redelivered copy first and found the methods gone (`already_clean`); the batch view
/// prefers the outcome that removed the methods, and a duplicate record costs nothing.
async fn record_held_outcomes(
    publish: &Channel,
    topology: &Topology,
    ledger: &Ledger,
    outbox: &Outbox,
) -> anyhow::Result<()> {
    let held: Vec<Outcome> = outbox
        .lock()
        .map(|o| o.values().cloned().collect())
        .unwrap_or_default();
    for outcome in held {
        let key = (outcome.request_id, outcome.replay);
        let body = serde_json::to_vec(&Record::Outcome(Box::new(outcome.clone())))?;
        publish_confirmed(
            publish,
            &topology.exchange(),
            &OutMessage::json(RK_OUTCOME, body).with_id(key.0.to_string()),
        )
        .await
        .context("recording outcomes held through a broker outage")?;
        ledger.record(key.0, key.1, outcome.finished_at);
        tracing::info!(user = %outcome.user, status = %outcome.status, "recorded an outcome held through a broker outage");
        if let Ok(mut o) = outbox.lock() {
            o.remove(&key);
        }
    }
    Ok(())
}

/// Messages ready in the requests queue and every delay tier.
async fn queues_ready(probe: &Channel, topology: &Topology) -> anyhow::Result<u64> {
    let mut names = vec![topology.requests()];
    names.extend((0..topology.tiers().len()).map(|i| topology.retry_queue(i)));
    let mut ready = 0u64;
    for name in names {
        let q = probe
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        ready += u64::from(q.message_count());
    }
    Ok(ready)
}

/// Handle one delivery; a panic inside is contained, and the delivery is handed back
/// (after `broker.delivery_limit` redeliveries the broker dead-letters it).
async fn handle(ctx: Arc<Ctx>, delivery: Delivery) {
    let delivery = Arc::new(delivery);
    // Aborting this task (shutdown grace elapsed) must stop the processing too, not leave it
    // calling Graph for a delivery the broker is about to hand to another worker.
    let mut inner = AbortOnDrop(tokio::spawn(process(ctx.clone(), delivery.clone())));
    match (&mut inner.0).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            // Broker trouble (publishing the outcome or the retry failed): hand the delivery
            // back so it is tried again now (counted by the delivery limit) instead of sitting
            // unacked until the channel closes. On a dead channel the nack fails and the broker
            // requeues it anyway when the connection goes.
            tracing::warn!(error = %format!("{err:#}"), "could not finish a delivery; handing it back");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
        Err(join) => {
            ctx.metrics.panics.inc();
            tracing::error!(error = %join, "a request crashed its handler; handing it back");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes a request from the in-flight set when its handler ends, however it ends.
struct InFlightGuard<'a> {
    set: &'a Mutex<HashSet<(uuid::Uuid, u32)>>,
    key: (uuid::Uuid, u32),
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.key);
        }
    }
}

async fn process(ctx: Arc<Ctx>, delivery: Arc<Delivery>) -> anyhow::Result<()> {
    // A header from outside could say 0 (or be absent); attempts count from 1.
    let attempt = headers::get_u64(&delivery.properties, headers::ATTEMPT)
        .unwrap_or(1)
        .clamp(1, u64::from(u32::MAX)) as u32;
    let request = match parse_request(&delivery.data) {
        Ok(r) => r,
        Err((code, message)) => {
            tracing::warn!(code, message, "dead-lettering an invalid message");
            dead_letter(&ctx, &delivery, &code, &message, attempt, None).await?;
            ctx.metrics.dead_lettered.inc();
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };

    if ctx.ledger.is_done(request.request_id, request.replay)
        || (delivery.redelivered && {
            // Another worker may have recorded it just before dying: catch up first.
            ctx.follower.sync().await?;
            ctx.ledger.is_done(request.request_id, request.replay)
        })
    {
        tracing::info!(request_id = %request.request_id, user = %request.user, "already recorded; acking without touching Graph");
        ctx.metrics.duplicates.inc();
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let key = (request.request_id, request.replay);
    let fresh = ctx
        .in_flight
        .lock()
        .map(|mut s| s.insert(key))
        .unwrap_or(true);
    if !fresh {
        // A second copy (e.g. republished by a producer after a broker restart) while the
        // first is being executed here: the first one records the outcome, or comes back.
        tracing::info!(request_id = %request.request_id, user = %request.user, "a copy is already in flight here; acking this one without touching Graph");
        ctx.metrics.duplicates.inc();
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let _in_flight = InFlightGuard {
        set: &ctx.in_flight,
        key,
    };
    if let Ok(lag) = (Utc::now() - request.requested_at).to_std() {
        ctx.metrics.queue_lag_seconds.set(lag.as_secs_f64());
    }

    let carry = request.carry.clone().unwrap_or_default();
    let max_age = chrono::Duration::from_std(ctx.settings.reset.max_request_age)
        .unwrap_or(chrono::Duration::days(1));
    let executed = if Utc::now() - request.requested_at > max_age {
        let mut expired = simple(
            Status::Expired,
            "expired",
            format!(
                "requested at {}, older than reset.max_request_age ({}); not executed{}",
                request.requested_at.to_rfc3339(),
                humantime::format_duration(ctx.settings.reset.max_request_age),
                carry
                    .last_error
                    .as_deref()
                    .map(|e| format!(" further (last error: {e})"))
                    .unwrap_or_default()
            ),
        );
        // What earlier attempts removed stays on the record.
        expired.removed = carry.removed.clone();
        expired.sessions_revoked = carry.sessions_revoked;
        Ok(expired)
    } else if reset::is_protected(&ctx.settings.reset, &request.user) {
        Ok(simple(
            Status::SkippedProtected,
            "protected_user",
            "listed in reset.protected_users; not touched".to_string(),
        ))
    } else {
        let earlier = reset::Earlier {
            removed: carry.removed.clone(),
            sessions_revoked: carry.sessions_revoked,
            planned: ctx.ledger.plan(request.request_id, request.replay),
        };
        let journal = StreamJournal {
            ctx: &ctx,
            request: &request,
        };
        reset::execute(
            &ctx.graph,
            &request,
            &ctx.settings.reset,
            &ctx.scope,
            earlier,
            &journal,
        )
        .await
    };

    let executed = match executed {
        Ok(done) => done,
        Err(later) => {
            let error = match later.cause {
                reset::Interrupted::Graph(error) => error,
                // The broker would not take the plan: hand the delivery back (nothing was
                // deleted in this attempt).
                reset::Interrupted::Journal(message) => anyhow::bail!(message),
            };
            let tiers = ctx.topology.tiers().len();
            // An outage is not the request's fault: it keeps its attempts.
            let outage = error.class() == graph::Class::Outage;
            if tiers > 0 && (outage || (attempt as usize) <= tiers) {
                let mut next = request.clone();
                next.carry = Some(Carry {
                    removed: later.removed,
                    sessions_revoked: later.sessions_revoked,
                    last_error: Some(error.to_string()),
                });
                let body = serde_json::to_vec(&next)?;
                // An outage keeps the attempt (and waits the first, shortest tier); any other
                // retryable error uses one up and waits longer each time.
                let (tier, next_attempt) = if outage {
                    (0, attempt)
                } else {
                    (attempt as usize - 1, attempt + 1)
                };
                let headers = Headers::from_props(&delivery.properties)
                    .int(headers::ATTEMPT, u64::from(next_attempt))
                    .str(headers::ERROR_CODE, &error.code())
                    .str(headers::ERROR_MESSAGE, &error.to_string())
                    .build();
                let msg = OutMessage::json(&ctx.topology.retry_key(tier), body)
                    .with_id(request.request_id.to_string())
                    .with_headers(headers);
                publish_confirmed(&ctx.publish, &ctx.topology.exchange(), &msg).await?;
                if outage {
                    tracing::warn!(user = %request.user, attempt, delay = ?ctx.topology.tiers()[tier], error = %error, "Graph unreachable or throttling; waiting in a delay queue without using an attempt");
                    ctx.metrics.outage_requeues.inc();
                } else {
                    tracing::info!(user = %request.user, attempt, delay = ?ctx.topology.tiers()[tier], error = %error, "Graph kept failing; retrying later from a delay queue");
                }
                ctx.metrics.retried.inc();
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(());
            }
            let status = if later.removed.is_empty() {
                Status::Failed
            } else {
                Status::Partial
            };
            reset::Executed {
                status,
                removed: later.removed,
                remaining: Vec::new(),
                sessions_revoked: later.sessions_revoked,
                error: Some((
                    "retries_exhausted".into(),
                    format!("gave up after {attempt} attempts: {error}"),
                )),
                graph_calls: 0,
            }
        }
    };

    let outcome = Outcome {
        request_id: request.request_id,
        batch: request.batch.clone(),
        user: request.user.clone(),
        status: executed.status,
        methods_removed: executed.removed,
        methods_remaining: executed.remaining,
        sessions_revoked: executed.sessions_revoked,
        attempts: attempt,
        error_code: executed.error.as_ref().map(|e| e.0.clone()),
        error_message: executed.error.as_ref().map(|e| e.1.clone()),
        ticket: request.ticket.clone(),
        finished_at: Utc::now(),
        worker: ctx.name.clone(),
        graph_calls: executed.graph_calls,
        replay: request.replay,
        dry_run: request.dry_run,
    };

    if outcome.status == Status::Failed {
        // Dead-letter copy first: a crash before the outcome then re-executes (and may
        // dead-letter twice), never leaves a failed request out of the DLQ.
        dead_letter(
            &ctx,
            &delivery,
            outcome.error_code.as_deref().unwrap_or("failed"),
            outcome.error_message.as_deref().unwrap_or(""),
            attempt,
            Some(&request),
        )
        .await?;
        ctx.metrics.dead_lettered.inc();
    }
    let body = serde_json::to_vec(&Record::Outcome(Box::new(outcome.clone())))?;
    if let Err(err) = publish_confirmed(
        &ctx.publish,
        &ctx.topology.exchange(),
        &OutMessage::json(RK_OUTCOME, body).with_id(request.request_id.to_string()),
    )
    .await
    {
        if let Ok(mut held) = ctx.outbox.lock() {
            held.insert((outcome.request_id, outcome.replay), outcome.clone());
        }
        return Err(err.context("recording the outcome (held; recorded after reconnecting)"));
    }
    ctx.ledger
        .record(outcome.request_id, outcome.replay, outcome.finished_at);
    delivery.ack(BasicAckOptions::default()).await?;
    ctx.metrics.outcome(outcome.status);
    tracing::info!(
        user = %outcome.user,
        status = %outcome.status,
        removed = outcome.methods_removed.len(),
        remaining = outcome.methods_remaining.len(),
        error = outcome.error_code.as_deref().unwrap_or(""),
        "outcome recorded"
    );
    Ok(())
}

/// Writes a request's plan to the outcomes stream (confirmed) before its first DELETE.
struct StreamJournal<'a> {
    ctx: &'a Ctx,
    request: &'a ResetRequest,
}

#[async_trait::async_trait]
impl reset::Journal for StreamJournal<'_> {
    async fn planned(&self, methods: &[crate::domain::MethodRecord]) -> anyhow::Result<()> {
        let record = Record::Plan(crate::domain::PlanRecord {
            request_id: self.request.request_id,
            replay: self.request.replay,
            batch: self.request.batch.clone(),
            methods: methods.to_vec(),
            at: Utc::now(),
        });
        let msg = OutMessage::json(RK_OUTCOME, serde_json::to_vec(&record)?)
            .with_id(self.request.request_id.to_string());
        publish_confirmed(&self.ctx.publish, &self.ctx.topology.exchange(), &msg).await
    }
}

fn simple(status: Status, code: &str, message: String) -> reset::Executed {
    reset::Executed {
        status,
        removed: Vec::new(),
        remaining: Vec::new(),
        sessions_revoked: false,
        error: Some((code.to_string(), message)),
        graph_calls: 0,
    }
}

/// A request, or why it is not one: (`invalid_message` | `unknown_version`, detail).
fn parse_request(body: &[u8]) -> Result<ResetRequest, (String, String)> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ("invalid_message".to_string(), format!("not JSON: {e}")))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(REQUEST_VERSION) => {}
        Some(v) => {
            return Err((
                "unknown_version".into(),
                format!("request version {v}; this worker understands version {REQUEST_VERSION}"),
            ))
        }
        None => {
            return Err((
                "invalid_message".into(),
                "no numeric \"version\" field".into(),
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| {
        (
            "invalid_message".to_string(),
            format!("not a reset request: {e}"),
        )
    })
}

/// Publish a copy of the delivery to the dead-letter queue with why, confirmed.
async fn dead_letter(
    ctx: &Ctx,
    delivery: &Delivery,
    code: &str,
    message: &str,
    attempts: u32,
    request: Option<&ResetRequest>,
) -> anyhow::Result<()> {
    let mut h = Headers::from_props(&delivery.properties)
        .str(headers::ERROR_CODE, code)
        .str(headers::ERROR_MESSAGE, message)
        .int(headers::ATTEMPTS, u64::from(attempts))
        .str(headers::WORKER, &ctx.name)
        .str(headers::FAILED_AT, &Utc::now().to_rfc3339());
    if let Some(r) = request {
        h = h
            .str(headers::BATCH, &r.batch)
            .str(headers::USER, &r.user.to_string());
    }
    let mut msg = OutMessage::json(RK_DEAD, delivery.data.clone()).with_headers(h.build());
    if let Some(id) = delivery.properties.message_id() {
        msg = msg.with_id(id.to_string());
    }
    publish_confirmed(&ctx.publish, &ctx.topology.exchange(), &msg)
        .await
        .context("dead-lettering")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_unknown_versions_are_told_apart() {
        assert_eq!(
            parse_request(b"\xff\x00garbage").unwrap_err().0,
            "invalid_message"
        );
        assert_eq!(
            parse_request(br#"{"version": 99, "user": "a@b.com"}"#)
                .unwrap_err()
                .0,
            "unknown_version"
        );
        assert_eq!(
            parse_request(br#"{"version": 1, "user": "a@b.com"}"#)
                .unwrap_err()
                .0,
            "invalid_message"
        );
    }
}
