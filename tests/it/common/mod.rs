//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod amqp_cut;
pub mod amqp_hold;
pub mod console;
pub mod env;
pub mod graph_front;
pub mod proc;

use graph_sim::{SimConfig, SimServer};

/// Start a simulator on a free port.
pub async fn start_sim(config: SimConfig) -> SimServer {
    graph_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// Poll `done` every 50 ms until it holds; false after `secs`.
pub async fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    done()
}
