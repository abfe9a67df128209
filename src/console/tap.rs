//! Showing a user's Temporary Access Pass once, to a signed-in operator.
//!
//! The outcome record carries the pass sealed to the helpdesk's age key; a console that
//! holds the identity (`tap.identity`) opens it for the first operator who asks and never
//! again in this process: a second view answers 410 with who saw it and when. Every view is
//! logged (operator, user, request; never the pass).
//!
//! - `GET /batches/{batch}/tap/{request_id}`: a page with one button (`tap.js`).
//! - `POST /api/v1/batches/{batch}/tap/{request_id}` (operator, CSRF header): the pass, once,
//!   `Cache-Control: no-store`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::pages::{error, escape, page};
use super::session::Role;
use super::{json_error, printable, Console};
use crate::domain::{ConsoleAction, Outcome, TapOutcome};

/// Who saw a pass, and when.
type ShownTo = (String, DateTime<Utc>);

/// Passes already shown: (request id, replay) → who saw it and when.
#[derive(Debug, Default)]
pub struct Shown(Mutex<HashMap<(Uuid, u32), ShownTo>>);

impl Shown {
    /// Mark `key` shown to `upn` now, unless it already was: then who and when.
    fn claim(&self, key: (Uuid, u32), upn: &str) -> Result<(), ShownTo> {
        let mut shown = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(earlier) = shown.get(&key) {
            return Err(earlier.clone());
        }
        shown.insert(key, (upn.to_string(), Utc::now()));
        Ok(())
    }

    /// Give `key` back: showing it failed before anything was shown.
    fn release(&self, key: (Uuid, u32)) {
        let mut shown = self.0.lock().unwrap_or_else(|e| e.into_inner());
        shown.remove(&key);
    }

