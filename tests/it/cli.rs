//! The command line contract: exit codes, what is printed, the report's columns, where the
//! settings come from.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use graph_sim::{GenOptions, SimConfig};

use crate::common::env::{csv_of_generated, TestEnv};

/// `mfa-reset ARGS` with no environment at all, run in `dir`.
fn bare(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfa-reset"));
    cmd.args(args).env_clear().current_dir(dir);
    cmd
}

/// Run `mfa-reset` with the settings of `env` as environment variables.
fn mfa_reset(env: &TestEnv, args: &[&str]) -> Output {
    let s = &env.settings;
    Command::new(env!("CARGO_BIN_EXE_mfa-reset"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("MFA_RESET_CONFIG")
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
        .env(
            "MFA_RESET__SECURITY__ALLOWED_SIGNERS",
            &s.security.allowed_signers,
        )
        .env(
            "MFA_RESET__SECURITY__APPROVAL_ABOVE",
            s.security.approval_above.to_string(),
        )
        .env("MFA_RESET__INTAKE__KEY", &s.intake.key)
        .env("MFA_RESET__WORKER__KEY", &s.worker.key)
        .output()
        .expect("mfa-reset runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Every rate printed as `N/s` in `text` (the number before each "/s").
fn rates(text: &str) -> Vec<String> {
    text.match_indices("/s")
        .filter_map(|(at, _)| {
            let before = &text[..at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map_or(0, |i| i + 1);
            let number = &before[start..];
            (!number.is_empty()).then(|| number.to_string())
        })
        .collect()
}

/// Asserts every rate in `text` has at most one decimal, and that there is one.
fn assert_rates_rounded(text: &str) {
    let rates = rates(text);
    assert!(!rates.is_empty(), "a rate is printed: {text}");
    for rate in rates {
        let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1, "rate {rate}/s: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_then_work_then_report_through_the_binary() {
    // Every generated user holds a method, none privileged nor of an unknown type: each one
    // must end `reset`.
    let env = TestEnv::new(
        "cli-flow",
        SimConfig {
            users: 20,
            generation: GenOptions {
                methods_min: 1,
                ..GenOptions::default()
            },
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
    let both = format!("{stdout}{}", text(&out.stderr));
    assert_eq!(both.matches("batch:").count(), 1, "printed once: {both}");

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
    assert_rates_rounded(&text(&out.stderr));
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
        Some("user,status,methods_removed,methods_remaining,sessions_revoked,attempts,error_code,error_message,ticket,batch,request_id,finished_at,notes,replay,replayed_by,replay_key,tap_issued,tap_error_code")
    );
    let statuses: Vec<&str> = lines
        .map(|l| l.split(',').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["reset"; 20], "{report}");
    assert!(
        env.sim
            .users_snapshot()
            .iter()
            .all(|u| u.methods.len() == 1),
        "only the password is left"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_report_and_dlq_before_setup_say_nothing_is_set_up() {
    let env = TestEnv::new("cli-no-setup", SimConfig::default()).await;

    for args in [
        &["status", "--batch", "nope"][..],
        &["status", "--batch", "nope", "--wait", "--timeout", "5"],
        &["report", "--batch", "nope"],
        &["dlq", "list"],
        &["dlq", "purge", "--batch", "nope"],
    ] {
        let out = mfa_reset(&env, args);

        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        let what = if args[0] == "dlq" {
            "no dead letters"
        } else {
            "no batch \"nope\""
        };
        assert!(
            stderr.contains(&format!("{what}: nothing is set up under broker.prefix")),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("run `mfa-reset setup`"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("ERROR"), "{args:?}: {stderr}");
        assert!(!stderr.contains("NOT_FOUND"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    env.cleanup().await;
}

#[test]
fn enqueue_check_validates_without_a_key_or_a_broker_and_enqueues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.csv"),
        "upn\nalice@contoso.com\nbob@contoso.com\nalice@contoso.com\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.csv"),
        "upn\nalice@contoso.com\nbob@\nbob@contoso.com\n12345\n",
    )
    .unwrap();
    // No broker where this points: any connection attempt would fail the command.
    let check = |csv: &str| {
        bare(dir.path(), &["enqueue", "--csv", csv, "--check"])
            .env(
                "MFA_RESET__BROKER__URL",
                "amqp://guest:guest@127.0.0.1:9/%2f",
            )
            .output()
            .expect("mfa-reset runs")
    };

    let good = check("good.csv");
    let (stdout, stderr) = (text(&good.stdout), text(&good.stderr));
    assert!(good.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("checked: 2 users, every row valid; nothing was enqueued"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 4"),
        "the duplicate is named: {stderr}"
    );
    assert!(stderr.contains("sample:"), "the summary is shown: {stderr}");

    let bad = check("bad.csv");
    let stderr = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("line 5"),
        "{stderr}"
    );
    assert!(text(&bad.stdout).is_empty());

    // Without --check and without a key, the refusal says how to only validate.
    let keyless = bare(dir.path(), &["enqueue", "--csv", "good.csv"])
        .output()
        .expect("mfa-reset runs");
    assert_eq!(keyless.status.code(), Some(1));
    assert!(text(&keyless.stderr).contains("add --check"));
}

#[test]
fn demo_succeeds_from_an_empty_folder_with_no_environment() {
    let dir = tempfile::tempdir().unwrap();

    let out = bare(dir.path(), &["demo"])
        .output()
        .expect("mfa-reset runs");

    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("302 users in"), "{stdout}");
    assert!(stdout.contains("  total                  302"), "{stdout}");
    let report = std::fs::read_to_string(dir.path().join("demo-report.csv")).expect("report");
    assert_eq!(report.lines().count(), 303, "a header and one row per user");
    let both = format!("{stdout}{stderr}");
    assert_rates_rounded(&both);
    assert_eq!(both.matches("batch:").count(), 1, "printed once: {both}");
}

#[test]
fn a_settings_file_in_the_current_folder_is_not_read() {
    // Planted where a shared folder's user could write it: read, it would fail the command.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/default.toml"), "not toml [").unwrap();
    std::fs::write(dir.path().join("config.toml"), "not toml [").unwrap();

    let out = bare(dir.path(), &["dlq", "list"])
        .env("MFA_RESET__BROKER__PREFIX", "mfa-test-cli-cwd-never-set-up")
        .output()
        .expect("mfa-reset runs");

    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nothing is set up under broker.prefix \"mfa-test-cli-cwd-never-set-up\""),
        "the settings loaded, from defaults and the environment only: {stderr}"
    );
}

/// A settings file in a fresh folder setting `broker.prefix`, with `mode`.
fn settings_file(dir: &Path, prefix: &str, mode: u32) -> std::path::PathBuf {
    let file = dir.join("mfa-reset.toml");
    std::fs::write(&file, format!("[broker]\nprefix = \"{prefix}\"\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    file
}

#[test]
fn the_settings_file_is_named_by_the_flag_or_mfa_reset_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = settings_file(dir.path(), "mfa-test-cli-from-file", 0o600);
    let expected = "nothing is set up under broker.prefix \"mfa-test-cli-from-file\"";

    let by_variable = bare(dir.path(), &["status", "--batch", "x"])
        .env("MFA_RESET_CONFIG", &file)
        .output()
        .expect("mfa-reset runs");
    let by_flag = bare(
        dir.path(),
        &["--config", file.to_str().unwrap(), "status", "--batch", "x"],
    )
    .output()
    .expect("mfa-reset runs");

    for out in [by_variable, by_flag] {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn a_settings_file_others_can_write_is_refused_naming_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let file = settings_file(dir.path(), "mfa-test-cli-writable", 0o666);

    let out = bare(dir.path(), &["status", "--batch", "x"])
        .env("MFA_RESET_CONFIG", &file)
        .output()
        .expect("mfa-reset runs");

    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is writable by group or others"),
        "{stderr}"
    );
    assert!(stderr.contains("chmod go-w"), "{stderr}");
    assert!(
        !stderr.contains("mfa-test-cli-writable"),
        "not used: {stderr}"
    );
}
