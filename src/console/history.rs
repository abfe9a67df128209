//! Batch history and dead letters, with replays that take two people.
//!
//! `GET /batches` lists the recent batches the outcomes stream holds. `GET /dead-letters`
//! lists the dead-letter queue (read without removing anything, as `dlq list` does).
//!
//! **Replays.** A replay executes resets again, and workers run one only with an admin's
//! grant (`mfa-replay`, namespace `mfa-reset-admin`). The console does not hand that power to
//! whoever is signed in: an operator *asks* for the replay of a batch's dead letters
//! (`POST /api/v1/replays`), and a different signed-in approver approves it
//! (`POST /api/v1/replays/{id}/approve`); only then does the console sign the replay with
//! `console.admin_key`. Without that key the approval is refused with the CLI command to run
//! instead. Both steps are on the audit record.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::oidc::session_of;
use super::pages::{escape, page};
use super::session::{Role, Session};
use super::uploads::authorised;
use super::{json_error, Console};

/// Batches listed on the history page.
const HISTORY_ROWS: usize = 100;
/// Dead letters listed one by one (the rest are in the per-batch counts).
const DEAD_LETTER_ROWS: usize = 500;
/// Replay requests remembered.
const MAX_REPLAY_REQUESTS: usize = 1_000;

/// A replay an operator asked for.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRequest {
    /// Its id.
    pub id: String,
    /// The batch whose dead letters are replayed.
    pub batch: String,
    /// Only dead letters with this error code, when set.
    pub error_code: Option<String>,
    /// Who asked (UPN).
    pub requested_by: String,
    /// Their object id.
    #[serde(skip)]
    pub requested_oid: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// `pending`, `replayed` or `failed`.
    pub state: &'static str,
    /// Who approved it (UPN), once approved.
    pub approved_by: Option<String>,
    /// Requests replayed.
    pub replayed: Option<u64>,
}

/// Replay requests by id.
pub type ReplayRequests = std::sync::Mutex<HashMap<String, ReplayRequest>>;

/// The session of a page that needs `role`: a redirect to sign-in, or a 403 page.
#[allow(clippy::result_large_err)]
fn page_session(
    console: &Console,
    headers: &HeaderMap,
    role: Role,
    here: &str,
) -> Result<Session, Response> {
    let Some(session) = session_of(console, headers) else {
        return Err((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/login?return_to={here}"))],
        )
            .into_response());
    };
    if !session.has(role) {
        return Err(super::pages::error(
            StatusCode::FORBIDDEN,
            &format!("This page needs the {} role.", role.as_str()),
        ));
    }
    Ok(session)
}

/// `GET /batches`: the most recent batches, newest first.
pub async fn history_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = page_session(&console, &headers, Role::Viewer, "/batches") {
        return r;
    }
    let mut rows: Vec<(DateTime<Utc>, String)> = {
        let Ok(batches) = console.batches.lock() else {
            return super::pages::error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        batches
            .values()
            .filter_map(|view| {
                let m = view.manifest()?;
                let counts: Vec<String> = view
                    .counts()
                    .into_iter()
                    .map(|(status, n)| format!("{status} {n}"))
                    .collect();
                let state = if view.is_complete() {
                    "complete"
                } else if view.finished() == 0 {
                    "not started (queued or waiting for approval)"
                } else {
                    "running"
                };
                Some((
                    m.created_at,
                    format!(
                        "<tr><td><a href=\"/batches/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
                         <td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
                        percent_encoding::utf8_percent_encode(
                            &m.batch,
                            percent_encoding::NON_ALPHANUMERIC
                        ),
                        escape(&m.batch),
                        m.created_at.format("%Y-%m-%d %H:%M UTC"),
                        escape(m.requested_by.as_deref().unwrap_or("")),
                        escape(&m.source),
                        if m.dry_run { "dry run" } else { "reset" },
                        view.finished(),
                        view.expected(),
                        state,
                        escape(&counts.join(", ")),
                    ),
                ))
            })
            .collect()
    };
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let shown = rows.len().min(HISTORY_ROWS);
    let body: String = rows
        .into_iter()
        .take(HISTORY_ROWS)
        .map(|(_, r)| r)
        .collect();
    Html(page(
        "Batches",
        &format!(
            "<h1>Batches</h1><p>The {shown} most recent. <a href=\"/dead-letters\">Dead letters</a></p>\
             <table id=\"batches\"><thead><tr><th>batch</th><th>created</th><th>requested by</th>\
             <th>source</th><th>action</th><th>done</th><th>state</th><th>outcomes</th></tr></thead>\
             <tbody>{body}</tbody></table>"
        ),
    ))
    .into_response()
}

