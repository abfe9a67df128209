//! Ticket events: one JSON object per line, from a file or standard input (`-`).
//!
//! Events are kept in memory once valid: ticket exports are small, and standard input cannot
//! be read a second time. Fields are checked strictly (`deny_unknown_fields`): a typo such as
//! `revoke_session` must be refused, not silently ignored.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;
use serde_json::error::Category;

use super::{
    is_utf16_bom, parse_text, parse_user, shorten, text_problem, unreadable, InputKind,
    IntakeError, IntakeRow, Plan, RowError, RowErrors, UTF8_BOM,
};

/// The fields an event may have.
pub const TICKET_FIELDS: [&str; 6] = [
    "ticket",
    "user",
    "reason",
    "requested_by",
    "revoke_sessions",
    "tap",
];

/// One ticket event as it arrives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketEvent {
    ticket: String,
    // Taken as text and validated by `parse_user`, so that a bad user gets the same message
    // as in a CSV file.
    user: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    requested_by: Option<String>,
    #[serde(default)]
    revoke_sessions: Option<bool>,
    /// Issue a Temporary Access Pass after the reset (lifetime and use from `[tap]`).
    #[serde(default)]
    tap: Option<bool>,
}

const EXAMPLE: &str = r#"{"ticket":"INC0012345","user":"alice@contoso.com"}"#;

pub(super) fn plan(path: &Path) -> Result<Plan, IntakeError> {
    let stdin = path.as_os_str() == "-";
    let (name, reader): (String, Box<dyn BufRead>) = if stdin {
        ("standard input".into(), Box::new(std::io::stdin().lock()))
    } else {
        let name = path.display().to_string();
        if path.is_dir() {
            return Err(IntakeError::File(format!(
                "{name} is a directory: give the path of the ticket events file"
            )));
        }
        let file = File::open(path).map_err(|e| unreadable(&name, &e))?;
        (name, Box::new(BufReader::new(file)))
    };
    let rows = read(&name, reader)?;
    let source = if stdin {
        "tickets:-".to_string()
    } else {
        format!("tickets:{name}")
    };
    Ok(super::plan_rows(source, rows))
}

/// Every event of `reader`, or every reason it is refused.
fn read(name: &str, mut reader: impl BufRead) -> Result<Vec<IntakeRow>, IntakeError> {
    let mut rows = Vec::new();
    let mut errors = RowErrors::default();
    let mut buffer = Vec::new();
    let mut line = 0u64;
    let mut any_bytes = false;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|e| unreadable(name, &e))?;
        if read == 0 {
            break;
        }
        line += 1;
        any_bytes = true;
        let ends_line = buffer.ends_with(b"\n");
        let mut bytes = buffer.as_slice();
        if line == 1 {
            if is_utf16_bom(bytes) {
                return Err(IntakeError::File(format!(
                    "{name} is UTF-16 (it starts with a UTF-16 byte order mark): save it as \
                     UTF-8 and try again"
                )));
            }
            bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        }
        if let Some(problem) = text_problem(name, line, "", bytes) {
            return Err(IntakeError::File(problem));
        }
        // Checked just above: the line is UTF-8.
        let text = std::str::from_utf8(bytes).unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        match parse_line(line, text, ends_line) {
            Ok(row) => rows.push(row),
            Err(error) => errors.push(error),
        }
    }
    errors.into_result(InputKind::Tickets)?;
    if rows.is_empty() {
        let what = if any_bytes {
            "has only blank lines"
        } else {
            "is empty"
        };
        return Err(IntakeError::File(format!(
            "{name} {what}: it needs one ticket event per line, such as {EXAMPLE}"
        )));
    }
    Ok(rows)
}

/// One ticket event that arrived on its own (the console's webhook body): validated exactly
/// as a line of `enqueue --tickets`, reported as line 1. The body may span several lines
/// (pretty-printed JSON); control characters other than whitespace are refused.
pub(super) fn parse_event(body: &[u8]) -> Result<IntakeRow, RowError> {
    let whole = |reason: String| RowError {
        line: 1,
        field: String::new(),
        value: String::new(),
        reason,
    };
    let bytes = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let text = std::str::from_utf8(bytes)
        .map_err(|_| whole("the body is not UTF-8 JSON: send the event as UTF-8".into()))?;
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(whole(format!(
            "the body holds the control character {c:?}: send one JSON object such as {EXAMPLE}"
        )));
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(whole(format!(
            "the body is empty: send one ticket event such as {EXAMPLE}"
        )));
    }
    parse_line(1, text, true)
}

/// One event, or what is wrong with its line.
fn parse_line(line: u64, text: &str, ends_line: bool) -> Result<IntakeRow, RowError> {
    let event: TicketEvent =
        serde_json::from_str(text).map_err(|e| json_error(line, text, ends_line, &e))?;
    let ticket =
        parse_text(line, "ticket", Some(event.ticket.as_str()))?.ok_or_else(|| RowError {
            line,
            field: "ticket".into(),
            value: String::new(),
            reason: "ticket is empty: give the ticket id or delete the line".into(),
        })?;
    Ok(IntakeRow {
        line,
        user: parse_user(line, "user", &event.user)?,
        ticket: Some(ticket),
        reason: parse_text(line, "reason", event.reason.as_deref())?,
        requested_by: parse_text(line, "requested_by", event.requested_by.as_deref())?,
        revoke_sessions: event.revoke_sessions,
        tap: event.tap,
    })
}

