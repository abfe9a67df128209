//! Proactive rate budget and the shared Retry-After pause. STUB — the graph helper completes it.

/// Counters of Graph traffic for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct ThrottleStats {}

/// The proactive budget (all requests, writes).
#[derive(Debug)]
pub struct Budget {}

/// One pause shared by every task of the process.
#[derive(Debug, Default)]
pub struct PauseGate {}

impl ThrottleStats {
    /// A serialisable copy of the counters.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
