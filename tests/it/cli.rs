//! The command line contract: exit codes, what is printed, the report's columns.

use std::process::{Command, Output};

use graph_sim::SimConfig;

use crate::common::env::{csv_of_generated, TestEnv};

/// Run `mfa-reset` with the settings of `env` as environment variables.
fn mfa_reset(env: &TestEnv, args: &[&str]) -> Output {
    let s = &env.settings;
    Command::new(env!("CARGO_BIN_EXE_mfa-reset"))
        .args(args)
        .env("MFA_RESET__BROKER__PREFIX", &s.broker.prefix)
        .env("MFA_RESET__GRAPH__BASE_URL", &s.graph.base_url)
        .env("MFA_RESET__GRAPH__BETA_URL", &s.graph.beta_url)
        .env("MFA_RESET__GRAPH__AUTHORITY", &s.graph.authority)
        .env("MFA_RESET__GRAPH__TENANT_ID", &s.graph.tenant_id)
        .env("MFA_RESET__GRAPH__CLIENT_ID", &s.graph.client_id)
        .env(
            "MFA_RESET__GRAPH__CLIENT_SECRET",
            SimConfig::default().client_secret,
        )
        .env("MFA_RESET__RESET__SKIP_ADMINS", "false")
        .env("MFA_RESET__RETRY__TIERS", "[\"1s\"]")
        .output()
        .expect("mfa-reset runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_then_work_then_report_through_the_binary() {
    let env = TestEnv::new(
        "cli-flow",
        SimConfig {
            users: 20,
            ..SimConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, csv_of_generated(20)).unwrap();

    let out = mfa_reset(
        &env,
        &[
            "enqueue",
            "--csv",
            csv.to_str().unwrap(),
            "--batch",
            "cli-flow-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("batch: cli-flow-1"), "{stdout}");
    assert!(stdout.contains("enqueued: 20"), "{stdout}");

    let out = mfa_reset(
        &env,
        &["work", "--concurrency", "4", "--exit-when-idle", "2"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = mfa_reset(
        &env,
        &[
            "status",
            "--batch",
            "cli-flow-1",
            "--wait",
            "--timeout",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = dir.path().join("report.csv");
    let out = mfa_reset(
        &env,
        &[
            "report",
            "--batch",
            "cli-flow-1",
            "--out",
            report.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = std::fs::read_to_string(report).unwrap();
    let mut lines = report.lines();
    assert_eq!(
        lines.next(),
        Some("user,status,methods_removed,methods_remaining,sessions_revoked,attempts,error_code,error_message,ticket,batch,request_id,finished_at")
    );
    assert_eq!(lines.count(), 20);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_csv_exits_1_naming_every_bad_line() {
    let env = TestEnv::new("cli-refused", SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "upn\nalice@contoso.com\nbob@\nbob@contoso.com\n12345\n",
    )
    .unwrap();

    let out = mfa_reset(&env, &["enqueue", "--csv", csv.to_str().unwrap()]);

    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("line 5"), "{stderr}");
    assert!(stderr.contains("nothing was enqueued"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_without_yes_exits_3_and_enqueues_nothing() {
    let env = TestEnv::new("cli-confirm", SimConfig::default()).await;
    env.setup().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("many.csv");
    std::fs::write(&csv, csv_of_generated(501)).unwrap();

    let out = mfa_reset(&env, &["enqueue", "--csv", csv.to_str().unwrap()]);

    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("501 users"), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(
        stderr.contains("sample:"),
        "the summary comes first: {stderr}"
    );
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_exits_2_at_the_timeout_when_no_worker_runs() {
    let env = TestEnv::new("cli-timeout", SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, csv_of_generated(3)).unwrap();
    let out = mfa_reset(
        &env,
        &[
            "enqueue",
            "--csv",
            csv.to_str().unwrap(),
            "--batch",
            "no-worker",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = mfa_reset(
        &env,
        &["status", "--batch", "no-worker", "--wait", "--timeout", "2"],
    );

    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("3 request(s) still without an outcome"));
    let out = mfa_reset(&env, &["status", "--batch", "no-such-batch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no batch \"no-such-batch\""));
    env.cleanup().await;
}
