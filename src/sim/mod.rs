//! The Graph simulator (`graph-sim`): a stand-in for Microsoft Graph and its token endpoint,
//! over real HTTP. STUB — interface only; the simulator helper completes it.

use std::net::SocketAddr;

/// Everything that shapes the simulator's behaviour.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Tenant id accepted by the token endpoint.
    pub tenant_id: String,
    /// Client id accepted by the token endpoint.
    pub client_id: String,
    /// Client secret accepted by the token endpoint.
    pub client_secret: String,
    /// Generated users (ignored with a fixture).
    pub users: usize,
    /// Seed of the generated tenant.
    pub seed: u64,
    /// Added latency per Graph request, in milliseconds.
    pub latency_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            client_id: "00000000-0000-0000-0000-000000000002".into(),
            client_secret: "sim-secret".into(),
            users: 100,
            seed: 1,
            latency_ms: 0,
        }
    }
}

/// A running simulator.
pub struct SimServer {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl SimServer {
    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Bind `listen` (port 0 = any free port) and serve in the background until the returned
/// server is dropped.
pub async fn spawn(_config: SimConfig, _listen: SocketAddr) -> anyhow::Result<SimServer> {
    todo!()
}

impl SimServer {
    /// Counters (stub).
    pub fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
