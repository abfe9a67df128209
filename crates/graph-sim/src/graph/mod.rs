//! The Graph handler, last stage of the pipeline (see [`crate::pipeline`]): it carries out
//! the route the first stage parsed, on the tenant, as the app's permissions allow
//! ([`crate::auth::AppState`]): a token issued without admin consent is refused everywhere.
//!
//! - [`paths`]: Graph's path grammar, routes and stats templates.
//! - [`query`]: OData query options and the advanced-query parameters.
//! - [`methods`]: deleting and creating methods, with Graph's refusals and ghost answers.
//! - [`groups`]: group members (users, groups, devices, service principals, contacts), paged.
//! - [`roles`]: the role-management API (active assignments, eligibility instances).

mod groups;
mod methods;
pub(crate) mod paths;
mod query;
mod roles;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::AppState;
use crate::pipeline::{App, GraphRequest};
use crate::reply::{empty, graph_error, json_response, odata_error, RequestIds};
use crate::tenant::{Method, User, PREFERENCES};
use crate::throttle::lock;
use crate::Shared;
use paths::{Collection, QrCode, Route, QR_CODE_PIN_STEM};
use query::Query;

/// Answer a Graph request that went through every stage of the pipeline.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(request): Extension<GraphRequest>,
    Extension(App(app)): Extension<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let permissions = lock(&shared.app).clone();
    let ctx = Ctx {
        shared: &shared,
        ids: &request.ids,
        beta: request.beta,
        host: &request.host,
        app: &app,
        permissions: &permissions,
    };
    // A token issued without admin consent carries no roles: Graph refuses whatever it is
    // used for, as it refuses an app without the permission a call needs.
    if !shared.tokens.has_roles(authorization) {
        return ctx.forbidden();
    }
    match request.route {
        Err(r) => graph_error(r.status, r.code, &r.message, &request.ids),
        Ok(route) => {
            let query = Query::parse(query.as_deref().unwrap_or(""), &headers);
            execute(&ctx, route, &query, &body)
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
    /// The app's permissions when the request arrived.
    permissions: &'a AppState,
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

    /// A query that needs the advanced query parameters, sent without them.
    fn needs_advanced_query(&self, what: &str) -> Response {
        self.error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            &format!("{what} is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information"),
        )
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

fn execute(ctx: &Ctx<'_>, route: Route, query: &Query, body: &[u8]) -> Response {
    let shared = ctx.shared;
    match &route {
        Route::GroupMembers {
            group,
            transitive,
            cast,
        } => return groups::group_members(ctx, group, *transitive, cast.as_deref(), query),
        Route::TransitiveRoleAssignments => return roles::transitive_assignments(ctx, query),
        Route::RoleEligibilityInstances => return roles::eligibility_instances(ctx, query),
        _ => {}
    }
    let key = route.user().unwrap_or_default().to_string();
    let mut tenant = lock(&shared.tenant);
    let Some(index) = tenant.find(&key) else {
        return ctx.user_not_found(&key);
    };
    if let Route::DirectoryRoles { transitive, .. } = route {
        return directory_roles(ctx, &tenant, index, transitive, query);
    }
    let user = &mut tenant.users[index];
    let now = Instant::now();
    let user_id = user_id_escaped(&user.id);
    let user_context = |suffix: &str| ctx.context(&format!("users('{user_id}'){suffix}"));
    match route {
        Route::GetUser(_) => get_user(ctx, user, query),
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
            // The whole method: both QR codes and the PIN.
            match user
                .methods
                .iter()
                .position(|m| m.stem() == QR_CODE_PIN_STEM)
            {
                Some(i) => methods::delete_method(ctx, user, i, None),
                None => ctx.method_not_found(None, "qrCodePinMethod"),
            }
        }
        Route::GetQrCode(_, which) => match methods::qr_code(user, which) {
            Some(code) => json_response(StatusCode::OK, &code),
            None => ctx.method_not_found(None, qr_segment(which)),
        },
        Route::DeleteQrCode(_, which) => {
            if user.privileged {
                return ctx.forbidden();
            }
            // That code only: the method, its other code and its PIN stay registered.
            if methods::delete_qr_code(user, which) {
                empty(StatusCode::NO_CONTENT)
            } else {
                ctx.method_not_found(None, qr_segment(which))
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
                _ => {
                    let mut taps = lock(&shared.taps);
                    methods::create_tap(user, &input, &taps.policy).map(|(shown, pass)| {
                        taps.issued.insert(user.id.clone(), pass);
                        shown
                    })
                }
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
            user.revoke_requests += 1;
            // Graph answers true for everyone, but an external user signs in through their
            // home tenant: nothing here is revoked.
            if !user.is_external() {
                user.sessions_revoked += 1;
                shared.stats.update(|s| s.sessions_revoked += 1);
            }
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
        Route::DirectoryRoles { .. }
        | Route::GroupMembers { .. }
        | Route::TransitiveRoleAssignments
        | Route::RoleEligibilityInstances => ctx.bad_request("unreachable"),
    }
}

fn qr_segment(which: QrCode) -> &'static str {
    match which {
        QrCode::Standard => "standardQRCode",
        QrCode::Temporary => "temporaryQRCode",
    }
}

/// Properties of a user this simulator can show, and their values.
fn user_properties(user: &User) -> [(&'static str, Value); 6] {
    [
        ("id", Value::String(user.id.clone())),
        ("displayName", Value::String(user.display_name.clone())),
        (
            "userPrincipalName",
            Value::String(user.user_principal_name.clone()),
        ),
        ("userType", Value::String(user.user_type.clone())),
        ("mail", Value::Null),
        ("accountEnabled", Value::Bool(true)),
    ]
}

/// `GET /users/{u}`: Graph's default properties, or those `$select` names. Needs
/// `User.Read.All`.
fn get_user(ctx: &Ctx<'_>, user: &User, query: &Query) -> Response {
    if !ctx.permissions.user_read {
        return ctx.forbidden();
    }
    let properties = user_properties(user);
    let mut body = Map::new();
    body.insert("@odata.context".into(), ctx.context("users/$entity"));
    match query.select() {
        None => {
            for (k, v) in properties {
                if matches!(k, "id" | "displayName" | "userPrincipalName" | "mail") {
                    body.insert(k.into(), v);
                }
            }
        }
        Some(fields) => {
            for field in &fields {
                match properties.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)) {
                    Some((k, v)) => {
                        body.insert((*k).into(), v.clone());
                    }
                    None => {
                        return ctx.error(
                            StatusCode::BAD_REQUEST,
                            "Request_BadRequest",
                            &format!("Could not find a property named '{field}' on type 'microsoft.graph.user'."),
                        )
                    }
                }
            }
        }
    }
    json_response(StatusCode::OK, &Value::Object(body))
}

/// `…/{transitiveMemberOf|memberOf}/microsoft.graph.directoryRole`: the directory roles the
/// user holds actively (through groups too, for `transitiveMemberOf`; PIM-eligible roles are
/// not members until activated). A cast on a transitive list is an advanced query. An app that
/// may not read directory roles gets them with only `@odata.type` and `id`.
fn directory_roles(
    ctx: &Ctx<'_>,
    tenant: &crate::tenant::Tenant,
    index: usize,
    transitive: bool,
    query: &Query,
) -> Response {
    if transitive && !query.advanced() {
        return ctx.needs_advanced_query(
            "The OData cast 'microsoft.graph.directoryRole' on transitiveMemberOf",
        );
    }
    let names = if transitive {
        tenant.active_role_names(index)
    } else {
        tenant.users[index].directory_roles.clone()
    };
    let readable = ctx.permissions.role_management_read;
    let value: Vec<Value> = names
        .iter()
        .map(|role| {
            let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, role.as_bytes()).to_string();
            if readable {
                json!({
                    "@odata.type": "#microsoft.graph.directoryRole",
                    "id": id,
                    "displayName": role,
                    "description": format!("{role} role"),
                    "roleTemplateId": crate::tenant::roles::role_definition_id(role),
                })
            } else {
                // Limited information: the app may not read this object.
                json!({
                    "@odata.type": "#microsoft.graph.directoryRole",
                    "id": id,
                    "displayName": null,
                    "description": null,
                    "roleTemplateId": null,
                })
            }
        })
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        ctx.context("directoryObjects(microsoft.graph.directoryRole)"),
    );
    if query.wants_count() {
        body.insert("@odata.count".into(), json!(value.len()));
    }
    body.insert("value".into(), Value::Array(value));
    json_response(StatusCode::OK, &Value::Object(body))
}

fn user_id_escaped(id: &str) -> String {
    id.replace('\'', "''")
}
