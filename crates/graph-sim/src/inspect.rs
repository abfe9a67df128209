//! The `/_sim` endpoints (no auth, not counted in stats): the state of every user, the
//! counters, the fault knobs, and switches tests use instead of waiting (expire every token,
//! end the consistency delay); and [`UserView`], the snapshot tests and the demo read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use crate::faults::FaultPatch;
use crate::reply::{empty, json_response};
use crate::tenant::User;
use crate::throttle::lock;
use crate::Shared;

/// A user's full state as `/_sim/users` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// Object id.
    pub id: String,
    /// UPN.
    pub user_principal_name: String,
    /// Display name.
    pub display_name: String,
    /// Writes refused with 403.
    pub privileged: bool,
    /// Directory roles held.
    pub directory_roles: Vec<String>,
    /// `userPreferredMethodForSecondaryAuthentication`.
    pub default_method: Option<String>,
    /// Id of the registered method the preference points at.
    pub default_method_id: Option<String>,
    /// `revokeSignInSessions` calls.
    pub sessions_revoked: u64,
    /// Registered methods as Graph JSON (beta-only types included).
    pub methods: Vec<Value>,
    /// Deleted methods as Graph JSON, with `deletedDateTime` added.
    pub deleted_methods: Vec<Value>,
}

impl UserView {
    /// Snapshot of one user.
    pub fn of(user: &User) -> UserView {
        UserView {
            id: user.id.clone(),
            user_principal_name: user.user_principal_name.clone(),
            display_name: user.display_name.clone(),
            privileged: user.privileged,
            directory_roles: user.directory_roles.clone(),
            default_method: user.preferred_method.clone(),
            default_method_id: user.default_method().map(|m| m.id().to_string()),
            sessions_revoked: user.sessions_revoked,
            methods: user
                .methods
                .iter()
                .map(|m| Value::Object(m.0.clone()))
                .collect(),
            deleted_methods: user
                .deleted
                .iter()
                .map(|d| {
                    let mut m = d.method.0.clone();
                    m.insert(
                        "deletedDateTime".into(),
                        Value::String(d.deleted_at.to_rfc3339()),
                    );
                    Value::Object(m)
                })
                .collect(),
        }
    }
}

/// The `/_sim` endpoints (nested under `/_sim`).
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/users", get(users))
        .route("/users/{key}", get(user))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .route("/faults", get(faults).post(set_faults))
        .route("/tokens/expire", post(expire_tokens))
        .route("/deletions/settle", post(settle_deletions))
        .fallback(unknown)
        .method_not_allowed_fallback(unknown)
}

async fn users(State(shared): State<Arc<Shared>>) -> Response {
    let tenant = lock(&shared.tenant);
    let users: Vec<UserView> = tenant.users.iter().map(UserView::of).collect();
    json_response(StatusCode::OK, &json!(users))
}

async fn user(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    let tenant = lock(&shared.tenant);
    match tenant.find(&key) {
        Some(i) => json_response(StatusCode::OK, &json!(UserView::of(&tenant.users[i]))),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no user {key}")}),
        ),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &json!(shared.stats.snapshot()))
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> Response {
    shared.stats.reset();
    empty(StatusCode::NO_CONTENT)
}

async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &json!(shared.faults.settings()))
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultPatch>(&body) {
        Ok(patch) => json_response(StatusCode::OK, &json!(shared.faults.apply(patch))),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    }
}

async fn expire_tokens(State(shared): State<Arc<Shared>>) -> Response {
    shared.tokens.expire_all();
    empty(StatusCode::NO_CONTENT)
}

async fn settle_deletions(State(shared): State<Arc<Shared>>) -> Response {
    lock(&shared.tenant).settle_deletions();
    empty(StatusCode::NO_CONTENT)
}

async fn unknown() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "unknown /_sim endpoint"}),
    )
}
