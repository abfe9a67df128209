//! The idempotency ledger's memory when full: fills a [`Ledger`] with more outcomes than its
//! capacity (and plans up to their limit), then prints the process's peak RSS.
//!
//! `cargo run --release --example ledger_memory [CAPACITY]` (default: `worker.ledger_capacity`'s
//! default). scripts/memory.sh runs it; BENCHMARKS.md ("Memory") has the figures.

use std::time::Duration;

use chrono::Utc;
use mfa_reset::domain::MethodRecord;
use mfa_reset::worker::ledger::{Ledger, DEFAULT_CAPACITY};
use uuid::Uuid;

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let capacity: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_CAPACITY);
    let before = status("VmRSS:");
    let ledger = Ledger::with_capacity(Duration::from_secs(86_400), capacity);
    // Plans first, as many as kept, three methods each (what an interrupted request leaves).
    for _ in 0..30_000 {
        let methods = (0..3)
            .map(|i| MethodRecord {
                kind: "microsoftAuthenticator".into(),
                id: Uuid::new_v4().to_string(),
                display_name: Some(format!("iPhone {i}")),
                masked: None,
                ..MethodRecord::default()
            })
            .collect();
        ledger.record_plan(Uuid::new_v4(), 0, methods);
    }
    let now = Utc::now();
    let total = capacity + capacity / 5;
    for _ in 0..total {
        ledger.record(Uuid::new_v4(), 0, now);
    }
    println!(
        "ledger capacity {capacity}: {} outcomes held after {total} recorded; RSS before {} kB, \
         now {} kB, peak {} kB",
        ledger.len(),
        before,
        status("VmRSS:"),
        status("VmHWM:")
    );
}