/// `GET /dead-letters`: the dead-letter queue, per batch and error code, and the replay
/// requests.
pub async fn dead_letters_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    let session = match page_session(&console, &headers, Role::Viewer, "/dead-letters") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let letters = match crate::commands::dlq::list(&console.settings, None).await {
        Ok(l) => l,
        Err(err) => {
            return super::pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("Reading the dead-letter queue failed: {err:#}"),
            )
        }
    };
    let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
    for l in &letters {
        if let Some(batch) = &l.batch {
            *groups
                .entry((batch.clone(), l.error_code.clone()))
                .or_default() += 1;
        }
    }
    let operator = session.has(Role::Operator);
    let csrf = escape(&session.csrf);
    let group_rows: String = groups
        .iter()
        .map(|((batch, code), n)| {
            let ask = if operator {
                format!(
                    "<button class=\"replay-ask\" data-csrf=\"{csrf}\" data-batch=\"{}\" data-code=\"{}\">Ask for a replay</button>",
                    escape(batch),
                    escape(code)
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{n}</td><td>{ask}</td></tr>",
                escape(batch),
                escape(code)
            )
        })
        .collect();
    let letter_rows: String = letters
        .iter()
        .take(DEAD_LETTER_ROWS)
        .map(letter_row)
        .collect();
    let requests: Vec<ReplayRequest> = console
        .replays
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    let mut requests = requests;
    requests.sort_by_key(|r| std::cmp::Reverse(r.requested_at));
    let approver = session.roles.contains(&Role::Approver);
    let request_rows: String = requests
        .iter()
        .map(|r| {
            let own = r.requested_oid == session.oid
                || r.requested_by.eq_ignore_ascii_case(&session.upn);
            let approve = if approver && !own && r.state == "pending" {
                format!(
                    "<button class=\"replay-approve\" data-csrf=\"{csrf}\" data-id=\"{}\">Approve the replay</button>",
                    escape(&r.id)
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{approve}</td></tr>",
                escape(&r.batch),
                escape(r.error_code.as_deref().unwrap_or("any")),
                escape(&r.requested_by),
                r.state,
                escape(r.approved_by.as_deref().unwrap_or("")),
                r.replayed.map(|n| n.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    Html(page(
        "Dead letters",
        &format!(
            "<h1>Dead letters</h1><p>{} in the queue. A replay runs the requests again: an operator \
             asks, a different approver approves. <a href=\"/batches\">Batches</a></p>\
             <table id=\"dead-groups\"><thead><tr><th>batch</th><th>error</th><th>letters</th><th></th></tr></thead>\
             <tbody>{group_rows}</tbody></table><p id=\"replay-status\"></p>\
             <h2>Replay requests</h2>\
             <table id=\"replays\"><thead><tr><th>batch</th><th>error</th><th>asked by</th><th>state</th>\
             <th>approved by</th><th>replayed</th><th></th></tr></thead><tbody>{request_rows}</tbody></table>\
             <h2>Letters</h2>\
             <table id=\"dead-letters\"><thead><tr><th>user</th><th>batch</th><th>error</th><th>attempts</th>\
             <th>failed at</th><th>detail</th></tr></thead><tbody>{letter_rows}</tbody></table>\
             <script src=\"/console.js\"></script>",
            letters.len()
        ),
    ))
    .into_response()
}

/// One dead letter as a table row: everything in it came off the queue, so all of it is
/// escaped.
fn letter_row(l: &crate::commands::dlq::DeadLetter) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(l.user.as_deref().unwrap_or("(not a request)")),
        escape(l.batch.as_deref().unwrap_or("")),
        escape(&l.error_code),
        l.attempts,
        escape(l.failed_at.as_deref().unwrap_or("")),
        escape(&l.error_message),
    )
}

/// `POST /api/v1/replays` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskReplay {
    /// The batch.
    batch: String,
    /// Only this error code.
    #[serde(default)]
    error_code: Option<String>,
}

/// `POST /api/v1/replays` (operator, CSRF): ask for the replay of a batch's dead letters.
pub async fn ask_replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let session = match authorised(&console, &headers, Role::Operator, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let ask: AskReplay = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "body",
                &format!("expected {{\"batch\": …, \"error_code\": …}}: {e}"),
            )
        }
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid(&ask.batch) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_batch",
            "batch",
            "batch must be a batch id (letters, digits, - _ .)",
        );
    }
    let error_code = ask.error_code.filter(|c| !c.is_empty());
    if error_code.as_deref().is_some_and(|c| !valid(c)) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_error_code",
            "error_code",
            "error_code must be an error code (letters, digits, - _ .)",
        );
    }
    let request = ReplayRequest {
        id: super::session::random_token(),
        batch: ask.batch,
        error_code,
        requested_by: session.upn.clone(),
        requested_oid: session.oid.clone(),
        requested_at: Utc::now(),
        state: "pending",
        approved_by: None,
        replayed: None,
    };
    super::audit::record(
        &console,
        &session,
        "replay_requested",
        Some(&request.batch),
        serde_json::json!({ "replay": request.id, "error_code": request.error_code }),
    )
    .await;
    if let Ok(mut replays) = console.replays.lock() {
        if replays.len() >= MAX_REPLAY_REQUESTS {
            replays.retain(|_, r| r.state == "pending");
        }
        replays.insert(request.id.clone(), request.clone());
    }
    (StatusCode::CREATED, Json(request)).into_response()
}

