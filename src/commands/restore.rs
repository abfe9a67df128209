//! `mfa-reset restore`: re-create the phone and email methods a batch removed.
//!
//! Only phone numbers and email addresses can be re-created through Graph, and only when
//! the reset kept them (`reset.backup = true`). Authenticator apps, FIDO2 keys, Windows
//! Hello, OATH tokens and the rest hold device secrets no API can put back: those users
//! must register again.
//!
//! Only values from verified worker records are re-created, and only once opened with the
//! restore key (`--identity FILE`): workers seal each value to `reset.backup_recipient`,
//! bound to its user and method ([`crate::backup`]). Before anything is created, each
//! user's protection is checked again, exactly as a reset checks it
//! ([`crate::reset::protection`]): a user who is protected or holds a directory role now
//! (or whose roles cannot be checked) is left alone.
//!
//! A restore adds a way to sign in to someone's account, so it is signed and recorded:
//! `--yes` needs an admin's key (`--key`, namespace `mfa-reset-admin`), and before Graph is
//! called a signed record of who restores which users' methods (types and ids, never the
//! values) is on the outcomes stream, confirmed by the broker; after, a second one says what
//! was created ([`crate::records::restore`]). If the first cannot be written, nothing is
//! created. `audit verify` and `audit export` show both.

use std::collections::HashMap;

use anyhow::Context;

use crate::backup::{BackupIdentity, Binding, OpenError};
use crate::cli::RestoreArgs;
use crate::config::Settings;
use crate::domain::{MethodRecord, RestoreMethod, RestoreResult, RestoreUser, UserRef};
use crate::graph::GraphClient;
use crate::records::restore::RestoreLog;
use crate::reset::ProtectedUsers;

/// What restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Methods re-created.
    pub created: u64,
    /// Phone/email methods that had no backup value.
    pub no_backup: u64,
    /// Methods of types no API can restore.
    pub not_restorable: u64,
    /// Creations Graph refused.
    pub failed: u64,
    /// Backups that did not open with the restore key (another key, altered, or bound to
    /// another user or method).
    pub unopened: u64,
    /// Methods not re-created because their user is protected now (`reset.protected_users`,
    /// a directory role with `reset.skip_admins`, or roles that could not be checked).
    pub skipped_protected: u64,
}

/// What restore does with one removed method: a decision, carried out (or only shown) by [`run`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Re-create a phone method.
    Phone {
        /// The number.
        number: String,
        /// mobile, alternateMobile, office.
        phone_type: String,
    },
    /// Re-create an email method.
    Email {
        /// The address.
        address: String,
    },
    /// A sealed backup, not opened (a preview without `--identity`).
    Sealed,
    /// A sealed backup that did not open.
    Unopened(OpenError),
    /// A phone or email removed while `reset.backup` was off.
    NoBackup,
    /// A method no API can re-create (app, key, token…).
    NotRestorable,
}

/// One user's method and what to do with it.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The user.
    pub user: UserRef,
    /// The request whose verified outcome recorded the method.
    pub request_id: uuid::Uuid,
    /// Which execution of it the outcome is (0 = original, n = n-th replay).
    pub replay: u32,
    /// The method as recorded.
    pub method: MethodRecord,
    /// What to do.
    pub step: Step,
}