/// A serde error as a row error that says what to do.
fn json_error(line: u64, text: &str, ends_line: bool, error: &serde_json::Error) -> RowError {
    let column = error.column();
    let full = error.to_string();
    // serde_json appends " at line L column C"; the line is ours to give, the column we keep.
    let message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    let (field, reason) = match error.classify() {
        Category::Eof if !ends_line => (
            String::new(),
            "the file ends in the middle of this event (it looks truncated): complete the line \
             or delete it"
                .to_string(),
        ),
        Category::Eof => (
            String::new(),
            format!(
                "the JSON object is not closed on this line: each event must be one whole JSON \
                 object on one line, such as {EXAMPLE}"
            ),
        ),
        Category::Syntax => (
            String::new(),
            format!(
                "is not valid JSON ({message} at column {column}): each line must be one JSON \
                 object, such as {EXAMPLE}"
            ),
        ),
        Category::Data if message.starts_with("unknown field") => {
            let field = backticked(message).unwrap_or_default();
            let hint = closest(&field).map_or(String::new(), |n| format!(" (did you mean {n:?}?)"));
            let reason = format!(
                "unknown field {field:?}{hint} at column {column}: the accepted fields are {}; \
                 fix the name or remove the field",
                TICKET_FIELDS.join(", ")
            );
            (field, reason)
        }
        Category::Data if message.starts_with("missing field") => {
            let field = backticked(message).unwrap_or_default();
            let reason = format!(
                "{field} is missing: every event needs \"ticket\" and \"user\", such as {EXAMPLE}"
            );
            (field, reason)
        }
        Category::Data | Category::Io => (
            String::new(),
            format!(
                "{message} at column {column}: each line must be one JSON object, such as \
                 {EXAMPLE}"
            ),
        ),
    };
    RowError {
        line,
        field,
        value: shorten(text),
        reason,
    }
}

/// The first `` `name` `` in a serde message.
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// The accepted field nearest to a misspelt one, if it is near (at most 2 edits).
fn closest(field: &str) -> Option<&'static str> {
    TICKET_FIELDS
        .iter()
        .map(|accepted| (edit_distance(&field.to_lowercase(), accepted), *accepted))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, accepted)| accepted)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(input: &str) -> Vec<RowError> {
        match read("events.jsonl", input.as_bytes()) {
            Err(IntakeError::Rows { errors, .. }) => errors,
            other => panic!("expected row errors, got {other:?}"),
        }
    }

    #[test]
    fn valid_events_become_rows_and_blank_lines_are_skipped() {
        let input = "\u{feff}{\"ticket\":\"INC1\",\"user\":\"alice@contoso.com\",\"reason\":\"lost phone\",\"requested_by\":\"hd@contoso.com\",\"revoke_sessions\":true}\n\n  \r\n{\"ticket\":\"INC2\",\"user\":\"bob@contoso.com\"}\r\n";
        let rows = read("events.jsonl", input.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].reason.as_deref(), Some("lost phone"));
        assert_eq!(rows[0].revoke_sessions, Some(true));
        assert_eq!(rows[1].line, 4);
        assert_eq!(rows[1].ticket.as_deref(), Some("INC2"));
    }

    #[test]
    fn a_misspelt_field_is_named_with_the_accepted_fields_and_a_suggestion() {
        let errors =
            refused("{\"ticket\":\"INC1\",\"user\":\"a@contoso.com\",\"revoke_session\":true}\n");
        assert_eq!(errors[0].field, "revoke_session");
        assert!(
            errors[0]
                .reason
                .contains("did you mean \"revoke_sessions\"?"),
            "{}",
            errors[0].reason
        );
        assert!(errors[0].reason.contains(&TICKET_FIELDS.join(", ")));
    }

    #[test]
    fn a_missing_ticket_and_a_bad_user_are_each_named() {
        let errors =
            refused("{\"user\":\"a@contoso.com\"}\n{\"ticket\":\"INC2\",\"user\":\"bob@\"}\n");
        assert_eq!((errors[0].line, errors[0].field.as_str()), (1, "ticket"));
        assert_eq!((errors[1].line, errors[1].field.as_str()), (2, "user"));
        assert!(errors[1]
            .reason
            .starts_with("\"bob@\" is not a user principal name"));
    }

    #[test]
    fn an_unclosed_object_mid_file_differs_from_a_truncated_last_line() {
        let errors = refused(
            "{\"ticket\":\"INC1\",\n{\"ticket\":\"INC2\",\"user\":\"a@contoso.com\"}\n{\"ticket\":\"INC3\",\"us",
        );
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0].reason.contains("not closed on this line"),
            "{}",
            errors[0].reason
        );
        assert_eq!(errors[1].line, 3);
        assert!(
            errors[1].reason.contains("truncated"),
            "{}",
            errors[1].reason
        );
    }

    #[test]
    fn not_json_is_reported_with_serdes_column() {
        let errors = refused("INC1 a@contoso.com\n");
        assert!(
            errors[0]
                .reason
                .starts_with("is not valid JSON (expected value at column 1)"),
            "{}",
            errors[0].reason
        );
    }

    #[test]
    fn a_single_event_body_is_validated_like_a_line() {
        let row = parse_event(b"{\n  \"ticket\": \"INC9\",\n  \"user\": \"a@contoso.com\"\n}\n")
            .expect("valid");
        assert_eq!(row.ticket.as_deref(), Some("INC9"));
        let bad =
            parse_event(br#"{"ticket":"INC9","user":"a@contoso.com","revoke":true}"#).unwrap_err();
        assert_eq!(bad.field, "revoke");
        let nul = parse_event(b"{\"ticket\":\"INC9\x00\"}").unwrap_err();
        assert!(nul.reason.contains("control character"), "{}", nul.reason);
        assert!(parse_event(b"  ").unwrap_err().reason.contains("empty"));
    }

    #[test]
    fn an_input_without_events_is_refused() {
        let message = read("events.jsonl", "\n \n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(message.contains("has only blank lines"), "{message}");
    }
}
