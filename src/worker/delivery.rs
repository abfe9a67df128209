//! One delivery, start to end, in one task: wait for a slot, verify the request, claim it, run it,
//! [`decide`], and [`carry_out`] the decision against the broker.
//!
//! A panic while claiming or running is caught here and decided like any other result
//! (the delivery is handed back; the broker's delivery limit dead-letters one that keeps
//! crashing). Broker trouble while carrying a decision out hands the delivery back too.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::Utc;
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::disposition::{
    attempt_number, decide, gate, not_started, parse_request, Attempt, Cause, Delivered,
    Disposition,
};
use super::session::Ctx;
use crate::broker::headers::{self, Headers};
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::{RK_DEAD, RK_REQUEST};
use crate::broker::{Incoming, OutMessage};
use crate::domain::{MethodRecord, Outcome, PlanRecord, Record, ResetRequest, UserRef};
use crate::trust::requests::{
    Seal, Verdict, APPROVAL_HEADER, MANIFEST_HEADER, PROOF_HEADER, REPLAY_HEADER,
};
use crate::{graph, reset};

/// A request (one replay of it).
type Key = (uuid::Uuid, u32);

/// How long a delivery met by a closed gate waits for the session to stop consuming.
const PAUSE_HANDOVER: std::time::Duration = std::time::Duration::from_secs(2);

/// Handle one delivery: wait for a free slot (or hand it back unstarted when the session
/// stops first), then process it.
pub(super) async fn handle(
    ctx: Arc<Ctx>,
    incoming: Incoming,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    // A manifest published before this request is on the stream by now: a catch-up started
    // after this instant sees it (see `verify`).
    let arrived = std::time::Instant::now();
    let permit = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        permit = slots.acquire_owned() => permit.ok(),
    };
    let Some(_permit) = permit else {
        let request = parse_request(incoming.body()).ok();
        let attempt = attempt_number(incoming.header_u64(headers::ATTEMPT));
        let disposition = not_started(request, attempt, ctx.halt.cause());
        let _ = carry_out(&ctx, &incoming, disposition).await;
        return;
    };
    let _busy = Busy::start(&ctx);
    process(&ctx, &incoming, arrived).await;
}

async fn process(ctx: &Ctx, incoming: &Incoming, arrived: std::time::Instant) {
    let attempt = attempt_number(incoming.header_u64(headers::ATTEMPT));
    let parsed = parse_request(incoming.body());
    // Verified before anything else: before the claim, before Graph.
    let checked = match &parsed {
        Err(cause) => Err(cause),
        Ok(request) => match verify(ctx, incoming, request, arrived).await {
            Ok(verdict) => Ok((request, verdict)),
            Err(err) => {
                // Not the request's fault: it is tried again, not refused.
                tracing::warn!(error = %format!("{err:#}"), "could not look up a batch manifest on the outcomes stream; handing the delivery back");
                let _ = incoming.hand_back().await;
                return;
            }
        },
    };
    // Held until the decision is carried out: a copy arriving meanwhile is a duplicate.
    let mut claim = None;
    let delivered = match &checked {
        Err(cause) => Delivered::Invalid((*cause).clone()),
        Ok((_, Verdict::Refused(refusal))) => Delivered::Refused(refusal.clone()),
        Ok((request, Verdict::Verified(verified))) => {
            let tried = AssertUnwindSafe(try_request(ctx, incoming, request))
                .catch_unwind()
                .await;
            let result = match tried {
                Ok((result, claimed)) => {
                    claim = claimed;
                    result
                }
                Err(panic) => {
                    ctx.worker.metrics.panics.inc();
                    let message = panic_message(panic.as_ref());
                    tracing::error!(user = %request.user, error = %message, "a request crashed its handler");
                    Attempt::Panicked(message)
                }
            };
            Delivered::Tried(request, verified, result)
        }
    };
    let disposition = decide(delivered, attempt, &ctx.rules());
    if let Err(err) = carry_out(ctx, incoming, disposition).await {
        // Broker trouble (publishing the outcome or the retry failed): hand the delivery back
        // so it is tried again now (counted by the delivery limit) instead of sitting unacked
        // until the channel closes. On a dead channel the nack fails and the broker requeues
        // it anyway when the connection goes.
        tracing::warn!(error = %format!("{err:#}"), "could not finish a delivery; handing it back");
        let _ = incoming.hand_back().await;
    }
    drop(claim);
}

