//! `mfa-reset approve --batch ID --key FILE`: the second person of the two-person rule.
//!
//! A batch of more than `security.approval_above` users waits in the `{prefix}.awaiting`
//! stream. `approve` reads the stream (without consuming it), verifies the batch's signed
//! manifest (carried inline by every request, or, for a compact batch, in the manifest record
//! `enqueue` writes to the stream before the requests, with its Merkle cap) and every
//! request's proof, shows what would run (count, requester, a sample,
//! protected users, admins), and — confirmed, by someone other than the requester — signs the
//! manifest's digest (namespace `mfa-reset-approve`) and republishes each request with the
//! approval to the intake (`request`), where workers verify it again. A compact batch stays
//! compact: its requests keep their `proof` field and gain the approval. The digest covers the
//! Merkle root, so the approval holds for exactly the list shown.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

use super::enqueue::{signing_principal, Refused, EXIT_NEEDS_CONFIRMATION};
use crate::broker::headers::{self, Headers};
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::{RK_AWAITING, RK_REQUEST};
use crate::broker::{self, OutMessage, Publisher, Topology};
use crate::cli::ApproveArgs;
use crate::config::Settings;
use crate::domain::{Record, ResetRequest};
use crate::reset;
use crate::trust::requests::{
    approve, verify_batch, verify_compact_request, verify_known_batch, verify_request,
    CompactProof, KnownBatch, Policy, TrustedBatch, Verdict, APPROVAL_HEADER, MANIFEST_HEADER,
    PROOF_HEADER,
};
use crate::trust::{AllowedSigners, Digest, MerkleProof, Namespace, Signer};

/// Said when protected users can be matched by spelling only.
const SPELLING_ONLY: &str = "note: protected users are matched by spelling only here (no \
     Graph settings); the workers match object ids too, so a protected account the batch \
     writes otherwise (its object id, a UPN before a rename) is skipped by them but not \
     named above";

/// Header of the marker `approve` writes to find the end of the awaiting stream.
const MARKER_HEADER: &str = "x-mfa-marker";
/// Users shown as a sample.
const SAMPLE: usize = 10;
/// Users whose directory roles `approve` checks (the first this many of the batch): the
/// check is one lookup and two role reads per user, so a million-user batch is not checked
/// whole before anyone can approve it; the workers check every user anyway.
pub const ADMIN_CHECK_LIMIT: usize = 500;
/// Role checks in flight at once (the Graph client's own rate budget applies too).
const ADMIN_CHECK_CONCURRENCY: usize = 8;
/// Users named per warning line; the rest are counted.
const NAMED: usize = 50;
/// Longest wait for our own marker to come by.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What was approved.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The batch.
    pub batch: String,
    /// Requests released to the workers.
    pub count: u64,
    /// The approver.
    pub approved_by: String,
    /// Digest of the manifest approved.
    pub manifest: Digest,
    /// What the directory-role check found (`None` without Graph settings).
    pub admins: Option<AdminCheck>,
    /// The batch's users `reset.protected_users` names, as shown: by spelling, and (with
    /// Graph settings) by object id.
    pub protected: Vec<String>,
}

/// The batch's users that hold directory roles, as the worker checks them
/// ([`crate::graph::GraphClient::privilege`], which [`reset::protection`] asks), for the
/// approver to see before signing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminCheck {
    /// Users checked (at most [`ADMIN_CHECK_LIMIT`]; protected users are not checked).
    pub checked: u64,
    /// Users holding (or eligible for) a directory role, with the roles.
    pub admins: Vec<(String, String)>,
    /// Users whose roles could not be checked, and why.
    pub unchecked: Vec<(String, String)>,
    /// Users `reset.protected_users` names under another spelling (the object id for a UPN,
    /// a UPN before a rename…), found by object id as the workers find them, with the entry.
    pub protected: Vec<(String, String)>,
    /// Why protection could be matched by spelling only (`reset.protected_users` could not
    /// be resolved to object ids here).
    pub protected_note: Option<String>,
}

