//! One connection's life: open it, consume until told to stop or the broker goes away,
//! then shut down gracefully.
//!
//! The loop's concerns are separate pieces: dispatching each delivery to a task of its own
//! ([`Dispatch`]), reaping finished tasks, probing queue depth for `/metrics`, watching that
//! the outcomes and control streams are still followed, pausing while the [`super::Gate`] is
//! closed (halt, hourly cap) and exiting when idle ([`Idle`]).
//!
//! Pausing stops the consumer (`basic.cancel`): the broker sends nothing more, deliveries
//! already here go back unexecuted (the gate check in `delivery`), those in flight finish.
//! Going on starts a new consumer on the same connection; the paused one's channel is closed
//! once its deliveries are settled (at the latest when the session ends).
//!
//! Why one file of this size: the pieces above are small types (`Taking`, `Paused`,
//! `Dispatch`, `Idle`) that only this loop drives; kept beside it, the order in which a
//! session opens, consumes, pauses and shuts down reads in one place.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::delivery;
use super::disposition::{Cause, Rules};
use super::fleet::{Fleet, FleetTrust};
use super::gate::Stop;
use super::verify::LOOKUP_SLACK;
use super::{Worker, WorkerMetrics};
use crate::broker::consumer::{prefetch_for, Probe};
use crate::broker::stream::{read_until_now, Followed, Offset, StreamFollower, StreamMessage};
use crate::broker::topology::RK_CONTROL;
use crate::broker::{Consumer, Incoming, Topology};
use crate::control;
use crate::domain::{BatchManifest, Record};
use crate::records::Read;
use crate::trust::Digest;

/// How often the queue depth is probed for `/metrics`.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How often the stream reader and idleness are checked.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How a session ended.
pub(super) enum Ended {
    /// Cancelled, or idle with nothing waiting: the worker is done.
    Stopped,
    /// Graph refuses the app itself: the worker must stop until someone fixes it.
    Halted(Cause),
    /// The broker went away (or never let the session start): reconnect.
    Lost(anyhow::Error),
}

