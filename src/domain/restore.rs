//! [`RestoreRecord`]: who re-created which removed methods, for whom, and what came of it.
//!
//! `restore --yes` writes two per run on the outcomes stream, signed by the admin who runs
//! it (namespace `mfa-reset-admin`) on a chain of its own (`{batch}/restore-{id}`): one
//! before Graph is called ([`RestoreStage::Started`]: what is about to be re-created), one
//! after ([`RestoreStage::Finished`]: what was). Methods are named by their type and the id
//! the worker's outcome recorded, never by their value: the phone numbers and addresses
//! stay sealed to the restore key on the worker's records.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::UserRef;

/// One of the two records of a restore. Unknown fields are taken, not refused: the
/// signature covers the record as written, and an older reader keeps believing a newer
/// writer's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreRecord {
    /// One per `restore --yes` run: its two records share it.
    pub restore_id: Uuid,
    /// The batch whose removed methods are re-created.
    pub batch: String,
    /// Before Graph is called, or after.
    pub stage: RestoreStage,
    /// The admin, as `security.allowed_signers` names the signing key's owner when the
    /// record was written. A reader believes the principal the signature verifies to.
    pub by: String,
    /// `SHA256:…` fingerprint of the key that signed.
    pub key: String,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// Each user's methods: to be re-created (started) or with their result (finished).
    pub users: Vec<RestoreUser>,
    /// Finished records only: why the restore ended before every method was tried (a
    /// method without a result was not tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// Before Graph is called, or after.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStage {
    /// What is about to be re-created; written (and confirmed) before the first call.
    Started,
    /// What was re-created, and what not and why.
    Finished,
}

/// One user's methods in a restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreUser {
    /// The user, as the batch's outcome names them.
    pub user: UserRef,
    /// The request whose verified outcome recorded the removed methods.
    pub request_id: Uuid,
    /// Which execution of it (0 = original, n = n-th replay).
    pub replay: u32,
    /// The methods.
    pub methods: Vec<RestoreMethod>,
}

/// One removed method, named as the outcome recorded it (never its value).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreMethod {
    /// `phone` or `email`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The removed method's id in the outcome.
    pub id: String,
    /// Phone type (`mobile`, `alternateMobile`, `office`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_type: Option<String>,
    /// What came of it; absent in a started record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RestoreResult>,
    /// Why not created: Graph's error code, or why the user was left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What came of one method.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestoreResult {
    /// Graph created it.
    Created,
    /// Graph refused it.
    Failed,
    /// Not attempted: the user is protected now (or could not be checked).
    Protected,
}

impl RestoreRecord {
    /// Methods of the record, all users.
    pub fn methods(&self) -> impl Iterator<Item = &RestoreMethod> {
        self.users.iter().flat_map(|user| &user.methods)
    }

    /// Methods whose result is `result`.
    pub fn count(&self, result: RestoreResult) -> usize {
        self.methods()
            .filter(|method| method.result == Some(result))
            .count()
    }
}