/// How a batch's requests carry their signature.
enum Form {
    /// Every request carries the manifest header, exactly this one.
    Inline(String),
    /// Every request carries a compact proof against this manifest record's cap.
    Compact(std::sync::Arc<KnownBatch>),
}

/// What the first pass learns of one signed manifest of the batch.
struct Candidate {
    batch: TrustedBatch,
    /// How its requests carry the signature.
    form: Form,
    /// Leaf indexes seen with a request that verifies.
    seen: HashSet<u64>,
    /// The first few users, in leaf order of arrival.
    sample: Vec<String>,
    /// Users listed in `reset.protected_users`.
    protected: Vec<String>,
    /// The first [`ADMIN_CHECK_LIMIT`] other users, for the role check.
    to_check: Vec<crate::domain::UserRef>,
    /// One request, for its flags and reason.
    first: Option<ResetRequest>,
}

/// The verdict of the first pass on one message of the batch.
enum Seen {
    /// Not of the batch (another batch, a marker).
    Other,
    /// Claims the batch but does not verify.
    Forged,
    /// Request `index` of the manifest with `digest`.
    Request {
        digest: Digest,
        index: u64,
        request: Box<ResetRequest>,
    },
}

/// Run the command.
pub async fn run(settings: &Settings, args: &ApproveArgs) -> anyhow::Result<Approved> {
    let signer = Signer::from_key_file(&args.key)
        .with_context(|| format!("--key {}", args.key.display()))?;
    let approver = signing_principal(settings, &signer, Namespace::Approve)?;
    let allowed = AllowedSigners::read(std::path::Path::new(&settings.security.allowed_signers))?;
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset approve").await?;
    super::ensure_set_up(&conn, &topology.awaiting(), "approve", settings).await?;

    // Pass 1: which signed manifests of the batch are there, and are they complete? Only
    // indexes and a sample are kept: a million-user batch is not held in memory.
    let mut candidates: BTreeMap<Digest, Candidate> = BTreeMap::new();
    let mut manifests: HashMap<String, Option<TrustedBatch>> = HashMap::new();
    let mut known: HashMap<Digest, std::sync::Arc<KnownBatch>> = HashMap::new();
    let mut forged = 0u64;
    scan(&conn, &topology, None, |body, props| {
        let mut seen = Signatures {
            allowed: &allowed,
            inline: &mut manifests,
            compact: &mut known,
        };
        match examine(&args.batch, body, props, &mut seen) {
            Seen::Other => {}
            Seen::Forged => forged += 1,
            Seen::Request {
                digest,
                index,
                request,
            } => {
                let candidate = match candidates.entry(digest) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let (batch, form) = match headers::get_str(props, MANIFEST_HEADER) {
                            Some(header) => {
                                let batch = manifests.get(&header).cloned().flatten()?;
                                (batch, Form::Inline(header))
                            }
                            None => {
                                let known = known.get(&digest)?.clone();
                                (known.batch.clone(), Form::Compact(known))
                            }
                        };
                        entry.insert(Candidate {
                            batch,
                            form,
                            seen: HashSet::new(),
                            sample: Vec::new(),
                            protected: Vec::new(),
                            to_check: Vec::new(),
                            first: None,
                        })
                    }
                };
                if !candidate.seen.insert(index) {
                    return None;
                }
                let user = printable(&request.user.to_string());
                if candidate.sample.len() < SAMPLE {
                    candidate.sample.push(user.clone());
                }
                if reset::is_protected(&settings.reset, &request.user) {
                    candidate.protected.push(user);
                } else if candidate.to_check.len() < ADMIN_CHECK_LIMIT {
                    candidate.to_check.push(request.user.clone());
                }
                candidate.first.get_or_insert(*request);
            }
        }
        None
    })
    .await?;
    if forged > 0 {
        eprintln!(
            "warning: {forged} message(s) in the awaiting stream claim batch {} but do not \
             verify (forged or altered); they are ignored",
            printable(&args.batch)
        );
    }
    let candidate = choose(&args.batch, candidates)?;
    let requester = candidate.batch.requested_by.to_string();
    anyhow::ensure!(
        requester != approver,
        Refused {
            message: format!(
                "batch {} was requested by {requester}, whose key this is: nobody approves \
                 their own batch; another person with an approve key runs this command",
                args.batch
            ),
            exit_code: 1,
        }
    );
    let admins = check_admins(settings, &candidate.to_check).await;
    print_summary(settings, &candidate, admins.as_ref());
    let mut protected = candidate.protected.clone();
    if let Some(check) = &admins {
        protected.extend(check.protected.iter().map(|(user, _)| user.clone()));
    }
    let count = candidate.batch.manifest.count;
    confirm(args, count)?;

    // Pass 2: every request of that manifest again, released with the approval.
    let approval = approve(&candidate.batch.digest, &signer).context("signing the approval")?;
    let mut publisher =
        Publisher::connect(&settings.broker, &topology, "mfa-reset approve").await?;
    let mut released = HashSet::new();
    let now = Utc::now();
    let intake = topology.intake();
    let sent = scan(&conn, &topology, Some(&mut publisher), |body, props| {
        let inline = headers::get_str(props, MANIFEST_HEADER);
        let request = serde_json::from_slice::<ResetRequest>(body).ok()?;
        let (verdict, index) = match (&candidate.form, inline) {
            (Form::Inline(header), Some(inline)) if *header == inline => {
                let proof = headers::get_str(props, PROOF_HEADER)?;
                let index = serde_json::from_str::<MerkleProof>(&proof).ok()?.index;
                let verdict = verify_request(&request, Some(&proof), &candidate.batch, now);
                (verdict, index)
            }
            (Form::Compact(known), None) => {
                let proof = CompactProof::from_text(request.proof.as_deref()?).ok()?;
                let verdict =
                    verify_compact_request(&request, &proof, &candidate.batch, &known.cap, now);
                (verdict, proof.index)
            }
            _ => return None,
        };
        let verified = matches!(verdict, Verdict::Verified(_));
        if !verified || !released.insert(index) {
            return None;
        }
        let headers = Headers::from_props(props)
            .str(APPROVAL_HEADER, &approval)
            .build();
        Some(
            OutMessage::json(RK_REQUEST, body.to_vec())
                .with_id(request.request_id.to_string())
                .with_headers(headers)
                .via(intake.clone()),
        )
    })
    .await
    .with_context(|| {
        format!(
            "releasing batch {} was interrupted; run approve again (requests already \
             released are not reset twice)",
            args.batch
        )
    })?;
    anyhow::ensure!(
        sent == count,
        "released {sent} of the {count} requests of batch {}: the awaiting stream changed \
         while approving; run approve again (requests already released are not reset twice)",
        args.batch
    );
    publisher.close().await?;
    let _ = conn.close(200, "bye".into()).await;
    // Written, not printed: `serve` runs this too, and a closed stdout must not panic.
    let _ = writeln!(
        std::io::stdout(),
        "approved: batch {} ({count} users, requested by {requester}) approved by {approver}; \
         released to the workers",
        printable(&args.batch),
    );
    Ok(Approved {
        batch: args.batch.clone(),
        count,
        approved_by: approver,
        manifest: candidate.batch.digest,
        admins,
        protected,
    })
}