    /// Take a verified console action: a [`SHOWN_ACTION`] marks its pass shown (the first
    /// record of it wins).
    pub fn remember(&self, action: &ConsoleAction) {
        if action.action != SHOWN_ACTION {
            return;
        }
        let request_id = action.detail["request_id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok());
        let replay = action.detail["replay"]
            .as_u64()
            .and_then(|r| u32::try_from(r).ok());
        if let (Some(request_id), Some(replay)) = (request_id, replay) {
            let mut shown = self.0.lock().unwrap_or_else(|e| e.into_inner());
            shown
                .entry((request_id, replay))
                .or_insert_with(|| (action.upn.clone(), action.at));
        }
    }
}

/// The console action that records a pass shown (its detail: `request_id`, `replay`).
pub const SHOWN_ACTION: &str = "tap_shown";

/// Longest wait for the console to finish reading the stream as it was at start.
const CATCH_UP_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

/// The newest outcome of `request_id` in `batch` that carries a pass.
fn find(console: &Console, batch: &str, request_id: Uuid) -> Option<(Outcome, TapOutcome)> {
    let batches = console.batches.lock().ok()?;
    batches
        .get(batch)?
        .outcomes()
        .filter(|o| o.request_id == request_id)
        .filter_map(|o| o.tap.clone().map(|tap| (o.clone(), tap)))
        .max_by_key(|(o, _)| o.replay)
}

/// `GET /batches/{batch}/tap/{request_id}`
pub async fn page_view(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((batch, request_id)): Path<(String, Uuid)>,
) -> Response {
    let Some(session) = super::oidc::session_of(&console, &headers) else {
        return error(StatusCode::UNAUTHORIZED, "Sign in first.");
    };
    if !session.has(Role::Operator) {
        return error(
            StatusCode::FORBIDDEN,
            "Showing a Temporary Access Pass needs the operator role.",
        );
    }
    let Some((outcome, _)) = find(&console, &batch, request_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "No Temporary Access Pass for this request.",
        );
    };
    let body = format!(
        "<h1>Temporary Access Pass</h1>\
         <p>User: <strong>{user}</strong> (batch {batch})</p>\
         <p>The pass is shown once, to you, and the view is recorded. Hand it to the user \
         through a channel you trust.</p>\
         <p><button id=\"show-tap\" data-url=\"/api/v1/batches/{batch_url}/tap/{request_id}\" \
         data-csrf=\"{csrf}\">Show the pass once</button></p>\
         <p><code id=\"tap-pass\"></code></p><p id=\"tap-status\"></p>\
         <script src=\"/tap.js\"></script>",
        user = escape(&outcome.user.to_string()),
        batch = escape(&batch),
        batch_url = escape(
            &percent_encoding::utf8_percent_encode(&batch, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        ),
        csrf = escape(&session.csrf),
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(page("Temporary Access Pass", &body)),
    )
        .into_response()
}

/// `POST /api/v1/batches/{batch}/tap/{request_id}`
pub async fn reveal(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((batch, request_id)): Path<(String, Uuid)>,
) -> Response {
    let session = match super::uploads::authorised(&console, &headers, Role::Operator, true) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let Some(identity) = console.tap_identity.as_ref() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_tap_identity",
            "",
            "tap.identity is not set on this console: the pass can only be opened with the \
             helpdesk key (`age -d -i KEY`)",
        );
    };
    let Some((outcome, tap)) = find(&console, &batch, request_id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no_tap",
            "request_id",
            "no Temporary Access Pass for this request",
        );
    };
    let Some(sealed) = tap.sealed.as_deref().filter(|_| tap.issued) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "tap_not_issued",
            "request_id",
            &format!(
                "no pass was issued for this user: {}",
                tap.error_code.as_deref().unwrap_or("unknown")
            ),
        );
    };
    // Every pass shown before this console started is on the stream: read up to where it
    // ended then, or a restart would show a pass again.
    let mut read = console.stream_read.clone();
    // (Matched in the statement: the watch's guard must not live across an await.)
    let caught_up = matches!(
        tokio::time::timeout(
            CATCH_UP_WITHIN,
            read.wait_for(|r| *r >= console.stream_end_at_start),
        )
        .await,
        Ok(Ok(_))
    );
    if !caught_up {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "still_reading",
            "",
            "the console is still reading the record of passes already shown; try again in a \
             moment",
        );
    }
    let key = (outcome.request_id, outcome.replay);
    if let Err((upn, at)) = console.tap_shown.claim(key, &session.upn) {
        return json_error(
            StatusCode::GONE,
            "already_shown",
            "",
            &format!(
                "this pass was already shown, to {} at {}; issue a new one if it was lost",
                printable(&upn),
                at.to_rfc3339()
            ),
        );
    }
    // On the record before it is shown: a console that cannot record it does not show it.
    let recorded = super::audit::try_record(
        &console,
        &session,
        SHOWN_ACTION,
        Some(&batch),
        serde_json::json!({
            "request_id": outcome.request_id.to_string(),
            "replay": outcome.replay,
            "user": outcome.user.to_string(),
        }),
    )
    .await;
    if let Err(error) = recorded {
        console.tap_shown.release(key);
        tracing::error!(error = %format!("{error:#}"), "a pass was not shown: its showing could not be put on the audit record");
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_recorded",
            "",
            "showing this pass could not be put on the audit record (the broker?); nothing was \
             shown, try again",
        );
    }
    let pass = match identity.open(sealed) {
        Ok(pass) => pass,
        Err(error) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tap_decrypt_failed",
                "",
                &format!("{error}: is tap.identity the key of the workers' tap.recipient?"),
            )
        }
    };
    tracing::info!(
        batch = %printable(&batch),
        request_id = %request_id,
        user = %outcome.user,
        operator = %printable(&session.upn),
        oid = %session.oid,
        "Temporary Access Pass shown from the console (once)"
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({
            "user": outcome.user.to_string(),
            "temporary_access_pass": pass.expose_secret(),
            "lifetime_minutes": tap.lifetime_minutes,
            "usable_once": tap.usable_once,
            "start": tap.start,
        })),
    )
        .into_response()
}

/// `GET /tap.js`: the button of [`page_view`] (inline scripts are refused by the CSP).
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("tap.js"),
    )
        .into_response()
}
