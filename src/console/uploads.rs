//! Upload a CSV, preview it, submit it as a batch; watch a batch live.
//!
//! `POST /api/v1/uploads?name=…&dry_run=…&revoke_sessions=…&tap=…` (operator, CSRF header): the raw
//! CSV is validated exactly as `enqueue --csv` does ([`crate::intake::plan_csv`]); the answer
//! is the preview (count, sample, duplicates, protected users that will be skipped) or every
//! bad line (422). `POST /api/v1/uploads/{id}/submit` (the same operator, CSRF header) enqueues
//! it through [`crate::commands::enqueue::run`] — same validation again, same signing (the
//! console's key), the same approval routing — with the operator's UPN as `requested_by`.
//! `GET /batches/{batch}` shows a batch; `GET /api/v1/batches/{batch}/events` streams its
//! counts as server-sent events, once a second, from the outcomes stream the console follows.
//!
//! Why one file of this size: it is the ops team's one flow through the console, upload →
//! preview → submit → approve → watch the batch, and each handler shares the same
//! authorisation and batch-ownership checks defined here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::oidc::session_of;
use super::pages::{escape, page};
use super::session::{same_token, Role, Session};
use super::{json_error, Console};
use crate::batch::BatchView;
use crate::cli::EnqueueArgs;
use crate::intake::{self, IntakeError};

/// How long an upload waits for its submit.
const UPLOAD_TTL: chrono::TimeDelta = chrono::TimeDelta::minutes(30);
/// Protected users listed in a preview (the rest are counted).
const MAX_PROTECTED_SHOWN: usize = 100;
/// Batches whose submitter's object id this process remembers.
const MAX_SUBMITTED_REMEMBERED: usize = 10_000;
/// Longest wait for a batch this process submitted to come by on the outcomes stream.
const SUBMITTED_VISIBLE_WITHIN: Duration = Duration::from_secs(15);

/// An upload waiting to be submitted.
#[derive(Debug)]
pub struct Upload {
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    oid: String,
    upn: String,
    dry_run: bool,
    revoke_sessions: bool,
    /// A Temporary Access Pass for each user reset (signed into each request).
    tap: bool,
    created: DateTime<Utc>,
}

/// Uploads by id.
pub type Uploads = tokio::sync::Mutex<HashMap<String, Upload>>;

/// Batches as the outcomes stream tells them.
pub type Batches = HashMap<String, BatchView>;

/// The session of an API call that must hold `role` (401/403 JSON otherwise), with the CSRF
/// header checked when `csrf` is set.
#[allow(clippy::result_large_err)]
pub fn authorised(
    console: &Console,
    headers: &HeaderMap,
    role: Role,
    csrf: bool,
) -> Result<Session, Response> {
    let Some(session) = session_of(console, headers) else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "not_signed_in",
            "",
            "sign in at /login",
        ));
    };
    if !session.has(role) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "",
            &format!("this needs the {} role", role.as_str()),
        ));
    }
    if csrf {
        let token = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if token.is_empty() || !same_token(token, &session.csrf) {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "csrf",
                "x-csrf-token",
                "the request does not carry this session's CSRF token: reload the page",
            ));
        }
    }
    Ok(session)
}

/// Upload options.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    revoke_sessions: bool,
    #[serde(default)]
    tap: bool,
}

/// One bad line, for the page.
#[derive(Debug, Serialize)]
struct BadLine {
    line: u64,
    field: String,
    value: String,
    reason: String,
}

/// A file name safe to create: letters, digits, `.`, `-`, `_`; at most 64; ends in `.csv`.
fn safe_name(name: Option<&str>) -> String {
    let stem: String = name
        .unwrap_or("upload.csv")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let stem = stem.trim_start_matches('.');
    let stem = stem.strip_suffix(".csv").unwrap_or(stem);
    if stem.is_empty() {
        "upload.csv".into()
    } else {
        format!("{stem}.csv")
    }
}

