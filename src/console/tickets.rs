//! The ticket API.
//!
//! `POST /api/v1/tickets`: a ticket system (ServiceNow, Jira, …) raises one reset per ticket.
//! The call is verified ([`super::webhook`]) before the body is even parsed; the body is one
//! ticket event of `enqueue --tickets`, validated the same way
//! ([`crate::intake::parse_ticket_event`]). It becomes a batch of one whose id, and request
//! id, are derived from the source and `webhook-id` ([`ids_for`]): the same call delivered
//! twice — by the sender's retries, or after a restart of `serve` — names the same request,
//! which the workers execute once.
//!
//! `GET /api/v1/tickets/{ticket}`: what happened, from the outcomes stream. Signed like a
//! webhook call over an empty body (a ticket's outcome names a user and their methods), or
//! asked by a signed-in person with a role.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::webhook::{self, Headers, Verified};
use super::{json_error, Console};
use crate::broker::headers::Headers as AmqpHeaders;
use crate::broker::topology::{RK_OUTCOME, RK_REQUEST};
use crate::broker::{OutMessage, Topology};
use crate::domain::{BatchManifest, Record, ResetRequest, REQUEST_VERSION};
use crate::intake::{self, IntakeRow};
use crate::trust::requests::{SealedBatch, MANIFEST_HEADER, PROOF_HEADER};

/// Manifests of ticket batches carry `source = "webhook:{source}:{ticket}"`.
const SOURCE_PREFIX: &str = "webhook:";
/// Ticket batch ids are `ticket-{source}-{request id, 32 hex}`.
const BATCH_PREFIX: &str = "ticket-";
/// How long this process remembers a call for idempotent answers (the request id is
/// deterministic, so forgetting only costs a second, absorbed publish).
const REMEMBER_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The deterministic (request id, batch id) of a call: a UUIDv5 of source and `webhook-id`.
pub fn ids_for(source: &str, webhook_id: &str) -> (Uuid, String) {
    let name = format!("mfa-reset webhook\n{source}\n{webhook_id}");
    let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes());
    (id, format!("{BATCH_PREFIX}{source}-{}", id.simple()))
}

/// A call this process accepted.
#[derive(Debug, Clone)]
struct Call {
    digest: [u8; 32],
    answer: Answer,
    at: DateTime<Utc>,
}

/// Calls accepted by this process, by (source, webhook-id).
#[derive(Debug, Default)]
pub struct Accepted(HashMap<(String, String), Call>);

/// The 202 answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The request created for the ticket.
    pub request_id: Uuid,
    /// Its batch (of one).
    pub batch: String,
    /// The ticket.
    pub ticket: String,
    /// The source system whose secret signed the call.
    pub source: String,
}

/// `POST /api/v1/tickets`
pub async fn create(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = console.settings.webhook.max_body;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "",
                &format!(
                "the body is larger than webhook.max_body ({limit} bytes): send one ticket event"
            ),
            )
        }
    };
    let verified = match verify(&console, &headers, &body) {
        Ok(v) => v,
        Err(response) => return response,
    };
    let digest: [u8; 32] = Sha256::digest(&body).into();
    // Held until the call is answered: a second delivery of the same id waits for the first.
    let mut accepted = console.accepted.lock().await;
    let key = (verified.source.clone(), verified.id.clone());
    if let Some(call) = accepted.0.get(&key) {
        return if call.digest == digest {
            (StatusCode::ACCEPTED, Json(call.answer.clone())).into_response()
        } else {
            json_error(
                StatusCode::CONFLICT,
                "id_reused",
                "webhook-id",
                "this webhook-id was already used for a different body: give each event its own id",
            )
        };
    }
    let row = match intake::parse_ticket_event(&body) {
        Ok(row) => row,
        Err(error) => {
            let status = if error.field.is_empty() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let code = if error.field.is_empty() {
                "bad_body"
            } else {
                "bad_field"
            };
            return json_error(status, code, &error.field, &error.reason);
        }
    };
    let answer = match publish(&console, &verified, row).await {
        Ok(answer) => answer,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), source = %verified.source, "a ticket could not be enqueued");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "",
                "the ticket could not be enqueued now; deliver the same call again (same webhook-id) later",
            );
        }
    };
    let now = Utc::now();
    accepted.0.retain(|_, call| now - call.at < REMEMBER_FOR);
    accepted.0.insert(
        key,
        Call {
            digest,
            answer: answer.clone(),
            at: now,
        },
    );
    if let Ok(mut index) = console.index.lock() {
        index.accepted(&answer, &verified.source);
    }
    tracing::info!(source = %answer.source, batch = %answer.batch, request_id = %answer.request_id, "ticket accepted");
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

