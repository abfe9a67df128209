//! `mfa-reset enqueue`: validate an input in full, then publish one request per user.
//!
//! Nothing is published unless every row is valid. The batch manifest goes to the
//! outcomes stream first (so `status` knows how many to expect), then the requests, with
//! pipelined publisher confirms. Request ids are derived from (batch, user): running the
//! same command again with the same `--batch` finishes an interrupted run without
//! resetting anyone twice.

use std::io::Write;

use anyhow::Context;
use chrono::Utc;
use uuid::Uuid;

use crate::broker::topology::{RK_OUTCOME, RK_REQUEST};
use crate::broker::{OutMessage, Publisher, Topology};
use crate::cli::EnqueueArgs;
use crate::config::Settings;
use crate::domain::{BatchManifest, Record, ResetRequest, UserRef, REQUEST_VERSION};
use crate::graph::GraphClient;
use crate::intake::{self, IntakeRow, Plan};

/// What was enqueued.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// Batch id.
    pub batch: String,
    /// Requests published and confirmed.
    pub count: u64,
}

/// Exit code when a large batch is not confirmed with `--yes`.
pub const EXIT_NEEDS_CONFIRMATION: i32 = 3;

/// Refused input or missing confirmation: the message is for a person, nothing was enqueued.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// What to tell the operator.
    pub message: String,
    /// Process exit code.
    pub exit_code: i32,
}

/// Run the command.
pub async fn run(settings: &Settings, args: &EnqueueArgs) -> anyhow::Result<Enqueued> {
    // Validate and publish from one private copy of the file: an editor saving the file
    // between the two passes cannot make us publish rows that were never validated.
    let snapshot = match &args.csv {
        Some(path) => Some(snapshot(path)?),
        None => None,
    };
    let plan = make_plan(settings, args, snapshot.as_ref().map(|s| s.path())).await?;
    for (line, first, user) in &plan.duplicates {
        eprintln!(
            "warning: {} line {line}: {user} already appears on line {first}; enqueued once",
            plan.source
        );
    }
    let unlisted = plan
        .duplicates_total
        .saturating_sub(plan.duplicates.len() as u64);
    if unlisted > 0 {
        eprintln!("warning: … and {unlisted} more duplicate rows, each enqueued once");
    }
    anyhow::ensure!(
        plan.count > 0,
        Refused {
            message: format!("{}: no users to enqueue; nothing was enqueued", plan.source),
            exit_code: 1,
        }
    );
    let batch = match &args.batch {
        Some(b) => validate_batch_id(b)?,
        None => new_batch_id(&plan.source),
    };
    print_summary(&plan, args);
    if plan.count > settings.intake.confirm_above as u64 && !args.yes {
        return Err(Refused {
            message: format!(
                "{} users is more than intake.confirm_above ({}): check the summary above, then run again with --yes; nothing was enqueued",
                plan.count, settings.intake.confirm_above
            ),
            exit_code: EXIT_NEEDS_CONFIRMATION,
        }
        .into());
    }
    let requested_by = args
        .requested_by
        .clone()
        .or_else(|| {
            (!settings.intake.requested_by.is_empty()).then(|| settings.intake.requested_by.clone())
        })
        .or_else(|| std::env::var("USER").ok());
    let count = publish(settings, &plan, &batch, args, requested_by).await?;
    println!("batch: {batch}");
    println!("enqueued: {count}");
    Ok(Enqueued { batch, count })
}

/// A private copy of `path` that lives as long as the returned file.
fn snapshot(path: &std::path::Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut copy =
        tempfile::NamedTempFile::new().context("creating a temporary copy of the input")?;
    match std::fs::File::open(path) {
        Ok(mut file) => {
            std::io::copy(&mut file, &mut copy)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(copy)
        }
        Err(err) => Err(Refused {
            message: format!(
                "{}: cannot read it ({err}); nothing was enqueued",
                path.display()
            ),
            exit_code: 1,
        }
        .into()),
    }
}

