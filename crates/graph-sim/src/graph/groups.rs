//! Group members (`/groups/{id}/members` and `/transitiveMembers`): users, nested groups,
//! devices, service principals and contacts, each with its `@odata.type`; paging with `$top`
//! and `@odata.nextLink`, `$select`, `@odata.count`.
//!
//! An OData cast (`/members/microsoft.graph.user`) is an advanced query: without
//! `ConsistencyLevel: eventual` and `$count=true` Graph refuses it
//! (<https://learn.microsoft.com/en-us/graph/aad-advanced-queries>). An app that may not read
//! users (no `User.Read.All`) gets user members with only `@odata.type` and `id`.

use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::query::Query;
use super::Ctx;
use crate::reply::json_response;
use crate::tenant::{Member, Tenant};
use crate::throttle::lock;

/// A member as Graph shows it: `@odata.type` first, then its properties.
fn member_json(
    tenant: &Tenant,
    member: &Member,
    users_readable: bool,
) -> Option<Map<String, Value>> {
    let mut item = Map::new();
    let text = |s: &str| Value::String(s.to_string());
    match member {
        Member::User(i) => {
            let u = tenant.users.get(*i)?;
            item.insert("@odata.type".into(), text("#microsoft.graph.user"));
            item.insert("id".into(), text(&u.id));
            let readable = |s: &str| if users_readable { text(s) } else { Value::Null };
            item.insert("displayName".into(), readable(&u.display_name));
            item.insert("userPrincipalName".into(), readable(&u.user_principal_name));
            item.insert("userType".into(), readable(&u.user_type));
            item.insert("mail".into(), Value::Null);
        }
        Member::Group(id) => {
            let g = tenant.group(id)?;
            item.insert("@odata.type".into(), text("#microsoft.graph.group"));
            item.insert("id".into(), text(&g.id));
            item.insert("displayName".into(), text(&g.display_name));
            item.insert("mail".into(), Value::Null);
        }
        Member::Object(id) => {
            let o = tenant.object(id)?;
            item.insert("@odata.type".into(), text(o.kind.odata_type()));
            item.insert("id".into(), text(&o.id));
            item.insert("displayName".into(), text(&o.display_name));
        }
    }
    Some(item)
}

fn odata_type_of(member: &Member, tenant: &Tenant) -> &'static str {
    match member {
        Member::User(_) => "microsoft.graph.user",
        Member::Group(_) => "microsoft.graph.group",
        Member::Object(id) => tenant
            .object(id)
            .map(|o| o.kind.odata_type().trim_start_matches('#'))
            .unwrap_or("microsoft.graph.directoryObject"),
    }
}

pub(super) fn group_members(
    ctx: &Ctx<'_>,
    group: &str,
    transitive: bool,
    cast: Option<&str>,
    query: &Query,
) -> Response {
    if cast.is_some() && !query.advanced() {
        return ctx.needs_advanced_query(&format!(
            "The OData cast '{}' on a member list",
            cast.unwrap_or_default()
        ));
    }
    let top = match query.get("$top") {
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
    let offset = match query.get("$skiptoken") {
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
    let select = query.select();
    let tenant = lock(&ctx.shared.tenant);
    let Some(members) = tenant.group_members(group, transitive) else {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{group}' does not exist or one of its queried reference-property objects are not present."),
        );
    };
    let members: Vec<Member> = members
        .into_iter()
        .filter(|m| cast.is_none_or(|c| c == odata_type_of(m, &tenant)))
        .collect();
    let users_readable = ctx.permissions.user_read;
    let page: Vec<Value> = members
        .iter()
        .skip(offset)
        .take(top)
        .filter_map(|m| member_json(&tenant, m, users_readable))
        .map(|full| {
            let Some(fields) = &select else {
                return Value::Object(full);
            };
            // `@odata.type` and `id` always; selected properties the object has.
            let item: Map<String, Value> = full
                .into_iter()
                .filter(|(k, _)| k == "@odata.type" || k == "id" || fields.iter().any(|f| f == k))
                .collect();
            Value::Object(item)
        })
        .collect();
    let kind = if transitive {
        "transitiveMembers"
    } else {
        "members"
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        ctx.context(match cast {
            Some("microsoft.graph.user") => "users",
            _ => "directoryObjects",
        }),
    );
    if query.wants_count() {
        body.insert("@odata.count".into(), Value::from(members.len()));
    }
    if offset + top < members.len() {
        let mut params: Vec<String> = query
            .pairs
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
                "http://{}/{}/groups/{}/{kind}{}?{}",
                ctx.host,
                ctx.version(),
                group,
                cast.map(|c| format!("/{c}")).unwrap_or_default(),
                params.join("&")
            )),
        );
    }
    body.insert("value".into(), Value::Array(page));
    json_response(StatusCode::OK, &Value::Object(body))
}
