//! `mfa-reset report`: one row per user of a batch.

use std::io::Write;

use anyhow::Context;

use crate::batch::BatchView;
use crate::cli::{ReportArgs, ReportFormat};
use crate::config::Settings;
use crate::domain::Outcome;

/// The CSV report's columns, in order (a contract: scripts read them).
pub const CSV_COLUMNS: [&str; 13] = [
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
];

/// Run the command.
pub async fn run(settings: &Settings, args: &ReportArgs) -> anyhow::Result<()> {
    let view = super::status::load(settings, &args.batch).await?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(create_private(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    match args.format {
        ReportFormat::Csv => write_csv(&view, &mut out)?,
        ReportFormat::Jsonl => write_jsonl(&view, &mut out)?,
    }
    out.flush()?;
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

/// Open `path` for a report holding personal data: created 0600 (an existing file is
/// truncated and set to 0600), and never through a symlink (`O_NOFOLLOW`: a link planted
/// at the path, e.g. in a shared folder, makes the open fail instead of writing elsewhere).
pub fn create_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        let file = options.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "{} is a symbolic link: refusing to write a report through it; name a \
                     regular file",
                    path.display()
                )
            } else {
                anyhow::Error::from(e).context(format!("creating {}", path.display()))
            }
        })?;
        // The mode above applies only to a file created now.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private (0600)", path.display()))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options
            .open(path)
            .with_context(|| format!("creating {}", path.display()))
    }
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

fn csv_row(o: &Outcome) -> [String; 13] {
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

    #[cfg(unix)]
    #[test]
    fn report_files_are_private_and_never_written_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("report.csv");
        create_private(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let existing = dir.path().join("old.csv");
        std::fs::write(&existing, "old").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&existing).unwrap();
        let meta = std::fs::metadata(&existing).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0, "truncated");

        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = create_private(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

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