/// Every step restore would take for `view`, in order (mobile before alternateMobile: Graph
/// refuses an alternate without a mobile). Sealed backups are opened with `identity`; without
/// one they stay [`Step::Sealed`].
pub fn plan(
    view: &crate::batch::BatchView,
    only: Option<&UserRef>,
    identity: Option<&BackupIdentity>,
) -> Vec<Planned> {
    let mut planned = Vec::new();
    for outcome in view.outcomes() {
        if only.is_some_and(|u| u.key() != outcome.user.key()) || outcome.dry_run {
            continue;
        }
        let user = outcome.user.to_string();
        let mut methods = outcome.methods_removed.clone();
        methods.sort_by_key(|m| m.phone_type.as_deref() != Some("mobile"));
        for m in methods {
            let opened = match (&m.backup_sealed, identity) {
                (Some(sealed), Some(identity)) => Some(identity.open(
                    sealed,
                    Binding {
                        user: &user,
                        kind: &m.kind,
                        id: &m.id,
                    },
                )),
                _ => None,
            };
            let step = match (m.kind.as_str(), &m.backup_sealed, opened) {
                ("phone" | "email", None, _) => Step::NoBackup,
                ("phone" | "email", Some(_), None) => Step::Sealed,
                ("phone" | "email", Some(_), Some(Err(error))) => Step::Unopened(error),
                ("phone", Some(_), Some(Ok(number))) => Step::Phone {
                    number,
                    phone_type: m.phone_type.clone().unwrap_or_else(|| "mobile".into()),
                },
                ("email", Some(_), Some(Ok(address))) => Step::Email { address },
                _ => Step::NotRestorable,
            };
            planned.push(Planned {
                user: outcome.user.clone(),
                request_id: outcome.request_id,
                replay: outcome.replay,
                method: m,
                step,
            });
        }
    }
    planned
}

/// Is there anything a restore key is needed for?
fn needs_identity(steps: &[Planned]) -> bool {
    steps.iter().any(|p| p.step == Step::Sealed)
}

/// What the restore's started record names: each user's methods that are to be re-created
/// (opened backups), by type and id, grouped per outcome in plan order.
fn to_attempt(steps: &[Planned]) -> Vec<RestoreUser> {
    let mut users: Vec<RestoreUser> = Vec::new();
    for p in steps {
        if !matches!(p.step, Step::Phone { .. } | Step::Email { .. }) {
            continue;
        }
        let method = RestoreMethod {
            kind: p.method.kind.clone(),
            id: p.method.id.clone(),
            phone_type: p.method.phone_type.clone(),
            result: None,
            reason: None,
        };
        match users
            .iter_mut()
            .find(|u| u.request_id == p.request_id && u.replay == p.replay)
        {
            Some(user) => user.methods.push(method),
            None => users.push(RestoreUser {
                user: p.user.clone(),
                request_id: p.request_id,
                replay: p.replay,
                methods: vec![method],
            }),
        }
    }
    users
}

/// The started record's users with each method's result filled in from `results`.
fn with_results(mut users: Vec<RestoreUser>, results: &Results) -> Vec<RestoreUser> {
    for user in &mut users {
        for method in &mut user.methods {
            if let Some((result, reason)) = results.get(&(user.request_id, method.id.clone())) {
                method.result = Some(*result);
                method.reason = reason.clone();
            }
        }
    }
    users
}

/// The admin's signer for `--yes`, checked before anything is read or created.
fn admin_key(
    settings: &Settings,
    args: &RestoreArgs,
) -> anyhow::Result<(crate::trust::Signer, crate::trust::Principal)> {
    let key = args.key.as_deref().context(
        "restore --yes needs --key FILE: an admin's SSH key (the private key file, or its .pub \
         with the key in ssh-agent) signs the restore, which is recorded on the outcomes \
         stream before anything is re-created; nothing was restored",
    )?;
    super::admin_signer(
        settings,
        key,
        "--key",
        "this key may not sign a restore; nothing was restored",
    )
}

