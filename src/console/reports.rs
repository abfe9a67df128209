//! Download a batch's report from the console: `GET /api/v1/batches/{batch}/report?format=csv`
//! (or `jsonl`), for anyone holding the viewer role or above.
//!
//! The rows are exactly those of `mfa-reset report` ([`crate::commands::report::write_csv`] and
//! [`crate::commands::report::write_jsonl`] over the batch's [`crate::batch::BatchView`]), so the
//! same columns, the same one outcome per request and the same neutralised formula cells. The
//! view is the one the console folds from the outcomes stream through a
//! [`crate::records::RecordReader`]: only outcomes that verify against
//! `security.allowed_signers` are in it, a forged one never reaches a download.
//!
//! The answer is an attachment with a file name made only of safe characters, never cached
//! (it holds personal data), and says in `x-report-pending` how many requests have no
//! outcome yet (they are not in the file, as the CLI notes on stderr).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::oidc::session_of;
use super::pages::escape;
use super::session::Role;
use super::{json_error, Console};
use crate::commands::report::{write_csv, write_jsonl};

/// The two report formats, as `mfa-reset report --format` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One row per user, the columns of [`crate::commands::report::CSV_COLUMNS`].
    Csv,
    /// One JSON outcome per line.
    Jsonl,
}

impl Format {
    /// `csv` or `jsonl`; anything else is refused.
    pub fn parse(value: &str) -> Option<Format> {
        match value {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// The file extension (and the query value).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// The media type: RFC 4180's `text/csv` with its optional `charset` and `header`
    /// parameters; JSON Lines' `application/jsonl` (what jsonlines.org gives; JSON has no
    /// charset parameter, it is UTF-8 by definition, RFC 8259 §8.1).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Jsonl => "application/jsonl",
        }
    }
}

/// `?format=`.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    #[serde(default)]
    format: Option<String>,
}

/// The attachment's file name: `mfa-reset-<batch>.<ext>` with every character of the batch id
/// outside `A-Z a-z 0-9 . - _` replaced by `-`, at most 100 of them, no leading dot. A batch id
/// comes from whoever enqueued it (`enqueue --batch`): quotes, `;`, CR/LF or a path would
/// otherwise break out of the `Content-Disposition` header or steer where the file is saved.
pub fn file_name(batch: &str, format: Format) -> String {
    let safe: String = batch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let safe = safe.trim_start_matches('.');
    let safe = if safe.is_empty() { "batch" } else { safe };
    format!("mfa-reset-{safe}.{}", format.extension())
}

/// What a batch id keeps unencoded in a link's path: RFC 3986's unreserved characters but
/// `.` (a `..` segment would be resolved away by the browser).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// The download links for the batch page (`batch` is escaped and percent-encoded here).
pub fn links(batch: &str) -> String {
    let path = percent_encoding::utf8_percent_encode(batch, PATH_SEGMENT).to_string();
    format!(
        "<p>Report: <a id=\"report-csv\" href=\"/api/v1/batches/{p}/report?format=csv\" download>CSV</a> · \
         <a id=\"report-jsonl\" href=\"/api/v1/batches/{p}/report?format=jsonl\" download>JSON lines</a></p>",
        p = escape(&path)
    )
}

/// `GET /api/v1/batches/{batch}/report?format=csv|jsonl`
pub async fn download(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(batch): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Response {
    let Some(session) = session_of(&console, &headers) else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "not_signed_in",
            "",
            "sign in at /login",
        );
    };
    if !session.has(Role::Viewer) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "",
            "downloading a report needs the viewer role (or operator or approver)",
        );
    }
    let requested = query.format.as_deref().unwrap_or("csv");
    let Some(format) = Format::parse(requested) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_format",
            "format",
            &format!(
                "format {:?} is not a report format: csv or jsonl",
                super::printable(requested)
            ),
        );
    };
    // A batch this process just submitted may not have reached the follower yet.
    super::uploads::batch_known(&console, &batch).await;
    // Written under the lock, off the async threads: a 100,000-user batch takes a moment and
    // must not stall the other requests; a copy of the view first would cost as much.
    let written = {
        let console = console.clone();
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || -> Option<anyhow::Result<(Vec<u8>, u64, u64)>> {
            let batches = console.batches.lock().ok()?;
            let view = batches.get(&batch)?;
            view.manifest()?;
            let mut body = Vec::new();
            let done = match format {
                Format::Csv => write_csv(view, &mut body),
                Format::Jsonl => write_jsonl(view, &mut body),
            };
            Some(done.map(|()| (body, view.finished(), view.pending())))
        })
        .await
    };
    let (body, rows, pending) = match written {
        Ok(Some(Ok(v))) => v,
        Ok(None) => {
            return json_error(
                StatusCode::NOT_FOUND,
                "unknown_batch",
                "batch",
                "no such batch on the outcomes stream",
            )
        }
        Ok(Some(Err(e))) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "",
                &format!("writing the report: {e:#}"),
            )
        }
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "",
                &e.to_string(),
            )
        }
    };
    tracing::info!(
        batch = %super::printable(&batch),
        format = format.extension(),
        rows,
        pending,
        viewer = %super::printable(&session.upn),
        oid = %session.oid,
        "report downloaded from the console"
    );
    let disposition = format!("attachment; filename=\"{}\"", file_name(&batch, format));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // Only safe characters (see file_name): always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-report-pending", HeaderValue::from(pending));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_file_names_hold_only_safe_characters() {
        assert_eq!(
            file_name("20261128-1502-ab12", Format::Csv),
            "mfa-reset-20261128-1502-ab12.csv"
        );
        assert_eq!(
            file_name("a\"; filename=evil.exe\r\nx", Format::Jsonl),
            "mfa-reset-a---filename-evil.exe--x.jsonl"
        );
        assert_eq!(
            file_name("../../etc/passwd", Format::Csv),
            "mfa-reset--..-etc-passwd.csv"
        );
        assert_eq!(file_name("..", Format::Csv), "mfa-reset-batch.csv");
        assert_eq!(file_name("ünï", Format::Csv), "mfa-reset--n-.csv");
        assert_eq!(file_name(&"x".repeat(500), Format::Csv).len(), 100 + 14);
    }

    #[test]
    fn only_the_two_report_formats_are_accepted() {
        assert_eq!(Format::parse("csv"), Some(Format::Csv));
        assert_eq!(Format::parse("jsonl"), Some(Format::Jsonl));
        assert_eq!(Format::parse("xlsx"), None);
        assert_eq!(Format::parse("CSV"), None);
    }

    #[test]
    fn download_links_escape_and_encode_the_batch() {
        let html = links("<b>&\"");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("/api/v1/batches/%3Cb%3E%26%22/report?format=csv"),
            "{html}"
        );
    }
}
