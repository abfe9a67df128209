//! The `/_sim` endpoints (no auth, not counted in stats): the state of every user, the
//! counters, the fault knobs; and [`UserView`], the snapshot tests and the demo read.

use axum::http::{Method as HttpMethod, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

use crate::faults::FaultPatch;
use crate::reply::{empty, json_response};
use crate::routes::decode;
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

/// The `/_sim` endpoints: inspection and control, no auth, not counted in stats.
pub(crate) fn inspect(
    shared: &Shared,
    method: &HttpMethod,
    rest: &[&str],
    body: &[u8],
) -> Response {
    let get = method == HttpMethod::GET;
    let post = method == HttpMethod::POST;
    match rest {
        ["users"] if get => {
            let tenant = lock(&shared.tenant);
            let users: Vec<UserView> = tenant.users.iter().map(UserView::of).collect();
            json_response(StatusCode::OK, &json!(users))
        }
        ["users", key] if get => {
            let key = decode(key);
            let tenant = lock(&shared.tenant);
            match tenant.find(&key) {
                Some(i) => json_response(StatusCode::OK, &json!(UserView::of(&tenant.users[i]))),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no user {key}")}),
                ),
            }
        }
        ["stats"] if get => json_response(StatusCode::OK, &json!(shared.stats.snapshot())),
        ["stats", "reset"] if post => {
            shared.stats.reset();
            empty(StatusCode::NO_CONTENT)
        }
        ["faults"] if get => json_response(StatusCode::OK, &json!(shared.faults.settings())),
        ["faults"] if post => match serde_json::from_slice::<FaultPatch>(body) {
            Ok(patch) => json_response(StatusCode::OK, &json!(shared.faults.apply(patch))),
            Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
        },
        ["tokens", "expire"] if post => {
            shared.tokens.expire_all();
            empty(StatusCode::NO_CONTENT)
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown /_sim endpoint"}),
        ),
    }
}