/// Which of `users` hold directory roles, and which are protected by object id, by the
/// worker's own checks, when Graph settings are present (`graph.tenant_id` and
/// `graph.client_id`); `None` otherwise. At most [`ADMIN_CHECK_CONCURRENCY`] users are
/// checked at once. A check that cannot be made is reported, not fatal: the approver decides,
/// and workers fail closed on it.
async fn check_admins(settings: &Settings, users: &[crate::domain::UserRef]) -> Option<AdminCheck> {
    let graph_set =
        !settings.graph.tenant_id.trim().is_empty() && !settings.graph.client_id.trim().is_empty();
    if !graph_set || users.is_empty() {
        return None;
    }
    let graph =
        match crate::graph::GraphClient::new(&settings.graph, &settings.rate, &settings.retry) {
            Ok(graph) => graph,
            Err(error) => {
                eprintln!("warning: cannot check the batch for admins ({error:#})");
                return None;
            }
        };
    // The workers compare object ids with reset.protected_users resolved at start: the same
    // here, so an entry written another way than the batch writes the user still warns.
    let (protected, protected_note) =
        match reset::ProtectedUsers::resolve(&settings.reset, &graph).await {
            Ok(protected) => (Arc::new(protected), None),
            Err(error) => (
                Arc::default(),
                Some(format!(
                    "reset.protected_users could not be resolved to object ids here ({error}): \
                 protected users are matched by spelling only"
                )),
            ),
        };
    // Owned futures, made up front: a closure over borrowed users inside the stream makes
    // the future not `Send` for every lifetime, which the console's handler needs.
    let checks: Vec<_> = users
        .iter()
        .cloned()
        .map(|user| check_user(graph.clone(), protected.clone(), user))
        .collect();
    let results: Vec<(String, UserCheck)> = futures::stream::iter(checks)
        .buffer_unordered(ADMIN_CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut check = AdminCheck {
        checked: users.len() as u64,
        protected_note,
        ..AdminCheck::default()
    };
    for (user, verdict) in results {
        match verdict {
            UserCheck::Clear => {}
            UserCheck::Protected(entry) => check.protected.push((user, printable(&entry))),
            UserCheck::Roles(roles) => check.admins.push((user, printable(&roles))),
            UserCheck::Unchecked(why) => check.unchecked.push((user, printable(&why))),
        }
    }
    check.admins.sort();
    check.unchecked.sort();
    check.protected.sort();
    Some(check)
}

/// What the worker's checks say of one user.
enum UserCheck {
    /// Neither protected nor holding a role.
    Clear,
    /// Named by this `reset.protected_users` entry (by object id).
    Protected(String),
    /// Holds (or is eligible for) these directory roles.
    Roles(String),
    /// Could not be checked, and why.
    Unchecked(String),
}

/// `user` as printed, and whether `protected` names its object id, else the roles it holds.
async fn check_user(
    graph: crate::graph::GraphClient,
    protected: Arc<reset::ProtectedUsers>,
    user: crate::domain::UserRef,
) -> (String, UserCheck) {
    let shown = printable(&user.to_string());
    // The worker's own checks (`reset::protection`): the object id against the resolved
    // reset.protected_users, then active and PIM-eligible role assignments, by object id.
    let verdict = match graph.resolve_user(&user).await {
        Err(error) => UserCheck::Unchecked(format!("not looked up: {error}")),
        Ok(resolved) => match protected.entry_for(&resolved.id) {
            Some(entry) => UserCheck::Protected(entry.to_string()),
            None => match graph.privilege(&resolved).await {
                Ok(privilege) if privilege.is_privileged() => {
                    UserCheck::Roles(privilege.describe())
                }
                Ok(_) => UserCheck::Clear,
                Err(error) => UserCheck::Unchecked(error.to_string()),
            },
        },
    };
    (shown, verdict)
}

/// The first [`NAMED`] of `total` names, then how many more: a warning line stays readable
/// for a batch of thousands.
fn named(names: impl Iterator<Item = String>, total: usize) -> String {
    let listed: Vec<String> = names.take(NAMED).collect();
    let more = total.saturating_sub(listed.len());
    if more > 0 {
        format!("{} and {more} more", listed.join(", "))
    } else {
        listed.join(", ")
    }
}

/// The warning lines for what [`check_admins`] found, in a batch of `count` users.
fn admin_warnings(check: &AdminCheck, count: u64, skip_admins: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if !check.protected.is_empty() {
        lines.push(format!(
            "WARNING: {} more protected account(s) in the batch, written otherwise than in \
             reset.protected_users and found by object id (workers will not touch them): {}",
            check.protected.len(),
            named(
                check
                    .protected
                    .iter()
                    .map(|(user, entry)| format!("{user} (entry {entry:?})")),
                check.protected.len()
            )
        ));
    }
    if let Some(note) = &check.protected_note {
        lines.push(format!("note: {note}"));
    }
    if !check.admins.is_empty() {
        let fate = if skip_admins {
            "the workers will skip them and leave them untouched (reset.skip_admins = true)"
        } else {
            "reset.skip_admins is false here: they WILL be reset if the workers run with the \
             same setting"
        };
        lines.push(format!(
            "WARNING: {} user(s) in the batch hold a directory role; {fate}: {}",
            check.admins.len(),
            named(
                check.admins.iter().map(|(user, _)| user.clone()),
                check.admins.len()
            )
        ));
        for (user, roles) in check.admins.iter().take(NAMED) {
            lines.push(format!("  {user}: {roles}"));
        }
    }
    if !check.unchecked.is_empty() {
        lines.push(format!(
            "WARNING: the roles of {} user(s) could not be checked; workers leave such a user \
             untouched (they fail closed): {}",
            check.unchecked.len(),
            named(
                check
                    .unchecked
                    .iter()
                    .map(|(user, why)| format!("{user} ({why})")),
                check.unchecked.len()
            )
        ));
    }
    if check.checked < count {
        lines.push(format!(
            "admins:       checked the first {} of {count} users for directory roles and \
             protection by object id; every user is checked again by the workers before \
             anything is deleted",
            check.checked
        ));
    } else if check.admins.is_empty() && check.unchecked.is_empty() {
        lines.push(format!(
            "admins:       none: no user of the batch holds a directory role (checked {})",
            check.checked
        ));
    }
    lines
}

/// The signed manifests the first pass has met.
struct Signatures<'a> {
    allowed: &'a AllowedSigners,
    /// The verdict per exact inline manifest header.
    inline: &'a mut HashMap<String, Option<TrustedBatch>>,
    /// The compact batches' manifest records that verified, by digest.
    compact: &'a mut HashMap<Digest, std::sync::Arc<KnownBatch>>,
}