/// What every delivery task of one connection shares.
pub(super) struct Ctx {
    /// What outlives the connection.
    pub worker: Arc<Worker>,
    /// Follows the outcomes stream into the ledger and the hourly cap.
    pub follower: StreamFollower,
    /// Follows the control stream into the gate.
    pub control: StreamFollower,
    /// A channel in confirm mode for outcomes, plans, retries and dead letters.
    pub publish: Channel,
    /// Requests (id, replay) being executed by this process: a duplicate copy arriving
    /// meanwhile is acked at once (the copy in flight owns the outcome).
    pub in_flight: Mutex<HashSet<(uuid::Uuid, u32)>>,
    /// Raised by a delivery that met an app-wide Graph error.
    pub halt: Halt,
    /// Raised by a delivery that met a closed gate: the session stops consuming at once.
    pub wake: tokio::sync::Notify,
    /// True while the consumer takes deliveries; false once a pause has stopped it.
    pub consuming: tokio::sync::watch::Sender<bool>,
    /// The connection, for looking a batch manifest up on the outcomes stream.
    pub conn: Arc<Connection>,
    /// When the last completed catch-up with the outcomes stream started (see
    /// [`Ctx::catch_up`]).
    pub caught_up: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl Ctx {
    /// The rules of [`super::disposition::decide`], as of now.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            tiers: self.worker.topology.tiers().len(),
            max_request_age: self.worker.settings.reset.max_request_age,
            worker: &self.worker.name,
            now: Utc::now(),
        }
    }

    /// Wait (at most `limit`) until the session has stopped consuming after `wake`: a
    /// delivery handed back before that would come straight back.
    pub async fn until_not_consuming(&self, limit: Duration) {
        self.wake.notify_one();
        let mut consuming = self.consuming.subscribe();
        let _ = tokio::time::timeout(limit, consuming.wait_for(|on| !on)).await;
    }

    /// Wait until the follower has handed over everything confirmed on the outcomes stream
    /// before `since`. Deliveries asking at once share one marker: a catch-up that started
    /// after `since` is enough, so a flood of requests of unknown batches costs one marker
    /// per round trip, not one each.
    pub async fn catch_up(&self, since: std::time::Instant) -> anyhow::Result<()> {
        let mut last = self.caught_up.lock().await;
        if last.is_some_and(|started| started >= since) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.follower
            .sync()
            .await
            .context("catching up with the outcomes stream")?;
        *last = Some(started);
        Ok(())
    }

    /// Read the outcomes stream from a little before `requested_at` up to now for the
    /// manifest record with `digest`, and learn it when its signature and cap verify. One
    /// lookup at a time; one already made answers the ones waiting for it.
    pub async fn look_up(&self, digest: Digest, requested_at: DateTime<Utc>) -> anyhow::Result<()> {
        let gatekeeper = &self.worker.gatekeeper;
        let _one = gatekeeper.lookups.lock().await;
        if !gatekeeper.may_look_up(&digest, requested_at, Utc::now()) {
            return Ok(());
        }
        let found: Arc<Mutex<Vec<BatchManifest>>> = Arc::default();
        let into = found.clone();
        let since = requested_at - LOOKUP_SLACK;
        tracing::info!(manifest = %digest, since = %since.to_rfc3339(), "looking a batch manifest up on the outcomes stream");
        read_until_now(
            &self.conn,
            &self.worker.topology,
            Offset::Since(since),
            move |message: StreamMessage| {
                if let Ok(Record::Manifest(manifest)) = serde_json::from_slice(&message.body) {
                    let matches = manifest
                        .sealed
                        .as_ref()
                        .and_then(|sealed| sealed.digest().ok())
                        == Some(digest);
                    if matches {
                        if let Ok(mut found) = into.lock() {
                            found.push(manifest);
                        }
                    }
                }
            },
        )
        .await
        .context("looking a batch manifest up on the outcomes stream")?;
        let candidates = found.lock().map(|found| found.clone()).unwrap_or_default();
        // Forged copies fail in `learn`; the genuine one, if any, is kept.
        let learnt = candidates
            .iter()
            .any(|manifest| matches!(gatekeeper.learn(manifest, Utc::now()), Some(Ok(()))));
        if !learnt {
            gatekeeper.not_found(digest);
        }
        Ok(())
    }

    /// Why requests may not be taken now (halt, hourly cap), if they may not; `own` is the
    /// request asking (in flight here already, it does not count against itself).
    pub fn stopped(&self, own: Option<(uuid::Uuid, u32)>) -> Option<Stop> {
        let in_flight = self
            .in_flight
            .lock()
            .map(|set| set.clone())
            .unwrap_or_default();
        self.worker.gate.stop(Utc::now(), &in_flight, own)
    }
}

/// Stop taking requests: raised once, with the first cause.
#[derive(Default)]
pub(super) struct Halt {
    raised: CancellationToken,
    cause: OnceLock<Cause>,
}

impl Halt {
    /// Raise it.
    pub fn raise(&self, cause: Cause) {
        let _ = self.cause.set(cause);
        self.raised.cancel();
    }

    /// The first cause, once raised.
    pub fn cause(&self) -> Option<Cause> {
        self.raised
            .is_cancelled()
            .then(|| self.cause.get().cloned())
            .flatten()
    }

    /// Wait until raised; the first cause.
    async fn raised(&self) -> Cause {
        self.raised.cancelled().await;
        self.cause
            .get()
            .cloned()
            .unwrap_or_else(|| Cause::new("halt", "Graph refuses the app"))
    }
}

