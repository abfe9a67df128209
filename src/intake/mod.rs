//! Intake: CSV files and ticket events, read and validated in full before anything is
//! enqueued. STUB — interface only; the intake helper completes it.

use std::path::Path;

use crate::domain::UserRef;

/// One user to enqueue, with what the input said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeRow {
    /// 1-based line number in the input (the header is line 1 of a CSV).
    pub line: u64,
    /// The user.
    pub user: UserRef,
    /// Ticket id, if the input had one.
    pub ticket: Option<String>,
    /// Reason, if the input had one.
    pub reason: Option<String>,
    /// Who asked, if the input said.
    pub requested_by: Option<String>,
    /// Per-row override of `--revoke-sessions` (ticket events).
    pub revoke_sessions: Option<bool>,
}

/// One bad row or line.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based line number.
    pub line: u64,
    /// Column or field name.
    pub field: String,
    /// The offending value (shortened when long).
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// Why an input was refused: nothing of it is enqueued.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The file as a whole is unusable (missing, empty, no user column, not UTF-8 …).
    #[error("{0}")]
    File(String),
    /// Some rows are invalid.
    #[error("{} invalid row(s)", .0.len())]
    Rows(Vec<RowError>),
}

/// A validated input: what will be enqueued.
#[derive(Debug)]
pub struct Plan {
    /// `csv:users.csv`, `tickets:events.jsonl`, `group:{id}`.
    pub source: String,
    /// Users to enqueue (duplicates excluded).
    pub count: u64,
    /// (line, first line it appeared on, user) for each duplicate skipped.
    pub duplicates: Vec<(u64, u64, String)>,
    /// The first few users, for the summary.
    pub sample: Vec<String>,
}

impl Plan {
    /// The rows to enqueue, in input order, duplicates skipped.
    pub fn rows(
        &self,
    ) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<IntakeRow>> + Send + '_>> {
        todo!()
    }
}

/// Read and validate a CSV file in full.
pub fn plan_csv(_path: &Path) -> Result<Plan, IntakeError> {
    todo!()
}

/// Read and validate ticket events (JSON lines); `-` reads standard input.
pub fn plan_tickets(_path: &Path) -> Result<Plan, IntakeError> {
    todo!()
}

/// A plan from rows already in memory (e.g. group members).
pub fn plan_rows(_source: String, _rows: Vec<IntakeRow>) -> Plan {
    todo!()
}

impl IntakeError {
    /// Every error, one line each, for a person.
    pub fn render(&self, _source: &str) -> String {
        todo!()
    }
}
