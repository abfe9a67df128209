//! Server-rendered pages. Every value that came from outside goes through [`escape`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::oidc::session_of;
use super::session::{same_token, set_cookie, Session, SESSION_COOKIE};
use super::Console;

/// HTML-escape text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page around `body` (already escaped).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · mfa-reset</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}}\
         .error{{color:#a00}}</style></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

/// An error page.
pub fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(page(
            "Error",
            &format!(
                "<h1>Something went wrong</h1><p class=\"error\">{}</p><p><a href=\"/\">Back</a></p>",
                escape(message)
            ),
        )),
    )
        .into_response()
}

/// `GET /`
pub async fn home(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = session_of(&console, &headers) else {
        return Html(page(
            "Sign in",
            "<h1>mfa-reset console</h1><p><a href=\"/login\">Sign in with Microsoft Entra ID</a></p>",
        ))
        .into_response();
    };
    let roles: Vec<&str> = session.roles.iter().map(|r| r.as_str()).collect();
    let roles = if roles.is_empty() {
        "none — ask for the operator, approver or viewer app role".to_string()
    } else {
        roles.join(", ")
    };
    Html(page(
        "Console",
        &format!(
            "<h1>mfa-reset console</h1>\
             <p>Signed in as <strong id=\"who\">{}</strong> ({}), roles: <span id=\"roles\">{}</span></p>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(&session.name),
            escape(&session.upn),
            escape(&roles),
            escape(&session.csrf),
        ),
    ))
    .into_response()
}

/// `GET /api/v1/me`: who is signed in (401 when nobody).
pub async fn me(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match session_of(&console, &headers) {
        Some(s) => Json(serde_json::json!({
            "oid": s.oid, "upn": s.upn, "name": s.name, "roles": s.roles,
        }))
        .into_response(),
        None => super::json_error(
            StatusCode::UNAUTHORIZED,
            "not_signed_in",
            "",
            "sign in at /login",
        ),
    }
}

/// A POSTed form's CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Check a POST: a session, and the form's token equal to the session's (the synchronizer
/// token pattern; the cookie is also SameSite=Lax). The session, or the refusal.
#[allow(clippy::result_large_err)]
pub fn check_post(
    console: &Console,
    headers: &HeaderMap,
    token: &str,
) -> Result<Session, Response> {
    let Some(session) = session_of(console, headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "Sign in first."));
    };
    if token.is_empty() || !same_token(token, &session.csrf) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from the console (CSRF check): reload the page and try again.",
        ));
    }
    Ok(session)
}

/// `POST /logout`
pub async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(response) = check_post(&console, &headers, &form.csrf) {
        return response;
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, "", 0, console.insecure_cookies),
            ),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_shown_as_text() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
