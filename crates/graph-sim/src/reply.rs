//! Response builders in the three error shapes a Graph client meets: Graph's
//! `{"error":{"code","message","innerError"}}`, the older directory shape
//! `{"odata.error":{"code","message":{"value"}}}` (WHfB / FIDO2), and the token endpoint's
//! `{"error","error_description","error_codes",…}`.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

/// Per-request ids echoed in error bodies.
#[derive(Debug, Clone)]
pub struct RequestIds {
    /// `request-id`, fresh per request.
    pub request_id: String,
    /// The caller's `client-request-id` header, echoed back.
    pub client_request_id: Option<String>,
}

impl RequestIds {
    /// New ids, echoing `client_request_id` when the client sent one.
    pub fn new(client_request_id: Option<String>) -> RequestIds {
        RequestIds {
            request_id: Uuid::new_v4().to_string(),
            client_request_id,
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"),
    );
    response
}

/// An empty response (204).
pub fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Graph's usual error shape.
pub fn graph_error(status: StatusCode, code: &str, message: &str, ids: &RequestIds) -> Response {
    let client_request_id = ids
        .client_request_id
        .clone()
        .unwrap_or_else(|| ids.request_id.clone());
    json_response(
        status,
        &json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": ids.request_id,
                "client-request-id": client_request_id,
            }
        }}),
    )
}

/// The older directory error shape, seen from the WHfB and FIDO2 collections.
pub fn odata_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"odata.error": {"code": code, "message": {"lang": "en", "value": message}}}),
    )
}

/// The token endpoint's error shape, with `status` (400 for most refusals, 401 for
/// `invalid_client`, 5xx for the transient `server_error` and `temporarily_unavailable`).
pub fn token_error(status: StatusCode, error: &str, aadsts: u32, description: &str) -> Response {
    let trace_id = Uuid::new_v4().to_string();
    let correlation_id = Uuid::new_v4().to_string();
    let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!(
                "AADSTS{aadsts}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
            ),
            "error_codes": [aadsts],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={aadsts}"),
        }),
    )
}
