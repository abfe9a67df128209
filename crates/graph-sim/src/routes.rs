//! Request handling: the pipeline every request goes through (stats → outage → bearer →
//! throttle → latency → faults → handler → headers), path parsing the way Graph reads
//! paths, and the Graph handlers. `/_sim` requests are passed to [`crate::inspect`].
//!
//! Paths are parsed from the raw (still percent-encoded) URI: split on `/` first, then each
//! segment is percent-decoded, so `%23EXT%23` and `%2F` inside a UPN reach the lookup intact.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method as HttpMethod, Request, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use percent_encoding::percent_decode_str;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::token_endpoint;
use crate::faults::Fault;
use crate::reply::{empty, graph_error, json_response, odata_error, RequestIds};
use crate::tenant::{
    email_method, graph_date, phone_id, phone_method, DeletedMethod, Method, User, PREFERENCES,
};
use crate::throttle::{lock, Admission};
use crate::Shared;

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

/// A method collection under `/users/{u}/authentication/`.
#[derive(Debug, Clone, Copy)]
struct Collection {
    segment: &'static str,
    stem: &'static str,
    beta_only: bool,
    /// WHfB and FIDO2 answer errors in the `odata.error` shape.
    odata_errors: bool,
}

const COLLECTIONS: [Collection; 11] = [
    Collection {
        segment: "phoneMethods",
        stem: "phone",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "emailMethods",
        stem: "email",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "microsoftAuthenticatorMethods",
        stem: "microsoftAuthenticator",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "fido2Methods",
        stem: "fido2",
        beta_only: false,
        odata_errors: true,
    },
    Collection {
        segment: "softwareOathMethods",
        stem: "softwareOath",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "temporaryAccessPassMethods",
        stem: "temporaryAccessPass",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "windowsHelloForBusinessMethods",
        stem: "windowsHelloForBusiness",
        beta_only: false,
        odata_errors: true,
    },
    Collection {
        segment: "platformCredentialMethods",
        stem: "platformCredential",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "externalAuthenticationMethods",
        stem: "external",
        beta_only: false,
        odata_errors: false,
    },
    Collection {
        segment: "hardwareOathMethods",
        stem: "hardwareOath",
        beta_only: true,
        odata_errors: false,
    },
    Collection {
        segment: "passwordMethods",
        stem: "password",
        beta_only: false,
        odata_errors: false,
    },
];

/// Which DELETE-able singleton: `qrCodePinMethod` (beta).
const QR_CODE_PIN_STEM: &str = "qrCodePin";

#[derive(Debug, Clone)]
enum Route {
    GetUser(String),
    ListMethods(String),
    GetMethod(String, Option<Collection>, String),
    ListCollection(String, Collection),
    DeleteMethod(String, Collection, String),
    DeleteQrCodePin(String),
    GetQrCodePin(String),
    CreateMethod(String, Collection),
    RevokeSessions(String),
    GetSignInPreferences(String),
    PatchSignInPreferences(String),
    DirectoryRoles(String),
    GroupMembers { group: String, transitive: bool },
}

/// A refusal decided while parsing the path.
#[derive(Debug, Clone)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn segment_not_found(segment: &str) -> Refusal {
    refusal(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
}

fn method_not_allowed() -> Refusal {
    refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        "Specified HTTP method is not allowed for the request target.",
    )
}

pub(crate) fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Parse `users/{u}` or `users('{u}')` at the front of `segments`: (user key, rest).
fn parse_user<'a>(segments: &'a [&'a str]) -> Result<Option<(String, &'a [&'a str])>, Refusal> {
    let Some(first) = segments.first() else {
        return Ok(None);
    };
    let first = decode(first);
    if first == "users" {
        let Some(raw) = segments.get(1) else {
            return Err(method_not_allowed());
        };
        let key = decode(raw);
        // Graph reads a leading `$` as a system query segment, not a key.
        if key.starts_with('$') {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                format!("Invalid object identifier '{key}'."),
            ));
        }
        return Ok(Some((key, &segments[2..])));
    }
    if let Some(inner) = first
        .strip_prefix("users('")
        .and_then(|s| s.strip_suffix("')"))
    {
        // OData string literal: a quote inside is doubled.
        return Ok(Some((inner.replace("''", "'"), &segments[1..])));
    }
    Ok(None)
}

