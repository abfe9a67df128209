//! Intake: CSV files ([`plan_csv`]), ticket events ([`plan_tickets`]) and rows already in
//! memory ([`plan_rows`]) become a [`Plan`] only after the whole input has been read and every
//! row validated. A refused input yields an [`IntakeError`] that names each bad line and the
//! fix ([`IntakeError::render`]); nothing of it is ever handed to the publisher.
//!
//! A CSV file is read twice: the first pass validates and keeps only 128-bit hashes of user
//! keys (for duplicates), so a million-row file validates in bounded memory; [`Plan::rows`]
//! re-reads it and refuses to go on if the file changed in between. Ticket events and group
//! members are small and kept in memory.

mod csv;
mod tickets;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::domain::{UserRef, UserRefError};

/// At most this many [`RowError`]s are kept; the rest are only counted.
pub const MAX_ROW_ERRORS: usize = 1_000;
/// At most this many duplicates are kept in [`Plan::duplicates`]; the rest are only counted.
pub const MAX_DUPLICATES: usize = 1_000;
/// How many users [`Plan::sample`] holds.
pub const SAMPLE_SIZE: usize = 5;
/// Values in messages are cut to about this many characters.
const DISPLAY_CHARS: usize = 80;

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
    /// Per-row override of `--tap` (ticket events): a Temporary Access Pass after the reset.
    pub tap: Option<bool>,
}

/// One bad row or line.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based line number.
    pub line: u64,
    /// Column (CSV) or field (ticket event) name; empty when the whole line is at fault.
    pub field: String,
    /// The offending value (shortened when long).
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// What kind of input a [`RowError::field`] names: a CSV column or a JSON field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A CSV file: fields are columns.
    Csv,
    /// Ticket events (JSON lines): fields are JSON fields.
    Tickets,
}

/// Why an input was refused: nothing of it is enqueued.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The file as a whole is unusable (missing, empty, no user column, not UTF-8 …). The
    /// message names the file and says what to do.
    #[error("{0}")]
    File(String),
    /// Some rows are invalid: `errors` holds the first [`MAX_ROW_ERRORS`] of them, in line
    /// order; `total` counts them all.
    #[error("{} invalid {}", thousands(*.total), plural(*.total, "row", "rows"))]
    Rows {
        /// The first bad rows, in line order.
        errors: Vec<RowError>,
        /// How many rows are bad in all.
        total: u64,
        /// Whether `field` names CSV columns or JSON fields.
        kind: InputKind,
    },
}

impl IntakeError {
    /// Everything wrong with the input, for a person: one line per bad row
    /// (`users.csv line 14, column "user": "bob@" is not …: fix the value or delete the row`),
    /// `… and 12,345 more invalid rows` when capped, and last `nothing was enqueued`.
    /// `source` is the input as the operator named it, e.g. `users.csv`.
    pub fn render(&self, source: &str) -> String {
        let mut out = String::new();
        match self {
            IntakeError::File(message) => {
                out.push_str(message);
                out.push('\n');
            }
            IntakeError::Rows {
                errors,
                total,
                kind,
            } => {
                let noun = match kind {
                    InputKind::Csv => "column",
                    InputKind::Tickets => "field",
                };
                for error in errors {
                    // Writing to a String cannot fail.
                    let _ = if error.field.is_empty() {
                        writeln!(out, "{source} line {}: {}", error.line, error.reason)
                    } else {
                        writeln!(
                            out,
                            "{source} line {}, {noun} {:?}: {}",
                            error.line, error.field, error.reason
                        )
                    };
                }
                let more = total.saturating_sub(errors.len() as u64);
                if more > 0 {
                    let _ = writeln!(
                        out,
                        "… and {} more invalid {}",
                        thousands(more),
                        plural(more, "row", "rows")
                    );
                }
            }
        }
        out.push_str("nothing was enqueued");
        out
    }
}

