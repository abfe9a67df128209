//! Running the real binaries (`mfa-reset`, `graph-sim`) as child processes, configured
//! through `MFA_RESET__SECTION__KEY` from a test's [`Settings`].

use std::process::Stdio;
use std::time::Duration;

use mfa_reset::config::Settings;
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

/// `humantime` text of a duration, as the settings files take it.
fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The environment that makes a child process use `s` (broker, Graph, retries, …).
pub fn env_of(s: &Settings) -> Vec<(String, String)> {
    let tiers = s
        .retry
        .tiers
        .iter()
        .map(|d| human(*d))
        .collect::<Vec<_>>()
        .join(",");
    let mut v = vec![
        ("BROKER__URL", s.broker.url.clone()),
        ("BROKER__PREFIX", s.broker.prefix.clone()),
        ("BROKER__CONNECT_TIMEOUT", human(s.broker.connect_timeout)),
        (
            "BROKER__DELIVERY_LIMIT",
            s.broker.delivery_limit.to_string(),
        ),
        ("GRAPH__BASE_URL", s.graph.base_url.clone()),
        ("GRAPH__BETA_URL", s.graph.beta_url.clone()),
        ("GRAPH__AUTHORITY", s.graph.authority.clone()),
        ("GRAPH__TENANT_ID", s.graph.tenant_id.clone()),
        ("GRAPH__CLIENT_ID", s.graph.client_id.clone()),
        ("RETRY__BASE_DELAY", human(s.retry.base_delay)),
        ("RETRY__MAX_DELAY", human(s.retry.max_delay)),
        ("RETRY__MAX_ELAPSED", human(s.retry.max_elapsed)),
        ("RETRY__TIERS", format!("[{tiers}]")),
        ("RESET__SKIP_ADMINS", s.reset.skip_admins.to_string()),
        ("RESET__CONSISTENCY_WAIT", human(s.reset.consistency_wait)),
        ("WORKER__SHUTDOWN_GRACE", human(s.worker.shutdown_grace)),
        ("INTAKE__CONFIRM_ABOVE", s.intake.confirm_above.to_string()),
        ("INTAKE__KEY", s.intake.key.clone()),
        (
            "SECURITY__ALLOWED_SIGNERS",
            s.security.allowed_signers.clone(),
        ),
        (
            "SECURITY__APPROVAL_ABOVE",
            s.security.approval_above.to_string(),
        ),
        ("WORKER__KEY", s.worker.key.clone()),
        (
            "SECURITY__MAX_RESETS_PER_HOUR",
            s.security.max_resets_per_hour.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("MFA_RESET__{k}"), v))
    .collect::<Vec<_>>();
    if let Some(secret) = &s.graph.client_secret {
        v.push((
            "MFA_RESET__GRAPH__CLIENT_SECRET".into(),
            secret.expose_secret().to_string(),
        ));
    }
    v
}

/// `mfa-reset ARGS` configured for `s`, output captured, killed when dropped.
pub fn mfa_reset(s: &Settings, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfa-reset"));
    cmd.args(args)
        .envs(env_of(s))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Start `mfa-reset work` for `s` with a name, output captured.
pub fn spawn_worker(s: &Settings, name: &str, concurrency: usize) -> Child {
    mfa_reset(s, &["work", "--concurrency", &concurrency.to_string()])
        .env("MFA_RESET__WORKER__NAME", name)
        .spawn()
        .expect("mfa-reset work starts")
}

/// Output of a finished child: (exit code, stdout, stderr).
pub async fn finish(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().await.expect("child output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `mfa-reset ARGS` to the end: (exit code, stdout, stderr).
pub async fn run(s: &Settings, args: &[&str]) -> (Option<i32>, String, String) {
    finish(mfa_reset(s, args).spawn().expect("mfa-reset starts")).await
}

/// Send a signal to a child (SIGTERM for a graceful stop, SIGKILL for a crash).
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = child.id().expect("child still running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal sent");
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