/// Consume on `conn` until cancelled, idle, halted, or the broker goes away.
pub(super) async fn run(
    conn: &Arc<Connection>,
    worker: &Arc<Worker>,
    cancel: &CancellationToken,
) -> Ended {
    // The other workers first: the budget's share and a running pause are known before the
    // first request is taken (see `fleet`).
    let fleet = match Fleet::start(
        conn,
        &worker.topology,
        &worker.settings,
        &worker.name,
        &worker.graph,
        &FleetTrust {
            signer: worker.sealer.signer().clone(),
            allowed: worker.reader.allowed().clone(),
            metrics: worker.metrics.clone(),
        },
    )
    .await
    {
        Ok(fleet) => fleet,
        Err(err) => return Ended::Lost(err),
    };
    let (ctx, probe) = match open(conn, worker).await {
        Ok(opened) => opened,
        Err(err) => {
            fleet.stop().await;
            return Ended::Lost(err);
        }
    };
    fleet.settled().await;
    let metrics = &worker.metrics;
    metrics.connected.set(1);
    let mut dispatch = Dispatch::new(worker.options.concurrency, cancel);
    let mut idle = Idle::new(worker.options.exit_when_idle);
    let mut probe_every = interval(PROBE_EVERY);
    let mut watch_every = interval(WATCH_EVERY);
    // Consuming starts here, unless a halt or the cap is in force already: then nothing
    // is taken at all until the gate opens.
    let mut taking = Taking::new(&ctx);
    if let Err(err) = taking.regate(&ctx, conn).await {
        shut_down(ctx, taking, probe, dispatch, metrics).await;
        fleet.stop().await;
        return Ended::Lost(err);
    }
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ended::Stopped,
            cause = ctx.halt.raised() => break Ended::Halted(cause),
            Some(done) = dispatch.tasks.join_next(), if !dispatch.tasks.is_empty() => {
                reap(done, metrics);
            }
            _ = probe_every.tick() => {
                // Queue lag for /metrics; a failed probe is not worth a reconnect.
                if let Ok(ready) = probe.ready().await {
                    metrics.queue_ready.set(i64::try_from(ready).unwrap_or(i64::MAX));
                }
            }
            // A delivery met a closed gate: stop consuming now, not at the next tick.
            _ = ctx.wake.notified() => {
                if let Err(err) = taking.regate(&ctx, conn).await {
                    break Ended::Lost(err);
                }
            }
            _ = watch_every.tick() => {
                if let Some(ended) = watch(&ctx, &probe, &mut idle, dispatch.busy()).await {
                    break ended;
                }
                if let Err(err) = taking.regate(&ctx, conn).await {
                    break Ended::Lost(err);
                }
                if !dispatch.busy() {
                    taking.close_retired().await;
                }
            }
            next = next_delivery(&mut taking.consumer), if taking.consuming => match next {
                // A paused consumer ends once the broker confirms the cancel.
                None if taking.paused.is_some() => taking.consuming = false,
                // basic.cancel from the broker: the queue was deleted, or (in a cluster) the
                // node serving this consumer lost the queue. A new session subscribes again,
                // on another node when this one is going away.
                None => break Ended::Lost(anyhow::anyhow!(
                    "the broker cancelled the consumer of the requests queue; subscribing again"
                )),
                Some(Err(err)) => break Ended::Lost(err),
                Some(Ok(incoming)) => {
                    idle.touch();
                    dispatch.spawn(&ctx, incoming);
                }
            },
        }
    };
    if taking.paused.is_some() {
        metrics.pause(None);
    }
    if !conn.status().connected() {
        // Gone now, not once the users in flight have stopped (they stop before their next
        // write to Graph: their deliveries are back in the queue).
        metrics.connected.set(0);
    }
    // Consumers a pause retired are closed with the live one, once the users in flight have
    // ended: closing a channel hands its unsettled deliveries back, and theirs may be running.
    shut_down(ctx, taking, probe, dispatch, metrics).await;
    fleet.stop().await;
    ended
}