/// What one message of the awaiting stream is to batch `id`. A manifest's signature is
/// checked once (`seen` remembers it).
fn examine(id: &str, body: &[u8], props: &BasicProperties, seen: &mut Signatures<'_>) -> Seen {
    let allowed = seen.allowed;
    let Some(manifest) = headers::get_str(props, MANIFEST_HEADER) else {
        return examine_compact(id, body, seen);
    };
    let named: Option<String> = serde_json::from_str::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v["manifest"]["batch"].as_str().map(str::to_string));
    if named.as_deref() != Some(id) {
        return Seen::Other;
    }
    // The requester's signature is checked here; the approval is what we are about to add.
    let policy = Policy {
        allowed,
        approval_above: u64::MAX,
    };
    let now = Utc::now();
    let batch = seen
        .inline
        .entry(manifest.clone())
        .or_insert_with(|| verify_batch(Some(&manifest), None, &policy, now).ok());
    let Some(batch) = batch.as_ref() else {
        return Seen::Forged;
    };
    let Ok(request) = serde_json::from_slice::<ResetRequest>(body) else {
        return Seen::Forged;
    };
    let proof = headers::get_str(props, PROOF_HEADER);
    if !matches!(
        verify_request(&request, proof.as_deref(), batch, now),
        Verdict::Verified(_)
    ) {
        return Seen::Forged;
    }
    let index = proof
        .as_deref()
        .and_then(|p| serde_json::from_str::<MerkleProof>(p).ok())
        .map_or(0, |p| p.index);
    Seen::Request {
        digest: batch.digest,
        index,
        request: Box::new(request),
    }
}

