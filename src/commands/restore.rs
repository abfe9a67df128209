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

use std::collections::HashMap;

use anyhow::Context;

use crate::backup::{BackupIdentity, Binding, OpenError};
use crate::cli::RestoreArgs;
use crate::config::Settings;
use crate::domain::{MethodRecord, UserRef};
use crate::graph::GraphClient;
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

/// Run the command: without `--yes`, show what would be re-created and change nothing.
pub async fn run(settings: &Settings, args: &RestoreArgs) -> anyhow::Result<Restored> {
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
             checked again before anything is re-created. Run again with --yes{} to re-create \
             them.",
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
    // Seam: a signed, recorded restore (who restored what) belongs here, before Graph is called.
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    let protected = ProtectedUsers::resolve(&settings.reset, &graph)
        .await
        .context("resolving reset.protected_users")?;
    // Each user's protection, checked once, now: `Err` holds why the user is left alone.
    let mut checked: HashMap<String, Result<crate::graph::DirectoryUser, String>> = HashMap::new();
    for p in &steps {
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
            }
            Err(err) => {
                println!("{}: could not restore {} {shown}: {err}", p.user, m.kind);
                done.failed += 1;
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
    Ok(done)
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
