use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Budget, Limit};
use crate::graph::{lock, PauseGate};

/// Retry-After of successive 429s, in seconds (the benchmark draws from 1-5 s).
const RETRY_AFTER: [u64; 5] = [3, 1, 5, 2, 4];
/// Requests take 0 to this long on the wire (in µs), so a rate a hair below the budget
/// does not pass by the sheer regularity of the simulation.
const WIRE_JITTER_MICROS: u64 = 10_000;
/// Graph's time to answer a request it serves.
pub(crate) const LATENCY: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Bucket {
    /// Requests per refill step (the bucket's size).
    per_step: u32,
    tokens: u32,
    /// The last refill step seen.
    step_index: u64,
    /// Served and throttled requests per second since `origin`.
    served: Vec<u32>,
    throttled: Vec<u32>,
    /// The Retry-After windows announced: (opens, closes).
    windows: Vec<(Instant, Instant)>,
    violations: u32,
    answered_429: usize,
}

/// The stand-in, shared by every simulated worker.
#[derive(Debug, Clone)]
pub(crate) struct StandIn {
    bucket: Arc<Mutex<Bucket>>,
    origin: Instant,
    step: Duration,
}

/// What a run got.
#[derive(Debug)]
pub(crate) struct Summary {
    /// Served ÷ budget over the seconds measured.
    pub efficiency: f64,
    /// 429s before and within the seconds measured.
    pub throttled_before: u32,
    pub throttled_after: u32,
    pub violations: u32,
    pub served: Vec<u32>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "efficiency {:.3}, 429s {} + {}, violations {}, served per second {:?}",
            self.efficiency,
            self.throttled_before,
            self.throttled_after,
            self.violations,
            self.served
        )
    }
}

impl StandIn {
    /// `per_second` requests a second, refilled in steps of `step`.
    pub(crate) fn new(per_second: u32, step: Duration) -> Self {
        let per_step = (f64::from(per_second) * step.as_secs_f64()).round() as u32;
        StandIn {
            bucket: Arc::new(Mutex::new(Bucket {
                per_step,
                tokens: per_step,
                step_index: 0,
                served: Vec::new(),
                throttled: Vec::new(),
                windows: Vec::new(),
                violations: 0,
                answered_429: 0,
            })),
            origin: Instant::now(),
            step,
        }
    }

    /// From the next refill step on, `per_second` requests a second.
    pub(crate) fn set_per_second(&self, per_second: u32) {
        lock(&self.bucket).per_step =
            (f64::from(per_second) * self.step.as_secs_f64()).round() as u32;
    }

    /// A request arrives now: `Ok` if served, `Err(retry_after)` if throttled.
    pub(crate) fn arrive(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let since = now - self.origin;
        let mut b = lock(&self.bucket);
        let step_index = (since.as_nanos() / self.step.as_nanos()) as u64;
        if step_index > b.step_index {
            b.tokens = b.per_step;
            b.step_index = step_index;
        }
        if b.windows
            .iter()
            .any(|(opens, closes)| *opens <= now && now < *closes)
        {
            b.violations += 1;
        }
        let second = since.as_secs() as usize;
        if b.served.len() <= second {
            b.served.resize(second + 1, 0);
            b.throttled.resize(second + 1, 0);
        }
        if b.tokens > 0 {
            b.tokens -= 1;
            b.served[second] += 1;
            return Ok(());
        }
        b.throttled[second] += 1;
        // As graph-sim: at least until the next refill step.
        let next_step = self.step * u32::try_from(step_index + 1).unwrap_or(u32::MAX);
        let retry_after = Duration::from_secs(RETRY_AFTER[b.answered_429 % RETRY_AFTER.len()]).max(
            Duration::from_secs((next_step - since).as_secs_f64().ceil() as u64),
        );
        b.answered_429 += 1;
        // Requests on the wire (the grace of graph-sim, 50 ms) are no violations.
        b.windows
            .push((now + Duration::from_millis(50), now + retry_after));
        Err(retry_after)
    }

    /// `n` tasks sending through `budget` and `gate` until aborted: each request takes
    /// [`LATENCY`] when served; a 429 pauses the gate, tells the budget and is handed to
    /// `announce` (the other workers) with its pause's end.
    pub(crate) fn spawn_tasks(
        &self,
        n: usize,
        budget: &Arc<Budget>,
        gate: &Arc<PauseGate>,
        announce: impl Fn(Instant) + Send + Sync + Clone + 'static,
    ) -> Vec<JoinHandle<()>> {
        (0..n)
            .map(|task| {
                let (graph, budget, gate, announce) =
                    (self.clone(), budget.clone(), gate.clone(), announce.clone());
                // The wire's jitter: 0-10 ms, drawn from a generator seeded by the task.
                let mut seed = task as u64 + 1;
                let mut jitter = move || {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    Duration::from_micros((seed >> 33) % WIRE_JITTER_MICROS)
                };
                tokio::spawn(async move {
                    loop {
                        budget.acquire(false, &gate).await;
                        tokio::time::sleep(jitter()).await;
                        match graph.arrive() {
                            Ok(()) => {
                                tokio::time::sleep(LATENCY).await;
                                budget.observe_answer(false, 200);
                            }
                            Err(retry_after) => {
                                let end = Instant::now() + retry_after;
                                if !gate.pause_until(end).is_zero() {
                                    announce(end);
                                }
                                budget.on_throttled(end, Limit::Requests);
                            }
                        }
                    }
                })
            })
            .collect()
    }

    /// Served ÷ budget (the budget now) over seconds `from..to`, and the 429s before
    /// and within them.
    pub(crate) fn summary(&self, from: usize, to: usize) -> Summary {
        let b = lock(&self.bucket);
        let per_second = f64::from(b.per_step) / self.step.as_secs_f64();
        let at = |v: &Vec<u32>, s: usize| v.get(s).copied().unwrap_or(0);
        let served: u32 = (from..to).map(|s| at(&b.served, s)).sum();
        Summary {
            efficiency: f64::from(served) / (per_second * (to - from) as f64),
            throttled_before: (0..from).map(|s| at(&b.throttled, s)).sum(),
            throttled_after: (from..to).map(|s| at(&b.throttled, s)).sum(),
            violations: b.violations,
            served: b.served.clone(),
        }
    }
}