/// `GET /api/v1/replays` (viewer): the replay requests.
pub async fn list_replays(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorised(&console, &headers, Role::Viewer, false) {
        return r;
    }
    let mut all: Vec<ReplayRequest> = console
        .replays
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    all.sort_by_key(|r| std::cmp::Reverse(r.requested_at));
    Json(all).into_response()
}

/// `POST /api/v1/replays/{id}/approve` (approver, CSRF, not the person who asked): sign the
/// replay with `console.admin_key` and run it.
pub async fn approve_replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match authorised(&console, &headers, Role::Approver, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Taken out of `pending` under the lock, so two approvers cannot both run it.
    let request = {
        let Ok(mut replays) = console.replays.lock() else {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "", "lock");
        };
        let Some(request) = replays.get_mut(&id) else {
            return json_error(
                StatusCode::NOT_FOUND,
                "unknown_replay",
                "replay",
                "no such replay request (requests are kept while this console runs)",
            );
        };
        if request.requested_oid == session.oid
            || request.requested_by.eq_ignore_ascii_case(&session.upn)
        {
            return json_error(
                StatusCode::FORBIDDEN,
                "own_replay",
                "replay",
                "nobody approves their own replay request: another approver must",
            );
        }
        if request.state != "pending" {
            return json_error(
                StatusCode::CONFLICT,
                "not_pending",
                "replay",
                &format!("this replay request is {}", request.state),
            );
        }
        let key = console.settings.console.admin_key.trim();
        if key.is_empty() {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_admin_key",
                "",
                &format!(
                    "console.admin_key is not set: an admin runs `mfa-reset dlq replay --batch {}{} --yes --key FILE`",
                    request.batch,
                    request
                        .error_code
                        .as_deref()
                        .map(|c| format!(" --error-code {c}"))
                        .unwrap_or_default()
                ),
            );
        }
        request.state = "running";
        request.approved_by = Some(session.upn.clone());
        request.clone()
    };
    let outcome = run_replay(&console, &request).await;
    let (state, replayed) = match &outcome {
        Ok(n) => ("replayed", Some(*n)),
        Err(_) => ("failed", None),
    };
    if let Ok(mut replays) = console.replays.lock() {
        if let Some(r) = replays.get_mut(&id) {
            r.state = state;
            r.replayed = replayed;
        }
    }
    super::audit::record(
        &console,
        &session,
        "replay_approved",
        Some(&request.batch),
        serde_json::json!({
            "replay": request.id,
            "error_code": request.error_code,
            "requested_by": request.requested_by,
            "replayed": replayed,
            "error": outcome.as_ref().err().map(|e| format!("{e:#}")),
        }),
    )
    .await;
    match outcome {
        Ok(n) => {
            tracing::info!(batch = %request.batch, replayed = n, approver = %super::printable(&session.upn), requester = %super::printable(&request.requested_by), "replay approved from the console");
            Json(serde_json::json!({
                "replay": request.id,
                "batch": request.batch,
                "replayed": n,
                "requested_by": request.requested_by,
                "approved_by": session.upn,
            }))
            .into_response()
        }
        Err(err) => json_error(
            StatusCode::CONFLICT,
            "not_replayed",
            "",
            &format!("{err:#}"),
        ),
    }
}

/// Sign with `console.admin_key` (checked to be an admin the workers accept) and replay.
async fn run_replay(console: &Console, request: &ReplayRequest) -> anyhow::Result<u64> {
    let path = std::path::PathBuf::from(console.settings.console.admin_key.trim());
    let (signer, _) = crate::commands::admin_signer(
        &console.settings,
        &path,
        "console.admin_key",
        "the workers would refuse replays signed with console.admin_key",
    )?;
    crate::commands::dlq::replay(
        &console.settings,
        Some(&request.batch),
        request.error_code.as_deref(),
        &signer,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::dlq::DeadLetter;

    #[test]
    fn markup_in_a_dead_letter_is_shown_as_text() {
        let row = letter_row(&DeadLetter {
            user: Some("<script>alert(1)</script>".into()),
            batch: Some("b\"><img src=x onerror=alert(2)>".into()),
            error_code: "<b>code</b>".into(),
            error_message: "</td><script>x</script>".into(),
            attempts: 2,
            failed_at: None,
            request_id: None,
        });
        assert!(!row.contains("<script"), "{row}");
        assert!(!row.contains("<img"), "{row}");
        assert!(!row.contains("<b>"), "{row}");
        assert_eq!(
            row.matches("<td>").count(),
            6,
            "no cell broken out of: {row}"
        );
        assert!(
            row.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{row}"
        );
    }
}
