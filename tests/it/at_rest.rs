//! Personal data at rest: backed-up phone numbers and emails are encrypted to the restore key
//! on the stream, `restore` needs that key and checks protection again, and report files are
//! private.

use std::path::PathBuf;
use std::sync::Arc;

use graph_sim::AppPatch;
use mfa_reset::backup::BackupIdentity;
use mfa_reset::cli::{ReportArgs, ReportFormat, RestoreArgs};
use mfa_reset::commands;
use mfa_reset::graph::GraphClient;
use mfa_reset::worker::{self, WorkOptions, WorkerMetrics};
use tokio_util::sync::CancellationToken;

use crate::common::env::TestEnv;
use crate::fidelity::{fixture_tenant, outcome, reset};

pub(crate) const ADELE: &str = "adele.vance@contoso.com";
/// Adele's mobile, alternate mobile and email address in the fixture tenant.
pub(crate) const ADELE_SECRETS: [&str; 3] = [
    "+1 5555551234",
    "+1 5555555678",
    "adele@personal.example.com",
];

/// Turn backups on for `env` with a fresh restore key: the folder holding it (keep it alive)
/// and the key file's path, for `restore --identity`.
pub(crate) fn restore_key(env: &mut TestEnv) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("restore.key");
    let key = BackupIdentity::generate();
    key.write_new(&path).expect("restore key written");
    env.settings.reset.backup = true;
    env.settings.reset.backup_recipient = key.recipient().to_string();
    (dir, path)
}