/// `POST /api/v1/uploads`
pub async fn upload(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Response {
    let session = match authorised(&console, &headers, Role::Operator, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit = console.settings.console.max_upload;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_too_large",
                "file",
                &format!(
                    "the file is larger than console.max_upload ({limit} bytes): split it into \
                     several batches"
                ),
            )
        }
    };
    let name = safe_name(q.name.as_deref());
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "io", "", &e.to_string()),
    };
    let path = dir.path().join(&name);
    if let Err(e) = std::fs::write(&path, &bytes) {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "io", "", &e.to_string());
    }
    let started = std::time::Instant::now();
    let checked = {
        let path = path.clone();
        let reset = console.settings.reset.clone();
        tokio::task::spawn_blocking(move || -> Result<_, IntakeError> {
            let plan = intake::plan_csv(&path)?;
            let mut protected = Vec::new();
            let mut protected_total = 0u64;
            // A second pass over the file only when there is something to find; each entry
            // parsed once, not once per row.
            let protected_keys = crate::reset::protected_keys(&reset);
            if !protected_keys.is_empty() {
                if let Ok(rows) = plan.rows() {
                    for row in rows.flatten() {
                        if protected_keys.contains(&row.user.key()) {
                            protected_total += 1;
                            if protected.len() < MAX_PROTECTED_SHOWN {
                                protected.push(row.user.to_string());
                            }
                        }
                    }
                }
            }
            Ok((plan, protected, protected_total))
        })
        .await
    };
    let source = name.clone();
    let (plan, protected, protected_total) = match checked {
        Ok(Ok(v)) => v,
        Ok(Err(IntakeError::File(message))) => {
            let message = message.replace(&path.display().to_string(), &source);
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_file",
                "file",
                &message,
            );
        }
        Ok(Err(IntakeError::Rows { errors, total, .. })) => {
            let lines: Vec<BadLine> = errors
                .into_iter()
                .map(|e| BadLine {
                    line: e.line,
                    field: e.field,
                    value: e.value,
                    reason: e.reason,
                })
                .collect();
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({
                    "error": "bad_rows",
                    "message": format!("{total} invalid rows; nothing can be submitted until the file is fixed"),
                    "errors_total": total,
                    "errors": lines,
                })),
            )
                .into_response();
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
    let id = super::session::random_token();
    let preview = serde_json::json!({
        "upload": id,
        "name": name,
        "count": plan.count,
        "sample": plan.sample,
        "duplicates_total": plan.duplicates_total,
        "protected": protected,
        "protected_total": protected_total,
        "dry_run": q.dry_run,
        "revoke_sessions": q.revoke_sessions,
        "tap": q.tap,
        "needs_approval": plan.count > console.settings.security.approval_above,
        "validated_in_ms": started.elapsed().as_millis() as u64,
    });
    let mut uploads = console.uploads.lock().await;
    let now = Utc::now();
    uploads.retain(|_, u| now - u.created < UPLOAD_TTL);
    uploads.insert(
        id,
        Upload {
            dir,
            path,
            oid: session.oid,
            upn: session.upn,
            dry_run: q.dry_run,
            revoke_sessions: q.revoke_sessions,
            tap: q.tap,
            created: now,
        },
    );
    Json(preview).into_response()
}

/// `POST /api/v1/uploads/{id}/submit`
pub async fn submit(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match authorised(&console, &headers, Role::Operator, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let upload = {
        let mut uploads = console.uploads.lock().await;
        match uploads.get(&id) {
            Some(u) if u.oid == session.oid => uploads.remove(&id),
            Some(_) => {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "not_yours",
                    "upload",
                    "only the operator who uploaded a file submits it",
                )
            }
            None => None,
        }
    };
    let Some(upload) = upload else {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_upload",
            "upload",
            "no such upload (it expires after 30 minutes): upload the file again",
        );
    };
    let key = console.settings.console.key.trim();
    if key.is_empty() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_console_key",
            "",
            "console.key is not set: the console cannot sign batches",
        );
    }
    let args = EnqueueArgs {
        csv: Some(upload.path.clone()),
        tickets: None,
        group: None,
        transitive: false,
        batch: None,
        dry_run: upload.dry_run,
        revoke_sessions: upload.revoke_sessions,
        tap: upload.tap,
        yes: true,
        requested_by: Some(upload.upn.clone()),
        reason: Some(format!("console upload by {}", upload.upn)),
        key: Some(key.into()),
    };
    let enqueued = crate::commands::enqueue::run(&console.settings, &args).await;
    drop(upload.dir);
    match enqueued {
        Ok(e) => {
            if let Ok(mut submitted) = console.submitted.lock() {
                // Bounded: an old batch's approval falls back to the manifest's UPN.
                if submitted.len() >= MAX_SUBMITTED_REMEMBERED {
                    submitted.clear();
                }
                submitted.insert(e.batch.clone(), session.oid.clone());
            }
            super::audit::record(
                &console,
                &session,
                "batch_submitted",
                Some(&e.batch),
                serde_json::json!({
                    "count": e.count,
                    "awaiting_approval": e.awaiting_approval,
                    "dry_run": upload.dry_run,
                    "revoke_sessions": upload.revoke_sessions,
                    "tap": upload.tap,
                }),
            )
            .await;
            tracing::info!(batch = %e.batch, count = e.count, operator = %super::printable(&session.upn), oid = %session.oid, "batch submitted from the console");
            Json(serde_json::json!({
                "batch": e.batch,
                "count": e.count,
                "requested_by": session.upn,
                "needs_approval": e.count > console.settings.security.approval_above,
            }))
            .into_response()
        }
        Err(err) => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_enqueued",
            "",
            &format!("{err:#}"),
        ),
    }
}

