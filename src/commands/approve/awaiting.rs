//! Reading the `{prefix}.awaiting` stream: every message of a batch held for approval, each
//! checked against the batch's signed manifest ([`examine`]), without consuming the stream
//! ([`scan`] stops at a marker of its own).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

use crate::broker::headers::{self, Headers};
use crate::broker::publisher::publish_confirmed;
use crate::broker::topology::RK_AWAITING;
use crate::broker::{OutMessage, Publisher, Topology};
use crate::domain::{Record, ResetRequest};
use crate::trust::requests::{
    verify_batch, verify_compact_request, verify_known_batch, verify_request, CompactProof,
    KnownBatch, Policy, TrustedBatch, Verdict, MANIFEST_HEADER, PROOF_HEADER,
};
use crate::trust::{AllowedSigners, Digest, MerkleProof};

/// Header of the marker `approve` writes to find the end of the awaiting stream.
const MARKER_HEADER: &str = "x-mfa-marker";

/// Longest wait for our own marker to come by.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The verdict of the first pass on one message of the batch.
pub(super) enum Seen {
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

/// The signed manifests the first pass has met.
pub(super) struct Signatures<'a> {
    pub(super) allowed: &'a AllowedSigners,
    /// The verdict per exact inline manifest header.
    pub(super) inline: &'a mut HashMap<String, Option<TrustedBatch>>,
    /// The compact batches' manifest records that verified, by digest.
    pub(super) compact: &'a mut HashMap<Digest, std::sync::Arc<KnownBatch>>,
}

/// What one message of the awaiting stream is to batch `id`. A manifest's signature is
/// checked once (`seen` remembers it).
pub(super) fn examine(
    id: &str,
    body: &[u8],
    props: &BasicProperties,
    seen: &mut Signatures<'_>,
) -> Seen {
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
pub(super) async fn scan<F>(
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
