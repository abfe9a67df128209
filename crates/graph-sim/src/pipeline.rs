//! The stages every Graph request goes through, as axum middleware, in this order (see
//! [`crate::router`]):
//!
//! 1. [`graph_request`]: count the arrival, parse the path ([`crate::graph::paths`]); on the way
//!    back, add the headers every Graph answer carries and count the answer.
//! 2. [`outage`]: during an injected outage, fail (drop the connection or answer 503).
//! 3. [`authenticate`]: the bearer token, else 401 `InvalidAuthenticationToken`.
//! 4. [`throttle`]: the app's buckets, checked on arrival and before any latency: 429 at once.
//! 5. [`faults`]: added latency, then an injected server error or a dropped connection.
//!
//! The token endpoint goes through [`token_request`] and [`outage`] only.
//!
//! A stage that fails a request on purpose answers with a response marked [`Injected`] (no
//! Graph headers are added to it); one that drops the connection marks it [`DropConnection`]
//! too, and the connection's service (in [`crate::server`]) closes the socket instead of
//! writing it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method as HttpMethod, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::faults::Fault;
use crate::graph::paths::{parse_graph, Refusal, Route};
use crate::reply::{empty, graph_error, RequestIds};
use crate::throttle::Admission;
use crate::Shared;

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

/// Stats template of the token endpoint.
pub(crate) const TOKEN_TEMPLATE: &str = "POST /{tenant}/oauth2/v2.0/token";

/// What the first stage learnt about a Graph request, for the stages after it.
#[derive(Debug, Clone)]
pub(crate) struct GraphRequest {
    /// When it arrived: the throttle judges it at this instant.
    pub(crate) arrived: Instant,
    /// `request-id` and the caller's `client-request-id`.
    pub(crate) ids: RequestIds,
    /// What the path asks for, or Graph's refusal of it (answered by the handler, after
    /// the other stages, as Graph does).
    pub(crate) route: Result<Route, Refusal>,
    /// Under `/beta`.
    pub(crate) beta: bool,
    /// The `Host` the client addressed, for `@odata.context` and next links.
    pub(crate) host: String,
}

/// The app (tenant/client) whose token authenticated the request.
#[derive(Debug, Clone)]
pub(crate) struct App(pub(crate) String);

/// On a response: `x-ms-throttle-limit-percentage` to send (usage of the fuller bucket).
#[derive(Debug, Clone, Copy)]
struct LimitPercentage(Option<u32>);

/// On a response: a failure injected on purpose, sent without Graph's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Injected;

/// On a response: close the connection instead of writing this response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The whole body read (at most [`MAX_BODY`]), so later stages and handlers see it at once.
async fn buffered(request: Request) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Err(_) => Err(empty(StatusCode::PAYLOAD_TOO_LARGE)),
    }
}

/// The stats label of an answer: its status, or `dropped`.
fn answer_label(response: &Response) -> String {
    if response.extensions().get::<DropConnection>().is_some() {
        "dropped".to_string()
    } else {
        response.status().as_str().to_string()
    }
}

/// Stage 1 of a Graph request: arrival, parsing; on the way back, headers and counting.
pub(crate) async fn graph_request(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let arrived = Instant::now();
    let mut request = match buffered(request).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    shared.stats.graph_arrived(arrived);
    let headers = request.headers();
    let ids = RequestIds::new(header_text(headers, "client-request-id"));
    let host = header_text(headers, "host").unwrap_or_else(|| shared.addr.to_string());
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (beta, rest) = match segments.as_slice() {
        [version, rest @ ..] => (*version == "beta", rest),
        [] => (false, &[][..]),
    };
    let (template, route) = parse_graph(request.method(), beta, rest);
    request.extensions_mut().insert(GraphRequest {
        arrived,
        ids: ids.clone(),
        route,
        beta,
        host,
    });

    let mut response = next.run(request).await;

    if response.extensions().get::<Injected>().is_none() {
        let limit = response
            .extensions()
            .get::<LimitPercentage>()
            .and_then(|l| l.0);
        add_graph_headers(&mut response, &ids, limit);
    }
    shared.stats.answered(&template, &answer_label(&response));
    response
}

