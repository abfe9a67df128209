//! `mfa-reset approve --batch ID --key FILE`: the second person of the two-person rule.
//!
//! A batch of more than `security.approval_above` users waits in the `{prefix}.awaiting`
//! stream. `approve` reads the stream (without consuming it), verifies the batch's signed
//! manifest and every request's proof, shows what would run (count, requester, a sample,
//! protected users, admins), and — confirmed, by someone other than the requester — signs the
//! manifest's digest (namespace `mfa-reset-approve`) and republishes each request with the
//! approval to the intake (`request`), where workers verify it again. The digest covers the
//! Merkle root, so the approval holds for exactly the list shown.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::enqueue::{signing_principal, Refused, EXIT_NEEDS_CONFIRMATION};
use crate::broker::headers::{self, Headers};
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::{RK_AWAITING, RK_REQUEST};
use crate::broker::{self, OutMessage, Publisher, Topology};
use crate::cli::ApproveArgs;
use crate::config::Settings;
use crate::domain::ResetRequest;
use crate::reset;
use crate::trust::requests::{
    approve, verify_batch, verify_request, Policy, TrustedBatch, Verdict, APPROVAL_HEADER,
    MANIFEST_HEADER, PROOF_HEADER,
};
use crate::trust::{AllowedSigners, Digest, Namespace, Signer};

/// Header of the marker `approve` writes to find the end of the awaiting stream.
const MARKER_HEADER: &str = "x-mfa-marker";
/// Users shown as a sample.
const SAMPLE: usize = 10;
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
}

/// One request waiting in the stream.
struct Waiting {
    request: ResetRequest,
    body: Vec<u8>,
    headers: FieldTable,
}

/// Run the command.
pub async fn run(settings: &Settings, args: &ApproveArgs) -> anyhow::Result<Approved> {
    let signer = Signer::from_key_file(&args.key)
        .with_context(|| format!("--key {}", args.key.display()))?;
    let approver = signing_principal(settings, &signer, Namespace::Approve)?;
    let allowed = AllowedSigners::read(std::path::Path::new(&settings.security.allowed_signers))?;
    let topology = Topology::new(&settings.broker, &settings.retry);
    let waiting = read_awaiting(settings, &topology).await?;
    let (batch, requests) = choose(&args.batch, waiting, &allowed)?;
    let requester = batch.requested_by.to_string();
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
    print_summary(settings, &batch, &requests);
    confirm(args, requests.len())?;

    let approval = approve(&batch.digest, &signer).context("signing the approval")?;
    let mut publisher =
        Publisher::connect(&settings.broker, &topology, "mfa-reset approve").await?;
    for waiting in &requests {
        let props = lapin::BasicProperties::default().with_headers(waiting.headers.clone());
        let headers = Headers::from_props(&props)
            .str(APPROVAL_HEADER, &approval)
            .build();
        let msg = OutMessage::json(RK_REQUEST, waiting.body.clone())
            .with_id(waiting.request.request_id.to_string())
            .with_headers(headers)
            .via(topology.intake());
        publisher.send(msg).await.with_context(|| {
            format!(
                "releasing batch {} was interrupted; run approve again (requests already \
                 released are not reset twice)",
                args.batch
            )
        })?;
    }
    publisher.close().await?;
    // Written, not printed: `serve` runs this too, and a closed stdout must not panic.
    let _ = writeln!(
        std::io::stdout(),
        "approved: batch {} ({} users, requested by {requester}) approved by {approver}; \
         released to the workers",
        args.batch,
        requests.len()
    );
    Ok(Approved {
        batch: args.batch.clone(),
        count: requests.len() as u64,
        approved_by: approver,
        manifest: batch.digest,
    })
}

/// Every message now in `{prefix}.awaiting`, oldest first, read without consuming it: a
/// marker of our own is written, and the read ends when it comes by.
async fn read_awaiting(
    settings: &Settings,
    topology: &Topology,
) -> anyhow::Result<Vec<(Vec<u8>, FieldTable)>> {
    let conn = broker::connect(&settings.broker, "mfa-reset approve").await?;
    super::ensure_set_up(&conn, &topology.awaiting(), "approve", settings).await?;
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
    let mut messages = Vec::new();
    let read = async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.context("awaiting stream")?;
            delivery.ack(BasicAckOptions::default()).await?;
            let props = &delivery.properties;
            if headers::get_str(props, MARKER_HEADER).as_deref() == Some(marker.as_str()) {
                return Ok(());
            }
            if headers::get_str(props, MARKER_HEADER).is_none() {
                messages.push((
                    delivery.data.clone(),
                    props.headers().clone().unwrap_or_default(),
                ));
            }
        }
        anyhow::bail!("the awaiting stream ended before our marker came by")
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("reading the awaiting stream took over {READ_TIMEOUT:?}"))??;
    let _ = conn.close(200, "bye".into()).await;
    Ok(messages)
}