/// [`examine`] for a message without an inline manifest: a compact batch's manifest record
/// (kept when it verifies), or one of its requests.
fn examine_compact(id: &str, body: &[u8], seen: &mut Signatures<'_>) -> Seen {
    let now = Utc::now();
    let request = serde_json::from_slice::<ResetRequest>(body).ok();
    let Some(leaf) = request.as_ref().and_then(|request| request.proof.clone()) else {
        return match serde_json::from_slice::<Record>(body) {
            Ok(Record::Manifest(record)) if record.batch == id => {
                let (Some(sealed), Some(cap)) = (&record.sealed, &record.cap) else {
                    return Seen::Other;
                };
                match verify_known_batch(sealed, cap, seen.allowed, now) {
                    Ok(known) if known.batch.manifest.batch == id => {
                        seen.compact
                            .insert(known.batch.digest, std::sync::Arc::new(known));
                        Seen::Other
                    }
                    _ => Seen::Forged,
                }
            }
            _ => Seen::Other,
        };
    };
    let Some(request) = request.filter(|request| request.batch == id) else {
        return Seen::Other;
    };
    let Ok(proof) = CompactProof::from_text(&leaf) else {
        return Seen::Forged;
    };
    let Some(known) = seen.compact.get(&proof.manifest) else {
        // No manifest record of ours before it: forged, or its record aged out.
        return Seen::Forged;
    };
    match verify_compact_request(&request, &proof, &known.batch, &known.cap, now) {
        Verdict::Verified(_) => Seen::Request {
            digest: known.batch.digest,
            index: proof.index,
            request: Box::new(request),
        },
        Verdict::Refused(_) => Seen::Forged,
    }
}

