//! `mfa-reset enqueue`: validate an input in full, then publish one request per user.
//!
//! Nothing is published unless every row is valid. The batch is signed once: a first pass
//! over the validated rows builds the Merkle tree of its requests, the operator's key
//! (`--key`, or ssh-agent) signs the manifest holding its root, and a second pass publishes
//! every request with its compact proof in its `proof` field
//! ([`crate::trust::requests::CompactProof`]: the manifest's digest, the index and the short
//! path up to the tree's cap). The batch's manifest record,
//! holding the signed manifest and the cap, goes to the outcomes stream first (so `status`
//! knows how many to expect, and workers learn the batch before its first request), then the
//! requests, with pipelined publisher confirms, all through the intake exchange. A batch of
//! more than `security.approval_above` users goes to `{prefix}.awaiting` instead of the
//! requests queue, its manifest record first, until a second person approves it
//! (`mfa-reset approve`). Request ids are derived from (batch, user): running the same
//! command again with the same `--batch` finishes an interrupted run without resetting anyone
//! twice.

use std::io::Write;

use anyhow::Context;
use chrono::Utc;
use uuid::Uuid;

use crate::broker::topology::{RK_AWAITING, RK_OUTCOME, RK_REQUEST};
use crate::broker::{OutMessage, Publisher, Topology};
use crate::cli::EnqueueArgs;
use crate::config::Settings;
use crate::domain::{BatchManifest, Record, ResetRequest, UserRef, REQUEST_VERSION};
use crate::graph::GraphClient;
use crate::intake::{self, IntakeRow, Plan};
use crate::trust::merkle::{leaf_hash, CAP_NODES};
use crate::trust::requests::{leaf_bytes, CompactProof, Manifest, SealedManifest};
use crate::trust::{AllowedSigners, Digest, MerkleTree, Namespace, Signer};

/// What was enqueued.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// Batch id.
    pub batch: String,
    /// Requests published and confirmed.
    pub count: u64,
    /// True when the batch waits in `{prefix}.awaiting` for a second person's approval.
    pub awaiting_approval: bool,
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
    // Who signs, checked before reading the input: a key that may not request fails now.
    let operator = operator(settings, args)?;
    // Validate and publish from one private copy of the file: an editor saving the file
    // between the two passes cannot make us publish rows that were never validated.
    let snapshot = match &args.csv {
        Some(path) => Some(snapshot(path)?),
        None => None,
    };
    let plan = make_plan(settings, args, snapshot.as_ref().map(|s| s.path())).await?;
    // Written, not printed: `serve` runs this too, and a closed stdout/stderr must not panic.
    let mut err = std::io::stderr();
    for (line, first, user) in &plan.duplicates {
        let _ = writeln!(
            err,
            "warning: {} line {line}: {user} already appears on line {first}; enqueued once",
            plan.source
        );
    }
    let unlisted = plan
        .duplicates_total
        .saturating_sub(plan.duplicates.len() as u64);
    if unlisted > 0 {
        let _ = writeln!(
            err,
            "warning: … and {unlisted} more duplicate rows, each enqueued once"
        );
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
    let awaiting_approval = plan.count > settings.security.approval_above;
    let count = publish(
        settings,
        &plan,
        &batch,
        args,
        requested_by,
        &operator,
        awaiting_approval,
    )
    .await?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "batch: {batch}");
    let _ = writeln!(out, "enqueued: {count}");
    if awaiting_approval {
        let _ = writeln!(
            out,
            "approval: {count} users is more than security.approval_above ({}): the batch waits \
             until another person runs `mfa-reset approve --batch {batch} --key FILE`",
            settings.security.approval_above
        );
    }
    Ok(Enqueued {
        batch,
        count,
        awaiting_approval,
    })
}

/// The operator's key and the principal `security.allowed_signers` names for it.
pub struct Operator {
    /// Signs the manifest.
    pub signer: Signer,
    /// Who the workers will see as requester.
    pub principal: String,
}

fn operator(settings: &Settings, args: &EnqueueArgs) -> anyhow::Result<Operator> {
    let configured = (!settings.intake.key.trim().is_empty())
        .then(|| std::path::PathBuf::from(settings.intake.key.trim()));
    let Some(key) = args.key.clone().or(configured) else {
        return Err(Refused {
            message: "enqueue signs every batch: give --key FILE (your SSH private key, or your \
                      public key with the private key in ssh-agent; or set intake.key), a key \
                      listed in security.allowed_signers for namespace mfa-reset-request; \
                      nothing was enqueued"
                .into(),
            exit_code: 1,
        }
        .into());
    };
    let signer = Signer::from_key_file(&key).with_context(|| format!("--key {}", key.display()))?;
    let principal = signing_principal(settings, &signer, Namespace::Request)?;
    Ok(Operator { signer, principal })
}

