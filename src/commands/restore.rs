//! `mfa-reset restore`: re-create the phone and email methods a batch removed.
//!
//! Only phone numbers and email addresses can be re-created through Graph, and only when
//! the reset kept them (`reset.backup = true`). Authenticator apps, FIDO2 keys, Windows
//! Hello, OATH tokens and the rest hold device secrets no API can put back: those users
//! must register again.

use crate::cli::RestoreArgs;
use crate::config::Settings;
use crate::domain::UserRef;
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

/// Run the command.
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
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    let mut done = Restored::default();
    for outcome in view.outcomes() {
        if only.as_ref().is_some_and(|u| u.key() != outcome.user.key()) || outcome.dry_run {
            continue;
        }
        // Mobile before alternateMobile: Graph refuses an alternate without a mobile.
        let mut methods = outcome.methods_removed.clone();
        methods.sort_by_key(|m| m.phone_type.as_deref() != Some("mobile"));
        for m in &methods {
            let result = match (m.kind.as_str(), &m.backup_value) {
                ("phone", Some(number)) => {
                    graph
                        .create_phone_method(
                            &outcome.user,
                            number,
                            m.phone_type.as_deref().unwrap_or("mobile"),
                        )
                        .await
                }
                ("email", Some(address)) => graph.create_email_method(&outcome.user, address).await,
                ("phone" | "email", None) => {
                    println!(
                        "{}: {} {} has no backup (reset.backup was off): cannot restore",
                        outcome.user,
                        m.kind,
                        m.masked.as_deref().unwrap_or(&m.id)
                    );
                    done.no_backup += 1;
                    continue;
                }
                _ => {
                    println!(
                        "{}: {} {} cannot be restored by any API: the user must register it again",
                        outcome.user,
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
                        outcome.user,
                        m.kind,
                        m.masked.as_deref().unwrap_or("")
                    );
                    done.created += 1;
                }
                Err(err) => {
                    println!(
                        "{}: could not restore {} {}: {err}",
                        outcome.user,
                        m.kind,
                        m.masked.as_deref().unwrap_or("")
                    );
                    done.failed += 1;
                }
            }
        }
    }
    println!(
        "restored: {}  no backup: {}  not restorable: {}  failed: {}",
        done.created, done.no_backup, done.not_restorable, done.failed
    );
    Ok(done)
}
