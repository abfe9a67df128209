//! Integration tests: intake. Real files in temporary directories, read through the public
//! API the `enqueue` command uses.

use std::path::{Path, PathBuf};

use mfa_reset::intake::{plan_csv, plan_tickets, IntakeError, IntakeRow, Plan, RowError};
use tempfile::TempDir;

/// A file named `name` holding `bytes` in a fresh temporary directory.
fn file(name: &str, bytes: impl AsRef<[u8]>) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn rows(plan: &Plan) -> Vec<IntakeRow> {
    plan.rows().unwrap().map(Result::unwrap).collect()
}

fn row_errors(result: Result<Plan, IntakeError>) -> (Vec<RowError>, u64) {
    match result {
        Err(IntakeError::Rows { errors, total, .. }) => (errors, total),
        other => panic!("expected row errors, got {other:?}"),
    }
}

/// The file-level message, asserting the refusal names the file.
fn file_error(path: &Path, result: Result<Plan, IntakeError>) -> String {
    match result {
        Err(IntakeError::File(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn an_entra_export_is_read_by_its_user_principal_name_column() {
    let (_dir, path) = file(
        "exportUsers.csv",
        "id,userPrincipalName,displayName,accountEnabled\n\
         6f9619ff-8b86-d011-b42d-00c04fc964ff,alice@contoso.com,Alice,true\n\
         7f9619ff-8b86-d011-b42d-00c04fc964ff,bob@contoso.com,\"Bob, Jr.\",true\n",
    );

    let plan = plan_csv(&path).unwrap();

    assert_eq!(plan.count, 2);
    let users: Vec<String> = rows(&plan).iter().map(|r| r.user.to_string()).collect();
    assert_eq!(users, vec!["alice@contoso.com", "bob@contoso.com"]);
    assert_eq!(plan.sample, users);
    assert!(plan.source.starts_with("csv:") && plan.source.ends_with("exportUsers.csv"));
}

#[test]
fn semicolons_a_byte_order_mark_and_crlf_are_understood() {
    let (_dir, path) = file(
        "users.csv",
        "\u{feff}UPN;Ticket;Reason\r\nalice@contoso.com;INC1;\"lost phone; new one\"\r\nbob@contoso.com;;\r\n",
    );

    let plan = plan_csv(&path).unwrap();
    let rows = rows(&plan);

    assert_eq!(plan.count, 2);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].user.to_string(), "alice@contoso.com");
    assert_eq!(rows[0].ticket.as_deref(), Some("INC1"));
    assert_eq!(rows[0].reason.as_deref(), Some("lost phone; new one"));
    assert_eq!(rows[1].user.to_string(), "bob@contoso.com");
    assert_eq!(
        (
            rows[1].line,
            rows[1].ticket.as_deref(),
            rows[1].reason.as_deref()
        ),
        (3, None, None)
    );
}

#[test]
fn line_numbers_count_the_lines_of_a_multi_line_quoted_field_with_lf_or_crlf() {
    let lf = "user,reason\nalice@contoso.com,\"first\nsecond\nthird\"\nbob@,x\n";
    for (ending, content) in [("LF", lf.to_string()), ("CRLF", lf.replace('\n', "\r\n"))] {
        let (_dir, path) = file("users.csv", content);

        let (errors, _) = row_errors(plan_csv(&path));

        assert_eq!(errors.len(), 1, "{ending}");
        assert_eq!(errors[0].line, 5, "{ending}");
        assert_eq!(errors[0].field, "user", "{ending}");
        assert_eq!(errors[0].value, "bob@", "{ending}");
    }
}

#[test]
fn invalid_rows_are_all_named_with_their_line_numbers() {
    let (_dir, path) = file(
        "users.csv",
        "user,ticket\nalice@contoso.com,INC1\nbob@,INC2\n\ncarol@contoso.com\n ,INC3\nnot a user\n,,\n",
    );

    let result = plan_csv(&path);
    let rendered = result.as_ref().unwrap_err().render("users.csv");
    let (errors, total) = row_errors(result);

    let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![3, 6, 7]);
    assert_eq!(total, 3);
    assert_eq!(
        rendered,
        "users.csv line 3, column \"user\": \"bob@\" is not a user principal name (local@domain) \
         or an object id (GUID): fix the value or delete the row\n\
         users.csv line 6, column \"user\": user is empty: fill in the user or delete the row\n\
         users.csv line 7, column \"user\": \"not a user\" contains ' ', which a user principal \
         name cannot hold: fix the value or delete the row\n\
         nothing was enqueued"
    );
}

#[test]
fn a_row_too_short_to_reach_the_user_column_is_named() {
    let (_dir, path) = file("users.csv", "name,user\nAlice,alice@contoso.com\nBob\n");

    let (errors, total) = row_errors(plan_csv(&path));

    assert_eq!((errors.len(), total), (1, 1));
    assert_eq!(errors[0].line, 3);
    assert!(
        errors[0].reason.contains("user column \"user\" is field 2"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn errors_beyond_a_thousand_are_counted_not_kept() {
    let mut csv = String::from("user\n");
    for i in 0..1_500 {
        csv.push_str(&format!("bad{i}@\n"));
    }
    let (_dir, path) = file("users.csv", csv);

    let result = plan_csv(&path);
    let rendered = result.as_ref().unwrap_err().render("users.csv");
    let (errors, total) = row_errors(result);

    assert_eq!((errors.len(), total), (1_000, 1_500));
    assert!(
        rendered.ends_with("… and 500 more invalid rows\nnothing was enqueued"),
        "{rendered}"
    );
}

#[test]
fn duplicates_are_reported_once_each_with_both_line_numbers() {
    let (_dir, path) = file(
        "users.csv",
        "user\nalice@contoso.com\nbob@contoso.com\nALICE@contoso.com\nalice@CONTOSO.com\nbob@contoso.com\n",
    );

    let plan = plan_csv(&path).unwrap();

    assert_eq!(
        plan.duplicates,
        vec![
            (4, 2, "ALICE@contoso.com".to_string()),
            (5, 2, "alice@CONTOSO.com".to_string()),
            (6, 3, "bob@contoso.com".to_string()),
        ]
    );
    assert_eq!(plan.duplicates_total, 3);
    assert_eq!(plan.count, 2);
    let lines: Vec<u64> = rows(&plan).iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 3]);
}

#[test]
fn a_file_changed_after_validation_yields_an_error_not_rows() {
    let (_dir, path) = file("users.csv", "user\nalice@contoso.com\nbob@contoso.com\n");
    let plan = plan_csv(&path).unwrap();

    std::fs::write(&path, "user\nalice@contoso.com\nbob@\ncarol@contoso.com\n").unwrap();
    let outcome: Result<Vec<IntakeRow>, _> = plan.rows().and_then(|rows| rows.collect());

    let message = format!("{:#}", outcome.unwrap_err());
    assert!(
        message.contains("changed since it was checked"),
        "{message}"
    );
}

#[test]
fn a_missing_file_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.csv");

    let message = file_error(&path, plan_csv(&path));

    assert!(message.contains("check the path"), "{message}");
}

#[test]
fn an_empty_file_is_refused() {
    let (_dir, path) = file("users.csv", "");

    let message = file_error(&path, plan_csv(&path));

    assert!(message.contains("is empty (0 bytes)"), "{message}");
}

#[test]
fn a_header_without_rows_is_refused() {
    let (_dir, path) = file("users.csv", "user,ticket\r\n\r\n");

    let message = file_error(&path, plan_csv(&path));

    assert!(
        message.contains("has a header but no data rows"),
        "{message}"
    );
}

#[test]
fn a_file_without_a_user_column_lists_its_headers_and_the_accepted_names() {
    let (_dir, path) = file("users.csv", "mail,displayName\nalice@contoso.com,Alice\n");

    let message = file_error(&path, plan_csv(&path));

    assert!(message.contains("\"mail\", \"displayName\""), "{message}");
    assert!(
        message.contains("user, userPrincipalName, upn, id, objectId"),
        "{message}"
    );
}

#[test]
fn invalid_utf8_is_named_with_its_line_and_the_fix() {
    let (_dir, path) = file(
        "users.csv",
        b"user,displayName\nalice@contoso.com,Alice\nrene@contoso.com,Ren\xe9\n".as_slice(),
    );

    let message = file_error(&path, plan_csv(&path));

    assert!(
        message.contains("line 3, column \"displayName\","),
        "{message}"
    );
    assert!(message.contains("save the file as UTF-8"), "{message}");
}

#[test]
fn a_nul_byte_is_named_as_a_binary_or_utf16_file() {
    let (_dir, path) = file(
        "users.csv",
        b"user\nalice@contoso.com\nbob\0@contoso.com\n".as_slice(),
    );

    let message = file_error(&path, plan_csv(&path));

    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("binary or UTF-16"), "{message}");
}