async fn make_plan(
    settings: &Settings,
    args: &EnqueueArgs,
    csv_snapshot: Option<&std::path::Path>,
) -> anyhow::Result<Plan> {
    let result = if let Some(path) = csv_snapshot {
        intake::plan_csv(path).map(|mut plan| {
            plan.source = format!(
                "csv:{}",
                args.csv
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            plan
        })
    } else if let Some(path) = &args.tickets {
        intake::plan_tickets(path)
    } else if let Some(group) = &args.group {
        return group_plan(settings, group, args.transitive).await;
    } else {
        anyhow::bail!("give --csv FILE, --tickets FILE or --group ID");
    };
    let source = args
        .csv
        .as_ref()
        .or(args.tickets.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    result.map_err(|err| {
        let mut message = err.render(&source);
        if let Some(copy) = csv_snapshot {
            // Messages about the file name the operator's file, not our private copy.
            message = message.replace(&copy.display().to_string(), &source);
        }
        Refused {
            message,
            exit_code: 1,
        }
        .into()
    })
}

/// The users of a group, each once. Members that are not users (devices, service principals,
/// nested groups, contacts) are never enqueued: what was skipped is said on standard error
/// ("250 users; skipped 3 devices, 1 service principal, 2 groups").
async fn group_plan(settings: &Settings, group: &str, transitive: bool) -> anyhow::Result<Plan> {
    let graph = GraphClient::new(&settings.graph, &settings.rate, &settings.retry)?;
    let listed = graph
        .group_users(group, transitive)
        .await
        .with_context(|| format!("reading the members of group {group}"))?;
    eprintln!("group:    {listed}");
    let members = listed.users;
    let mut rows = Vec::with_capacity(members.len());
    for (i, m) in members.into_iter().enumerate() {
        let value = m.user_principal_name.as_deref().unwrap_or(&m.id);
        let user = UserRef::parse(value)
            .or_else(|_| UserRef::parse(&m.id))
            .with_context(|| format!("group {group} member {value:?} is not a user"))?;
        rows.push(IntakeRow {
            line: i as u64 + 1,
            user,
            ticket: None,
            reason: None,
            requested_by: None,
            revoke_sessions: None,
        });
    }
    Ok(intake::plan_rows(format!("group:{group}"), rows))
}

fn print_summary(plan: &Plan, args: &EnqueueArgs) {
    let mut err = std::io::stderr().lock();
    let action = if args.dry_run {
        "DRY RUN: list and record what would be removed, change nothing"
    } else {
        "delete every registered authentication method in scope (reset.methods)"
    };
    // The batch id is printed once, on standard output, when the batch is enqueued.
    let _ = writeln!(err, "source:   {}", plan.source);
    let _ = writeln!(err, "users:    {}", plan.count);
    let _ = writeln!(err, "sample:   {}", plan.sample.join(", "));
    let _ = writeln!(err, "action:   {action}");
    let _ = writeln!(
        err,
        "sessions: {}",
        if args.revoke_sessions {
            "revoke sign-in sessions too"
        } else {
            "left as they are (add --revoke-sessions to revoke)"
        }
    );
}

async fn publish(
    settings: &Settings,
    plan: &Plan,
    batch: &str,
    args: &EnqueueArgs,
    requested_by: Option<String>,
) -> anyhow::Result<u64> {
    let topology = Topology::new(&settings.broker, &settings.retry);
    let mut publisher =
        Publisher::connect(&settings.broker, &topology, "mfa-reset enqueue").await?;
    let now = Utc::now();
    let manifest = Record::Manifest(BatchManifest {
        batch: batch.to_string(),
        count: plan.count,
        source: plan.source.clone(),
        dry_run: args.dry_run,
        revoke_sessions: args.revoke_sessions,
        requested_by: requested_by.clone(),
        created_at: now,
    });
    publisher
        .send(OutMessage::json(RK_OUTCOME, serde_json::to_vec(&manifest)?))
        .await?;
    let mut published = 0u64;
    let rows = plan.rows()?;
    for row in rows {
        let row = row?;
        let request = ResetRequest {
            version: REQUEST_VERSION,
            request_id: ResetRequest::id_for(batch, &row.user),
            batch: batch.to_string(),
            user: row.user,
            ticket: row.ticket,
            reason: row.reason.or_else(|| args.reason.clone()),
            requested_by: row.requested_by.or_else(|| requested_by.clone()),
            dry_run: args.dry_run,
            revoke_sessions: row.revoke_sessions.unwrap_or(args.revoke_sessions),
            requested_at: now,
            replay: 0,
            carry: None,
        };
        let msg = OutMessage::json(RK_REQUEST, serde_json::to_vec(&request)?)
            .with_id(request.request_id.to_string());
        if let Err(err) = publisher.send(msg).await {
            return Err(interrupted(err, batch, publisher.confirmed()));
        }
        published += 1;
    }
    if let Err(err) = publisher.flush().await {
        return Err(interrupted(err, batch, publisher.confirmed()));
    }
    anyhow::ensure!(
        published == plan.count,
        "the input changed while it was being enqueued ({published} rows now, {} validated); \
         re-run with --batch {batch}",
        plan.count
    );
    publisher.close().await?;
    Ok(published)
}

fn interrupted(err: anyhow::Error, batch: &str, confirmed: u64) -> anyhow::Error {
    err.context(format!(
        "enqueueing batch {batch} was interrupted after {} confirmed message(s); run the same \
         command again with --batch {batch} to finish: users already enqueued are not reset twice",
        confirmed.saturating_sub(1)
    ))
}

/// `20261127-2301-users-4f2a`: when, from what, and 4 random hex digits.
pub fn new_batch_id(source: &str) -> String {
    let stem = std::path::Path::new(source.rsplit(':').next().unwrap_or(source))
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    let stem = stem.trim_matches('-');
    let rand = &Uuid::new_v4().simple().to_string()[..4];
    let when = Utc::now().format("%Y%m%d-%H%M");
    if stem.is_empty() {
        format!("{when}-{rand}")
    } else {
        format!("{when}-{stem}-{rand}")
    }
}

fn validate_batch_id(id: &str) -> anyhow::Result<String> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    anyhow::ensure!(
        ok,
        Refused {
            message: format!(
                "--batch {id:?}: use 1–100 letters, digits, '-', '_' or '.'; nothing was enqueued"
            ),
            exit_code: 1,
        }
    );
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_readable_and_unique() {
        let a = new_batch_id("csv:/tmp/Users Q4.csv");
        let b = new_batch_id("csv:/tmp/Users Q4.csv");
        assert_ne!(a, b);
        assert!(a.contains("-users-q4-"), "{a}");
        assert!(validate_batch_id(&a).is_ok());
        assert!(validate_batch_id("bad id").is_err());
    }
}