/// The verdict on a parsed request, from its signing headers. A compact request whose
/// manifest is not known yet waits until the stream follower has caught up (the manifest
/// record was confirmed before the request was published) and, when the follower may have
/// missed or forgotten it, for a lookup on the stream; an error is broker trouble, not a
/// verdict.
async fn verify(
    ctx: &Ctx,
    incoming: &Incoming,
    request: &ResetRequest,
    arrived: std::time::Instant,
) -> anyhow::Result<Verdict> {
    let props = incoming.properties();
    let manifest = headers::get_str(props, MANIFEST_HEADER);
    let proof = headers::get_str(props, PROOF_HEADER);
    let approval = headers::get_str(props, APPROVAL_HEADER);
    let replay = headers::get_str(props, REPLAY_HEADER);
    let seal = Seal {
        manifest: manifest.as_deref(),
        proof: proof.as_deref(),
        leaf: request.proof.as_deref(),
        approval: approval.as_deref(),
        replay: replay.as_deref(),
    };
    let gatekeeper = &ctx.worker.gatekeeper;
    if gatekeeper.unknown_batch(&seal).is_some() {
        ctx.catch_up(arrived).await?;
    }
    if let Some(digest) = gatekeeper.unknown_batch(&seal) {
        if gatekeeper.may_look_up(&digest, request.requested_at, Utc::now()) {
            ctx.look_up(digest, request.requested_at).await?;
        }
    }
    Ok(gatekeeper.check(request, seal, Utc::now()))
}

/// Claim the request, then run it when it is ours.
async fn try_request<'a>(
    ctx: &'a Ctx,
    incoming: &Incoming,
    request: &ResetRequest,
) -> (Attempt, Option<Claim<'a>>) {
    match claim(ctx, incoming, request).await {
        Err(trouble) => (Attempt::BrokerTrouble(format!("{trouble:#}")), None),
        Ok(None) => (Attempt::Duplicate, None),
        Ok(Some(claim)) => (run(ctx, incoming, request).await, Some(claim)),
    }
}

/// The request is ours to run, unless its outcome is recorded (`Ok(None)`) or a copy is in
/// flight here (`Ok(None)` too: the copy in flight owns the outcome, or comes back).
async fn claim<'a>(
    ctx: &'a Ctx,
    incoming: &Incoming,
    request: &ResetRequest,
) -> anyhow::Result<Option<Claim<'a>>> {
    let key = (request.request_id, request.replay);
    let ledger = &ctx.worker.ledger;
    let recorded = ledger.is_done(key.0, key.1)
        || (incoming.redelivered() && {
            // Another worker may have recorded it just before dying: catch up first.
            ctx.follower
                .sync()
                .await
                .context("catching up with the outcomes stream")?;
            ledger.is_done(key.0, key.1)
        });
    if recorded {
        tracing::info!(request_id = %request.request_id, user = %request.user, "already recorded; acking without touching Graph");
        return Ok(None);
    }
    let fresh = ctx
        .in_flight
        .lock()
        .map(|mut set| set.insert(key))
        .unwrap_or(true);
    if !fresh {
        // A second copy (e.g. republished by a producer after a broker restart) while the
        // first is being executed here.
        tracing::info!(request_id = %request.request_id, user = %request.user, "a copy is already in flight here; acking this one without touching Graph");
        return Ok(None);
    }
    Ok(Some(Claim {
        set: &ctx.in_flight,
        key,
    }))
}