#[test]
fn a_utf16_file_is_told_to_be_saved_as_utf8() {
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            "user\r\nalice@contoso.com\r\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    let (_dir, path) = file("users.csv", utf16);

    let message = file_error(&path, plan_csv(&path));

    assert!(message.contains("is UTF-16"), "{message}");
    assert!(message.contains("save it as UTF-8"), "{message}");
}

#[test]
fn a_ten_megabyte_field_is_reported_as_an_invalid_user_shortened() {
    let mut csv = b"user\nalice@contoso.com\n".to_vec();
    csv.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    csv.push(b'\n');
    let (_dir, path) = file("users.csv", csv);

    let (errors, total) = row_errors(plan_csv(&path));

    assert_eq!((errors.len(), total), (1, 1));
    assert_eq!(errors[0].line, 3);
    assert!(errors[0].value.chars().count() <= 80);
    assert!(
        errors[0].reason.contains("10485760 characters long"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn a_million_row_file_validates_and_yields_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.csv");
    // Numbers from precomputed three-digit halves: formatting a million lines one by one
    // takes seconds in a debug build.
    let digits: Vec<String> = (0..1_000).map(|n| format!("{n:03}")).collect();
    let mut csv = String::with_capacity(40_000_000);
    csv.push_str("userPrincipalName,ticket\n");
    for high in &digits {
        for low in &digits {
            for part in ["user", high, low, "@contoso.com,INC", high, low, "\n"] {
                csv.push_str(part);
            }
        }
    }
    std::fs::write(&path, csv).unwrap();

    let plan = plan_csv(&path).unwrap();

    assert_eq!(plan.count, 1_000_000);
    assert!(plan.duplicates.is_empty());
    let mut yielded = 0u64;
    for row in plan.rows().unwrap() {
        row.unwrap();
        yielded += 1;
    }
    assert_eq!(yielded, 1_000_000);
}

#[test]
fn tickets_are_read_with_their_options_and_duplicates_dropped() {
    let (_dir, path) = file(
        "events.jsonl",
        "{\"ticket\":\"INC1\",\"user\":\"alice@contoso.com\",\"reason\":\"lost phone\",\"requested_by\":\"hd@contoso.com\",\"revoke_sessions\":true}\n\
         \n\
         {\"ticket\":\"INC2\",\"user\":\"ALICE@contoso.com\"}\n",
    );

    let plan = plan_tickets(&path).unwrap();
    let rows = rows(&plan);

    assert_eq!(plan.count, 1);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].user.to_string(), "alice@contoso.com");
    assert_eq!(rows[0].ticket.as_deref(), Some("INC1"));
    assert_eq!(rows[0].reason.as_deref(), Some("lost phone"));
    assert_eq!(rows[0].revoke_sessions, Some(true));
    assert_eq!(rows[0].requested_by.as_deref(), Some("hd@contoso.com"));
    assert_eq!(
        plan.duplicates,
        vec![(3, 1, "ALICE@contoso.com".to_string())]
    );
}