// The refusal is the answer itself.
#[allow(clippy::result_large_err)]
fn verify(console: &Console, headers: &HeaderMap, body: &[u8]) -> Result<Verified, Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    webhook::verify(
        &console.sources,
        Headers {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        },
        body,
        Utc::now().timestamp(),
    )
    .map_err(|refusal| {
        json_error(
            StatusCode::UNAUTHORIZED,
            refusal.code(),
            refusal.field(),
            &refusal.to_string(),
        )
    })
}

/// Publish the manifest and the one request of the ticket's batch, confirmed.
async fn publish(console: &Console, call: &Verified, row: IntakeRow) -> anyhow::Result<Answer> {
    let (request_id, batch) = ids_for(&call.source, &call.id);
    let ticket = row.ticket.clone().unwrap_or_default();
    let requested_by = row
        .requested_by
        .clone()
        .unwrap_or_else(|| format!("{SOURCE_PREFIX}{}", call.source));
    let now = Utc::now();
    // `"tap": true` takes lifetime and one-time use from `[tap]`; a bad tap.lifetime is the
    // deployment's fault, refused before anything is published.
    let tap = match row.tap {
        Some(true) => Some(console.settings.tap.request()?),
        _ => None,
    };
    let request = ResetRequest {
        version: REQUEST_VERSION,
        request_id,
        batch: batch.clone(),
        user: row.user,
        ticket: row.ticket,
        reason: row.reason,
        requested_by: Some(requested_by),
        dry_run: false,
        revoke_sessions: row.revoke_sessions.unwrap_or(false),
        requested_at: now,
        replay: 0,
        tap,
        carry: None,
        proof: None,
    };
    // A batch of one, signed by the console's key (namespace mfa-reset-request): the
    // workers see the console's principal as the requester, the ticket system's person
    // in the request's own (signed) requested_by.
    let (signer, principal) = console
        .signer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("console.key is not set"))?;
    let sealed = SealedBatch::seal(std::slice::from_ref(&request), principal, signer, now)?;
    let manifest = Record::Manifest(BatchManifest {
        batch: batch.clone(),
        count: 1,
        source: format!("{SOURCE_PREFIX}{}:{ticket}", call.source),
        dry_run: false,
        revoke_sessions: request.revoke_sessions,
        requested_by: request.requested_by.clone(),
        created_at: now,
        sealed: Some(sealed.manifest.clone()),
        cap: None,
    });
    let headers = AmqpHeaders::default()
        .str(MANIFEST_HEADER, &sealed.manifest.to_header())
        .str(PROOF_HEADER, &sealed.proof_header(0))
        .build();
    let intake = Topology::new(&console.settings.broker, &console.settings.retry).intake();
    let mut guard = console.publisher().await?;
    let result = async {
        let publisher = guard.as_mut().expect("connected above");
        publisher
            .send(OutMessage::json(RK_OUTCOME, serde_json::to_vec(&manifest)?).via(intake.clone()))
            .await?;
        publisher
            .send(
                OutMessage::json(RK_REQUEST, serde_json::to_vec(&request)?)
                    .with_id(request_id.to_string())
                    .with_headers(headers)
                    .via(intake),
            )
            .await?;
        publisher.flush().await
    }
    .await;
    if result.is_err() {
        // Connect afresh next time.
        *guard = None;
    }
    result?;
    Ok(Answer {
        request_id,
        batch,
        ticket,
        source: call.source.clone(),
    })
}

/// One request raised for a ticket, as the outcomes stream tells it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TicketRequest {
    /// The request.
    pub request_id: Uuid,
    /// Its batch.
    pub batch: String,
    /// The source system that raised it (empty when only the outcome is known).
    pub source: String,
    /// `pending` until the outcome is recorded, then the outcome's status.
    pub status: String,
    /// The user, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Methods removed (or, for a dry run, that would have been).
    pub methods_removed: usize,
    /// Sessions revoked?
    pub sessions_revoked: bool,
    /// When the outcome was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The Temporary Access Pass, when the ticket asked for one: `issued`, and the pass
    /// sealed to the helpdesk key (`sealed`, an armored age file: `age -d -i KEY`) or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<crate::domain::TapOutcome>,
}

/// Ticket → the requests raised for it, built from the outcomes stream.
#[derive(Debug, Default)]
pub struct TicketIndex {
    by_ticket: HashMap<String, Vec<TicketRequest>>,
}