/// Parse a Graph path (segments after the version) into a route and its stats template.
fn parse_graph(
    method: &HttpMethod,
    beta: bool,
    segments: &[&str],
) -> (String, Result<Route, Refusal>) {
    let version = if beta { "/beta" } else { "/v1.0" };
    let m = method.as_str();
    match parse_user(segments) {
        Err(r) => (format!("{m} {version}/users/{{user}}"), Err(r)),
        Ok(Some((user, rest))) => {
            let rest: Vec<String> = rest.iter().map(|s| decode(s)).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            let (template, route) = parse_user_route(method, beta, user, &rest);
            (format!("{m} {version}/users/{{user}}{template}"), route)
        }
        Ok(None) => {
            let decoded: Vec<String> = segments.iter().map(|s| decode(s)).collect();
            let d: Vec<&str> = decoded.iter().map(String::as_str).collect();
            match d.as_slice() {
                ["groups", id, kind @ ("members" | "transitiveMembers"), cast @ ..]
                    if cast.is_empty() || cast == ["microsoft.graph.user"] =>
                {
                    let template =
                        format!("{m} {version}/groups/{{id}}/{kind}/microsoft.graph.user");
                    let route = if method == HttpMethod::GET {
                        Ok(Route::GroupMembers {
                            group: id.to_string(),
                            transitive: *kind == "transitiveMembers",
                        })
                    } else {
                        Err(method_not_allowed())
                    };
                    (template, route)
                }
                [first, ..] => (
                    format!("{m} {version}/{first}"),
                    Err(segment_not_found(first)),
                ),
                [] => (format!("{m} {version}/"), Err(segment_not_found(""))),
            }
        }
    }
}

