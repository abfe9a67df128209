//! `mfa-reset report`: one row per user of a batch.

use std::io::Write;

use crate::batch::BatchView;
use crate::cli::{ReportArgs, ReportFormat};
use crate::config::Settings;
use crate::domain::Outcome;

/// The CSV report's columns, in order (a contract: scripts read them).
/// Columns are only ever added at the end.
pub const CSV_COLUMNS: [&str; 18] = [
    "user",
    "status",
    "methods_removed",
    "methods_remaining",
    "sessions_revoked",
    "attempts",
    "error_code",
    "error_message",
    "ticket",
    "batch",
    "request_id",
    "finished_at",
    "notes",
    "replay",
    "replayed_by",
    "replay_key",
    // `true`/`false` when a Temporary Access Pass was asked for, empty when not; the pass
    // itself is never in a report in clear (the JSONL report carries it sealed).
    "tap_issued",
    // Graph's code (or ours) when a requested pass was not issued.
    "tap_error_code",
];

/// Run the command.
pub async fn run(settings: &Settings, args: &ReportArgs) -> anyhow::Result<()> {
    let view = super::status::load(settings, &args.batch).await?;
    let write = |out: &mut dyn Write| match args.format {
        ReportFormat::Csv => write_csv(&view, out),
        ReportFormat::Jsonl => write_jsonl(&view, out),
    };
    match &args.out {
        // Personal data: 0600, never through a symlink, all or nothing.
        Some(path) => super::private_file::write_with(path, write)?,
        None => {
            let mut out = std::io::stdout().lock();
            write(&mut out)?;
            out.flush()?;
        }
    }
    if let Some(warning) = super::status::ignored_warning(&view, &args.batch) {
        eprintln!("{warning}");
    }
    if view.pending() > 0 {
        eprintln!(
            "note: {} request(s) of batch {} have no outcome yet; they are not in this report",
            view.pending(),
            args.batch
        );
    }
    if let Some(path) = &args.out {
        eprintln!("wrote {} rows to {}", view.finished(), path.display());
    }
    Ok(())
}

/// Write the CSV report.
pub fn write_csv(view: &BatchView, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_COLUMNS)?;
    for o in view.outcomes() {
        w.write_record(csv_row(o).iter().map(|c| neutralise(c)))?;
    }
    w.flush()?;
    Ok(())
}

/// Write one JSON outcome per line.
pub fn write_jsonl(view: &BatchView, out: &mut dyn Write) -> anyhow::Result<()> {
    for o in view.outcomes() {
        serde_json::to_writer(&mut *out, o)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn csv_row(o: &Outcome) -> [String; 18] {
    let join = |v: &[crate::domain::MethodRecord]| {
        v.iter().map(|m| m.short()).collect::<Vec<_>>().join(";")
    };
    [
        o.user.to_string(),
        o.status.to_string(),
        join(&o.methods_removed),
        join(&o.methods_remaining),
        o.sessions_revoked.to_string(),
        o.attempts.to_string(),
        o.error_code.clone().unwrap_or_default(),
        o.error_message.clone().unwrap_or_default(),
        o.ticket.clone().unwrap_or_default(),
        o.batch.clone(),
        o.request_id.to_string(),
        o.finished_at.to_rfc3339(),
        o.notes.join("; "),
        o.replay.to_string(),
        o.replayed_by.clone().unwrap_or_default(),
        o.replay_key.clone().unwrap_or_default(),
        o.tap_issued().map(|t| t.to_string()).unwrap_or_default(),
        o.tap
            .as_ref()
            .and_then(|t| t.error_code.clone())
            .unwrap_or_default(),
    ]
}

/// Cells beginning with `=`, `+`, `-`, `@`, tab, CR or NUL are prefixed with `'` so a
/// spreadsheet shows them as text instead of running them as formulas (OWASP CSV injection;
/// OWASP ASVS 5.0 V1.2.10 adds NUL). Quoting of `,`, `"` and line breaks is the `csv`
/// writer's (RFC 4180 §2.6-2.7).
pub fn neutralise(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '\0') => format!("'{cell}"),
        _ => cell.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(neutralise("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralise("+1 555"), "'+1 555");
        assert_eq!(neutralise("-2"), "'-2");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("\t=1+1"), "'\t=1+1");
        assert_eq!(neutralise("\0=1+1"), "'\0=1+1");
        assert_eq!(neutralise("alice@contoso.com"), "alice@contoso.com");
    }
}
