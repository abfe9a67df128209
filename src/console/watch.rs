//! Watching a batch: progress figures for the live page and the per-user table behind it.
//!
//! [`progress`] is what every server-sent event carries besides the counts: the rate, an ETA,
//! a short timeline for the chart and the "not reset, and why" groups. All of it is bounded
//! (at most [`TIMELINE_POINTS`] points and [`MAX_WHY_GROUPS`] groups), so an event stays small
//! however big the batch is: the per-user rows are never on the stream, only behind
//! `GET /api/v1/batches/{batch}/users` ([`users`]), one page at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::session::Role;
use super::uploads::authorised;
use super::{json_error, Console};
use crate::batch::BatchView;
use crate::domain::{Outcome, Status};

/// Points of the progress chart.
pub const TIMELINE_POINTS: usize = 60;
/// "Not reset, and why" groups sent with each event (the rest are summed in `other`).
pub const MAX_WHY_GROUPS: usize = 20;
/// The window the current rate is measured over.
const RATE_WINDOW_SECONDS: i64 = 10;
/// Rows of the per-user table per page, at most.
const MAX_PAGE: usize = 200;

/// True for the statuses that left the user's methods in place (or partly): the page lists
/// them under "not reset, and why". `already_clean` had nothing to remove: not listed.
pub fn not_reset(status: Status) -> bool {
    !matches!(status, Status::Reset | Status::AlreadyClean)
}

/// Why an outcome is what it is, in one line: the error code and message, or the notes.
fn why(o: &Outcome) -> String {
    match (&o.error_code, &o.error_message) {
        (Some(code), Some(message)) if !message.is_empty() => format!("{code}: {message}"),
        (Some(code), _) => code.clone(),
        (None, _) if o.status == Status::DryRun => "dry run: nothing was removed".into(),
        (None, _) if o.status == Status::SkippedProtected => {
            "protected account (reset.protected_users or a directory role)".into()
        }
        (None, _) => o.notes.join("; "),
    }
}

/// The grouping key of "not reset, and why": status and code (messages vary per user).
fn why_key(o: &Outcome) -> (String, String) {
    (
        o.status.to_string(),
        o.error_code.clone().unwrap_or_default(),
    )
}

/// Rate, ETA, chart points and the "not reset" groups of `view` at `now`.
pub fn progress(view: &BatchView, now: DateTime<Utc>) -> Value {
    let mut first: Option<DateTime<Utc>> = None;
    let mut last: Option<DateTime<Utc>> = None;
    let mut recent = 0u64;
    let window_start = now - chrono::TimeDelta::seconds(RATE_WINDOW_SECONDS);
    let mut groups: BTreeMap<(String, String), (u64, String, String)> = BTreeMap::new();
    for o in view.outcomes() {
        let at = o.finished_at;
        first = Some(first.map_or(at, |f| f.min(at)));
        last = Some(last.map_or(at, |l| l.max(at)));
        if at >= window_start {
            recent += 1;
        }
        if not_reset(o.status) {
            let entry = groups
                .entry(why_key(o))
                .or_insert_with(|| (0, o.user.to_string(), why(o)));
            entry.0 += 1;
        }
    }
    let finished = view.finished();
    let pending = view.pending();
    let complete = view.is_complete();
    // While running: the last window's rate (what the ETA depends on). Complete: the batch's
    // own average, first outcome to last.
    let rate = match (first, last) {
        (Some(f), Some(l)) if complete => {
            let seconds = (l - f).num_milliseconds().max(1000) as f64 / 1000.0;
            finished as f64 / seconds
        }
        _ => recent as f64 / RATE_WINDOW_SECONDS as f64,
    };
    let eta_seconds = if complete {
        Some(0)
    } else if rate > 0.0 {
        Some((pending as f64 / rate).ceil() as u64)
    } else {
        None
    };
    let timeline = match first {
        Some(start) => timeline(view, start, if complete { last } else { Some(now) }),
        None => Vec::new(),
    };
    let mut why_groups: Vec<Value> = groups
        .into_iter()
        .map(|((status, code), (count, example, why))| {
            json!({ "status": status, "code": code, "count": count, "example": example, "why": why })
        })
        .collect();
    why_groups.sort_by_key(|g| std::cmp::Reverse(g["count"].as_u64().unwrap_or(0)));
    let other: u64 = why_groups
        .iter()
        .skip(MAX_WHY_GROUPS)
        .map(|g| g["count"].as_u64().unwrap_or(0))
        .sum();
    why_groups.truncate(MAX_WHY_GROUPS);
    json!({
        "rate": (rate * 10.0).round() / 10.0,
        "eta_seconds": eta_seconds,
        "timeline": timeline,
        "not_reset": why_groups,
        "not_reset_other": other,
    })
}

