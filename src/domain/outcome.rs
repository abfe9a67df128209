//! [`Outcome`]: what happened to one user, with what was removed and what remains.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::UserRef;

/// The final status of one request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every removable method in scope was removed.
    Reset,
    /// Nothing removable was registered.
    AlreadyClean,
    /// Some removable methods remain (e.g. an unknown type, or a delete that kept failing).
    Partial,
    /// Nothing changed; `methods_removed` lists what would have been removed.
    DryRun,
    /// The reset could not be done; `error_code` says why.
    Failed,
    /// A protected account (break-glass, admin): never touched.
    SkippedProtected,
    /// The request was older than `reset.max_request_age` and was not executed.
    Expired,
}

impl Status {
    /// Every status, in report order.
    pub const ALL: [Status; 7] = [
        Status::Reset,
        Status::AlreadyClean,
        Status::Partial,
        Status::DryRun,
        Status::Failed,
        Status::SkippedProtected,
        Status::Expired,
    ];

    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Reset => "reset",
            Status::AlreadyClean => "already_clean",
            Status::Partial => "partial",
            Status::DryRun => "dry_run",
            Status::Failed => "failed",
            Status::SkippedProtected => "skipped_protected",
            Status::Expired => "expired",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One authentication method, as recorded in an outcome (a backup of what was removed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MethodRecord {
    /// The Graph collection stem: `phone`, `email`, `microsoftAuthenticator`, `fido2`, … or the
    /// full `@odata.type` of a type this build does not know.
    #[serde(rename = "type")]
    pub kind: String,
    /// The method id.
    pub id: String,
    /// Display name, device or model, where Graph gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Masked phone number or email (`+1 ******1234`, `a***@contoso.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<String>,
    /// Phone type (`mobile`, `alternateMobile`, `office`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_type: Option<String>,
    /// The full phone number or email, kept only with `reset.backup = true` (for `restore`),
    /// and then only encrypted to the restore key (`reset.backup_recipient`): base64 of an age
    /// file that [`crate::backup::BackupIdentity::open`] opens. Never the value in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_sealed: Option<String>,
}

impl MethodRecord {
    /// `type:id`, as in the CSV report.
    pub fn short(&self) -> String {
        format!("{}:{}", self.kind, self.id)
    }
}

/// What happened to one user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// The request this answers.
    pub request_id: Uuid,
    /// Its batch.
    pub batch: String,
    /// The user.
    pub user: UserRef,
    /// Final status.
    pub status: Status,
    /// Removed (or, in a dry run, would be removed).
    pub methods_removed: Vec<MethodRecord>,
    /// Removable methods in scope still registered at the end, and unknown types.
    pub methods_remaining: Vec<MethodRecord>,
    /// Sign-in sessions revoked.
    pub sessions_revoked: bool,
    /// Attempts made (1 = first try succeeded).
    pub attempts: u32,
    /// Graph's error code (or ours: `retries_exhausted`, `invalid_request`, …) when not clean.
    pub error_code: Option<String>,
    /// Human-readable error.
    pub error_message: Option<String>,
    /// Ticket of the request.
    pub ticket: Option<String>,
    /// When the outcome was decided.
    pub finished_at: DateTime<Utc>,
    /// Which worker decided it.
    pub worker: String,
    /// The graph requests spent on this user.
    #[serde(default)]
    pub graph_calls: u32,
    /// Which execution of the request this is (0 = original, n = n-th `dlq replay`).
    #[serde(default)]
    pub replay: u32,
    /// Dry run?
    #[serde(default)]
    pub dry_run: bool,
    /// What a reader should know that is not an error: sessions not revoked for an external
    /// user (Graph does not revoke them), methods kept because the user registered them
    /// after the request was made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Who asked for the reset (the request's signer, once requests are signed).
    #[serde(default)]
    pub requested_by: Option<String>,
    /// Who approved the batch, when it needed a second person.
    #[serde(default)]
    pub approved_by: Option<String>,
    /// For a replay (`replay > 0`): the admin who signed it (namespace `mfa-reset-admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_by: Option<String>,
    /// For a replay: the `SHA256:…` fingerprint of the key that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_key: Option<String>,
    /// Why, in the operator's words.
    #[serde(default)]
    pub reason: Option<String>,
    /// The request's leaf index in its batch manifest, when known: `audit verify` reports
    /// every index without a verified outcome, so a deleted last record is found too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u64>,
}

/// `+1 5555551234` → `+1 ******1234`: country code and last four digits stay.
pub fn mask_phone(number: &str) -> String {
    let (prefix, rest) = match number.split_once(' ') {
        Some((cc, rest)) if cc.starts_with('+') => (format!("{cc} "), rest),
        _ => (String::new(), number),
    };
    let digits: Vec<char> = rest.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let keep = digits.len().min(4);
    let hidden = digits.len() - keep;
    let tail: String = digits[hidden..].iter().collect();
    format!("{prefix}{}{tail}", "*".repeat(hidden))
}

/// `alice@contoso.com` → `a***@contoso.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_keep_country_code_and_last_four() {
        assert_eq!(mask_phone("+1 5555551234"), "+1 ******1234");
        assert_eq!(mask_phone("+44 7700900123"), "+44 ******0123");
        assert_eq!(mask_phone("123"), "123");
    }

    #[test]
    fn emails_keep_first_letter_and_domain() {
        assert_eq!(mask_email("alice@contoso.com"), "a***@contoso.com");
        assert_eq!(mask_email("nonsense"), "***");
    }

    #[test]
    fn statuses_serialise_as_report_names() {
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
