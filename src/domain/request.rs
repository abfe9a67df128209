//! The request message on `{prefix}.requests` and the records on the `{prefix}.outcomes` stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Outcome, UserRef};

/// The request format this build writes and understands.
pub const REQUEST_VERSION: u32 = 1;

/// One user to reset: the JSON body of a message on `{prefix}.requests`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Message format version; workers dead-letter versions they do not know.
    pub version: u32,
    /// Unique per (batch, user): a UUIDv5 of both, so enqueueing a batch again is absorbed.
    pub request_id: Uuid,
    /// The batch this request belongs to.
    pub batch: String,
    /// Whom to reset.
    pub user: UserRef,
    /// Helpdesk ticket, if any.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Why, in the operator's words.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who asked.
    #[serde(default)]
    pub requested_by: Option<String>,
    /// List and record what would be removed; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also revoke the user's sign-in sessions.
    #[serde(default)]
    pub revoke_sessions: bool,
    /// When the request was made; requests older than `reset.max_request_age` expire.
    pub requested_at: DateTime<Utc>,
    /// 0 for the original request; `dlq replay` increments it so a replayed request is
    /// executed again instead of being absorbed as a duplicate.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replay: u32,
    /// Issue a Temporary Access Pass once the methods are gone (opt-in). Part of the signed
    /// Merkle leaf like every field but `carry` and `replay`: nobody can add it to a signed
    /// request. Absent (not `null`) when not asked, so older leaves stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<TapRequest>,
    /// What earlier attempts of this request already did (set when it goes to a delay tier),
    /// so the final outcome still lists every method removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry: Option<Carry>,
    /// For a request of a compact batch: its place in the batch, the base64 of a
    /// [`crate::trust::requests::CompactProof`] (manifest digest, leaf index, path up to the
    /// batch's Merkle cap). In the body, not a header: the broker decodes every header of
    /// every message, while body bytes cost it far less (measured: see `trust::requests`).
    /// Not part of the signed leaf (it is the proof of it). Absent for the inline form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// A Temporary Access Pass to create after the reset (Graph's `lifetimeInMinutes`,
/// `isUsableOnce`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TapRequest {
    /// Lifetime in minutes (Graph accepts 10..=43200; the tenant policy may narrow it).
    pub lifetime_minutes: u32,
    /// Usable for one sign-in only.
    pub usable_once: bool,
}

/// The methods one attempt of a request is about to delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanRecord {
    /// The request.
    pub request_id: Uuid,
    /// Its replay generation.
    pub replay: u32,
    /// Its batch.
    pub batch: String,
    /// About to be deleted (masked details; full values only with `reset.backup`).
    pub methods: Vec<super::MethodRecord>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Progress carried from one attempt of a request to the next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Carry {
    /// Methods removed by earlier attempts.
    pub removed: Vec<super::MethodRecord>,
    /// Sessions already revoked.
    pub sessions_revoked: bool,
    /// Error of the last attempt, for the record.
    pub last_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ResetRequest {
    /// The deterministic request id of `user` in `batch`.
    pub fn id_for(batch: &str, user: &UserRef) -> Uuid {
        let name = format!("{batch}\n{}", user.key());
        Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
    }
}

/// Written once per batch by `enqueue`, before its requests: how many to expect, and (for a
/// compact batch) the signed manifest and Merkle cap its requests are verified against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchManifest {
    /// Batch id.
    pub batch: String,
    /// Number of requests the batch holds.
    pub count: u64,
    /// Where they came from: `csv:FILE`, `tickets:FILE`, `group:ID`.
    pub source: String,
    /// Dry run?
    pub dry_run: bool,
    /// Sessions revoked too?
    pub revoke_sessions: bool,
    /// Who enqueued it.
    pub requested_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// The batch's signed manifest (which inline-form requests carry in `mfa-manifest`, and
    /// compact ones name by digest in their `proof` field), so readers can tell a batch an operator
    /// signed from one written by anybody with broker access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::trust::requests::SealedManifest>,
    /// For a compact batch (requests carry only their `proof` field): one level of its Merkle tree,
    /// which workers check against the signed root once and then check each request's short
    /// path against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<crate::trust::MerkleCap>,
}

/// One record of the `{prefix}.outcomes` stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A batch was enqueued.
    Manifest(BatchManifest),
    /// A user's final outcome.
    Outcome(Box<Outcome>),
    /// Written before the first DELETE of a request: what is about to be removed. If the
    /// worker dies half-way, the next attempt learns from it what the first one removed.
    Plan(PlanRecord),
    /// Written by a reader to find "the end of the stream so far".
    Marker {
        /// Unique per read.
        id: Uuid,
    },
    /// Something a person did in the web console (`mfa-reset serve`), sealed by the console's
    /// key on its own chain (`console:{writer}`).
    ConsoleAction(ConsoleAction),
    /// An admin's `restore --yes`: what is about to be re-created, then what was. Sealed by
    /// the admin's key on the restore's own chain (`{batch}/restore-{id}`).
    Restore(Box<super::RestoreRecord>),
}

/// One action of a signed-in person in the web console, for the audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleAction {
    /// `signed_in`, `batch_submitted`, `batch_approved`, `replay_requested`, `replay_approved`.
    pub action: String,
    /// The batch acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// The person's user principal name, from their id token.
    pub upn: String,
    /// The person's Entra object id (`oid`): the identity that does not change with a rename.
    pub oid: String,
    /// The app roles the person held.
    pub roles: Vec<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// What else the action needs to be understood (counts, the replay's id, an error).
    #[serde(default)]
    pub detail: serde_json::Value,
}