/// Read every message now in `{prefix}.awaiting`, oldest first, without consuming it (a
/// marker of our own is written, and the read ends when it comes by), handing each to
/// `handle`; what `handle` returns is published with `publisher` at once (pipelined).
/// Returns how many were.
async fn scan<F>(
    conn: &Connection,
    topology: &Topology,
    mut publisher: Option<&mut Publisher>,
    mut handle: F,
) -> anyhow::Result<u64>
where
    F: FnMut(&[u8], &BasicProperties) -> Option<OutMessage>,
{
    let channel = conn.create_channel().await?;
    // A stream consumer must set QoS.
    channel
        .basic_qos(1000, BasicQosOptions { global: false })
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            topology.awaiting().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .context("reading the awaiting stream")?;
    let marker = uuid::Uuid::new_v4().to_string();
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let msg = OutMessage::json(RK_AWAITING, b"{}".to_vec())
        .with_headers(Headers::default().str(MARKER_HEADER, &marker).build())
        .via(topology.intake());
    publish_confirmed(&publish, &topology.intake(), &msg)
        .await
        .context("writing a marker to the awaiting stream")?;
    let mut sent = 0u64;
    let read = async {
        let mut unacked = 0u32;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.context("awaiting stream")?;
            unacked += 1;
            // Acked in groups: the broker sends more only as credit comes back.
            if unacked >= 500 {
                delivery.ack(BasicAckOptions { multiple: true }).await?;
                unacked = 0;
            }
            let props = &delivery.properties;
            match headers::get_str(props, MARKER_HEADER) {
                Some(seen) if seen == marker => return Ok(()),
                Some(_) => {}
                None => {
                    if let Some(msg) = handle(&delivery.data, props) {
                        if let Some(publisher) = publisher.as_deref_mut() {
                            publisher.send(msg).await?;
                            sent += 1;
                        }
                    }
                }
            }
        }
        anyhow::bail!("the awaiting stream ended before our marker came by")
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("reading the awaiting stream took over {READ_TIMEOUT:?}"))??;
    let _ = channel.close(200, "done".into()).await;
    let _ = publish.close(200, "done".into()).await;
    Ok(sent)
}