/// The headers every Graph answer carries.
fn add_graph_headers(response: &mut Response, ids: &RequestIds, limit_percentage: Option<u32>) {
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
}

/// Stage 1 of a token request: arrival; on the way back, counting.
pub(crate) async fn token_request(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let arrived = Instant::now();
    let request = match buffered(request).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    shared.stats.arrived(arrived);
    let response = next.run(request).await;
    shared
        .stats
        .answered(TOKEN_TEMPLATE, &answer_label(&response));
    response
}

/// Stage 2: during an injected outage every Graph and token request fails.
pub(crate) async fn outage(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    match shared.faults.outage() {
        Some(fault) => {
            // A token request has no client-request-id to echo.
            let ids = request
                .extensions()
                .get::<GraphRequest>()
                .map_or_else(|| RequestIds::new(None), |g| g.ids.clone());
            fail(&shared, fault, &ids)
        }
        None => next.run(request).await,
    }
}

/// Stage 3: the bearer token names the app, or the request is refused with 401.
pub(crate) async fn authenticate(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = header_text(request.headers(), "authorization");
    match shared.tokens.check(authorization.as_deref()) {
        Ok(app) => {
            request.extensions_mut().insert(App(app));
            next.run(request).await
        }
        Err(e) => {
            let ids = graph_ids(&request);
            graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                e.message(),
                &ids,
            )
        }
    }
}

/// Stage 4: the app's buckets admit (and charge) the request, or refuse it with 429 at once.
pub(crate) async fn throttle(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let (Some(graph), Some(App(app))) = (
        request.extensions().get::<GraphRequest>(),
        request.extensions().get::<App>(),
    ) else {
        return stage_out_of_order("throttle");
    };
    let is_write = matches!(
        *request.method(),
        HttpMethod::DELETE | HttpMethod::POST | HttpMethod::PATCH
    );
    match shared.throttle.admit(app, is_write, graph.arrived) {
        Admission::Throttled {
            retry_after_secs,
            information,
            violation,
        } => {
            shared.stats.throttled(graph.arrived);
            shared
                .stats
                .update(|s| s.violations += u64::from(violation));
            let mut response =
                too_many_requests(&shared, &graph.ids, retry_after_secs, information, app);
            response.extensions_mut().insert(LimitPercentage(Some(100)));
            response
        }
        Admission::Allowed {
            limit_percentage,
            violation,
        } => {
            if violation {
                shared.stats.update(|s| s.violations += 1);
            }
            if is_write {
                shared.stats.update(|s| s.writes += 1);
            }
            let mut response = next.run(request).await;
            response
                .extensions_mut()
                .insert(LimitPercentage(limit_percentage));
            response
        }
    }
}

/// Stage 5: added latency, then maybe an injected server error or a dropped connection.
pub(crate) async fn faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let latency = shared.faults.latency();
    if latency > Duration::ZERO {
        tokio::time::sleep(latency).await;
    }
    match shared.faults.roll() {
        Fault::None => next.run(request).await,
        fault => fail(&shared, fault, &graph_ids(&request)),
    }
}

fn graph_ids(request: &Request) -> RequestIds {
    request
        .extensions()
        .get::<GraphRequest>()
        .map_or_else(|| RequestIds::new(None), |g| g.ids.clone())
}

/// A stage that needs an earlier one's result ran without it: a bug in [`crate::router`].
fn stage_out_of_order(stage: &str) -> Response {
    tracing::error!(
        stage,
        "graph-sim pipeline stage ran before the stages it needs"
    );
    empty(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Fail a request on purpose: drop its connection or answer a server error.
fn fail(shared: &Shared, fault: Fault, ids: &RequestIds) -> Response {
    shared.stats.update(|s| s.faults_injected += 1);
    let mut response = match fault {
        Fault::Drop | Fault::None => {
            shared.stats.update(|s| s.dropped_connections += 1);
            let mut response = empty(StatusCode::INTERNAL_SERVER_ERROR);
            response.extensions_mut().insert(DropConnection);
            response
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
            response
        }
    };
    response.extensions_mut().insert(Injected);
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

/// A 429 as Graph sends it: Retry-After and the throttle scope and reason.
pub(crate) fn too_many_requests(
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