/// `[seconds since start, finished by then]`, at most [`TIMELINE_POINTS`] points, the last
/// at `end`.
fn timeline(view: &BatchView, start: DateTime<Utc>, end: Option<DateTime<Utc>>) -> Vec<[f64; 2]> {
    let end = end.unwrap_or(start);
    let span_ms = (end - start).num_milliseconds().max(1);
    let buckets = TIMELINE_POINTS;
    let mut per_bucket = vec![0u64; buckets];
    for o in view.outcomes() {
        let offset = (o.finished_at - start).num_milliseconds().clamp(0, span_ms);
        let index = ((offset as u128 * (buckets as u128 - 1)) / span_ms as u128) as usize;
        per_bucket[index.min(buckets - 1)] += 1;
    }
    let mut done = 0u64;
    per_bucket
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            done += n;
            let t = span_ms as f64 * i as f64 / (buckets - 1) as f64 / 1000.0;
            [(t * 10.0).round() / 10.0, done as f64]
        })
        .collect()
}

/// The live parts of the batch page: rate and ETA, the chart, "not reset, and why" and the
/// per-user table with its filter. Static markup: the script fills it with `textContent`.
pub fn sections() -> String {
    let options: String = Status::ALL
        .iter()
        .map(|s| format!("<option value=\"{0}\">{0}</option>", s.as_str()))
        .collect();
    format!(
        "<p>Rate: <span id=\"rate\">–</span> users/s · ETA: <span id=\"eta\">–</span></p>\
         <table id=\"status-counts\"><tbody></tbody></table>\
         <svg id=\"chart\" width=\"600\" height=\"150\" viewBox=\"0 0 600 150\" role=\"img\" \
         aria-label=\"users finished over time\" style=\"border:1px solid #ccc\">\
         <polyline id=\"chart-line\" fill=\"none\" stroke=\"#2a6\" stroke-width=\"2\" points=\"\"/></svg>\
         <h2>Not reset, and why</h2>\
         <table id=\"why\"><thead><tr><th>status</th><th>why</th><th>users</th><th>for example</th></tr></thead>\
         <tbody></tbody></table>\
         <h2>Users</h2>\
         <form id=\"users-filter\"><select id=\"status-filter\"><option value=\"\">all</option>\
         <option value=\"not_reset\">not reset</option>{options}</select> \
         <input type=\"search\" id=\"search\" placeholder=\"user, ticket or why\" maxlength=\"200\"> \
         <button type=\"submit\">Show</button></form>\
         <table id=\"users\"><thead><tr><th>user</th><th>status</th><th>why</th><th>removed</th>\
         <th>remaining</th><th>sessions revoked</th><th>attempts</th><th>ticket</th><th>finished</th></tr></thead>\
         <tbody></tbody></table>\
         <p><button id=\"prev\" type=\"button\">Previous</button> <span id=\"page\"></span> \
         <button id=\"next\" type=\"button\">Next</button></p>"
    )
}

/// Filter and page of the per-user table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersQuery {
    /// A status (`reset`, `failed`, …), `not_reset`, or empty for all.
    #[serde(default)]
    status: Option<String>,
    /// Case-insensitive text in the user, ticket, status or why.
    #[serde(default)]
    q: Option<String>,
    /// Rows to skip.
    #[serde(default)]
    offset: usize,
    /// Rows to return (at most 200).
    #[serde(default)]
    limit: Option<usize>,
}