/// Run the command: without `--yes`, show what would be re-created and change nothing.
pub async fn run(settings: &Settings, args: &RestoreArgs) -> anyhow::Result<Restored> {
    // Refused before anything is read: a restore nobody may sign is not started.
    let signer = args.yes.then(|| admin_key(settings, args)).transpose()?;
    let identity = args
        .identity
        .as_deref()
        .map(|path| BackupIdentity::from_file(path).context("--identity"))
        .transpose()?;
    if let Some(identity) = &identity {
        let configured = settings.reset.backup_recipient.trim();
        let ours = identity.recipient().to_string();
        if !configured.is_empty() && configured != ours {
            // Not fatal: a batch backed up before the key was rotated opens with the old key.
            eprintln!(
                "note: --identity is the key of {ours}, not reset.backup_recipient \
                 ({configured}): backups sealed to the configured key will not open with it"
            );
        }
    }
    // Only values from verified worker records are ever re-created.
    let view = super::status::load(settings, &args.batch).await?;
    if let Some(warning) = super::status::ignored_warning(&view, &args.batch) {
        eprintln!("{warning}");
    }
    let only = args
        .user
        .as_deref()
        .map(UserRef::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let steps = plan(&view, only.as_ref(), identity.as_ref());
    let mut done = Restored::default();
    if !args.yes {
        for p in &steps {
            let shown = p.method.masked.as_deref().unwrap_or(&p.method.id);
            match &p.step {
                Step::Phone { .. } | Step::Email { .. } | Step::Sealed => {
                    println!("{}: would restore {} {shown}", p.user, p.method.kind);
                    done.created += 1;
                }
                Step::Unopened(error) => {
                    println!(
                        "{}: cannot restore {} {shown}: {error}",
                        p.user, p.method.kind
                    );
                    done.unopened += 1;
                }
                Step::NoBackup => done.no_backup += 1,
                Step::NotRestorable => done.not_restorable += 1,
            }
        }
        println!(
            "preview: {} method(s) would be re-created ({} without backup, {} not restorable, \
             {} whose backup does not open); nothing was changed. Each user's protection is \
             checked again before anything is re-created. Run again with --yes --key FILE (an \
             admin's key: the restore is signed and recorded){} to re-create them.",
            done.created,
            done.no_backup,
            done.not_restorable,
            done.unopened,
            if identity.is_none() && needs_identity(&steps) {
                " --identity FILE (the restore key)"
            } else {
                ""
            }
        );
        return Ok(Restored { created: 0, ..done });
    }
    anyhow::ensure!(
        identity.is_some() || !needs_identity(&steps),
        "the backups of batch {} are encrypted to the restore key: pass --identity FILE, the \
         age identity file (AGE-SECRET-KEY-1…) whose public key is reset.backup_recipient; \
         nothing was restored",
        args.batch
    );
    // Recorded before Graph is called: who restores which methods of whom. Nothing is
    // created unless the broker confirmed it.
    let attempt = to_attempt(&steps);
    let log = match (signer, attempt.is_empty()) {
        (Some((signer, by)), false) => {
            let mut log = RestoreLog::open(settings, &args.batch, signer, by)
                .await
                .context("the restore cannot be recorded; nothing was restored")?;
            log.write_started(attempt.clone())
                .await
                .context("the restore cannot be recorded; nothing was restored")?;
            println!(
                "restore {} by {} ({}) recorded on {}.outcomes",
                log.id(),
                log.by(),
                log.fingerprint(),
                settings.broker.prefix
            );
            Some(log)
        }
        _ => None,
    };
    let mut results = Results::new();
    let carried = carry_out(settings, &steps, &mut done, &mut results).await;
    if let Some(log) = log {
        let ended = carried.as_ref().err().map(|error| error.to_string());
        let written = log
            .write_finished(with_results(attempt, &results), ended)
            .await;
        if let (Err(error), Err(_)) = (&carried, &written) {
            eprintln!("error: {error:#}");
        }
        written.context(
            "what came of the methods above could not be recorded: the restore's started \
             record names what was attempted",
        )?;
    }
    carried?;
    Ok(done)
}

/// What came of each method (by request id and method id), for the finished record.
type Results = HashMap<(uuid::Uuid, String), (RestoreResult, Option<String>)>;

/// Check each user's protection and re-create what `steps` opened, counting into `done` and
/// noting each attempted method's result in `results`.
async fn carry_out(
    settings: &Settings,
    steps: &[Planned],
    done: &mut Restored,
    results: &mut Results,
) -> anyhow::Result<()> {
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    let protected = ProtectedUsers::resolve(&settings.reset, &graph)
        .await
        .context("resolving reset.protected_users")?;
    // Each user's protection, checked once, now: `Err` holds why the user is left alone.
    let mut checked: HashMap<String, Result<crate::graph::DirectoryUser, String>> = HashMap::new();
    for p in steps {
        let m = &p.method;
        let shown = m.masked.as_deref().unwrap_or("");
        match &p.step {
            Step::Phone { .. } | Step::Email { .. } => {}
            Step::NoBackup => {
                println!(
                    "{}: {} {} has no backup (reset.backup was off): cannot restore",
                    p.user,
                    m.kind,
                    m.masked.as_deref().unwrap_or(&m.id)
                );
                done.no_backup += 1;
                continue;
            }
            Step::Sealed | Step::Unopened(_) => {
                let why = match &p.step {
                    Step::Unopened(error) => error.to_string(),
                    _ => "no restore key given".to_string(),
                };
                println!("{}: cannot restore {} {shown}: {why}", p.user, m.kind);
                done.unopened += 1;
                continue;
            }
            Step::NotRestorable => {
                println!(
                    "{}: {} {} cannot be restored by any API: the user must register it again",
                    p.user,
                    m.kind,
                    m.display_name.as_deref().unwrap_or(&m.id)
                );
                done.not_restorable += 1;
                continue;
            }
        }
        let key = p.user.key();
        if !checked.contains_key(&key) {
            let verdict = check_user(&graph, &p.user, settings, &protected).await;
            checked.insert(key.clone(), verdict);
        }
        let user = match checked.get(&key) {
            Some(Ok(user)) => user,
            Some(Err(why)) => {
                println!("{}: not restoring {} {shown}: {why}", p.user, m.kind);
                done.skipped_protected += 1;
                results.insert(
                    (p.request_id, m.id.clone()),
                    (RestoreResult::Protected, Some(why.clone())),
                );
                continue;
            }
            // Inserted just above.
            None => continue,
        };
        let result = match &p.step {
            Step::Phone { number, phone_type } => {
                graph.create_phone_method(user, number, phone_type).await
            }
            Step::Email { address } => graph.create_email_method(user, address).await,
            _ => continue,
        };
        match result {
            Ok(()) => {
                println!("{}: restored {} {shown}", p.user, m.kind);
                done.created += 1;
                results.insert((p.request_id, m.id.clone()), (RestoreResult::Created, None));
            }
            Err(err) => {
                println!("{}: could not restore {} {shown}: {err}", p.user, m.kind);
                done.failed += 1;
                // The code only: Graph's message may quote the value it refused.
                results.insert(
                    (p.request_id, m.id.clone()),
                    (RestoreResult::Failed, Some(err.code())),
                );
            }
        }
    }
    println!(
        "restored: {}  no backup: {}  not restorable: {}  backup not opened: {}  \
         protected (not restored): {}  failed: {}",
        done.created,
        done.no_backup,
        done.not_restorable,
        done.unopened,
        done.skipped_protected,
        done.failed
    );
    Ok(())
}

/// The user, resolved to its object id (every call then addresses that id), when it may be
/// changed now; else why not. The same check as a reset's, made again: protection can have
/// changed since the batch ran, and a restore adds a way to sign in.
async fn check_user(
    graph: &GraphClient,
    user: &UserRef,
    settings: &Settings,
    protected: &ProtectedUsers,
) -> Result<crate::graph::DirectoryUser, String> {
    let resolved = graph
        .resolve_user(user)
        .await
        .map_err(|error| format!("could not look the user up ({error})"))?;
    match crate::reset::protection(graph, &resolved, &settings.reset, protected).await {
        Ok(None) => Ok(resolved),
        Ok(Some((_, why))) => Err(why),
        Err(error) => Err(format!(
            "could not check the user's protection ({error}); left alone"
        )),
    }
}
