//! `graph-sim`: the Microsoft Graph simulator as a process. Prints `listening on http://HOST:PORT`
//! as its first stdout line, then serves until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use graph_sim::tenant::{self, NESTED_GROUP_ID, RESET_PENDING_GROUP_ID, ROLE_GROUP_ID};
use graph_sim::{self as sim, FaultSettings, Fixture, GenOptions, SimConfig, ThrottleSettings};

/// A stand-in for Microsoft Graph and its token endpoint, for tests, demos and benchmarks.
///
/// Inspection (no auth): GET /_sim/users, GET /_sim/users/{user},
/// POST /_sim/users/{user}/rename, GET /_sim/stats, POST /_sim/stats/reset, GET|POST /_sim/faults,
/// GET|POST /_sim/app (the app's secret, consent, permissions, disabled…),
/// POST /_sim/tokens/expire, POST /_sim/deletions/settle.
#[derive(Debug, Parser)]
#[command(name = "graph-sim", version, after_help = format!(
    "With --group-size N, group `reset-pending` has id {RESET_PENDING_GROUP_ID} (its nested group: {NESTED_GROUP_ID}); with --group-admin-rate, the role-assignable group is {ROLE_GROUP_ID}."
))]
struct Args {
    /// Address to listen on (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Users in the generated tenant.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Seed of the generated tenant (object ids and methods; UPNs depend on the index only).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Load the tenant from a JSON fixture instead of generating it.
    #[arg(long)]
    tenant: Option<PathBuf>,
    /// Tenant id accepted by the token endpoint.
    #[arg(long, default_value = "00000000-0000-0000-0000-000000000001")]
    tenant_id: String,
    /// Client id accepted by the token endpoint.
    #[arg(long, default_value = "00000000-0000-0000-0000-000000000002")]
    client_id: String,
    /// Client secret accepted by the token endpoint.
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    /// PEM certificate whose key signs client assertions.
    #[arg(long)]
    client_certificate: Option<PathBuf>,
    /// Lifetime of access tokens (`expires_in`).
    #[arg(long, default_value_t = 3599)]
    token_ttl_secs: u64,
    /// Print the generated users as CSV (userPrincipalName,id) and exit.
    #[arg(long)]
    print_users: bool,
    /// Fewest removable methods per generated user.
    #[arg(long, default_value_t = 0)]
    methods_min: usize,
    /// Most removable methods per generated user.
    #[arg(long, default_value_t = 6)]
    methods_max: usize,
    /// Fraction of users with a method type no client knows.
    #[arg(long, default_value_t = 0.0)]
    unknown_method_rate: f64,
    /// Fraction of users whose writes are refused with 403.
    #[arg(long, default_value_t = 0.0)]
    privileged_rate: f64,
    /// Fraction of users holding a directory role, assigned directly and active.
    #[arg(long, default_value_t = 0.0)]
    admin_rate: f64,
    /// Fraction of users eligible for a directory role through PIM.
    #[arg(long, default_value_t = 0.0)]
    eligible_admin_rate: f64,
    /// Fraction of users holding a directory role through a role-assignable group.
    #[arg(long, default_value_t = 0.0)]
    group_admin_rate: f64,
    /// Make group `reset-pending` with the first N users (half through a nested group).
    #[arg(long, default_value_t = 0)]
    group_size: usize,
    /// Requests (resource units) per period, per app+tenant.
    #[arg(long, default_value_t = 3_500)]
    requests_per_period: u32,
    /// Period of the request bucket, in seconds.
    #[arg(long, default_value_t = 10)]
    requests_period_secs: u64,
    /// Writes per period, per app+tenant.
    #[arg(long, default_value_t = 3_000)]
    writes_per_period: u32,
    /// Period of the write bucket, in seconds.
    #[arg(long, default_value_t = 150)]
    writes_period_secs: u64,
    /// Never answer 429 from the buckets.
    #[arg(long)]
    no_throttle: bool,
    /// Smallest Retry-After sent, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_min_secs: u64,
    /// Largest Retry-After, in seconds: each 429 draws one uniformly from the smallest to
    /// this (the bucket's own wait when longer). 0 = always the smallest.
    #[arg(long, default_value_t = 0)]
    retry_after_max_secs: u64,
    /// Refill the buckets in steps of this many milliseconds (0 = continuously).
    #[arg(long, default_value_t = 0)]
    refill_granularity_ms: u64,
    /// Send Retry-After as an HTTP date.
    #[arg(long)]
    retry_after_http_date: bool,
    /// Requests this soon after a 429 are not counted as violations (already on the wire).
    #[arg(long, default_value_t = 50)]
    violation_grace_ms: u64,
    /// Added latency per Graph request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Uniform jitter (±) of the latency.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Fraction of Graph requests answered 500/502/503/504.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Fraction of DELETEs applied but answered 429/503.
    #[arg(long, default_value_t = 0.0)]
    ghost_rate: f64,
    /// Fraction of Graph requests whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Fail every request for this long from start.
    #[arg(long, default_value_t = 0)]
    outage_secs: u64,
    /// How long a deleted method keeps being listed.
    #[arg(long, default_value_t = 0)]
    consistency_delay_ms: u64,
    /// Answer signInPreferences reads with 403 (clients fall back to two-pass deletion).
    #[arg(long)]
    deny_sign_in_preferences: bool,
    /// Start as an app without RoleManagement.Read.Directory: the role-management API answers
    /// 403, directory roles come with only @odata.type and id.
    #[arg(long)]
    deny_role_management: bool,
    /// Start as an app without User.Read.All: reading a user answers 403, group members that
    /// are users come with only @odata.type and id.
    #[arg(long)]
    deny_user_read: bool,
}

