//! Group members (`/groups/{id}/members` and `/transitiveMembers`, cast to users): paging
//! with `$top` and `@odata.nextLink`, `$select`.

use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::paths::decode;
use super::Ctx;
use crate::reply::json_response;
use crate::throttle::lock;

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

pub(super) fn group_members(ctx: &Ctx<'_>, group: &str, transitive: bool, query: &str) -> Response {
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