/// One row of the per-user table.
#[derive(Debug, Serialize)]
struct UserRow {
    user: String,
    status: Status,
    why: String,
    methods_removed: usize,
    methods_remaining: usize,
    sessions_revoked: bool,
    attempts: u32,
    ticket: Option<String>,
    finished_at: DateTime<Utc>,
}

/// Which outcomes the table shows.
#[derive(Debug, Clone, Copy)]
enum StatusFilter {
    All,
    NotReset,
    Only(Status),
}

impl StatusFilter {
    /// The filter named by the query, or why it is not one.
    fn parse(status: Option<&str>) -> Result<StatusFilter, String> {
        match status.map(str::trim).filter(|s| !s.is_empty()) {
            None | Some("all") => Ok(StatusFilter::All),
            Some("not_reset") => Ok(StatusFilter::NotReset),
            Some(name) => Status::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .map(StatusFilter::Only)
                .ok_or_else(|| {
                    format!(
                        "status {:?} is not one of all, not_reset, {}",
                        super::printable(name),
                        Status::ALL.map(|s| s.as_str()).join(", ")
                    )
                }),
        }
    }

    fn keeps(self, status: Status) -> bool {
        match self {
            StatusFilter::All => true,
            StatusFilter::NotReset => not_reset(status),
            StatusFilter::Only(wanted) => status == wanted,
        }
    }
}

/// One page of `view`'s outcomes matching the query: `{total, offset, rows}`.
pub fn page_of(view: &BatchView, query: &UsersQuery) -> Result<Value, String> {
    let keep = StatusFilter::parse(query.status.as_deref())?;
    let needle = query
        .q
        .as_deref()
        .map(|q| q.trim().to_lowercase())
        .filter(|q| !q.is_empty());
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let mut total = 0usize;
    let mut rows = Vec::new();
    for o in view.outcomes() {
        if !keep.keeps(o.status) {
            continue;
        }
        let why = why(o);
        if let Some(needle) = &needle {
            let hit = o.user.to_string().to_lowercase().contains(needle)
                || o.ticket
                    .as_deref()
                    .is_some_and(|t| t.to_lowercase().contains(needle))
                || o.status.as_str().contains(needle.as_str())
                || why.to_lowercase().contains(needle);
            if !hit {
                continue;
            }
        }
        if total >= query.offset && rows.len() < limit {
            rows.push(UserRow {
                user: o.user.to_string(),
                status: o.status,
                why,
                methods_removed: o.methods_removed.len(),
                methods_remaining: o.methods_remaining.len(),
                sessions_revoked: o.sessions_revoked,
                attempts: o.attempts,
                ticket: o.ticket.clone(),
                finished_at: o.finished_at,
            });
        }
        total += 1;
    }
    Ok(json!({
        "total": total,
        "offset": query.offset,
        "limit": limit,
        "pending": view.pending(),
        "rows": rows,
    }))
}