/// Run a claimed request: not at all when halted, capped, too old or protected, else reset
/// the user.
async fn run(ctx: &Ctx, incoming: &Incoming, request: &ResetRequest) -> Attempt {
    let worker = &ctx.worker;
    if let Some(stop) = ctx.stopped(Some((request.request_id, request.replay))) {
        // Handed back only once the consumer has stopped, so it is not delivered straight
        // back here (each return counts towards the queue's delivery limit).
        ctx.until_not_consuming(PAUSE_HANDOVER).await;
        return Attempt::Paused(stop.to_string());
    }
    if let Ok(lag) = (Utc::now() - request.requested_at).to_std() {
        worker.metrics.queue_lag_seconds.set(lag.as_secs_f64());
    }
    if let Some(skipped) = gate(request, &worker.settings.reset, &ctx.rules()) {
        return skipped;
    }
    let carry = request.carry.clone().unwrap_or_default();
    let earlier = reset::Earlier {
        removed: carry.removed,
        sessions_revoked: carry.sessions_revoked,
        planned: worker.ledger.plan(request.request_id, request.replay),
    };
    let journal = StreamJournal { ctx, request };
    let settings = &worker.settings.reset;
    // Every Graph call of this reset carries the request id as `client-request-id`, so
    // Entra's audit log joins to the outcome; no write goes out once the broker has taken
    // the delivery back (its channel closed, or the connection under it went): it requeued
    // the request, and another worker may be running it now.
    let conn = ctx.conn.clone();
    let delivery = incoming.taken_back_check();
    let taken_back: graph::WriteGuard = Arc::new(move || delivery() || !conn.status().connected());
    let guard = taken_back.clone();
    let executed = graph::with_client_request_id(
        request.request_id,
        graph::with_write_guard(
            taken_back,
            reset::execute(
                &worker.graph,
                request,
                reset::Policy {
                    settings,
                    scope: &worker.scope,
                    protected: &worker.protected,
                    backup: worker.backup.as_ref(),
                },
                earlier,
                &journal,
                worker.tap.as_ref(),
            ),
        ),
    )
    .await;
    match executed {
        // Taken back after its last write: the request may be running elsewhere already, and
        // its outcome is that worker's to record (it finds what was removed on the plan),
        // not a second one. Unless a pass was issued: sealed to the helpdesk, it is recorded.
        Ok(executed) if guard() && !executed.tap.as_ref().is_some_and(|tap| tap.issued) => {
            Attempt::Interrupted(reset::RetryLater {
                cause: reset::Interrupted::TakenBack,
                removed: executed.removed,
                sessions_revoked: executed.sessions_revoked,
            })
        }
        Ok(executed) => Attempt::Executed(executed),
        Err(later) => Attempt::Interrupted(later),
    }
}

