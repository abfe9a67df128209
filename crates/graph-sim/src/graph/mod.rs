//! The Graph handler, last stage of the pipeline (see [`crate::pipeline`]): it carries out
//! the route the first stage parsed, on the tenant.
//!
//! - [`paths`]: Graph's path grammar, routes and stats templates.
//! - [`methods`]: deleting and creating methods, with Graph's refusals and ghost answers.
//! - [`groups`]: group members, paged.

mod groups;
mod methods;
pub(crate) mod paths;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::pipeline::{App, GraphRequest};
use crate::reply::{empty, graph_error, json_response, odata_error, RequestIds};
use crate::tenant::{Method, User, PREFERENCES};
use crate::throttle::lock;
use crate::Shared;
use paths::{Collection, Route, QR_CODE_PIN_STEM};

/// Answer a Graph request that went through every stage of the pipeline.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(request): Extension<GraphRequest>,
    Extension(App(app)): Extension<App>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    match request.route {
        Err(r) => graph_error(r.status, r.code, &r.message, &request.ids),
        Ok(route) => {
            let ctx = Ctx {
                shared: &shared,
                ids: &request.ids,
                beta: request.beta,
                host: &request.host,
                app: &app,
            };
            execute(&ctx, route, query.as_deref().unwrap_or(""), &body)
        }
    }
}

/// What a handler needs to answer as Graph would.
pub(crate) struct Ctx<'a> {
    shared: &'a Shared,
    ids: &'a RequestIds,
    beta: bool,
    host: &'a str,
    app: &'a str,
}

impl Ctx<'_> {
    fn version(&self) -> &'static str {
        if self.beta {
            "beta"
        } else {
            "v1.0"
        }
    }

    fn context(&self, fragment: &str) -> Value {
        Value::String(format!(
            "http://{}/{}/$metadata#{}",
            self.host,
            self.version(),
            fragment
        ))
    }

    fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        graph_error(status, code, message, self.ids)
    }

    fn user_not_found(&self, key: &str) -> Response {
        self.error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
        )
    }

    fn forbidden(&self) -> Response {
        self.error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    }

    fn bad_request(&self, message: &str) -> Response {
        self.error(StatusCode::BAD_REQUEST, "badRequest", message)
    }

    fn method_not_found(&self, c: Option<Collection>, id: &str) -> Response {
        let message = format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present.");
        if c.is_some_and(|c| c.odata_errors) {
            odata_error(StatusCode::NOT_FOUND, "invalid_request", &message)
        } else {
            self.error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message)
        }
    }

    /// Methods a GET lists now: registered ones plus deleted ones still within the
    /// consistency delay, beta-only types hidden under v1.0.
    fn listed(&self, user: &User, now: Instant) -> Vec<Method> {
        user.methods
            .iter()
            .chain(
                user.deleted
                    .iter()
                    .filter(|d| d.listed_until > now)
                    .map(|d| &d.method),
            )
            .filter(|m| self.beta || !m.is_beta_only())
            .cloned()
            .collect()
    }
}