fn parse_user_route(
    method: &HttpMethod,
    beta: bool,
    user: String,
    rest: &[&str],
) -> (String, Result<Route, Refusal>) {
    let get = method == HttpMethod::GET;
    let delete = method == HttpMethod::DELETE;
    let post = method == HttpMethod::POST;
    let patch = method == HttpMethod::PATCH;
    let collection = |segment: &str| -> Result<Collection, Refusal> {
        COLLECTIONS
            .iter()
            .find(|c| c.segment == segment && (beta || !c.beta_only))
            .copied()
            .ok_or_else(|| segment_not_found(segment))
    };
    let allowed = |ok: bool, route: Route| {
        if ok {
            Ok(route)
        } else {
            Err(method_not_allowed())
        }
    };
    match rest {
        [] => (String::new(), allowed(get, Route::GetUser(user))),
        ["authentication", "methods"] => (
            "/authentication/methods".into(),
            allowed(get, Route::ListMethods(user)),
        ),
        // There is no generic DELETE of a method: only the typed collections delete.
        ["authentication", "methods", id] => (
            "/authentication/methods/{id}".into(),
            allowed(get, Route::GetMethod(user, None, id.to_string())),
        ),
        ["authentication", "signInPreferences"] => {
            let route = if !beta {
                Err(segment_not_found("signInPreferences"))
            } else if get {
                Ok(Route::GetSignInPreferences(user))
            } else if patch {
                Ok(Route::PatchSignInPreferences(user))
            } else {
                Err(method_not_allowed())
            };
            ("/authentication/signInPreferences".into(), route)
        }
        ["authentication", "qrCodePinMethod", tail @ ..] => {
            let template = format!(
                "/authentication/qrCodePinMethod{}",
                tail.iter().map(|t| format!("/{t}")).collect::<String>()
            );
            let route = if !beta {
                Err(segment_not_found("qrCodePinMethod"))
            } else {
                match tail {
                    [] if get => Ok(Route::GetQrCodePin(user)),
                    [] | ["standardQRCode"] if delete => Ok(Route::DeleteQrCodePin(user)),
                    [] | ["standardQRCode"] => Err(method_not_allowed()),
                    [other, ..] => Err(segment_not_found(other)),
                }
            };
            (template, route)
        }
        ["authentication", segment] => {
            let template = format!("/authentication/{segment}");
            let route = collection(segment).and_then(|c| {
                if get {
                    Ok(Route::ListCollection(user, c))
                } else if post && matches!(c.stem, "phone" | "email" | "temporaryAccessPass") {
                    Ok(Route::CreateMethod(user, c))
                } else {
                    Err(method_not_allowed())
                }
            });
            (template, route)
        }
        ["authentication", segment, id] => {
            let template = format!("/authentication/{segment}/{{id}}");
            let route = collection(segment).and_then(|c| {
                if get {
                    Ok(Route::GetMethod(user, Some(c), id.to_string()))
                } else if delete && c.stem == "password" {
                    Err(refusal(
                        StatusCode::BAD_REQUEST,
                        "badRequest",
                        "The password method cannot be deleted. Reset the password instead.",
                    ))
                } else if delete && c.stem == "external" {
                    // External methods are references: they are removed through `/$ref`.
                    Err(method_not_allowed())
                } else if delete {
                    Ok(Route::DeleteMethod(user, c, id.to_string()))
                } else {
                    Err(method_not_allowed())
                }
            });
            (template, route)
        }
        ["authentication", "externalAuthenticationMethods", id, "$ref"] => (
            "/authentication/externalAuthenticationMethods/{id}/$ref".into(),
            collection("externalAuthenticationMethods")
                .and_then(|c| allowed(delete, Route::DeleteMethod(user, c, id.to_string()))),
        ),
        ["revokeSignInSessions"] => (
            "/revokeSignInSessions".into(),
            allowed(post, Route::RevokeSessions(user)),
        ),
        [kind @ ("transitiveMemberOf" | "memberOf"), "microsoft.graph.directoryRole"] => (
            format!("/{kind}/microsoft.graph.directoryRole"),
            allowed(get, Route::DirectoryRoles(user)),
        ),
        [first, ..] => (format!("/{first}"), Err(segment_not_found(first))),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn drop_connection(kill: CancellationToken) -> Response {
    kill.cancel();
    // The connection task drops this future together with the connection.
    std::future::pending::<Response>().await
}

/// Handle one HTTP request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    kill: CancellationToken,
    request: Request<hyper::body::Incoming>,
) -> Response {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let host = header_text(&parts.headers, "host").unwrap_or_else(|| shared.addr.to_string());
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let body = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return empty(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["_sim", rest @ ..] => crate::inspect::inspect(&shared, &parts.method, rest, &body),
        [tenant, "oauth2", "v2.0", "token"] if parts.method == HttpMethod::POST => {
            shared.stats.arrived(arrived);
            let template = "POST /{tenant}/oauth2/v2.0/token";
            if let Some(fault) = shared.faults.outage() {
                return fail(&shared, kill, template, fault, &RequestIds::new(None)).await;
            }
            let tenant = decode(tenant);
            let (response, issued) =
                token_endpoint(&shared.policy, &shared.tokens, &tenant, &host, &body);
            if issued {
                shared.stats.update(|s| s.tokens_issued += 1);
            }
            shared.stats.answered(template, response.status().as_str());
            response
        }
        [version @ ("v1.0" | "beta"), rest @ ..] => {
            let beta = *version == "beta";
            graph(
                &shared,
                kill,
                &parts.method,
                &parts.headers,
                beta,
                rest,
                &query,
                &host,
                &body,
                arrived,
            )
            .await
        }
        _ => empty(StatusCode::NOT_FOUND),
    }
}

/// Fail a request on purpose: drop its connection or answer a server error.
async fn fail(
    shared: &Shared,
    kill: CancellationToken,
    template: &str,
    fault: Fault,
    ids: &RequestIds,
) -> Response {
    shared.stats.update(|s| s.faults_injected += 1);
    match fault {
        Fault::Drop | Fault::None => {
            shared.stats.update(|s| s.dropped_connections += 1);
            shared.stats.answered(template, "dropped");
            drop_connection(kill).await
        }
        Fault::Status(status, retry_after) => {
            let (code, message) = match status {
                502 => ("BadGateway", "Bad gateway."),
                503 => ("serviceNotAvailable", "Service unavailable."),
                504 => ("GatewayTimeout", "Gateway timeout."),
                _ => ("generalException", "An unexpected error occurred."),
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = graph_error(status, code, message, ids);
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            shared.stats.answered(template, response.status().as_str());
            response
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn graph(
    shared: &Shared,
    kill: CancellationToken,
    method: &HttpMethod,
    headers: &HeaderMap,
    beta: bool,
    segments: &[&str],
    query: &str,
    host: &str,
    body: &[u8],
    arrived: Instant,
) -> Response {
    shared.stats.graph_arrived(arrived);
    let ids = RequestIds::new(header_text(headers, "client-request-id"));
    let (template, route) = parse_graph(method, beta, segments);
    if let Some(fault) = shared.faults.outage() {
        return fail(shared, kill, &template, fault, &ids).await;
    }
    let app = match shared
        .tokens
        .check(header_text(headers, "authorization").as_deref())
    {
        Ok(app) => app,
        Err(e) => {
            let response = graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                e.message(),
                &ids,
            );
            return finish(shared, &template, response, &ids, None);
        }
    };
    let is_write = matches!(
        *method,
        HttpMethod::DELETE | HttpMethod::POST | HttpMethod::PATCH
    );
    // Buckets are checked on arrival, before any latency: a 429 is answered at once.
    let limit_percentage = match shared.throttle.admit(&app, is_write, arrived) {
        Admission::Allowed {
            limit_percentage,
            violation,
        } => {
            if violation {
                shared.stats.update(|s| s.violations += 1);
            }
            limit_percentage
        }
        Admission::Throttled {
            retry_after_secs,
            information,
            violation,
        } => {
            shared.stats.throttled(arrived);
            shared
                .stats
                .update(|s| s.violations += u64::from(violation));
            let response = too_many_requests(shared, &ids, retry_after_secs, information, &app);
            return finish(shared, &template, response, &ids, Some(100));
        }
    };
    if is_write {
        shared.stats.update(|s| s.writes += 1);
    }
    let latency = shared.faults.latency();
    if latency > Duration::ZERO {
        tokio::time::sleep(latency).await;
    }
    match shared.faults.roll() {
        Fault::None => {}
        fault => return fail(shared, kill, &template, fault, &ids).await,
    }
    let response = match route {
        Err(r) => graph_error(r.status, r.code, &r.message, &ids),
        Ok(route) => {
            let ctx = Ctx {
                shared,
                ids: &ids,
                beta,
                host,
                app: &app,
            };
            execute(&ctx, route, query, body)
        }
    };
    finish(shared, &template, response, &ids, limit_percentage)
}

/// Add the headers every Graph response carries and count the answer.
fn finish(
    shared: &Shared,
    template: &str,
    mut response: Response,
    ids: &RequestIds,
    limit_percentage: Option<u32>,
) -> Response {
    let h = response.headers_mut();
    h.insert("x-ms-resource-unit", HeaderValue::from_static("1"));
    if let Some(p) = limit_percentage {
        h.insert("x-ms-throttle-limit-percentage", HeaderValue::from(p));
    }
    if let Ok(v) = HeaderValue::from_str(&ids.request_id) {
        h.insert("request-id", v);
    }
    if let Some(v) = ids
        .client_request_id
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert("client-request-id", v);
    }
    shared.stats.answered(template, response.status().as_str());
    response
}

fn retry_after_value(shared: &Shared, secs: u64) -> HeaderValue {
    if shared.throttle.settings().retry_after_http_date {
        // An HTTP date has whole-second resolution: round up so the wait is never shorter.
        let at = SystemTime::now() + Duration::from_secs(secs + 1);
        HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from(secs))
    } else {
        HeaderValue::from(secs)
    }
}

fn too_many_requests(
    shared: &Shared,
    ids: &RequestIds,
    secs: u64,
    information: &str,
    app: &str,
) -> Response {
    let mut response = graph_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Too many requests",
        ids,
    );
    let h = response.headers_mut();
    h.insert(header::RETRY_AFTER, retry_after_value(shared, secs));
    let (tenant, client) = app.split_once('/').unwrap_or((app, ""));
    if let Ok(v) = HeaderValue::from_str(&format!("Application_Tenant/Identity/{tenant}/{client}"))
    {
        h.insert("x-ms-throttle-scope", v);
    }
    if let Ok(v) = HeaderValue::from_str(information) {
        h.insert("x-ms-throttle-information", v);
    }
    response
}

struct Ctx<'a> {
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
        return group_members(ctx, group, *transitive, query);
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
                Some(i) => delete_method(ctx, user, i, Some(c)),
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
                Some(i) => delete_method(ctx, user, i, None),
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
                "phone" => create_phone(user, &input),
                "email" => create_email(user, &input),
                _ => create_tap(user, &input),
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

/// Apply a DELETE of `user.methods[i]` after Graph's refusals; may answer as a ghost.
fn delete_method(ctx: &Ctx<'_>, user: &mut User, i: usize, c: Option<Collection>) -> Response {
    let target = user.methods[i].clone();
    // A user can't have an alternateMobile without a mobile (Graph docs): refused, not cascaded.
    if target.phone_type() == "mobile"
        && user
            .methods
            .iter()
            .any(|m| m.phone_type() == "alternateMobile")
    {
        return ctx.bad_request("A user can't have an alternateMobile number without a mobile number. Delete the alternateMobile number first, or update the mobile number instead.");
    }
    if let Some(preferred) = user.preferred_method.clone() {
        if target.matches_preference(&preferred) {
            // Other methods serving the same preference keep the default alive, so they do not block.
            let blocking = user
                .methods
                .iter()
                .filter(|m| !m.is_password() && !m.matches_preference(&preferred))
                .count();
            if blocking > 0 {
                let message = "Cannot delete default method with other methods configured. Please change default method before deletion.";
                return match c {
                    Some(c) if c.odata_errors => {
                        odata_error(StatusCode::BAD_REQUEST, "invalid_request", message)
                    }
                    _ => ctx.bad_request(message),
                };
            }
        }
    }
    let method = user.methods.remove(i);
    user.deleted.push(DeletedMethod {
        method,
        deleted_at: Utc::now(),
        listed_until: Instant::now() + ctx.shared.consistency_delay,
    });
    if let Some(preferred) = user.preferred_method.as_deref() {
        if !user.methods.iter().any(|m| m.matches_preference(preferred)) {
            user.preferred_method = None;
        }
    }
    let stats = &ctx.shared.stats;
    stats.update(|s| s.methods_deleted += 1);
    match ctx.shared.faults.roll_ghost() {
        Some(429) => {
            stats.update(|s| s.ghost_successes += 1);
            ctx.shared.throttle.record_429(ctx.app, Instant::now(), 1);
            too_many_requests(ctx.shared, ctx.ids, 1, "ResourceUnitLimitExceeded", ctx.app)
        }
        Some(_) => {
            stats.update(|s| s.ghost_successes += 1);
            ctx.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "Service unavailable.",
            )
        }
        None => empty(StatusCode::NO_CONTENT),
    }
}