impl Args {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let fixture = self.tenant.as_deref().map(Fixture::load).transpose()?;
        let client_certificate_pem =
            match &self.client_certificate {
                Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read client certificate {}", path.display())
                })?),
                None => None,
            };
        Ok(SimConfig {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            users: self.users,
            seed: self.seed,
            latency_ms: self.latency_ms,
            token_ttl_secs: self.token_ttl_secs,
            client_certificate_pem,
            fixture,
            generation: GenOptions {
                methods_min: self.methods_min,
                methods_max: self.methods_max,
                unknown_method_rate: self.unknown_method_rate,
                privileged_rate: self.privileged_rate,
                admin_rate: self.admin_rate,
                eligible_admin_rate: self.eligible_admin_rate,
                group_admin_rate: self.group_admin_rate,
                group_size: self.group_size,
            },
            throttle: ThrottleSettings {
                enabled: !self.no_throttle,
                requests_per_period: self.requests_per_period,
                requests_period: Duration::from_secs(self.requests_period_secs),
                writes_per_period: self.writes_per_period,
                writes_period: Duration::from_secs(self.writes_period_secs),
                retry_after_min_secs: self.retry_after_min_secs,
                retry_after_max_secs: self.retry_after_max_secs,
                refill_granularity: Duration::from_millis(self.refill_granularity_ms),
                retry_after_http_date: self.retry_after_http_date,
                violation_grace: Duration::from_millis(self.violation_grace_ms),
            },
            faults: FaultSettings {
                fault_rate: self.fault_rate,
                ghost_rate: self.ghost_rate,
                drop_rate: self.drop_rate,
                latency_ms: self.latency_ms,
                latency_jitter_ms: self.latency_jitter_ms,
                outage_secs: self.outage_secs,
            },
            consistency_delay_ms: self.consistency_delay_ms,
            deny_sign_in_preferences: self.deny_sign_in_preferences,
            deny_role_management: self.deny_role_management,
            deny_user_read: self.deny_user_read,
        })
    }
}

fn print_users(config: &SimConfig) -> anyhow::Result<()> {
    let tenant = match config.fixture.clone() {
        Some(f) => tenant::Tenant::from_fixture(f)?,
        None => tenant::generate(config.users, config.seed, &config.generation),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "userPrincipalName,id")?;
    for u in &tenant.users {
        // A UPN may hold a comma only in theory; quote it as CSV requires.
        let upn = if u.user_principal_name.contains([',', '"']) {
            format!("\"{}\"", u.user_principal_name.replace('"', "\"\""))
        } else {
            u.user_principal_name.clone()
        };
        writeln!(out, "{upn},{}", u.id)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = args.config()?;
    if args.print_users {
        return print_users(&config);
    }
    let server = sim::spawn(config, args.listen).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