/// `GET /api/v1/batches/{batch}/users?status=&q=&offset=&limit=` (viewer): one page of the
/// users with an outcome. Users still pending are only counted (`pending`): the console
/// learns a user from their outcome.
pub async fn users(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(batch): Path<String>,
    query: Result<Query<UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorised(&console, &headers, Role::Viewer, false) {
        return r;
    }
    let Ok(Query(query)) = query else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "query",
            "the query takes status, q, offset and limit (numbers for offset and limit)",
        );
    };
    let answer = {
        let Ok(batches) = console.batches.lock() else {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "", "lock");
        };
        let Some(view) = batches.get(&batch) else {
            return json_error(
                StatusCode::NOT_FOUND,
                "unknown_batch",
                "batch",
                "no such batch",
            );
        };
        page_of(view, &query)
    };
    match answer {
        Ok(page) => Json(page).into_response(),
        Err(message) => json_error(StatusCode::BAD_REQUEST, "bad_status", "status", &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BatchManifest, Record, UserRef};

    fn outcome(batch: &str, i: usize, status: Status, at: DateTime<Utc>) -> Record {
        let user = UserRef::parse(&format!("user{i}@contoso.com")).expect("upn");
        Record::Outcome(Box::new(Outcome {
            request_id: uuid::Uuid::new_v4(),
            batch: batch.into(),
            user,
            status,
            methods_removed: Vec::new(),
            methods_remaining: Vec::new(),
            sessions_revoked: false,
            attempts: 1,
            error_code: (status == Status::Failed).then(|| "forbidden".to_string()),
            error_message: (status == Status::Failed).then(|| "<script>x</script>".to_string()),
            ticket: None,
            finished_at: at,
            worker: "w".into(),
            graph_calls: 0,
            replay: 0,
            dry_run: false,
            requested_by: None,
            approved_by: None,
            reason: None,
            item: None,
            replayed_by: None,
            replay_key: None,
            notes: Vec::new(),
            tap: None,
        }))
    }

    fn view_of(n: usize, done: usize, start: DateTime<Utc>) -> BatchView {
        let mut view = BatchView::new("b");
        view.apply(Record::Manifest(BatchManifest {
            batch: "b".into(),
            count: n as u64,
            source: "t.csv".into(),
            dry_run: false,
            revoke_sessions: false,
            requested_by: Some("op@contoso.com".into()),
            created_at: start,
            sealed: None,
            cap: None,
        }));
        for i in 0..done {
            let status = if i % 10 == 3 {
                Status::Failed
            } else {
                Status::Reset
            };
            let at = start + chrono::TimeDelta::milliseconds(i as i64 * 10);
            view.apply(outcome("b", i, status, at));
        }
        view
    }

    #[test]
    fn progress_of_a_running_batch_has_rate_eta_a_rising_chart_and_why_groups() {
        let start = Utc::now() - chrono::TimeDelta::seconds(50);
        // 5,000 of 10,000 done, one every 10 ms from `start`: all in the first 50 s.
        let view = view_of(10_000, 5_000, start);
        let now = start + chrono::TimeDelta::seconds(50);
        let p = progress(&view, now);
        // The last 10 s held 1,000 outcomes: 100 per second, 5,000 to go: 50 s.
        assert_eq!(p["rate"], 100.0, "{p}");
        assert_eq!(p["eta_seconds"], 50, "{p}");
        let timeline = p["timeline"].as_array().expect("timeline");
        assert_eq!(timeline.len(), TIMELINE_POINTS);
        let done: Vec<f64> = timeline.iter().map(|pt| pt[1].as_f64().unwrap()).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        assert_eq!(*done.last().unwrap(), 5_000.0);
        assert_eq!(p["not_reset"][0]["status"], "failed");
        assert_eq!(p["not_reset"][0]["count"], 500);
        assert_eq!(p["not_reset"][0]["why"], "forbidden: <script>x</script>");
        assert_eq!(
            p.to_string().matches("contoso.com").count(),
            1,
            "no per-user rows: {p}"
        );
    }

    #[test]
    fn the_user_table_filters_by_status_searches_and_pages() {
        let view = view_of(100, 100, Utc::now());
        let q = |status: Option<&str>, q: Option<&str>, offset, limit| UsersQuery {
            status: status.map(Into::into),
            q: q.map(Into::into),
            offset,
            limit,
        };
        let all = page_of(&view, &q(None, None, 0, None)).expect("page");
        assert_eq!(
            (all["total"].as_u64(), all["rows"].as_array().map(Vec::len)),
            (Some(100), Some(50))
        );
        let failed = page_of(&view, &q(Some("failed"), None, 0, Some(3))).expect("page");
        assert_eq!(failed["total"], 10);
        assert_eq!(failed["rows"][0]["user"], "user3@contoso.com");
        assert_eq!(failed["rows"][2]["user"], "user23@contoso.com");
        let second = page_of(&view, &q(Some("not_reset"), None, 3, Some(3))).expect("page");
        assert_eq!(second["rows"][0]["user"], "user33@contoso.com");
        let search = page_of(&view, &q(None, Some("USER4"), 0, Some(200))).expect("page");
        assert_eq!(search["total"], 11, "user4 and user40..49");
        let why = page_of(&view, &q(None, Some("<script>"), 0, None)).expect("page");
        assert_eq!(why["total"], 10);
        assert!(page_of(&view, &q(Some("gone"), None, 0, None))
            .unwrap_err()
            .contains("not_reset"));
    }
}