/// Counts of a batch, for the page and the event stream.
fn snapshot(console: &Console, batch: &str) -> Option<serde_json::Value> {
    let batches = console.batches.lock().ok()?;
    let view = batches.get(batch)?;
    let counts: serde_json::Map<String, serde_json::Value> = view
        .counts()
        .into_iter()
        .map(|(status, n)| (status.to_string(), n.into()))
        .collect();
    Some(serde_json::json!({
        "batch": batch,
        "expected": view.expected(),
        "finished": view.finished(),
        "pending": view.pending(),
        "complete": view.is_complete(),
        "counts": counts,
        "requested_by": view.manifest().and_then(|m| m.requested_by.clone()),
        "progress": super::watch::progress(view, Utc::now()),
    }))
}

/// Whether `batch` is on the outcomes stream as the console follows it. A batch this process
/// submitted is published (confirmed) before its submit answers, but the follower may not
/// have read its manifest yet: for those, wait until it has (bounded); any other batch is
/// answered at once.
pub async fn batch_known(console: &Console, batch: &str) -> bool {
    let ours = console
        .submitted
        .lock()
        .is_ok_and(|s| s.contains_key(batch));
    let deadline = tokio::time::Instant::now() + SUBMITTED_VISIBLE_WITHIN;
    loop {
        // Registered before the check, so a record applied in between still wakes us.
        let changed = console.batches_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let known = console
            .batches
            .lock()
            .is_ok_and(|b| b.get(batch).is_some_and(|v| v.manifest().is_some()));
        if known {
            return true;
        }
        if !ours || tokio::time::timeout_at(deadline, changed).await.is_err() {
            return false;
        }
    }
}

/// Whether `session` is the person who submitted `batch`: the same object id when this
/// process submitted it, or the manifest's `requested_by` equal to the session's UPN.
fn is_own_batch(
    console: &Console,
    session: &Session,
    batch: &str,
    requested_by: Option<&str>,
) -> bool {
    let same_oid = console
        .submitted
        .lock()
        .ok()
        .and_then(|s| s.get(batch).map(|oid| oid == &session.oid))
        .unwrap_or(false);
    same_oid || requested_by.is_some_and(|r| r.eq_ignore_ascii_case(&session.upn))
}

/// `POST /api/v1/batches/{batch}/approve`: a signed-in approver who is not the batch's
/// operator releases a batch waiting for approval; the console signs the approval with
/// `console.approve_key` ([`crate::commands::approve::run`] verifies the batch and every
/// request first).
pub async fn approve(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(batch): Path<String>,
) -> Response {
    let session = match authorised(&console, &headers, Role::Approver, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !session.roles.contains(&Role::Approver) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "",
            "this needs the approver role",
        );
    }
    batch_known(&console, &batch).await;
    let requested_by = console.batches.lock().ok().and_then(|b| {
        b.get(&batch)
            .and_then(|v| v.manifest().map(|m| m.requested_by.clone()))
    });
    let Some(requested_by) = requested_by else {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_batch",
            "batch",
            "no such batch",
        );
    };
    if is_own_batch(&console, &session, &batch, requested_by.as_deref()) {
        return json_error(
            StatusCode::FORBIDDEN,
            "own_batch",
            "batch",
            "nobody approves their own batch: another approver must",
        );
    }
    let key = console.settings.console.approve_key.trim();
    if key.is_empty() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_approve_key",
            "",
            "console.approve_key is not set: approve with `mfa-reset approve --batch ID --key FILE`",
        );
    }
    let args = crate::cli::ApproveArgs {
        batch: batch.clone(),
        key: key.into(),
        yes: true,
    };
    match crate::commands::approve::run(&console.settings, &args).await {
        Ok(approved) => {
            super::audit::record(
                &console,
                &session,
                "batch_approved",
                Some(&batch),
                serde_json::json!({
                    "count": approved.count,
                    "signed_as": approved.approved_by,
                    "manifest": approved.manifest.to_string(),
                }),
            )
            .await;
            tracing::info!(batch = %batch, count = approved.count, approver = %super::printable(&session.upn), oid = %session.oid, principal = %approved.approved_by, "batch approved from the console");
            Json(serde_json::json!({
                "batch": batch,
                "count": approved.count,
                "approved_by": session.upn,
                "signed_as": approved.approved_by,
            }))
            .into_response()
        }
        Err(err) => json_error(
            StatusCode::CONFLICT,
            "not_approved",
            "",
            &format!("{err:#}"),
        ),
    }
}