fn text_field<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn create_phone(user: &mut User, input: &Value) -> Result<Map<String, Value>, String> {
    let number = text_field(input, "phoneNumber").unwrap_or("");
    let phone_type = text_field(input, "phoneType").unwrap_or("");
    if phone_id(phone_type).is_none() {
        return Err(format!(
            "Invalid phoneType '{phone_type}'; expected mobile, alternateMobile or office."
        ));
    }
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if !number.starts_with('+') || !(7..=20).contains(&digits) {
        return Err(format!(
            "Invalid phone number '{number}'; use the form +1 5555551234."
        ));
    }
    if user.methods.iter().any(|m| m.phone_type() == phone_type) {
        return Err(format!(
            "The user already has a phone method of type {phone_type}."
        ));
    }
    if phone_type == "alternateMobile" && !user.methods.iter().any(|m| m.phone_type() == "mobile") {
        return Err("A user can't have an alternateMobile number without a mobile number.".into());
    }
    let method = phone_method(phone_type, number);
    if user.preferred_method.is_none() && phone_type == "mobile" {
        user.preferred_method = Some("sms".into());
    }
    user.methods.push(method.clone());
    Ok(method.0)
}

fn create_email(user: &mut User, input: &Value) -> Result<Map<String, Value>, String> {
    let address = text_field(input, "emailAddress").unwrap_or("");
    if !address.contains('@') {
        return Err(format!("Invalid emailAddress '{address}'."));
    }
    if user.methods.iter().any(|m| m.stem() == "email") {
        return Err("The user already has an email method.".into());
    }
    let method = email_method(address);
    user.methods.push(method.clone());
    Ok(method.0)
}

