//! The `/_sim` endpoints (no auth, not counted in stats): the state of every user, the
//! counters, the fault knobs, the app's state (credentials, consent, permissions: break it and
//! fix it), renaming a user, and switches tests use instead of waiting (expire every token,
//! end the consistency delay), the Temporary Access Pass policy and the last pass created per
//! user; and [`UserView`], the snapshot tests and the demo read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::AppPatch;
use crate::faults::FaultPatch;
use crate::reply::{empty, json_response};
use crate::tap::TapPolicyPatch;
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
    /// `userType`: `Member` or `Guest`.
    pub user_type: String,
    /// An external (`#EXT#`) user: revoking sessions does nothing for them.
    pub external: bool,
    /// Writes refused with 403.
    pub privileged: bool,
    /// Directory roles assigned directly and active (roles held through groups are the
    /// groups').
    pub directory_roles: Vec<String>,
    /// Directory roles the user is eligible for through PIM.
    pub eligible_roles: Vec<String>,
    /// `userPreferredMethodForSecondaryAuthentication`.
    pub default_method: Option<String>,
    /// Id of the registered method the preference points at.
    pub default_method_id: Option<String>,
    /// `revokeSignInSessions` calls that took effect (never for an external user).
    pub sessions_revoked: u64,
    /// `revokeSignInSessions` calls answered, with effect or not.
    pub revoke_requests: u64,
    /// QR codes of the QR code + PIN method (`standard`, `temporary`), when it is registered.
    pub qr_codes: Vec<String>,
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
            user_type: user.user_type.clone(),
            external: user.is_external(),
            privileged: user.privileged,
            directory_roles: user.directory_roles.clone(),
            eligible_roles: user.eligible_roles.clone(),
            default_method: user.preferred_method.clone(),
            default_method_id: user.default_method().map(|m| m.id().to_string()),
            sessions_revoked: user.sessions_revoked,
            revoke_requests: user.revoke_requests,
            qr_codes: if user.methods.iter().any(|m| m.stem() == "qrCodePin") {
                [
                    ("standard", user.qr_codes.standard),
                    ("temporary", user.qr_codes.temporary),
                ]
                .iter()
                .filter(|(_, present)| *present)
                .map(|(name, _)| (*name).to_string())
                .collect()
            } else {
                Vec::new()
            },
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
        .route("/users/{key}/rename", post(rename_user))
        .route("/users/{key}/tap", get(user_tap))
        .route(
            "/policies/temporaryAccessPass",
            get(tap_policy).post(set_tap_policy),
        )
        .route("/app", get(app).post(set_app))
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

/// Body of `POST /_sim/users/{user}/rename`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rename {
    user_principal_name: String,
}

async fn rename_user(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let rename: Rename = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    let mut tenant = lock(&shared.tenant);
    let Some(index) = tenant.find(&key) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no user {key}")}),
        );
    };
    match tenant.rename(index, &rename.user_principal_name) {
        Ok(()) => json_response(StatusCode::OK, &json!(UserView::of(&tenant.users[index]))),
        Err(e) => json_response(StatusCode::CONFLICT, &json!({ "error": e })),
    }
}

/// The last Temporary Access Pass created for a user, in clear: what Graph showed once in
/// the create answer, kept here so tests can compare it with what the client delivered.
async fn user_tap(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    let id = {
        let tenant = lock(&shared.tenant);
        tenant.find(&key).map(|i| tenant.users[i].id.clone())
    };
    let pass = id.and_then(|id| lock(&shared.taps).issued.get(&id).cloned());
    match pass {
        Some(pass) => json_response(StatusCode::OK, &json!({ "temporaryAccessPass": pass })),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no Temporary Access Pass created for {key}")}),
        ),
    }
}

async fn tap_policy(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &json!(lock(&shared.taps).policy))
}

async fn set_tap_policy(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch = match serde_json::from_slice::<TapPolicyPatch>(&body) {
        Ok(patch) => patch,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    let mut taps = lock(&shared.taps);
    match taps.policy.apply(patch) {
        Ok(()) => json_response(StatusCode::OK, &json!(taps.policy)),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": e })),
    }
}

async fn app(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &json!(*lock(&shared.app)))
}

async fn set_app(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<AppPatch>(&body) {
        Ok(patch) => {
            let mut app = lock(&shared.app);
            app.apply(patch);
            json_response(StatusCode::OK, &json!(*app))
        }
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
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