/// Taking requests, or paused because the gate is closed.
struct Taking {
    /// The consumer: the live one, or the stopped one while paused; none before the first.
    consumer: Option<Consumer>,
    /// True while `consumer` may yield deliveries: false before the first one starts, and
    /// once a paused one has ended (the broker confirmed the cancel).
    consuming: bool,
    /// Why not, while paused.
    paused: Option<Paused>,
    /// Consumers stopped by a pause, closed once their deliveries are settled.
    retired: Vec<Consumer>,
}

impl Taking {
    /// Not consuming yet: paused "for no reason", so the first [`Taking::regate`] starts
    /// the consumer when the gate is open.
    fn new(ctx: &Ctx) -> Taking {
        ctx.consuming.send_replace(false);
        Taking {
            consumer: None,
            consuming: false,
            paused: Some(Paused { stop: None }),
            retired: Vec::new(),
        }
    }

    /// Follow the gate: pause when it closes, start a new consumer when it opens.
    async fn regate(&mut self, ctx: &Ctx, conn: &Connection) -> anyhow::Result<()> {
        let worker = &ctx.worker;
        let metrics = &worker.metrics;
        match (ctx.stopped(None), self.paused.as_mut()) {
            (Some(stop), None) => {
                if let Some(consumer) = &self.consumer {
                    consumer.stop().await;
                }
                ctx.consuming.send_replace(false);
                self.paused = Some(Paused::new(stop, metrics));
            }
            (Some(stop), Some(paused)) => paused.still(stop, metrics),
            (None, Some(_)) => {
                let prefetch =
                    prefetch_for(worker.settings.broker.prefetch, worker.options.concurrency);
                let requests = worker.topology.requests();
                let started = Consumer::start(conn, &requests, prefetch, &worker.name).await?;
                if let Some(old) = self.consumer.replace(started) {
                    self.retired.push(old);
                }
                self.consuming = true;
                ctx.consuming.send_replace(true);
                if let Some(paused) = self.paused.take() {
                    paused.over(metrics);
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    async fn close_retired(&mut self) {
        for old in self.retired.drain(..) {
            old.close().await;
        }
    }
}

/// The next delivery of the consumer, if there is one (else never).
async fn next_delivery(consumer: &mut Option<Consumer>) -> Option<anyhow::Result<Incoming>> {
    match consumer {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// The worker is not taking requests: why (none: not started yet), logged when it starts,
/// changes and ends.
struct Paused {
    stop: Option<Stop>,
}

impl Paused {
    fn new(stop: Stop, metrics: &WorkerMetrics) -> Paused {
        tracing::warn!(reason = stop.code(), "not taking requests: {stop}");
        metrics.pause(Some(&stop));
        Paused { stop: Some(stop) }
    }

    /// Still paused, maybe for another reason.
    fn still(&mut self, stop: Stop, metrics: &WorkerMetrics) {
        if self.stop.as_ref().map(Stop::code) != Some(stop.code()) {
            tracing::warn!(reason = stop.code(), "not taking requests: {stop}");
        }
        metrics.pause(Some(&stop));
        self.stop = Some(stop);
    }

    fn over(self, metrics: &WorkerMetrics) {
        if let Some(stop) = self.stop {
            tracing::info!(was = stop.code(), "taking requests again");
        }
        metrics.pause(None);
    }
}

/// Declare the topology, catch up with the outcomes and control streams, record what the
/// outbox holds (the caller then starts consuming, unless the gate is closed).
async fn open(conn: &Arc<Connection>, worker: &Arc<Worker>) -> anyhow::Result<(Arc<Ctx>, Probe)> {
    let topology = &worker.topology;
    topology.ensure(conn).await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let follower = follow_outcomes(conn, worker).await?;
    let control = follow_control(conn, worker).await?;
    worker
        .outbox
        .record_held(&publish, topology, &worker.ledger)
        .await?;
    tracing::info!(
        known_outcomes = worker.ledger.len(),
        "caught up with the outcomes stream"
    );
    let probe = Probe::open(conn, waiting_queues(topology)).await?;
    let ctx = Ctx {
        worker: worker.clone(),
        follower,
        control,
        publish,
        in_flight: Mutex::default(),
        halt: Halt::default(),
        wake: tokio::sync::Notify::new(),
        consuming: tokio::sync::watch::Sender::new(true),
        conn: conn.clone(),
        caught_up: tokio::sync::Mutex::new(None),
    };
    Ok((Arc::new(ctx), probe))
}

/// Follow the outcomes stream into the ledger, from the last `max_request_age` (older
/// requests expire anyway), and wait until it has caught up.
async fn follow_outcomes(
    conn: &Connection,
    worker: &Arc<Worker>,
) -> anyhow::Result<StreamFollower> {
    let since = Utc::now()
        - chrono::Duration::from_std(worker.settings.reset.max_request_age)
            .unwrap_or(chrono::Duration::days(1));
    let worker = worker.clone();
    worker.gatekeeper.followed_since(since);
    let follower = StreamFollower::start(
        conn,
        &worker.topology.clone(),
        Offset::Since(since),
        move |message: StreamMessage| match worker.reader.read(&message.body) {
            Read::Verified { record, .. } => {
                worker.gate.record(&record, Utc::now());
                match record {
                    Record::Outcome(o) => worker.ledger.record(o.request_id, o.replay, o.finished_at),
                    Record::Plan(p) => worker.ledger.record_plan(p.request_id, p.replay, p.methods),
                    Record::Manifest(_)
                    | Record::Marker { .. }
                    | Record::ConsoleAction(_)
                    | Record::Restore(_) => {}
                }
            }
            // A compact batch's manifest and cap: kept when they verify.
            Read::Unsealed(Record::Manifest(manifest)) => {
                if let Some(Err(refusal)) = worker.gatekeeper.learn(&manifest, Utc::now()) {
                    worker.metrics.records_ignored.inc();
                    tracing::warn!(offset = message.offset, batch = %manifest.batch, %refusal, "ignoring a batch manifest on the outcomes stream that does not verify: its requests are refused");
                }
            }
            Read::Unsealed(_) => {}
            Read::Ignored { batch, reason } => {
                worker.metrics.records_ignored.inc();
                tracing::warn!(offset = message.offset, batch = batch.as_deref().unwrap_or(""), %reason, "ignoring a record on the outcomes stream that does not verify against security.allowed_signers");
            }
        },
    )
    .await?;
    follower.sync().await?;
    Ok(follower)
}

/// Follow the control stream from its start into the gate (admin commands are few), and
/// wait until it has caught up: a worker started during a halt takes nothing.
async fn follow_control(conn: &Connection, worker: &Arc<Worker>) -> anyhow::Result<StreamFollower> {
    let topology = &worker.topology;
    let followed = Followed {
        exchange: topology.exchange(),
        stream: topology.control(),
        routing_key: RK_CONTROL.to_string(),
    };
    let worker = worker.clone();
    let follower = StreamFollower::start_on(conn, followed, Offset::First, move |message| {
        let prefix = &worker.settings.broker.prefix;
        match control::verify(&message.body, prefix, worker.reader.allowed()) {
            Ok(issued) => {
                let (action, by) = (issued.command.action, issued.by.to_string());
                if worker.gate.command(issued) {
                    tracing::info!(action = action.as_str(), %by, "admin command in force");
                }
            }
            Err(reason) => {
                worker.metrics.records_ignored.inc();
                tracing::warn!(offset = message.offset, %reason, "ignoring a control command that does not verify (admin namespace, security.allowed_signers)");
            }
        }
    })
    .await?;
    follower.sync().await?;
    Ok(follower)
}

/// The requests queue and every delay tier: where work waits.
fn waiting_queues(topology: &Topology) -> Vec<String> {
    let mut names = vec![topology.requests()];
    names.extend((0..topology.tiers().len()).map(|i| topology.retry_queue(i)));
    names
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// One task per delivery, at most `concurrency` of them running.
struct Dispatch {
    tasks: JoinSet<()>,
    slots: Arc<Semaphore>,
    /// Cancelled when the session ends: deliveries still waiting for a slot go back.
    stop: CancellationToken,
}

impl Dispatch {
    fn new(concurrency: usize, cancel: &CancellationToken) -> Dispatch {
        Dispatch {
            tasks: JoinSet::new(),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            stop: cancel.child_token(),
        }
    }

    fn spawn(&mut self, ctx: &Arc<Ctx>, incoming: Incoming) {
        let task = delivery::handle(ctx.clone(), incoming, self.slots.clone(), self.stop.clone());
        self.tasks.spawn(task);
    }

    /// True while a delivery is running or waiting for a slot.
    fn busy(&self) -> bool {
        !self.tasks.is_empty()
    }
}

/// A delivery task ended; one that panicked outside the caught part is counted and logged.
fn reap(done: Result<(), JoinError>, metrics: &WorkerMetrics) {
    if let Err(err) = done {
        if err.is_panic() {
            metrics.panics.inc();
            tracing::error!(error = %err, "a delivery task crashed; the broker redelivers its request");
        }
    }
}

/// The periodic checks: the outcomes stream is still followed, and idleness.
async fn watch(ctx: &Ctx, probe: &Probe, idle: &mut Idle, busy: bool) -> Option<Ended> {
    if !ctx.follower.is_running() {
        return Some(Ended::Lost(anyhow::anyhow!(
            "the outcomes stream reader stopped"
        )));
    }
    if !ctx.control.is_running() {
        return Some(Ended::Lost(anyhow::anyhow!(
            "the control stream reader stopped"
        )));
    }
    if busy {
        idle.touch();
    }
    if !idle.due() {
        return None;
    }
    match probe.ready().await {
        Ok(0) => {
            tracing::info!(idle = ?idle.after, "nothing in flight or waiting; exiting");
            Some(Ended::Stopped)
        }
        Ok(_) => {
            idle.touch();
            None
        }
        Err(err) => Some(Ended::Lost(err)),
    }
}

/// Stop taking deliveries, hand back those not started, let the users in flight finish
/// within `worker.shutdown_grace`, then close.
async fn shut_down(
    ctx: Arc<Ctx>,
    mut taking: Taking,
    probe: Probe,
    mut dispatch: Dispatch,
    metrics: &WorkerMetrics,
) {
    dispatch.stop.cancel();
    if let Some(consumer) = &taking.consumer {
        consumer.stop().await;
    }
    let grace = ctx.worker.settings.worker.shutdown_grace;
    let tasks = &mut dispatch.tasks;
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = tasks.join_next().await {
            reap(done, metrics);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutdown grace elapsed; unfinished users will be redelivered to another worker"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    metrics.connected.set(0);
    // Closing the consuming channels hands every delivery not settled back to the queue.
    taking.close_retired().await;
    if let Some(consumer) = taking.consumer {
        consumer.close().await;
    }
    probe.close().await;
    if let Ok(ctx) = Arc::try_unwrap(ctx) {
        let _ = ctx.follower.stop().await;
        let _ = ctx.control.stop().await;
        let _ = ctx.publish.close(200, "bye".into()).await;
    }
}

/// When to exit for idleness: `after` this long with nothing in flight or arriving.
struct Idle {
    after: Option<Duration>,
    since: Instant,
}

impl Idle {
    fn new(after: Option<Duration>) -> Idle {
        Idle {
            after,
            since: Instant::now(),
        }
    }

    /// Something happened: the idle time starts again.
    fn touch(&mut self) {
        self.since = Instant::now();
    }

    /// Idle long enough to check whether anything is waiting.
    fn due(&self) -> bool {
        self.after
            .is_some_and(|after| self.since.elapsed() >= after)
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