fn create_tap(user: &mut User, input: &Value) -> Result<Map<String, Value>, String> {
    let lifetime = match input.get("lifetimeInMinutes") {
        None => 60,
        Some(v) => v
            .as_u64()
            .filter(|m| (10..=43_200).contains(m))
            .ok_or_else(|| format!("lifetimeInMinutes {v} is out of range 10..43200."))?,
    };
    let usable_once = input
        .get("isUsableOnce")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let now = Utc::now();
    let start = match text_field(input, "startDateTime") {
        None => now,
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| format!("startDateTime '{s}' is not an ISO 8601 date-time."))?
            .with_timezone(&Utc),
    };
    let pass: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    let id = Uuid::new_v4().to_string();
    let usable = start <= now;
    let stored = json!({
        "@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethod",
        "id": id,
        "temporaryAccessPass": null,
        "createdDateTime": graph_date(now),
        "startDateTime": graph_date(start),
        "lifetimeInMinutes": lifetime,
        "isUsableOnce": usable_once,
        "isUsable": usable,
        "methodUsabilityReason": if usable { "EnabledByPolicy" } else { "NotYetValid" },
    });
    let Value::Object(stored) = stored else {
        return Err("internal error".into());
    };
    // One TAP per user: a new one replaces the old.
    user.methods.retain(|m| m.stem() != "temporaryAccessPass");
    user.methods.push(Method(stored.clone()));
    let mut shown = stored;
    shown.insert("temporaryAccessPass".into(), Value::String(pass));
    Ok(shown)
}