impl TicketIndex {
    /// Take in one record of the stream.
    pub fn record(&mut self, record: Record) {
        match record {
            Record::Manifest(m) => {
                let Some(rest) = m.source.strip_prefix(SOURCE_PREFIX) else {
                    return;
                };
                let Some((source, ticket)) = rest.split_once(':') else {
                    return;
                };
                let Some(request_id) = m
                    .batch
                    .strip_prefix(BATCH_PREFIX)
                    .and_then(|b| b.rsplit('-').next())
                    .and_then(|hex| Uuid::try_parse(hex).ok())
                else {
                    return;
                };
                self.pending(ticket, request_id, &m.batch, source, None);
            }
            Record::Outcome(o) => {
                let Some(ticket) = o.ticket.clone() else {
                    return;
                };
                let entries = self.by_ticket.entry(ticket).or_default();
                let entry = match entries.iter_mut().find(|e| e.request_id == o.request_id) {
                    Some(e) => e,
                    None => {
                        entries.push(TicketRequest {
                            request_id: o.request_id,
                            batch: o.batch.clone(),
                            source: String::new(),
                            status: String::new(),
                            user: None,
                            error_code: None,
                            methods_removed: 0,
                            sessions_revoked: false,
                            finished_at: None,
                            tap: None,
                        });
                        entries.last_mut().expect("just pushed")
                    }
                };
                entry.status = o.status.to_string();
                entry.user = Some(o.user.to_string());
                entry.error_code = o.error_code.clone();
                entry.methods_removed = o.methods_removed.len();
                entry.sessions_revoked = o.sessions_revoked;
                entry.finished_at = Some(o.finished_at);
                entry.tap = o.tap.clone();
            }
            Record::Plan(_)
            | Record::Marker { .. }
            | Record::ConsoleAction(_)
            | Record::Restore(_) => {}
        }
    }

    /// A call this process just accepted (its manifest may not have come by yet).
    pub fn accepted(&mut self, answer: &Answer, source: &str) {
        self.pending(
            &answer.ticket,
            answer.request_id,
            &answer.batch,
            source,
            None,
        );
    }

    fn pending(
        &mut self,
        ticket: &str,
        request_id: Uuid,
        batch: &str,
        source: &str,
        user: Option<String>,
    ) {
        let entries = self.by_ticket.entry(ticket.to_string()).or_default();
        if let Some(e) = entries.iter_mut().find(|e| e.request_id == request_id) {
            if e.source.is_empty() {
                e.source = source.to_string();
            }
            return;
        }
        entries.push(TicketRequest {
            request_id,
            batch: batch.to_string(),
            source: source.to_string(),
            status: "pending".into(),
            user,
            error_code: None,
            methods_removed: 0,
            sessions_revoked: false,
            finished_at: None,
            tap: None,
        });
    }

    /// The requests raised for `ticket`, oldest first.
    pub fn get(&self, ticket: &str) -> Option<&[TicketRequest]> {
        self.by_ticket
            .get(ticket)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }
}

/// `GET /api/v1/tickets/{ticket}`
pub async fn outcome(
    State(console): State<Arc<Console>>,
    Path(ticket): Path<String>,
    headers: HeaderMap,
) -> Response {
    // A signed-in viewer (or operator, approver) may read it in the console; a ticket system
    // signs the call like a webhook, over an empty body.
    match super::oidc::session_of(&console, &headers) {
        Some(session) if session.has(super::session::Role::Viewer) => {}
        Some(_) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "",
                "reading ticket outcomes needs the viewer, operator or approver role",
            )
        }
        None => {
            if let Err(response) = verify(&console, &headers, b"") {
                return response;
            }
        }
    }
    let found = console
        .index
        .lock()
        .ok()
        .and_then(|index| index.get(&ticket).map(<[TicketRequest]>::to_vec));
    match found {
        Some(requests) => {
            let done = requests.iter().all(|r| r.status != "pending");
            Json(serde_json::json!({
                "ticket": ticket,
                "done": done,
                "requests": requests,
            }))
            .into_response()
        }
        None => json_error(
            StatusCode::NOT_FOUND,
            "unknown_ticket",
            "ticket",
            "no request has been raised for this ticket",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_from_source_and_webhook_id_only() {
        let (a, batch) = ids_for("servicenow", "msg_1");
        assert_eq!(ids_for("servicenow", "msg_1"), (a, batch.clone()));
        assert_ne!(ids_for("jira", "msg_1").0, a);
        assert_ne!(ids_for("servicenow", "msg_2").0, a);
        assert_eq!(batch, format!("ticket-servicenow-{}", a.simple()));
        assert!(batch.len() <= 100);
    }

    #[test]
    fn the_index_knows_a_ticket_from_its_manifest_then_its_outcome() {
        let (id, batch) = ids_for("jira", "abc");
        let mut index = TicketIndex::default();
        index.record(Record::Manifest(BatchManifest {
            batch: batch.clone(),
            count: 1,
            source: "webhook:jira:OPS-7".into(),
            dry_run: false,
            revoke_sessions: false,
            requested_by: None,
            created_at: Utc::now(),
            sealed: None,
            cap: None,
        }));
        let got = index.get("OPS-7").expect("known");
        assert_eq!((got[0].request_id, got[0].status.as_str()), (id, "pending"));
        assert_eq!(got[0].source, "jira");
        assert!(index.get("OPS-8").is_none());
    }
}
