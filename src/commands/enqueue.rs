//! `mfa-reset enqueue`: validate an input in full, then publish one request per user.
//!
//! Nothing is published unless every row is valid. The batch is signed once: a first pass
//! over the validated rows computes the Merkle cap of its requests, the operator's key
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
//!
//! Why one file of this size: the two passes of one batch (validate, build the cap, sign;
//! then build and publish) and the threads that feed them are kept together so the rule that
//! nothing is published before every row is valid and the manifest signed reads top to
//! bottom in one place; the intake parsing and the Merkle cap live in `intake` and `trust`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::broker::topology::{RK_AWAITING, RK_OUTCOME, RK_REQUEST};
use crate::broker::{OutMessage, Publisher, Topology};
use crate::cli::EnqueueArgs;
use crate::config::Settings;
use crate::domain::{BatchManifest, Record, ResetRequest, TapRequest, UserRef, REQUEST_VERSION};
use crate::graph::GraphClient;
use crate::intake::{self, IntakeRow, Plan};
use crate::trust::merkle::{leaf_hash, CapBuilder, CapGroup, MerkleCap, CAP_NODES};
use crate::trust::requests::{leaf_bytes, CompactProof, Manifest, SealedManifest};
use crate::trust::{AllowedSigners, Digest, Namespace, Signer};

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
        std::sync::Arc::new(plan),
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
    plan: Arc<Plan>,
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
    let requests = Arc::new(RequestOf {
        batch: batch.to_string(),
        reason: args.reason.clone(),
        requested_by: requested_by.clone(),
        dry_run: args.dry_run,
        revoke_sessions: args.revoke_sessions,
        requested_at: now,
        tap,
        tap_all: args.tap,
    });
    // Pass 1: the Merkle cap of the requests, and the signed manifest holding its root.
    let cap = batch_cap(plan.rows()?, plan.count, &requests)?;
    let sealed = SealedManifest::seal(
        Manifest {
            batch: batch.to_string(),
            count: plan.count,
            root: cap.root(),
            requested_by: operator.principal.clone(),
            created_at: now,
        },
        &operator.signer,
    )
    .context("signing the batch manifest")?;
    let digest = sealed.digest()?;

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
    // Pass 2: every request with its compact proof, built on a thread of its own (CSV, JSON,
    // proof) while this task only publishes: the publishing loop waits on the broker, and
    // what it does between two publishes delays every one of them.
    let expected = plan.count;
    let mut built = build_requests(plan, requests, cap, digest, routing_key, intake);
    let mut published = 0u64;
    while let Some(chunk) = built.recv().await {
        for msg in chunk {
            if let Err(err) = publisher.send(msg?).await {
                return Err(interrupted(err, batch, publisher.confirmed()));
            }
            published += 1;
        }
    }
    if let Err(err) = publisher.flush().await {
        return Err(interrupted(err, batch, publisher.confirmed()));
    }
    anyhow::ensure!(
        published == expected,
        "the input changed while it was being enqueued ({published} rows now, {expected} \
         validated); re-run with --batch {batch}"
    );
    publisher.close().await?;
    Ok(published)
}

/// What every request of the batch shares, and how a row becomes its request.
struct RequestOf {
    batch: String,
    /// `--reason`, for rows without their own.
    reason: Option<String>,
    /// Who enqueued, for rows without their own `requested_by`.
    requested_by: Option<String>,
    dry_run: bool,
    /// `--revoke-sessions`, for rows that do not say.
    revoke_sessions: bool,
    requested_at: DateTime<Utc>,
    /// The pass to create when asked (`--tap`, or a ticket event's `"tap": true`).
    tap: Option<TapRequest>,
    /// `--tap`: every row asks for one unless it says otherwise.
    tap_all: bool,
}

impl RequestOf {
    fn request(&self, row: IntakeRow) -> ResetRequest {
        ResetRequest {
            version: REQUEST_VERSION,
            request_id: ResetRequest::id_for(&self.batch, &row.user),
            batch: self.batch.clone(),
            user: row.user,
            ticket: row.ticket,
            reason: row.reason.or_else(|| self.reason.clone()),
            requested_by: row.requested_by.or_else(|| self.requested_by.clone()),
            dry_run: self.dry_run,
            revoke_sessions: row.revoke_sessions.unwrap_or(self.revoke_sessions),
            requested_at: self.requested_at,
            replay: 0,
            tap: self.tap.filter(|_| row.tap.unwrap_or(self.tap_all)),
            carry: None,
            proof: None,
        }
    }
}

/// Requests handed to the publisher at once: one wake-up of the publishing task per chunk,
/// not per request.
const BUILT_CHUNK: usize = 256;
/// Chunks built ahead of the publisher (16 × 256 requests of about 700 bytes: under 3 MB).
const BUILT_AHEAD: usize = 16;

