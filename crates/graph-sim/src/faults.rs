//! Injected faults: server errors, ghost successes, dropped connections, latency and outages.
//! All off by default; adjustable at run time through `POST /_sim/faults`.
//!
//! A *dropped connection* is done by closing the TCP connection without writing a response:
//! the failing stage marks its response (see `pipeline.rs`), and the connection's service
//! (see `server.rs`) drops the hyper connection future instead of writing it, and with it the
//! socket, so the client sees a reset / unexpected EOF.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::throttle::lock;

/// The fault knobs. Rates are fractions in 0..=1 of Graph requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Fraction answered 500/502/503/504 (some 503s with Retry-After); nothing is applied.
    pub fault_rate: f64,
    /// Fraction of DELETEs that ARE applied but answered 429 or 503.
    pub ghost_rate: f64,
    /// Fraction whose connection is closed without an answer; nothing is applied.
    pub drop_rate: f64,
    /// Added latency per Graph request.
    pub latency_ms: u64,
    /// Uniform jitter (±) around `latency_ms`.
    pub latency_jitter_ms: u64,
    /// From the moment set: every Graph and token request fails (dropped or 503) for this long.
    pub outage_secs: u64,
}

/// A partial update (`POST /_sim/faults`): fields present replace the current values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPatch {
    /// See [`FaultSettings::fault_rate`].
    pub fault_rate: Option<f64>,
    /// See [`FaultSettings::ghost_rate`].
    pub ghost_rate: Option<f64>,
    /// See [`FaultSettings::drop_rate`].
    pub drop_rate: Option<f64>,
    /// See [`FaultSettings::latency_ms`].
    pub latency_ms: Option<u64>,
    /// See [`FaultSettings::latency_jitter_ms`].
    pub latency_jitter_ms: Option<u64>,
    /// See [`FaultSettings::outage_secs`]; the outage starts when set.
    pub outage_secs: Option<u64>,
}

/// What the dice decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Nothing: serve it.
    None,
    /// Close the connection without an answer.
    Drop,
    /// Answer this status; with `Some(secs)`, a Retry-After too.
    Status(u16, Option<u64>),
}

#[derive(Debug)]
struct State {
    settings: FaultSettings,
    outage_until: Option<Instant>,
}

/// Shared fault state.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    /// Start with these settings (an `outage_secs` starts now).
    pub fn new(settings: FaultSettings) -> Faults {
        let outage_until = (settings.outage_secs > 0)
            .then(|| Instant::now() + Duration::from_secs(settings.outage_secs));
        Faults {
            state: Mutex::new(State {
                settings,
                outage_until,
            }),
        }
    }

    /// The current settings.
    pub fn settings(&self) -> FaultSettings {
        lock(&self.state).settings.clone()
    }

    /// Apply a partial update; returns the new settings.
    pub fn apply(&self, patch: FaultPatch) -> FaultSettings {
        let mut state = lock(&self.state);
        let s = &mut state.settings;
        let rate = |r: f64| r.clamp(0.0, 1.0);
        if let Some(v) = patch.fault_rate {
            s.fault_rate = rate(v);
        }
        if let Some(v) = patch.ghost_rate {
            s.ghost_rate = rate(v);
        }
        if let Some(v) = patch.drop_rate {
            s.drop_rate = rate(v);
        }
        if let Some(v) = patch.latency_ms {
            s.latency_ms = v;
        }
        if let Some(v) = patch.latency_jitter_ms {
            s.latency_jitter_ms = v;
        }
        if let Some(v) = patch.outage_secs {
            s.outage_secs = v;
            state.outage_until = (v > 0).then(|| Instant::now() + Duration::from_secs(v));
        }
        state.settings.clone()
    }

    /// The latency to add to this request.
    pub fn latency(&self) -> Duration {
        let s = self.settings();
        if s.latency_ms == 0 && s.latency_jitter_ms == 0 {
            return Duration::ZERO;
        }
        let jitter = s.latency_jitter_ms as i64;
        let offset = if jitter > 0 {
            rand::rng().random_range(-jitter..=jitter)
        } else {
            0
        };
        Duration::from_millis((s.latency_ms as i64 + offset).max(0) as u64)
    }

    /// During an outage: how this request fails (half dropped, half 503).
    pub fn outage(&self) -> Option<Fault> {
        let until = lock(&self.state).outage_until?;
        if Instant::now() >= until {
            return None;
        }
        Some(if rand::rng().random_bool(0.5) {
            Fault::Drop
        } else {
            Fault::Status(503, None)
        })
    }

    /// Roll the dice for a drop or a server error.
    pub fn roll(&self) -> Fault {
        let s = self.settings();
        let mut rng = rand::rng();
        if s.drop_rate > 0.0 && rng.random_bool(s.drop_rate.clamp(0.0, 1.0)) {
            return Fault::Drop;
        }
        if s.fault_rate > 0.0 && rng.random_bool(s.fault_rate.clamp(0.0, 1.0)) {
            let status = [500, 502, 503, 503, 504][rng.random_range(0..5)];
            let retry_after =
                (status == 503 && rng.random_bool(0.5)).then(|| rng.random_range(1..=2));
            return Fault::Status(status, retry_after);
        }
        Fault::None
    }

    /// For a DELETE about to succeed: answer this status instead (the delete still applies).
    pub fn roll_ghost(&self) -> Option<u16> {
        let rate = self.settings().ghost_rate;
        let mut rng = rand::rng();
        (rate > 0.0 && rng.random_bool(rate.clamp(0.0, 1.0))).then(|| {
            if rng.random_bool(0.5) {
                429
            } else {
                503
            }
        })
    }
}