/// Query options, keys and values percent-decoded (`%24top` is `$top`).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn group_members(ctx: &Ctx<'_>, group: &str, transitive: bool, query: &str) -> Response {
    let pairs = query_pairs(query);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let top = match get("$top") {
        None => 100,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=999).contains(&n) => n,
            _ => {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    "Invalid page size specified: must be between 1 and 999 inclusive.",
                )
            }
        },
    };
    let offset = match get("$skiptoken") {
        None => 0,
        Some(t) => match URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.strip_prefix("offset:")
                    .and_then(|n| n.parse::<usize>().ok())
            }) {
            Some(n) => n,
            None => return ctx.bad_request("Invalid $skiptoken."),
        },
    };
    let select: Option<Vec<String>> =
        get("$select").map(|s| s.split(',').map(|f| f.trim().to_string()).collect());
    let tenant = lock(&ctx.shared.tenant);
    let Some(members) = tenant.group_users(group, transitive) else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{group}' does not exist or one of its queried reference-property objects are not present."),
        );
    };
    let page: Vec<Value> = members
        .iter()
        .skip(offset)
        .take(top)
        .map(|&i| {
            let u = &tenant.users[i];
            let full = [
                ("id", &u.id),
                ("userPrincipalName", &u.user_principal_name),
                ("displayName", &u.display_name),
            ];
            let mut item = Map::new();
            for (k, v) in full {
                if select.as_ref().is_none_or(|s| s.iter().any(|f| f == k)) {
                    item.insert(k.into(), Value::String(v.clone()));
                }
            }
            Value::Object(item)
        })
        .collect();
    let kind = if transitive {
        "transitiveMembers"
    } else {
        "members"
    };
    let mut body = Map::new();
    body.insert("@odata.context".into(), ctx.context("users"));
    if offset + top < members.len() {
        let mut params: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "$skiptoken")
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect();
        let token = URL_SAFE_NO_PAD.encode(format!("offset:{}", offset + top));
        params.push(format!("$skiptoken={token}"));
        body.insert(
            "@odata.nextLink".into(),
            Value::String(format!(
                "http://{}/{}/groups/{}/{kind}/microsoft.graph.user?{}",
                ctx.host,
                ctx.version(),
                group,
                params.join("&")
            )),
        );
    }
    body.insert("value".into(), Value::Array(page));
    json_response(StatusCode::OK, &Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_graph() {
        let (t, r) = parse_graph(
            &HttpMethod::DELETE,
            false,
            &[
                "users",
                "a%40b.com",
                "authentication",
                "externalAuthenticationMethods",
                "x",
                "$ref",
            ],
        );
        assert_eq!(
            t,
            "DELETE /v1.0/users/{user}/authentication/externalAuthenticationMethods/{id}/$ref"
        );
        assert!(
            matches!(r, Ok(Route::DeleteMethod(u, c, id)) if u == "a@b.com" && c.stem == "external" && id == "x")
        );
        let (_, r) = parse_graph(
            &HttpMethod::GET,
            false,
            &["users('o''neil%40x.com')", "authentication", "methods"],
        );
        assert!(matches!(r, Ok(Route::ListMethods(u)) if u == "o'neil@x.com"));
        let (_, r) = parse_graph(
            &HttpMethod::DELETE,
            false,
            &["users", "u", "authentication", "hardwareOathMethods", "x"],
        );
        assert!(matches!(
            r,
            Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                ..
            })
        ));
        let (_, r) = parse_graph(
            &HttpMethod::DELETE,
            false,
            &["users", "u", "authentication", "methods", "x"],
        );
        assert!(matches!(
            r,
            Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                ..
            })
        ));
    }
}