/// Pass 2's requests, built on a thread of their own, in order and in chunks of
/// [`BUILT_CHUNK`], each with its compact proof (`index` in the batch, path up to `cap`) and
/// ready to publish. The first error (the input changed since it was checked) is the last
/// item; dropping the receiver stops the thread.
///
/// The paths come from the requests themselves: each group of rows under one cap node is
/// hashed again and must fold up to that node ([`CapGroup`]) before any of its requests is
/// handed over, so the whole tree is never held (memory: the cap and one group, whatever the
/// batch's size) and a row that changed since pass 1 stops the batch there.
fn build_requests(
    plan: Arc<Plan>,
    requests: Arc<RequestOf>,
    cap: MerkleCap,
    digest: Digest,
    routing_key: &'static str,
    intake: String,
) -> tokio::sync::mpsc::Receiver<Vec<anyhow::Result<OutMessage>>> {
    let (sender, built) = tokio::sync::mpsc::channel(BUILT_AHEAD);
    std::thread::spawn(move || {
        let changed = || {
            anyhow::anyhow!(
                "the input changed while it was being enqueued (its rows are no longer the {} \
                 validated and signed); re-run with --batch {}",
                plan.count,
                requests.batch
            )
        };
        let group_size = 1usize << cap.level;
        // One group's requests and leaf hashes, made into messages once they fold to `cap`.
        let seal_group = |first: u64,
                          group: &mut Vec<(ResetRequest, Digest)>|
         -> anyhow::Result<Vec<OutMessage>> {
            let hashes = group.iter().map(|(_, hash)| *hash).collect();
            let proofs = CapGroup::new(&cap, first >> cap.level, hashes).ok_or_else(changed)?;
            (0u64..)
                .zip(group.drain(..))
                .map(|(offset, (mut request, _))| {
                    // In the body, no headers at all: see `trust::requests` for why.
                    request.proof = Some(
                        CompactProof {
                            manifest: digest,
                            index: first + offset,
                            path: proofs.path(offset).ok_or_else(changed)?,
                        }
                        .to_text(),
                    );
                    Ok(OutMessage::json(routing_key, serde_json::to_vec(&request)?)
                        .with_id(request.request_id.to_string())
                        .via(intake.clone()))
                })
                .collect()
        };
        let rows = match plan.rows() {
            Ok(rows) => rows,
            Err(error) => {
                let _ = sender.blocking_send(vec![Err(error)]);
                return;
            }
        };
        let mut rows = rows.peekable();
        let mut group = Vec::with_capacity(group_size);
        let mut chunk = Vec::with_capacity(BUILT_CHUNK);
        let mut first = 0u64;
        while let Some(row) = rows.next() {
            let added = row.and_then(|row| {
                let request = requests.request(row);
                let hash = leaf_hash(&leaf_bytes(&request)?);
                group.push((request, hash));
                Ok(())
            });
            let sealed = match added {
                Err(error) => Err(error),
                Ok(()) if group.len() == group_size || rows.peek().is_none() => {
                    let sealed = seal_group(first, &mut group);
                    first += group_size as u64;
                    sealed
                }
                Ok(()) => continue,
            };
            let failed = match sealed {
                Ok(messages) => {
                    chunk.extend(messages.into_iter().map(Ok));
                    false
                }
                Err(error) => {
                    chunk.push(Err(error));
                    true
                }
            };
            if chunk.len() >= BUILT_CHUNK || failed {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(BUILT_CHUNK));
                // Closed: the publisher stopped (its error is the one reported).
                if sender.blocking_send(full).is_err() || failed {
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = sender.blocking_send(chunk);
        }
    });
    built
}

/// Rows read and built into requests per hand-over in [`batch_cap`].
const LEAF_CHUNK: usize = 4096;

/// The Merkle cap (at most [`CAP_NODES`] nodes) of every row's request, for a batch of
/// `count`: the first pass over the input, which has to end before anything can be signed
/// and published. Only the cap and one group of leaf hashes are held ([`CapBuilder`]).
///
/// Two threads: this one reads the rows and builds their requests (CSV, user, request id),
/// the other writes and hashes their leaves, in chunks of [`LEAF_CHUNK`] handed over through
/// a short channel. The broker is idle meanwhile, so a second core cuts the time before the
/// first publish, which every request of the batch waits for. The first read error stops
/// both and is returned; so is a number of rows other than `count`.
fn batch_cap(
    rows: Box<dyn Iterator<Item = anyhow::Result<IntakeRow>> + Send + '_>,
    count: u64,
    requests: &RequestOf,
) -> anyhow::Result<MerkleCap> {
    std::thread::scope(|scope| {
        let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<ResetRequest>>(4);
        let hasher = scope.spawn(move || -> anyhow::Result<Option<MerkleCap>> {
            let mut cap = CapBuilder::new(count, CAP_NODES);
            for chunk in received {
                for request in &chunk {
                    cap.push_hash(leaf_hash(&leaf_bytes(request)?));
                }
            }
            Ok(cap.finish())
        });
        let mut chunk = Vec::with_capacity(LEAF_CHUNK);
        let mut read = Ok(());
        for row in rows {
            match row {
                Ok(row) => chunk.push(requests.request(row)),
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
        let cap = hasher
            .join()
            .map_err(|_| anyhow::anyhow!("hashing the batch's requests failed"))??;
        read?;
        cap.ok_or_else(|| {
            anyhow::anyhow!(
                "the input changed while it was being enqueued (not the {count} rows \
                 validated); nothing was enqueued"
            )
        })
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
#[path = "enqueue_tests.rs"]
mod tests;
