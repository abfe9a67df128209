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

use anyhow::Context;
use chrono::Utc;

mod admins;
mod awaiting;

pub use admins::{AdminCheck, ADMIN_CHECK_LIMIT};

use super::enqueue::{signing_principal, Refused, EXIT_NEEDS_CONFIRMATION};
use crate::broker::headers::{self, Headers};
use crate::broker::topology::RK_REQUEST;
use crate::broker::{self, OutMessage, Publisher, Topology};
use crate::cli::ApproveArgs;
use crate::config::Settings;
use crate::domain::ResetRequest;
use crate::net::printable;
use crate::reset;
use crate::trust::requests::{
    approve, verify_compact_request, verify_request, CompactProof, KnownBatch, TrustedBatch,
    Verdict, APPROVAL_HEADER, MANIFEST_HEADER, PROOF_HEADER,
};
use crate::trust::{AllowedSigners, Digest, MerkleProof, Namespace, Signer};
use admins::{admin_warnings, check_admins, named};
use awaiting::{examine, scan, Seen, Signatures};

/// Said when protected users can be matched by spelling only.
const SPELLING_ONLY: &str = "note: protected users are matched by spelling only here (no \
     Graph settings); the workers match object ids too, so a protected account the batch \
     writes otherwise (its object id, a UPN before a rename) is skipped by them but not \
     named above";

/// Users shown as a sample.
const SAMPLE: usize = 10;

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
                let user = printable(&request.user.to_string()).into_owned();
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

#[cfg(test)]
#[path = "approve_tests.rs"]
mod tests;
