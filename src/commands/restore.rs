//! `mfa-reset restore`: re-create the phone and email methods a batch removed.
//!
//! Only phone numbers and email addresses can be re-created through Graph, and only when
//! the reset kept them (`reset.backup = true`). Authenticator apps, FIDO2 keys, Windows
//! Hello, OATH tokens and the rest hold device secrets no API can put back: those users
//! must register again.

use crate::cli::RestoreArgs;
use crate::config::Settings;
use crate::domain::{MethodRecord, UserRef};
use crate::graph::GraphClient;

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
/// refuses an alternate without a mobile).
pub fn plan(view: &crate::batch::BatchView, only: Option<&UserRef>) -> Vec<Planned> {
    let mut planned = Vec::new();
    for outcome in view.outcomes() {
        if only.is_some_and(|u| u.key() != outcome.user.key()) || outcome.dry_run {
            continue;
        }
        let mut methods = outcome.methods_removed.clone();
        methods.sort_by_key(|m| m.phone_type.as_deref() != Some("mobile"));
        for m in methods {
            let step = match (m.kind.as_str(), &m.backup_value) {
                ("phone", Some(number)) => Step::Phone {
                    number: number.clone(),
                    phone_type: m.phone_type.clone().unwrap_or_else(|| "mobile".into()),
                },
                ("email", Some(address)) => Step::Email {
                    address: address.clone(),
                },
                ("phone" | "email", None) => Step::NoBackup,
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

/// Run the command: without `--yes`, show what would be re-created and change nothing.
pub async fn run(settings: &Settings, args: &RestoreArgs) -> anyhow::Result<Restored> {
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
    let steps = plan(&view, only.as_ref());
    let mut done = Restored::default();
    if !args.yes {
        for p in &steps {
            let shown = p.method.masked.as_deref().unwrap_or(&p.method.id);
            match &p.step {
                Step::Phone { .. } | Step::Email { .. } => {
                    println!("{}: would restore {} {shown}", p.user, p.method.kind);
                    done.created += 1;
                }
                Step::NoBackup => done.no_backup += 1,
                Step::NotRestorable => done.not_restorable += 1,
            }
        }
        println!(
            "preview: {} method(s) would be re-created ({} without backup, {} not restorable); \
             nothing was changed. Run again with --yes to re-create them.",
            done.created, done.no_backup, done.not_restorable
        );
        return Ok(Restored { created: 0, ..done });
    }
    // Seam: a signed, recorded restore (who restored what) belongs here, before Graph is called.
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    for p in &steps {
        let m = &p.method;
        let result = match &p.step {
            Step::Phone { number, phone_type } => {
                graph.create_phone_method(&p.user, number, phone_type).await
            }
            Step::Email { address } => graph.create_email_method(&p.user, address).await,
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
        };
        match result {
            Ok(()) => {
                println!(
                    "{}: restored {} {}",
                    p.user,
                    m.kind,
                    m.masked.as_deref().unwrap_or("")
                );
                done.created += 1;
            }
            Err(err) => {
                println!(
                    "{}: could not restore {} {}: {err}",
                    p.user,
                    m.kind,
                    m.masked.as_deref().unwrap_or("")
                );
                done.failed += 1;
            }
        }
    }
    println!(
        "restored: {}  no backup: {}  not restorable: {}  failed: {}",
        done.created, done.no_backup, done.not_restorable, done.failed
    );
    Ok(done)
}
