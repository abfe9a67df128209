//! Worker counters, exported on `/metrics` in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::domain::Status;

/// Label set `status="reset"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// Outcome status.
    pub status: String,
}

/// What a worker process counts.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Outcomes recorded, by status.
    pub outcomes: Family<StatusLabel, Counter>,
    /// Requests handed to a delay tier.
    pub retried: Counter,
    /// Messages dead-lettered by this worker.
    pub dead_lettered: Counter,
    /// Redelivered requests acked without touching Graph (already recorded).
    pub duplicates: Counter,
    /// Handlers that panicked.
    pub panics: Counter,
    /// Reconnections to the broker.
    pub reconnects: Counter,
    /// Users in flight.
    pub in_flight: Gauge<i64, AtomicI64>,
    /// 1 while connected and consuming.
    pub connected: Gauge<i64, AtomicI64>,
    /// Requests sent back to a delay tier without using up an attempt because Graph was
    /// unreachable or throttling (an outage is not the request's fault).
    pub outage_requeues: Counter,
    /// Messages waiting in the requests queue and the delay tiers (probed every few seconds).
    pub queue_ready: Gauge<i64, AtomicI64>,
    /// Seconds between a request's `requested_at` and the moment a worker took it, for the
    /// last request taken: how far behind the workers are.
    pub queue_lag_seconds: Gauge<f64, AtomicU64>,
    /// 1 while halted: Graph refuses the app itself, no request is taken.
    pub halted: Gauge<i64, AtomicI64>,
    /// Times the worker halted.
    pub halts: Counter,
    /// Why the worker is halted (cause and fix), for `/healthz`; `None` when it is not.
    halt_reason: std::sync::Mutex<Option<String>>,
    /// 1 while the worker takes no requests because an admin halted the workers or the hourly
    /// cap is reached (`/healthz` says which).
    pub paused: Gauge<i64, AtomicI64>,
    /// Why, while paused (for `/healthz`).
    pub paused_because: std::sync::Mutex<Option<String>>,
    /// Records and control commands ignored because they do not verify against
    /// `security.allowed_signers` (unsigned, forged, altered).
    pub records_ignored: Counter,
    /// Messages on the fleet exchange dropped unread, by reason (`unsigned`,
    /// `bad_signature`, `signer_not_allowed`, `stale`, `future_dated`, `replayed`,
    /// `other_fleet`, `malformed`, `too_many_senders`): see [`crate::worker::fleet`].
    pub fleet_refused: Family<ReasonLabel, Counter>,
}

/// Label set `reason="unsigned"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

type AtomicI64 = std::sync::atomic::AtomicI64;
type AtomicU64 = std::sync::atomic::AtomicU64;

impl WorkerMetrics {
    /// Count one outcome.
    pub fn outcome(&self, status: Status) {
        self.outcomes
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    /// The worker stopped taking requests for `stop`, or (`None`) takes them again.
    pub fn pause(&self, stop: Option<&crate::worker::gate::Stop>) {
        self.paused.set(i64::from(stop.is_some()));
        if let Ok(mut because) = self.paused_because.lock() {
            *because = stop.map(|stop| stop.to_string());
        }
    }

    /// Why the worker takes no requests now, if it takes none.
    pub fn paused_because(&self) -> Option<String> {
        self.paused_because
            .lock()
            .ok()
            .and_then(|because| because.clone())
    }

    /// Count one fleet message dropped for `reason`.
    pub fn refuse_fleet_message(&self, reason: &str) {
        self.fleet_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Fleet messages dropped for `reason` so far.
    pub fn fleet_refusals(&self, reason: &str) -> u64 {
        self.fleet_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// Outcomes of one status counted so far.
    pub fn count(&self, status: Status) -> u64 {
        self.outcomes
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .get()
    }

    /// The worker halted (or is still halted) because of `reason`.
    pub fn halt(&self, reason: &str) {
        let mut held = self
            .halt_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_none() {
            self.halts.inc();
        }
        *held = Some(reason.to_string());
        self.halted.set(1);
    }

    /// The worker carries on.
    pub fn resume(&self) {
        *self
            .halt_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.halted.set(0);
    }

    /// Why the worker is halted, if it is.
    pub fn halt_reason(&self) -> Option<String> {
        self.halt_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Register every metric (names prefixed `mfa_reset_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mfa_reset_outcomes",
            "Outcomes recorded, by status",
            self.outcomes.clone(),
        );
        registry.register(
            "mfa_reset_retried",
            "Requests handed to a delay tier",
            self.retried.clone(),
        );
        registry.register(
            "mfa_reset_dead_lettered",
            "Messages dead-lettered by this worker",
            self.dead_lettered.clone(),
        );
        registry.register(
            "mfa_reset_duplicates",
            "Redelivered requests acked without touching Graph",
            self.duplicates.clone(),
        );
        registry.register(
            "mfa_reset_handler_panics",
            "Handlers that panicked",
            self.panics.clone(),
        );
        registry.register(
            "mfa_reset_broker_reconnects",
            "Reconnections to the broker",
            self.reconnects.clone(),
        );
        registry.register(
            "mfa_reset_in_flight",
            "Users in flight",
            self.in_flight.clone(),
        );
        registry.register(
            "mfa_reset_connected",
            "1 while connected and consuming",
            self.connected.clone(),
        );
        registry.register(
            "mfa_reset_outage_requeues",
            "Requests sent back to a delay tier without using an attempt (Graph unreachable or throttling)",
            self.outage_requeues.clone(),
        );
        registry.register(
            "mfa_reset_queue_ready",
            "Messages waiting in the requests queue and the delay tiers",
            self.queue_ready.clone(),
        );
        registry.register(
            "mfa_reset_halted",
            "1 while halted: Graph refuses the app itself (credential, consent, tenant) and no request is taken",
            self.halted.clone(),
        );
        registry.register(
            "mfa_reset_halts",
            "Times the worker halted because Graph refused the app itself",
            self.halts.clone(),
        );
        registry.register(
            "mfa_reset_queue_lag_seconds",
            "Age of the last request taken (requested_at to start)",
            self.queue_lag_seconds.clone(),
        );
        registry.register(
            "mfa_reset_paused",
            "1 while taking no requests: halted by an admin or at the hourly cap (see /healthz)",
            self.paused.clone(),
        );
        registry.register(
            "mfa_reset_fleet_refused",
            "Messages on the fleet exchange dropped unread (unsigned, bad_signature, signer_not_allowed, stale, future_dated, replayed, malformed), by reason",
            self.fleet_refused.clone(),
        );
        registry.register(
            "mfa_reset_records_ignored",
            "Records and control commands ignored because they do not verify",
            self.records_ignored.clone(),
        );
    }
}