/// The principal `signer` signs as in `namespace`, from `security.allowed_signers`, or why
/// its signatures would be refused (checked here so nothing is published in vain).
pub fn signing_principal(
    settings: &Settings,
    signer: &Signer,
    namespace: Namespace,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        !settings.security.allowed_signers.trim().is_empty(),
        "security.allowed_signers is not set (MFA_RESET__SECURITY__ALLOWED_SIGNERS): it says \
         which principal your key signs as; point it at the deployment's allowed_signers file"
    );
    let allowed = AllowedSigners::read(std::path::Path::new(&settings.security.allowed_signers))?;
    let principal = allowed
        .principal_for(signer.public_key().key_data(), namespace, Utc::now())
        .map_err(|refusal| {
            anyhow::anyhow!(
                "{refusal}: workers would refuse what this key signs (security.allowed_signers \
                 = {}); nothing was published",
                allowed.source()
            )
        })?;
    Ok(principal.to_string())
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
            tap: None,
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
    if args.tap {
        let _ = writeln!(
            err,
            "tap:      a Temporary Access Pass after each reset, encrypted to tap.recipient"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    settings: &Settings,
    plan: &Plan,
    batch: &str,
    args: &EnqueueArgs,
    requested_by: Option<String>,
    operator: &Operator,
    awaiting_approval: bool,
) -> anyhow::Result<u64> {
    let now = Utc::now();
    // Checked before anything is published whenever a pass may be asked for (`--tap`, or
    // ticket events, which may say `"tap": true`): a bad tap.lifetime fails the whole batch.
    let tap = if args.tap || args.tickets.is_some() {
        Some(settings.tap.request()?)
    } else {
        None
    };
    let request_of = |row: IntakeRow| ResetRequest {
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
        tap: tap.filter(|_| row.tap.unwrap_or(args.tap)),
        carry: None,
        proof: None,
    };
    // Pass 1: the Merkle tree of the requests, and the signed manifest holding its root.
    let leaves = leaf_hashes(plan.rows()?, plan.count, &request_of)?;
    let tree = MerkleTree::from_leaf_hashes(leaves);
    let sealed = SealedManifest::seal(
        Manifest {
            batch: batch.to_string(),
            count: tree.len(),
            root: tree.root(),
            requested_by: operator.principal.clone(),
            created_at: now,
        },
        &operator.signer,
    )
    .context("signing the batch manifest")?;
    let digest = sealed.digest()?;
    let cap = tree.cap(CAP_NODES);

    let topology = Topology::new(&settings.broker, &settings.retry);
    let intake = topology.intake();
    let mut publisher =
        Publisher::connect(&settings.broker, &topology, "mfa-reset enqueue").await?;
    let manifest = Record::Manifest(BatchManifest {
        batch: batch.to_string(),
        count: plan.count,
        source: plan.source.clone(),
        dry_run: args.dry_run,
        revoke_sessions: args.revoke_sessions,
        requested_by: requested_by.clone(),
        created_at: now,
        sealed: Some(sealed.clone()),
        cap: Some(cap.clone()),
    });
    let manifest = serde_json::to_vec(&manifest)?;
    publisher
        .send(OutMessage::json(RK_OUTCOME, manifest.clone()).via(intake.clone()))
        .await?;
    let routing_key = if awaiting_approval {
        // `approve` reads the batch from the awaiting stream alone: its manifest record
        // goes there too, before the requests.
        publisher
            .send(OutMessage::json(RK_AWAITING, manifest).via(intake.clone()))
            .await?;
        RK_AWAITING
    } else {
        RK_REQUEST
    };
    // Pass 2: every request with its compact proof.
    let mut published = 0u64;
    let rows = plan.rows()?;
    for (index, row) in (0u64..).zip(rows) {
        let mut request = request_of(row?);
        let path = tree.path_to_cap(index, &cap).ok_or_else(|| {
            anyhow::anyhow!(
                "the input changed while it was being enqueued (more rows than the {} \
                 validated); re-run with --batch {batch}",
                plan.count
            )
        })?;
        // In the body, no headers at all: see `trust::requests` for why.
        request.proof = Some(
            CompactProof {
                manifest: digest,
                index,
                path,
            }
            .to_text(),
        );
        let msg = OutMessage::json(routing_key, serde_json::to_vec(&request)?)
            .with_id(request.request_id.to_string())
            .via(intake.clone());
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

/// Rows read and built into requests per hand-over in [`leaf_hashes`].
const LEAF_CHUNK: usize = 4096;

/// The leaf hash of every row's request, in order: the first pass over the input, which has
/// to end before anything can be signed and published.
///
/// Two threads: this one reads the rows and builds their requests (CSV, user, request id),
/// the other writes and hashes their leaves, in chunks of [`LEAF_CHUNK`] handed over through
/// a short channel. The broker is idle meanwhile, so a second core cuts the time before the
/// first publish, which every request of the batch waits for. The first read error stops
/// both and is returned.
fn leaf_hashes<F>(
    rows: Box<dyn Iterator<Item = anyhow::Result<IntakeRow>> + Send + '_>,
    count: u64,
    request_of: &F,
) -> anyhow::Result<Vec<Digest>>
where
    F: Fn(IntakeRow) -> ResetRequest + Sync,
{
    std::thread::scope(|scope| {
        let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<ResetRequest>>(4);
        let hasher = scope.spawn(move || -> anyhow::Result<Vec<Digest>> {
            let mut leaves = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            for chunk in received {
                for request in &chunk {
                    leaves.push(leaf_hash(&leaf_bytes(request)?));
                }
            }
            Ok(leaves)
        });
        let mut chunk = Vec::with_capacity(LEAF_CHUNK);
        let mut read = Ok(());
        for row in rows {
            match row {
                Ok(row) => chunk.push(request_of(row)),
                Err(error) => {
                    read = Err(error);
                    break;
                }
            }
            if chunk.len() == LEAF_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(LEAF_CHUNK));
                // Gone only when the hasher failed: its error is the one to report.
                if chunks.send(full).is_err() {
                    break;
                }
            }
        }
        if read.is_ok() && !chunk.is_empty() {
            let _ = chunks.send(chunk);
        }
        drop(chunks);
        let leaves = hasher
            .join()
            .map_err(|_| anyhow::anyhow!("hashing the batch's requests failed"))??;
        read.map(|()| leaves)
    })
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

    fn row(line: u64) -> IntakeRow {
        IntakeRow {
            line,
            user: UserRef::parse(&format!("user{line}@contoso.com")).unwrap(),
            ticket: None,
            reason: None,
            requested_by: None,
            revoke_sessions: None,
            tap: None,
        }
    }

    fn request_of(row: IntakeRow) -> ResetRequest {
        ResetRequest {
            version: REQUEST_VERSION,
            request_id: ResetRequest::id_for("b", &row.user),
            batch: "b".into(),
            user: row.user,
            ticket: None,
            reason: None,
            requested_by: None,
            dry_run: false,
            revoke_sessions: false,
            requested_at: chrono::DateTime::UNIX_EPOCH,
            replay: 0,
            tap: None,
            carry: None,
            proof: None,
        }
    }

    #[test]
    fn the_leaves_hashed_on_two_threads_are_every_row_in_input_order() {
        // Not a multiple of the chunk: the last, short chunk is hashed too.
        let count = 3 * LEAF_CHUNK as u64 + 17;
        let rows = Box::new((1..=count).map(|line| Ok(row(line))));
        let leaves = leaf_hashes(rows, count, &request_of).unwrap();
        let one_by_one: Vec<Digest> = (1..=count)
            .map(|line| leaf_hash(&leaf_bytes(&request_of(row(line))).unwrap()))
            .collect();
        assert_eq!(leaves, one_by_one);
    }

    #[test]
    fn a_row_that_cannot_be_read_in_the_first_pass_is_the_error_returned() {
        let bad_line = LEAF_CHUNK as u64 + 5;
        let rows = Box::new((1..=2 * LEAF_CHUNK as u64).map(move |line| {
            if line == bad_line {
                Err(anyhow::anyhow!("users.csv changed since it was checked"))
            } else {
                Ok(row(line))
            }
        }));
        let error = leaf_hashes(rows, 2 * LEAF_CHUNK as u64, &request_of).unwrap_err();
        assert!(
            error.to_string().contains("changed since it was checked"),
            "{error}"
        );
    }
}