/// Carry a disposition out against the broker. Every branch settles the delivery (ack or
/// hand back) last, after what it publishes is confirmed.
pub(super) async fn carry_out(
    ctx: &Ctx,
    incoming: &Incoming,
    disposition: Disposition,
) -> anyhow::Result<()> {
    let worker = &ctx.worker;
    let metrics = &worker.metrics;
    match disposition {
        Disposition::Ack => {
            metrics.duplicates.inc();
            incoming.ack().await
        }
        Disposition::Retry {
            tier,
            attempt,
            request,
            cause,
        } => {
            let key = worker.topology.retry_key(tier);
            requeue(ctx, incoming, &key, attempt, &request, &cause).await?;
            tracing::info!(user = %request.user, next_attempt = attempt, delay = ?worker.topology.tiers()[tier], error = %cause.message, "Graph kept failing; retrying later from a delay queue");
            metrics.retried.inc();
            incoming.ack().await
        }
        Disposition::RequeueOutage {
            attempt,
            request,
            cause,
        } => {
            let key = worker.topology.retry_key(0);
            requeue(ctx, incoming, &key, attempt, &request, &cause).await?;
            tracing::warn!(user = %request.user, attempt, delay = ?worker.topology.tiers()[0], error = %cause.message, "Graph unreachable or throttling; waiting in a delay queue without using an attempt");
            metrics.outage_requeues.inc();
            metrics.retried.inc();
            incoming.ack().await
        }
        Disposition::Record(outcome) => record(ctx, incoming, *outcome).await,
        Disposition::DeadLetterThenRecord(outcome) => {
            let cause = Cause::new(
                outcome.error_code.as_deref().unwrap_or("failed"),
                outcome.error_message.as_deref().unwrap_or(""),
            );
            let who = Some((outcome.batch.as_str(), &outcome.user));
            dead_letter(ctx, incoming, &cause, outcome.attempts, None, who).await?;
            metrics.dead_lettered.inc();
            record(ctx, incoming, *outcome).await
        }
        Disposition::Reject(cause) => {
            tracing::warn!(reason = %cause.code, message = %cause.message, "refusing a request that did not verify: dead-lettered, not executed");
            let attempts = attempt_number(incoming.header_u64(headers::ATTEMPT));
            let refused = Refused {
                reason: &cause.code,
            };
            dead_letter(ctx, incoming, &cause, attempts, Some(refused), None).await?;
            metrics.dead_lettered.inc();
            incoming.ack().await
        }
        Disposition::DeadLetterInvalid(cause) => {
            tracing::warn!(code = %cause.code, message = %cause.message, "dead-lettering a message that will not be executed");
            let attempts = attempt_number(incoming.header_u64(headers::ATTEMPT));
            dead_letter(ctx, incoming, &cause, attempts, None, None).await?;
            metrics.dead_lettered.inc();
            incoming.ack().await
        }
        Disposition::Halt {
            attempt,
            request,
            cause,
        } => {
            requeue(ctx, incoming, RK_REQUEST, attempt, &request, &cause).await?;
            incoming.ack().await?;
            tracing::error!(user = %request.user, code = %cause.code, error = %cause.message, "Graph refuses the app itself; request put back, stopping");
            ctx.halt.raise(cause);
            Ok(())
        }
        Disposition::HandBack { reason } => {
            tracing::warn!(reason = %reason, "handing a delivery back");
            incoming.hand_back().await
        }
    }
}

/// Publish `request` (with its carry) to `routing_key` as attempt `attempt`, confirmed.
async fn requeue(
    ctx: &Ctx,
    incoming: &Incoming,
    routing_key: &str,
    attempt: u32,
    request: &ResetRequest,
    cause: &Cause,
) -> anyhow::Result<()> {
    let headers = Headers::from_props(incoming.properties())
        .int(headers::ATTEMPT, u64::from(attempt))
        .str(headers::ERROR_CODE, &cause.code)
        .str(headers::ERROR_MESSAGE, &cause.message)
        .build();
    let msg = OutMessage::json(routing_key, serde_json::to_vec(request)?)
        .with_id(request.request_id.to_string())
        .with_headers(headers);
    publish_confirmed(&ctx.publish, &ctx.worker.topology.exchange(), &msg).await
}