/// A validated input: what will be enqueued.
#[derive(Debug)]
pub struct Plan {
    /// `csv:users.csv`, `tickets:events.jsonl`, `group:{id}`.
    pub source: String,
    /// Users to enqueue (duplicates excluded).
    pub count: u64,
    /// (line, first line it appeared on, user) for each duplicate skipped, in line order;
    /// at most [`MAX_DUPLICATES`] (see `duplicates_total`).
    pub duplicates: Vec<(u64, u64, String)>,
    /// How many duplicates were skipped in all (`duplicates` may hold fewer).
    pub duplicates_total: u64,
    /// The first few users (up to [`SAMPLE_SIZE`]), in the order they will be enqueued.
    pub sample: Vec<String>,
    /// Where [`Plan::rows`] reads the rows from.
    origin: Origin,
}

/// Where the rows of a plan come from.
#[derive(Debug)]
enum Origin {
    /// Re-read from a CSV file, which must not have changed since it was validated.
    Csv(csv::CsvOrigin),
    /// Held in memory (ticket events, group members), duplicates already removed.
    Memory(Vec<IntakeRow>),
}

impl Plan {
    /// The rows to enqueue, in input order, duplicates skipped.
    ///
    /// For a CSV file this re-reads the file: if it changed since it was validated (size or
    /// modification time differ, a row no longer parses, or the number of rows differs) the
    /// iterator yields an error and stops. Callers must stop publishing at the first error.
    pub fn rows(
        &self,
    ) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<IntakeRow>> + Send + '_>> {
        match &self.origin {
            Origin::Csv(origin) => Ok(Box::new(origin.rows(self.count)?)),
            Origin::Memory(rows) => Ok(Box::new(rows.iter().cloned().map(Ok))),
        }
    }
}

/// Read and validate a CSV file in full.
///
/// The user column is the first header (case-insensitive, trimmed) equal to `user`, then
/// `userPrincipalName`, `upn`, `id`, `objectId`, in that priority: an Entra "Download users"
/// export with both `id` and `userPrincipalName` is read by `userPrincipalName`. Optional
/// `ticket` and `reason` columns are read; other columns are ignored.
pub fn plan_csv(path: &Path) -> Result<Plan, IntakeError> {
    csv::plan(path)
}

/// Read and validate ticket events (JSON lines); `-` reads standard input.
///
/// Events are kept in memory (ticket files are small, and standard input cannot be re-read).
pub fn plan_tickets(path: &Path) -> Result<Plan, IntakeError> {
    tickets::plan(path)
}

/// One ticket event on its own (a webhook body), validated as a line of
/// [`plan_tickets`]; errors name the field (`line` is 1).
pub fn parse_ticket_event(body: &[u8]) -> Result<IntakeRow, RowError> {
    tickets::parse_event(body)
}

/// A plan from rows already in memory (e.g. group members): the first row of each user is
/// kept, later ones become duplicates.
pub fn plan_rows(source: String, rows: Vec<IntakeRow>) -> Plan {
    let (rows, duplicates, duplicates_total) = dedupe_in_memory(rows);
    Plan {
        source,
        count: rows.len() as u64,
        sample: rows
            .iter()
            .take(SAMPLE_SIZE)
            .map(|row| row.user.to_string())
            .collect(),
        duplicates,
        duplicates_total,
        origin: Origin::Memory(rows),
    }
}

/// Keep the first row of each user (by [`UserRef::key`]); the rest become
/// (line, first line, user) duplicates, the first [`MAX_DUPLICATES`] of them kept.
fn dedupe_in_memory(rows: Vec<IntakeRow>) -> (Vec<IntakeRow>, Vec<(u64, u64, String)>, u64) {
    let mut first_lines: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    let mut duplicates = Vec::new();
    let mut total = 0u64;
    for row in rows {
        match first_lines.get(&row.user.key()) {
            Some(&first) => {
                total += 1;
                if duplicates.len() < MAX_DUPLICATES {
                    duplicates.push((row.line, first, row.user.to_string()));
                }
            }
            None => {
                first_lines.insert(row.user.key(), row.line);
                kept.push(row);
            }
        }
    }
    (kept, duplicates, total)
}

/// Collects bad rows: keeps the first [`MAX_ROW_ERRORS`], counts all.
#[derive(Debug, Default)]
struct RowErrors {
    kept: Vec<RowError>,
    total: u64,
}