fn execute(ctx: &Ctx<'_>, route: Route, query: &str, body: &[u8]) -> Response {
    let shared = ctx.shared;
    if let Route::GroupMembers { group, transitive } = &route {
        return groups::group_members(ctx, group, *transitive, query);
    }
    let key = match &route {
        Route::GetUser(u)
        | Route::ListMethods(u)
        | Route::GetMethod(u, _, _)
        | Route::ListCollection(u, _)
        | Route::DeleteMethod(u, _, _)
        | Route::DeleteQrCodePin(u)
        | Route::GetQrCodePin(u)
        | Route::CreateMethod(u, _)
        | Route::RevokeSessions(u)
        | Route::GetSignInPreferences(u)
        | Route::PatchSignInPreferences(u)
        | Route::DirectoryRoles(u) => u.clone(),
        Route::GroupMembers { .. } => String::new(),
    };
    let mut tenant = lock(&shared.tenant);
    let Some(index) = tenant.find(&key) else {
        return ctx.user_not_found(&key);
    };
    let user = &mut tenant.users[index];
    let now = Instant::now();
    let user_id = user_id_escaped(&user.id);
    let user_context = |suffix: &str| ctx.context(&format!("users('{user_id}'){suffix}"));
    match route {
        Route::GetUser(_) => json_response(
            StatusCode::OK,
            &json!({
                "@odata.context": ctx.context("users/$entity"),
                "id": user.id,
                "userPrincipalName": user.user_principal_name,
                "displayName": user.display_name,
            }),
        ),
        Route::ListMethods(_) => {
            let value: Vec<Value> = ctx
                .listed(user, now)
                .into_iter()
                .map(|m| Value::Object(m.0))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"@odata.context": user_context("/authentication/methods"), "value": value}),
            )
        }
        Route::ListCollection(_, c) => {
            let value: Vec<Value> = ctx
                .listed(user, now)
                .into_iter()
                .filter(|m| m.stem() == c.stem)
                .map(|m| Value::Object(m.0))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"@odata.context": user_context(&format!("/authentication/{}", c.segment)), "value": value}),
            )
        }
        Route::GetMethod(_, c, id) => {
            match ctx
                .listed(user, now)
                .into_iter()
                .find(|m| m.id().eq_ignore_ascii_case(&id) && c.is_none_or(|c| c.stem == m.stem()))
            {
                Some(m) => json_response(StatusCode::OK, &Value::Object(m.0)),
                None => ctx.method_not_found(c, &id),
            }
        }
        Route::GetQrCodePin(_) => {
            match user.methods.iter().find(|m| m.stem() == QR_CODE_PIN_STEM) {
                Some(m) => json_response(StatusCode::OK, &Value::Object(m.0.clone())),
                None => ctx.method_not_found(None, "qrCodePinMethod"),
            }
        }
        Route::DeleteMethod(_, c, id) => {
            if user.privileged {
                return ctx.forbidden();
            }
            let found = user
                .methods
                .iter()
                .position(|m| m.stem() == c.stem && m.id().eq_ignore_ascii_case(&id));
            match found {
                Some(i) => methods::delete_method(ctx, user, i, Some(c)),
                None => ctx.method_not_found(Some(c), &id),
            }
        }
        Route::DeleteQrCodePin(_) => {
            if user.privileged {
                return ctx.forbidden();
            }
            match user
                .methods
                .iter()
                .position(|m| m.stem() == QR_CODE_PIN_STEM)
            {
                Some(i) => methods::delete_method(ctx, user, i, None),
                None => ctx.method_not_found(None, "standardQRCode"),
            }
        }
        Route::CreateMethod(_, c) => {
            if user.privileged {
                return ctx.forbidden();
            }
            let input: Value = match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return ctx.bad_request("The request body must be a JSON object."),
            };
            let created = match c.stem {
                "phone" => methods::create_phone(user, &input),
                "email" => methods::create_email(user, &input),
                _ => methods::create_tap(user, &input),
            };
            match created {
                Ok(mut shown) => {
                    shown.insert(
                        "@odata.context".into(),
                        user_context(&format!("/authentication/{}/$entity", c.segment)),
                    );
                    json_response(StatusCode::CREATED, &Value::Object(shown))
                }
                Err(message) => ctx.bad_request(&message),
            }
        }
        Route::RevokeSessions(_) => {
            if user.privileged {
                return ctx.forbidden();
            }
            user.sessions_revoked += 1;
            shared.stats.update(|s| s.sessions_revoked += 1);
            json_response(
                StatusCode::OK,
                &json!({"@odata.context": ctx.context("Edm.Boolean"), "value": true}),
            )
        }
        Route::GetSignInPreferences(_) if shared.deny_sign_in_preferences => ctx.forbidden(),
        Route::GetSignInPreferences(_) => json_response(
            StatusCode::OK,
            &json!({
                "@odata.context": user_context("/authentication/signInPreferences"),
                "isSystemPreferredAuthenticationMethodEnabled": user.system_preferred_enabled,
                "userPreferredMethodForSecondaryAuthentication": user.preferred_method,
                "systemPreferredAuthenticationMethod": user.system_preferred_method(),
            }),
        ),
        Route::PatchSignInPreferences(_) => {
            if user.privileged {
                return ctx.forbidden();
            }
            let input: Map<String, Value> = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return ctx.bad_request("The request body must be a JSON object."),
            };
            if let Some(v) = input.get("userPreferredMethodForSecondaryAuthentication") {
                let Some(p) = v.as_str().filter(|p| PREFERENCES.contains(p)) else {
                    return ctx.bad_request(&format!(
                        "Invalid userPreferredMethodForSecondaryAuthentication {v}; expected one of {PREFERENCES:?}."
                    ));
                };
                if !user.methods.iter().any(|m| m.matches_preference(p)) {
                    return ctx.bad_request(&format!(
                        "The user has no registered method for preference '{p}'."
                    ));
                }
                user.preferred_method = Some(p.to_string());
            }
            if let Some(v) = input.get("isSystemPreferredAuthenticationMethodEnabled") {
                match v.as_bool() {
                    Some(b) => user.system_preferred_enabled = b,
                    None => {
                        return ctx.bad_request(
                            "isSystemPreferredAuthenticationMethodEnabled must be a boolean.",
                        )
                    }
                }
            }
            empty(StatusCode::NO_CONTENT)
        }
        Route::DirectoryRoles(_) => {
            let value: Vec<Value> = user
                .directory_roles
                .iter()
                .map(|role| {
                    json!({
                        "@odata.type": "#microsoft.graph.directoryRole",
                        "id": Uuid::new_v5(&Uuid::NAMESPACE_OID, role.as_bytes()).to_string(),
                        "displayName": role,
                        "roleTemplateId": Uuid::new_v5(&Uuid::NAMESPACE_URL, role.as_bytes()).to_string(),
                    })
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"@odata.context": ctx.context("directoryObjects(microsoft.graph.directoryRole)"), "value": value}),
            )
        }
        Route::GroupMembers { .. } => ctx.bad_request("unreachable"),
    }
}

fn user_id_escaped(id: &str) -> String {
    id.replace('\'', "''")
}