/// `GET /batches/{batch}`
pub async fn batch_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(batch): Path<String>,
) -> Response {
    let Some(session) = session_of(&console, &headers) else {
        return (
            StatusCode::SEE_OTHER,
            [(
                header::LOCATION,
                format!(
                    "/login?return_to=/batches/{}",
                    percent_encoding::utf8_percent_encode(
                        &batch,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ),
            )],
        )
            .into_response();
    };
    if !session.has(Role::Viewer) {
        return super::pages::error(
            StatusCode::FORBIDDEN,
            "Viewing batches needs the viewer role.",
        );
    }
    batch_known(&console, &batch).await;
    let Some(now) = snapshot(&console, &batch) else {
        return super::pages::error(StatusCode::NOT_FOUND, "No such batch.");
    };
    // An approver other than the operator may release a batch nothing of which has run yet
    // (the console cannot tell "waiting for approval" from "queued"; approving a batch that
    // needs none is refused by `approve`).
    let own = is_own_batch(&console, &session, &batch, now["requested_by"].as_str());
    let approve_button = if session.roles.contains(&Role::Approver)
        && !own
        && now["finished"] == serde_json::json!(0)
    {
        format!(
            "<p><button id=\"approve\" data-csrf=\"{}\">Approve this batch</button> <span id=\"approved\"></span></p>",
            escape(&session.csrf)
        )
    } else {
        String::new()
    };
    Html(page(
        "Batch",
        &format!(
            "<h1>Batch <span id=\"batch\">{}</span></h1>\
             <p>Requested by {}</p>\
             <p><progress id=\"progress\" max=\"{}\" value=\"{}\"></progress> \
             <span id=\"finished\">{}</span> of {} done</p>\
             <pre id=\"counts\">{}</pre>{}{}{}\
             <script src=\"/console.js\"></script>",
            escape(&batch),
            escape(now["requested_by"].as_str().unwrap_or("")),
            now["expected"],
            now["finished"],
            now["finished"],
            now["expected"],
            escape(&now["counts"].to_string()),
            approve_button,
            super::reports::links(&batch),
            super::watch::sections(),
        ),
    ))
    .into_response()
}

/// `GET /api/v1/batches/{batch}/events`: `counts` events once a second until complete.
pub async fn batch_events(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(batch): Path<String>,
) -> Response {
    if let Err(r) = authorised(&console, &headers, Role::Viewer, false) {
        return r;
    }
    if snapshot(&console, &batch).is_none() {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_batch",
            "batch",
            "no such batch",
        );
    }
    // A fixed cadence (not a sleep after each snapshot): building the snapshot of a big batch
    // does not stretch the interval between events.
    let mut every = tokio::time::interval(Duration::from_millis(500));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (console, batch, every, false),
        |(console, batch, mut every, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                _ = every.tick() => {}
                () = console.shutdown.cancelled() => return None,
            }
            let now = snapshot(&console, &batch)?;
            let complete = now["complete"] == serde_json::Value::Bool(true);
            let event = Event::default().event("counts").data(now.to_string());
            Some((
                Ok::<_, Infallible>(event),
                (console, batch, every, complete),
            ))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /batches/new`: the upload page.
pub async fn new_batch_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = session_of(&console, &headers) else {
        return (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/login?return_to=/batches/new")],
        )
            .into_response();
    };
    if !session.has(Role::Operator) {
        return super::pages::error(
            StatusCode::FORBIDDEN,
            "Uploading batches needs the operator role.",
        );
    }
    Html(page(
        "New batch",
        &format!(
            "<h1>New batch</h1>\
             <form id=\"upload\" data-csrf=\"{}\" data-max-upload=\"{}\">\
             <p><input type=\"file\" id=\"file\" accept=\".csv,text/csv\" required></p>\
             <p><label><input type=\"checkbox\" id=\"dry_run\"> dry run</label> \
             <label><input type=\"checkbox\" id=\"revoke_sessions\"> revoke sessions</label> \
             <label><input type=\"checkbox\" id=\"tap\"> Temporary Access Pass after the reset</label></p>\
             <p><button type=\"submit\">Check the file</button></p></form>\
             <div id=\"preview\"></div>\
             <script src=\"/console.js\"></script>",
            escape(&session.csrf),
            console.settings.console.max_upload
        ),
    ))
    .into_response()
}

/// `GET /console.js`: the pages' script (no inline scripts: the CSP forbids them).
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

#[cfg(test)]
#[path = "uploads_tests.rs"]
mod tests;