impl RowErrors {
    fn push(&mut self, error: RowError) {
        self.total += 1;
        if self.kept.len() < MAX_ROW_ERRORS {
            self.kept.push(error);
        }
    }

    /// `Err` if any row was bad.
    fn into_result(self, kind: InputKind) -> Result<(), IntakeError> {
        if self.total == 0 {
            Ok(())
        } else {
            Err(IntakeError::Rows {
                errors: self.kept,
                total: self.total,
                kind,
            })
        }
    }
}

/// Validate the user cell of a row, or say what is wrong with it and how to fix it.
fn parse_user(line: u64, field: &str, raw: &str) -> Result<UserRef, RowError> {
    let user = parse_user_ref(line, field, raw)?;
    match user.entra_disallowed_character() {
        None => Ok(user),
        Some(c) => Err(RowError {
            line,
            field: field.to_string(),
            value: shorten(raw),
            reason: format!(
                "{:?} contains {c:?}, which Entra does not allow in a user principal name \
                 (letters, digits and ' . - _ ! # ^ ~), so it names no user: write the UPN as \
                 Entra shows it, or the user's object id",
                shorten(raw.trim())
            ),
        }),
    }
}

/// [`UserRef::parse`], its error as a [`RowError`].
fn parse_user_ref(line: u64, field: &str, raw: &str) -> Result<UserRef, RowError> {
    UserRef::parse(raw).map_err(|error| {
        let reason = match error {
            UserRefError::Empty => format!("{field} is empty: fill in the user or delete the row"),
            other => format!(
                "{:?} {other}: fix the value or delete the row",
                shorten(raw.trim())
            ),
        };
        RowError {
            line,
            field: field.to_string(),
            value: shorten(raw),
            reason,
        }
    })
}

/// Longest ticket id accepted; longer is a mistake (a pasted description), not an id.
const MAX_TICKET_CHARS: usize = 256;
/// Longest reason accepted: it travels in every message and is logged.
const MAX_REASON_CHARS: usize = 2_000;

/// An optional free-text cell: trimmed, empty becomes `None`, too long is an error.
fn parse_text(line: u64, field: &str, raw: Option<&str>) -> Result<Option<String>, RowError> {
    let Some(value) = raw.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let max = if field.eq_ignore_ascii_case("ticket") {
        MAX_TICKET_CHARS
    } else {
        MAX_REASON_CHARS
    };
    let chars = value.chars().count();
    if chars > max {
        return Err(RowError {
            line,
            field: field.to_string(),
            value: shorten(value),
            reason: format!(
                "{field} is {} characters long; at most {} are accepted: shorten it",
                thousands(chars as u64),
                thousands(max as u64)
            ),
        });
    }
    Ok(Some(value.to_string()))
}

/// `value` as shown in an error: control characters escaped (it came from outside), cut to
/// [`DISPLAY_CHARS`] characters with `…` when cut.
fn shorten(value: &str) -> String {
    crate::net::shorten(value, DISPLAY_CHARS)
}

/// `12345` → `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Why a line is not UTF-8 text, as a file-level message, or `None` if it is.
///
/// A NUL byte never appears in a text CSV or JSON file; it means a binary file or UTF-16
/// (where every ASCII character is followed by a NUL).
fn text_problem(name: &str, line: u64, where_: &str, bytes: &[u8]) -> Option<String> {
    if bytes.contains(&0) {
        return Some(format!(
            "{name} line {line}{where_} contains a NUL byte: this looks like a binary or UTF-16 \
             file, not UTF-8 text: save it as UTF-8 and try again"
        ));
    }
    if let Err(error) = std::str::from_utf8(bytes) {
        let at = error.valid_up_to();
        let before = String::from_utf8_lossy(&bytes[at.saturating_sub(20)..at]).into_owned();
        return Some(format!(
            "{name} line {line}{where_} is not valid UTF-8 (byte 0x{:02X} after {:?}): save the \
             file as UTF-8 (in Excel: Save As, \"CSV UTF-8\") and try again",
            bytes[at], before
        ));
    }
    None
}