/// The newest complete manifest of batch `id`.
fn choose(id: &str, candidates: BTreeMap<Digest, Candidate>) -> anyhow::Result<Candidate> {
    anyhow::ensure!(
        !candidates.is_empty(),
        Refused {
            message: format!(
                "no signed batch {} is waiting for approval (it may be small enough to run \
                 without one, or already expired from the awaiting stream)",
                printable(id)
            ),
            exit_code: 1,
        }
    );
    let mut complete: Vec<Candidate> = candidates
        .into_values()
        .filter(|c| c.seen.len() as u64 == c.batch.manifest.count)
        .collect();
    complete.sort_by_key(|c| c.batch.manifest.created_at);
    complete.pop().ok_or_else(|| {
        Refused {
            message: format!(
                "batch {id} is only partly in the awaiting stream (its enqueue was \
                 interrupted): run the same enqueue again with --batch {id}, then approve"
            ),
            exit_code: 1,
        }
        .into()
    })
}

fn print_summary(settings: &Settings, candidate: &Candidate, admins: Option<&AdminCheck>) {
    let batch = &candidate.batch;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "batch id:     {}", printable(&batch.manifest.batch));
    let _ = writeln!(err, "requested by: {}", batch.requested_by);
    let _ = writeln!(
        err,
        "created at:   {}",
        batch.manifest.created_at.to_rfc3339()
    );
    let _ = writeln!(err, "users:        {}", batch.manifest.count);
    let _ = writeln!(err, "sample:       {}", candidate.sample.join(", "));
    if let Some(first) = &candidate.first {
        let _ = writeln!(
            err,
            "action:       {}{}",
            if first.dry_run {
                "DRY RUN: list what would be removed"
            } else {
                "delete every registered authentication method in scope (reset.methods)"
            },
            if first.revoke_sessions {
                ", and revoke sign-in sessions"
            } else {
                ""
            }
        );
        if let Some(tap) = &first.tap {
            // The approver sees that a credential will be issued, as signed in the request.
            let _ = writeln!(
                err,
                "tap:          a Temporary Access Pass after the reset ({} minutes, {})",
                tap.lifetime_minutes,
                if tap.usable_once {
                    "one sign-in"
                } else {
                    "reusable until it expires"
                }
            );
        }
        if let Some(reason) = &first.reason {
            let _ = writeln!(err, "reason:       {}", printable(reason));
        }
    }
    let _ = writeln!(err, "manifest:     {}", batch.digest);
    if !candidate.protected.is_empty() {
        let _ = writeln!(
            err,
            "WARNING: {} protected account(s) in the batch (reset.protected_users; workers \
             will not touch them): {}",
            candidate.protected.len(),
            named(
                candidate.protected.iter().cloned(),
                candidate.protected.len()
            )
        );
    }
    if admins.is_none() && !settings.reset.protected_users.is_empty() {
        let _ = writeln!(err, "{SPELLING_ONLY}");
    }
    if let Some(check) = admins {
        // Users protected by spelling are not checked: they are not counted either.
        let to_check = batch
            .manifest
            .count
            .saturating_sub(candidate.protected.len() as u64);
        for line in admin_warnings(check, to_check, settings.reset.skip_admins) {
            let _ = writeln!(err, "{line}");
        }
    } else if settings.reset.skip_admins {
        let _ = writeln!(
            err,
            "admins:       not checked here (no Graph settings); users holding a directory \
             role are skipped by the workers (reset.skip_admins = true)"
        );
    } else {
        let _ = writeln!(
            err,
            "WARNING: reset.skip_admins is false here: users holding directory roles in this \
             batch WILL be reset if the workers run with the same setting"
        );
    }
}