#[test]
fn a_ticket_file_with_a_truncated_last_line_names_that_line() {
    let (_dir, path) = file(
        "events.jsonl",
        "{\"ticket\":\"INC1\",\"user\":\"alice@contoso.com\"}\n{\"ticket\":\"INC2\",\"user\":\"bob@con",
    );

    let result = plan_tickets(&path);
    let rendered = result.as_ref().unwrap_err().render("events.jsonl");
    let (errors, _) = row_errors(result);

    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 2);
    assert!(
        rendered.starts_with("events.jsonl line 2: the file ends in the middle of this event"),
        "{rendered}"
    );
}

#[test]
fn an_unknown_ticket_field_is_named() {
    let (_dir, path) = file(
        "events.jsonl",
        "{\"ticket\":\"INC1\",\"user\":\"alice@contoso.com\",\"revoke_session\":true}\n",
    );

    let result = plan_tickets(&path);
    let rendered = result.as_ref().unwrap_err().render("events.jsonl");
    let (errors, _) = row_errors(result);

    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "revoke_session");
    assert!(
        rendered.starts_with("events.jsonl line 1, field \"revoke_session\": unknown field"),
        "{rendered}"
    );
    assert!(
        rendered.contains("ticket, user, reason, requested_by, revoke_sessions"),
        "{rendered}"
    );
}

#[test]
fn a_ticket_file_with_a_nul_byte_is_refused_with_its_line() {
    let (_dir, path) = file(
        "events.jsonl",
        b"{\"ticket\":\"INC1\",\"user\":\"alice@contoso.com\"}\n{\0\"\0".as_slice(),
    );

    let message = file_error(&path, plan_tickets(&path));

    assert!(
        message.contains("line 2") && message.contains("binary or UTF-16"),
        "{message}"
    );
}