/// A UTF-16 (or UTF-32) byte order mark at the start of a file.
fn is_utf16_bom(start: &[u8]) -> bool {
    start.starts_with(&[0xFF, 0xFE]) || start.starts_with(&[0xFE, 0xFF])
}

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// The message for a file that cannot be opened or read.
fn unreadable(name: &str, error: &std::io::Error) -> IntakeError {
    let fix = match error.kind() {
        std::io::ErrorKind::NotFound => "check the path and the current directory",
        std::io::ErrorKind::PermissionDenied => {
            "check the file's permissions or copy it somewhere you can read"
        }
        _ => "check the path and that the file is readable",
    };
    IntakeError::File(format!("cannot read {name}: {error}: {fix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: u64, user: &str) -> IntakeRow {
        IntakeRow {
            line,
            user: UserRef::parse(user).unwrap(),
            ticket: None,
            reason: None,
            requested_by: None,
            revoke_sessions: None,
            tap: None,
        }
    }

    #[test]
    fn long_values_are_shortened_to_about_eighty_characters() {
        let short = shorten(&"é".repeat(80));
        assert_eq!(short.chars().count(), 80);
        let long = shorten(&"é".repeat(10_000));
        assert_eq!(long.chars().count(), 80);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_345), "12,345");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn render_names_each_row_the_remainder_and_that_nothing_was_enqueued() {
        let error = IntakeError::Rows {
            errors: vec![RowError {
                line: 14,
                field: "user".into(),
                value: "bob@".into(),
                reason: "\"bob@\" is not a user".into(),
            }],
            total: 12_346,
            kind: InputKind::Csv,
        };
        assert_eq!(error.to_string(), "12,346 invalid rows");
        assert_eq!(
            error.render("users.csv"),
            "users.csv line 14, column \"user\": \"bob@\" is not a user\n\
             … and 12,345 more invalid rows\n\
             nothing was enqueued"
        );
    }

    #[test]
    fn an_invalid_user_reason_quotes_the_value_and_says_the_fix() {
        let error = parse_user(14, "user", "bob@").unwrap_err();
        assert_eq!(
            error.reason,
            "\"bob@\" is not a user principal name (local@domain) or an object id (GUID): \
             fix the value or delete the row"
        );
        let empty = parse_user(7, "user", "  ").unwrap_err();
        assert_eq!(
            empty.reason,
            "user is empty: fill in the user or delete the row"
        );
    }

    #[test]
    fn a_upn_with_a_character_entra_does_not_allow_is_a_line_error_naming_it() {
        let error = parse_user(3, "userPrincipalName", "o'neil+mfa@contoso.com").unwrap_err();
        assert_eq!(error.line, 3);
        assert!(
            error
                .reason
                .starts_with("\"o'neil+mfa@contoso.com\" contains '+', which Entra does not allow"),
            "{}",
            error.reason
        );
        assert!(error.reason.contains("object id"), "{}", error.reason);
        assert!(parse_user(4, "user", "ann_fabrikam.com#EXT#@contoso.onmicrosoft.com").is_ok());
    }

    #[test]
    fn plan_rows_keeps_the_first_row_of_each_user() {
        let plan = plan_rows(
            "group:g".into(),
            vec![row(1, "a@x.com"), row(2, "B@x.com"), row(3, "A@X.com")],
        );
        assert_eq!(plan.count, 2);
        assert_eq!(plan.duplicates, vec![(3, 1, "A@X.com".to_string())]);
        assert_eq!(plan.duplicates_total, 1);
        let lines: Vec<u64> = plan.rows().unwrap().map(|r| r.unwrap().line).collect();
        assert_eq!(lines, vec![1, 2]);
        assert_eq!(plan.sample, vec!["a@x.com", "B@x.com"]);
    }

    #[test]
    fn nul_bytes_and_invalid_utf8_are_named_with_their_line() {
        let nul = text_problem("f.csv", 3, "", b"a\0b").unwrap();
        assert!(
            nul.contains("f.csv line 3") && nul.contains("binary or UTF-16"),
            "{nul}"
        );
        let latin1 = text_problem("f.csv", 4, "", b"Ren\xe9").unwrap();
        assert!(
            latin1.contains("line 4") && latin1.contains("save the file as UTF-8"),
            "{latin1}"
        );
        assert!(text_problem("f.csv", 5, "", "René".as_bytes()).is_none());
    }
}