/// The newest complete, verified batch `id` in the stream, with its requests (one per
/// request id, in leaf order).
fn choose(
    id: &str,
    messages: Vec<(Vec<u8>, FieldTable)>,
    allowed: &AllowedSigners,
) -> anyhow::Result<(TrustedBatch, Vec<Waiting>)> {
    // The requester's signature is checked here; the approval is what we are about to add.
    let policy = Policy {
        allowed,
        approval_above: u64::MAX,
    };
    let now = Utc::now();
    let mut batches: BTreeMap<Digest, (TrustedBatch, BTreeMap<u64, Waiting>)> = BTreeMap::new();
    let mut refused = 0u64;
    for (body, table) in messages {
        let props = lapin::BasicProperties::default().with_headers(table.clone());
        let manifest = headers::get_str(&props, MANIFEST_HEADER);
        let Some(manifest) = manifest else { continue };
        let named: Option<String> = serde_json::from_str::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|v| v["manifest"]["batch"].as_str().map(str::to_string));
        if named.as_deref() != Some(id) {
            continue;
        }
        let Ok(batch) = verify_batch(Some(&manifest), None, &policy, now) else {
            refused += 1;
            continue;
        };
        let Ok(request) = serde_json::from_slice::<ResetRequest>(&body) else {
            refused += 1;
            continue;
        };
        let proof = headers::get_str(&props, PROOF_HEADER);
        if !matches!(
            verify_request(&request, proof.as_deref(), &batch, now),
            Verdict::Verified(_)
        ) {
            refused += 1;
            continue;
        }
        let index = proof
            .as_deref()
            .and_then(|p| serde_json::from_str::<crate::trust::MerkleProof>(p).ok())
            .map_or(0, |p| p.index);
        let entry = batches
            .entry(batch.digest)
            .or_insert_with(|| (batch.clone(), BTreeMap::new()));
        entry.1.entry(index).or_insert(Waiting {
            request,
            body,
            headers: table,
        });
    }
    if refused > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "warning: {refused} message(s) in the awaiting stream claim batch {id} but do not \
             verify (forged or altered); they are ignored"
        );
    }
    anyhow::ensure!(
        !batches.is_empty(),
        Refused {
            message: format!(
                "no signed batch {id} is waiting for approval (it may be small enough to run \
                 without one, or already expired from the awaiting stream)"
            ),
            exit_code: 1,
        }
    );
    let mut complete: Vec<(TrustedBatch, BTreeMap<u64, Waiting>)> = batches
        .into_values()
        .filter(|(batch, requests)| requests.len() as u64 == batch.manifest.count)
        .collect();
    complete.sort_by_key(|(batch, _)| batch.manifest.created_at);
    let Some((batch, requests)) = complete.pop() else {
        anyhow::bail!(Refused {
            message: format!(
                "batch {id} is only partly in the awaiting stream (its enqueue was \
                 interrupted): run the same enqueue again with --batch {id}, then approve"
            ),
            exit_code: 1,
        });
    };
    let mut seen = HashSet::new();
    let requests = requests
        .into_values()
        .filter(|w| seen.insert(w.request.request_id))
        .collect();
    Ok((batch, requests))
}

fn print_summary(settings: &Settings, batch: &TrustedBatch, requests: &[Waiting]) {
    let mut err = std::io::stderr().lock();
    let first = requests.first().map(|w| &w.request);
    let sample: Vec<String> = requests
        .iter()
        .take(SAMPLE)
        .map(|w| printable(&w.request.user.to_string()))
        .collect();
    let _ = writeln!(err, "batch id:     {}", printable(&batch.manifest.batch));
    let _ = writeln!(err, "requested by: {}", batch.requested_by);
    let _ = writeln!(
        err,
        "created at:   {}",
        batch.manifest.created_at.to_rfc3339()
    );
    let _ = writeln!(err, "users:        {}", requests.len());
    let _ = writeln!(err, "sample:       {}", sample.join(", "));
    if let Some(first) = first {
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
        if let Some(reason) = &first.reason {
            let _ = writeln!(err, "reason:       {}", printable(reason));
        }
    }
    let _ = writeln!(err, "manifest:     {}", batch.digest);
    let protected: Vec<String> = requests
        .iter()
        .filter(|w| reset::is_protected(&settings.reset, &w.request.user))
        .map(|w| printable(&w.request.user.to_string()))
        .collect();
    if !protected.is_empty() {
        let _ = writeln!(
            err,
            "WARNING: {} protected account(s) in the batch (reset.protected_users; workers \
             will not touch them): {}",
            protected.len(),
            protected.join(", ")
        );
    }
    if settings.reset.skip_admins {
        let _ = writeln!(
            err,
            "admins:       users holding a directory role are skipped by the workers \
             (reset.skip_admins = true)"
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
fn confirm(args: &ApproveArgs, count: usize) -> anyhow::Result<()> {
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
    fn control_characters_from_the_queue_are_not_printed() {
        assert_eq!(printable("a\x1b[2Jb\n"), "a?[2Jb?");
    }
}