/// Record an outcome (sealed, confirmed), then ack. An outcome the broker did not confirm
/// is held in the outbox and recorded after reconnecting.
async fn record(ctx: &Ctx, incoming: &Incoming, outcome: Outcome) -> anyhow::Result<()> {
    let worker = &ctx.worker;
    let key = (outcome.request_id, outcome.replay);
    let record = Record::Outcome(Box::new(outcome));
    let Record::Outcome(outcome) = &record else {
        unreachable!("built just above")
    };
    let published = worker
        .sealer
        .publish(
            &ctx.publish,
            &worker.topology.exchange(),
            &outcome.batch,
            &record,
            outcome.request_id.to_string(),
        )
        .await;
    if let Err((err, sealed)) = published {
        if let Some(sealed) = sealed {
            worker.outbox.hold(sealed, Some((key, outcome.finished_at)));
        }
        return Err(err.context("recording the outcome (held; recorded after reconnecting)"));
    }
    worker.ledger.record(key.0, key.1, outcome.finished_at);
    worker.gate.record(&record, Utc::now());
    incoming.ack().await?;
    worker.metrics.outcome(outcome.status);
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

/// A request refused by verification: its reason goes in [`headers::REASON`] too.
struct Refused<'a> {
    reason: &'a str,
}

/// Publish a copy of the delivery to the dead-letter queue with why, confirmed.
async fn dead_letter(
    ctx: &Ctx,
    incoming: &Incoming,
    cause: &Cause,
    attempts: u32,
    refused: Option<Refused<'_>>,
    who: Option<(&str, &UserRef)>,
) -> anyhow::Result<()> {
    let mut h = Headers::from_props(incoming.properties());
    if let Some(refused) = refused {
        h = h.str(headers::REASON, refused.reason);
    }
    let mut h = h
        .str(headers::ERROR_CODE, &cause.code)
        .str(headers::ERROR_MESSAGE, &cause.message)
        .int(headers::ATTEMPTS, u64::from(attempts))
        .str(headers::WORKER, &ctx.worker.name)
        .str(headers::FAILED_AT, &Utc::now().to_rfc3339());
    if let Some((batch, user)) = who {
        h = h
            .str(headers::BATCH, batch)
            .str(headers::USER, &user.to_string());
    }
    let mut msg = OutMessage::json(RK_DEAD, incoming.body().to_vec()).with_headers(h.build());
    if let Some(id) = incoming.message_id() {
        msg = msg.with_id(id);
    }
    publish_confirmed(&ctx.publish, &ctx.worker.topology.exchange(), &msg)
        .await
        .context("dead-lettering")
}

/// Writes a request's plan to the outcomes stream (confirmed) before its first DELETE.
struct StreamJournal<'a> {
    ctx: &'a Ctx,
    request: &'a ResetRequest,
}

#[async_trait::async_trait]
impl reset::Journal for StreamJournal<'_> {
    async fn planned(&self, methods: &[MethodRecord]) -> anyhow::Result<()> {
        let record = Record::Plan(PlanRecord {
            request_id: self.request.request_id,
            replay: self.request.replay,
            batch: self.request.batch.clone(),
            methods: methods.to_vec(),
            at: Utc::now(),
        });
        let worker = &self.ctx.worker;
        let published = worker
            .sealer
            .publish(
                &self.ctx.publish,
                &worker.topology.exchange(),
                &self.request.batch,
                &record,
                self.request.request_id.to_string(),
            )
            .await;
        published.map_err(|(err, sealed)| {
            // Nothing is deleted without its plan confirmed; the sealed plan is still
            // published later, as it is, so its chain keeps no gap.
            if let Some(sealed) = sealed {
                worker.outbox.hold(sealed, None);
            }
            err
        })?;
        // Counted for the hourly cap now, not only when the stream brings it back: this
        // worker's own count never lags (other workers learn it from the stream).
        worker.gate.record(&record, Utc::now());
        Ok(())
    }
}

/// A request being executed here; removed from the in-flight set however its handler ends.
struct Claim<'a> {
    set: &'a Mutex<HashSet<Key>>,
    key: Key,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.key);
        }
    }
}

/// Counts a user in flight for `/metrics` while alive (also when the task is aborted).
struct Busy<'a>(&'a Ctx);

impl<'a> Busy<'a> {
    fn start(ctx: &'a Ctx) -> Busy<'a> {
        ctx.worker.metrics.in_flight.inc();
        Busy(ctx)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.worker.metrics.in_flight.dec();
    }
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
