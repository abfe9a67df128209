//! The role-management API, as an app with `RoleManagement.Read.Directory` reads it (403
//! without it):
//!
//! - `GET /beta/roleManagement/directory/transitiveRoleAssignments?$count=true&$filter=principalId eq '{id}'`
//!   with `ConsistencyLevel: eventual`: active assignments, direct or through a group (listed
//!   with the group as `principalId`). The header, `$count` and `$filter` are required; without
//!   the header Graph answers 404
//!   (<https://learn.microsoft.com/en-us/graph/api/rbacapplication-list-transitiveroleassignments?view=graph-rest-beta>).
//! - `GET /roleManagement/directory/roleEligibilityScheduleInstances[?$filter=principalId eq '{id}']`
//!   (v1.0 and beta): PIM eligibilities.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use super::query::Query;
use super::Ctx;
use crate::reply::json_response;
use crate::throttle::lock;

/// Properties both collections can be filtered on.
const FILTERABLE: [&str; 3] = ["principalId", "roleDefinitionId", "directoryScopeId"];

/// The `eq` clauses of `$filter`, checked against [`FILTERABLE`]; Graph's message otherwise
/// (answered 400 `BadRequest`).
fn filter_clauses(query: &Query) -> Result<Vec<(String, String)>, String> {
    let clauses = match query.eq_filter() {
        None => return Ok(Vec::new()),
        Some(Ok(clauses)) => clauses,
        Some(Err(clause)) => return Err(format!("Invalid filter clause: '{clause}'.")),
    };
    for (property, _) in &clauses {
        if !FILTERABLE.iter().any(|f| f.eq_ignore_ascii_case(property)) {
            return Err(format!(
                "Filtering on property '{property}' is not supported."
            ));
        }
    }
    Ok(clauses)
}

/// Does `item` match every clause?
fn matches(item: &Value, clauses: &[(String, String)]) -> bool {
    clauses.iter().all(|(property, value)| {
        let key = FILTERABLE
            .iter()
            .find(|f| f.eq_ignore_ascii_case(property))
            .copied()
            .unwrap_or_default();
        item.get(key)
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    })
}

fn collection(ctx: &Ctx<'_>, fragment: &str, value: Vec<Value>, count: bool) -> Response {
    let mut body = Map::new();
    body.insert("@odata.context".into(), ctx.context(fragment));
    if count {
        body.insert("@odata.count".into(), Value::from(value.len()));
    }
    body.insert("value".into(), Value::Array(value));
    json_response(StatusCode::OK, &Value::Object(body))
}

/// `GET /beta/roleManagement/directory/transitiveRoleAssignments`.
pub(super) fn transitive_assignments(ctx: &Ctx<'_>, query: &Query) -> Response {
    if !ctx.permissions.role_management_read {
        return ctx.forbidden();
    }
    if !query.eventual {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "Resource 'transitiveRoleAssignments' is available only with the ConsistencyLevel header set to 'eventual'.",
        );
    }
    if !query.count() {
        return ctx.needs_advanced_query("Listing transitiveRoleAssignments");
    }
    let clauses = match filter_clauses(query) {
        Ok(c) => c,
        Err(message) => return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    let Some((_, principal)) = clauses
        .iter()
        .find(|(p, _)| p.eq_ignore_ascii_case("principalId"))
    else {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "transitiveRoleAssignments requires a $filter on principalId (eq).",
        );
    };
    // The principal filter selects whose assignments, direct and through groups: those held
    // through a group carry the group's id, so only the other clauses filter the result.
    let others: Vec<(String, String)> = clauses
        .iter()
        .filter(|(p, _)| !p.eq_ignore_ascii_case("principalId"))
        .cloned()
        .collect();
    let value: Vec<Value> = lock(&ctx.shared.tenant)
        .transitive_role_assignments(principal)
        .iter()
        .map(|a| a.json())
        .filter(|a| matches(a, &others))
        .collect();
    collection(
        ctx,
        "roleManagement/directory/transitiveRoleAssignments",
        value,
        true,
    )
}

/// `GET /roleManagement/directory/roleEligibilityScheduleInstances`.
pub(super) fn eligibility_instances(ctx: &Ctx<'_>, query: &Query) -> Response {
    if !ctx.permissions.role_management_read {
        return ctx.forbidden();
    }
    let clauses = match filter_clauses(query) {
        Ok(c) => c,
        Err(message) => return ctx.error(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    let value: Vec<Value> = lock(&ctx.shared.tenant)
        .eligibility_instances()
        .iter()
        .map(|e| e.json())
        .filter(|e| matches(e, &clauses))
        .collect();
    collection(
        ctx,
        "roleManagement/directory/roleEligibilityScheduleInstances",
        value,
        query.wants_count(),
    )
}