/// `restore` of `batch`; with `yes`, signed with the admin's key of `env`.
pub(crate) fn restore_args(
    env: &TestEnv,
    batch: &str,
    identity: Option<PathBuf>,
    yes: bool,
) -> RestoreArgs {
    RestoreArgs {
        batch: batch.to_string(),
        user: None,
        yes,
        identity,
        key: yes.then(|| env.keys.admin.path.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backed_up_phone_numbers_and_emails_never_reach_the_stream_in_clear() {
    let mut env = TestEnv::new("rest-clear", fixture_tenant()).await;
    let (_dir, identity_path) = restore_key(&mut env);
    let view = reset(&mut env, &[ADELE]).await;
    assert_eq!(
        outcome(&view, ADELE).status,
        mfa_reset::domain::Status::Reset
    );

    // Every message on the stream, raw, as anyone with read access sees it.
    let bodies = env.stream_bodies().await;
    let mut sealed = 0;
    for body in &bodies {
        let text = String::from_utf8_lossy(body);
        for secret in ADELE_SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} in clear on the stream: {text}"
            );
        }
        assert!(!text.contains("5555551234") && !text.contains("adele@personal"));
        sealed += text.matches("\"backup_sealed\"").count();
    }
    // Plan and outcome both carry the three backups, sealed.
    assert!(sealed >= 6, "{sealed} sealed backups on the stream");

    // What is sealed opens with the restore key to exactly Adele's values.
    let identity = BackupIdentity::from_file(&identity_path).expect("restore key");
    let mut opened: Vec<String> = commands::restore::plan(&view, None, Some(&identity))
        .into_iter()
        .filter_map(|p| match p.step {
            commands::restore::Step::Phone { number, .. } => Some(number),
            commands::restore::Step::Email { address } => Some(address),
            _ => None,
        })
        .collect();
    opened.sort();
    assert_eq!(opened, ADELE_SECRETS);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_backup_on_and_no_restore_key_refuses_to_start() {
    let mut env = TestEnv::new("rest-nokey", fixture_tenant()).await;
    env.setup().await;
    env.settings.reset.backup = true;
    env.settings.reset.backup_recipient = String::new();
    let settings = env.settings.clone();
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry).expect("graph");
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        worker::run(
            &settings,
            graph,
            WorkOptions {
                concurrency: 1,
                exit_when_idle: None,
            },
            Arc::new(WorkerMetrics::default()),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the worker ends at once");
    let error = format!("{:#}", ended.expect_err("refused to start"));
    assert!(error.contains("reset.backup_recipient"), "{error}");
    assert!(error.contains("age-keygen"), "{error}");
    assert_eq!(env.sim.stats().graph_requests, 0, "{error}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_needs_the_restore_key_and_another_key_restores_nothing() {
    let mut env = TestEnv::new("rest-identity", fixture_tenant()).await;
    let (_dir, _identity) = restore_key(&mut env);
    let view = reset(&mut env, &[ADELE]).await;
    let batch = view.manifest().unwrap().batch.clone();
    env.sim.reset_stats();

    // Preview without the key: shows what would come back, changes nothing.
    let preview = commands::restore::run(&env.settings, &restore_args(&env, &batch, None, false))
        .await
        .expect("preview");
    assert_eq!(preview.created, 0);
    // --yes without the key: refused, naming the option.
    let refused = commands::restore::run(&env.settings, &restore_args(&env, &batch, None, true))
        .await
        .expect_err("no key, no restore");
    assert!(format!("{refused:#}").contains("--identity"), "{refused:#}");

    // Another restore key opens nothing.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("other.key");
    BackupIdentity::generate().write_new(&other).unwrap();
    let done = commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(other), true),
    )
    .await
    .expect("restore runs");
    assert_eq!(done.created, 0, "{done:?}");
    assert_eq!(done.unopened, 3, "{done:?}");
    assert_eq!(env.sim.stats().writes, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_checks_protection_again_and_leaves_a_now_protected_user_alone() {
    let mut env = TestEnv::new("rest-protect", fixture_tenant()).await;
    env.settings.reset.skip_admins = true;
    let (_dir, identity) = restore_key(&mut env);
    let view = reset(&mut env, &[ADELE]).await;
    let batch = view.manifest().unwrap().batch.clone();
    env.sim.reset_stats();

    // Listed in reset.protected_users since the reset: left alone.
    let mut protected = env.settings.clone();
    protected.reset.protected_users = vec![ADELE.to_uppercase()];
    let done = commands::restore::run(
        &protected,
        &restore_args(&env, &batch, Some(identity.clone()), true),
    )
    .await
    .expect("restore runs");
    assert_eq!((done.created, done.skipped_protected), (0, 3), "{done:?}");
    assert_eq!(env.sim.stats().writes, 0);

    // Roles that cannot be read (the app lost RoleManagement.Read.Directory): fails closed.
    env.sim.set_app(AppPatch {
        role_management_read: Some(false),
        ..AppPatch::default()
    });
    let done = commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(identity.clone()), true),
    )
    .await
    .expect("restore runs");
    assert_eq!((done.created, done.skipped_protected), (0, 3), "{done:?}");
    assert_eq!(env.sim.stats().writes, 0);

    // Neither: the three come back.
    env.sim.set_app(AppPatch {
        role_management_read: Some(true),
        ..AppPatch::default()
    });
    let done = commands::restore::run(
        &env.settings,
        &restore_args(&env, &batch, Some(identity), true),
    )
    .await
    .expect("restore runs");
    assert_eq!((done.created, done.skipped_protected), (3, 0), "{done:?}");
    env.cleanup().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_audit_export_files_are_0600_and_never_written_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut env = TestEnv::new("rest-files", fixture_tenant()).await;
    let view = reset(&mut env, &[ADELE]).await;
    let batch = view.manifest().unwrap().batch.clone();
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    let report = dir.path().join("report.jsonl");
    std::fs::write(&report, "old").unwrap();
    std::fs::set_permissions(&report, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = |out: PathBuf| ReportArgs {
        batch: batch.clone(),
        format: ReportFormat::Jsonl,
        out: Some(out),
    };
    commands::report::run(&env.settings, &args(report.clone()))
        .await
        .expect("report");
    assert_eq!(mode(&report), 0o600);
    assert!(std::fs::read_to_string(&report).unwrap().contains(ADELE));

    let export = dir.path().join("export.jsonl");
    commands::audit::export(&env.settings, None, Some(&export))
        .await
        .expect("export");
    assert_eq!(mode(&export), 0o600);

    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let refused = commands::report::run(&env.settings, &args(link.clone()))
        .await
        .expect_err("a symlink is refused");
    assert!(
        format!("{refused:#}").contains("symbolic link"),
        "{refused:#}"
    );
    assert!(commands::audit::export(&env.settings, None, Some(&link))
        .await
        .is_err());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    env.cleanup().await;
}