/// Without `--yes`, ask on a terminal; refuse when nobody can answer.
fn confirm(args: &ApproveArgs, count: u64) -> anyhow::Result<()> {
    if args.yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        Refused {
            message: format!(
                "check the batch above, then run again with --yes to approve its {count} \
                 users; nothing was approved"
            ),
            exit_code: EXIT_NEEDS_CONFIRMATION,
        }
    );
    eprint!("Approve resetting these {count} users? Type 'yes': ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    anyhow::ensure!(
        answer.trim() == "yes",
        Refused {
            message: "not approved; nothing was released".into(),
            exit_code: 1,
        }
    );
    Ok(())
}

/// Text from the queue with control characters replaced, for a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_warnings_name_the_users_and_say_they_will_be_skipped() {
        let check = AdminCheck {
            checked: 3,
            admins: vec![(
                "global.admin@contoso.com".into(),
                "holds Global Administrator".into(),
            )],
            unchecked: vec![("x@contoso.com".into(), "forbidden".into())],
            protected: vec![(
                "0d6f1b2c-0000-4000-8000-000000000001".into(),
                "break.glass@contoso.com".into(),
            )],
            protected_note: None,
        };
        let lines = admin_warnings(&check, 3, true).join("\n");
        assert!(
            lines.contains("1 user(s) in the batch hold a directory role"),
            "{lines}"
        );
        assert!(lines.contains("will skip them"), "{lines}");
        assert!(
            lines.contains("global.admin@contoso.com: holds Global Administrator"),
            "{lines}"
        );
        assert!(lines.contains("x@contoso.com (forbidden)"), "{lines}");
        assert!(
            lines.contains(
                "0d6f1b2c-0000-4000-8000-000000000001 (entry \"break.glass@contoso.com\")"
            ),
            "{lines}"
        );
        assert!(lines.contains("found by object id"), "{lines}");
        let lines = admin_warnings(&check, 3, false).join("\n");
        assert!(lines.contains("WILL be reset"), "{lines}");
        let partial = AdminCheck {
            checked: ADMIN_CHECK_LIMIT as u64,
            ..AdminCheck::default()
        };
        let lines = admin_warnings(&partial, 10_000, true).join("\n");
        assert!(
            lines.contains("checked the first 500 of 10000 users"),
            "{lines}"
        );
    }

    #[test]
    fn every_warning_names_the_first_fifty_and_counts_the_rest() {
        let users = |n: usize| {
            (0..n)
                .map(|i| format!("u{i}@contoso.com"))
                .collect::<Vec<_>>()
        };
        let check = AdminCheck {
            checked: 300,
            admins: users(120)
                .into_iter()
                .map(|u| (u, "holds Global Reader".to_string()))
                .collect(),
            unchecked: users(51)
                .into_iter()
                .map(|u| (u, "forbidden".to_string()))
                .collect(),
            protected: users(50).into_iter().map(|u| (u.clone(), u)).collect(),
            protected_note: None,
        };
        let lines = admin_warnings(&check, 300, true);
        let line = |start: &str| lines.iter().find(|l| l.contains(start)).unwrap().clone();
        let admins = line("hold a directory role");
        assert!(admins.contains("u49@contoso.com and 70 more"), "{admins}");
        assert!(!admins.contains("u50@"), "{admins}");
        let unchecked = line("could not be checked");
        assert!(
            unchecked.ends_with("u49@contoso.com (forbidden) and 1 more"),
            "{unchecked}"
        );
        // Exactly fifty: all named, nothing counted.
        let protected = line("found by object id");
        assert!(
            protected.ends_with("u49@contoso.com (entry \"u49@contoso.com\")"),
            "{protected}"
        );
        assert_eq!(
            named(users(3).into_iter(), 3),
            "u0@contoso.com, u1@contoso.com, u2@contoso.com"
        );
    }

    #[test]
    fn control_characters_from_the_queue_are_not_printed() {
        assert_eq!(printable("a\x1b[2Jb\n"), "a?[2Jb?");
    }
}
