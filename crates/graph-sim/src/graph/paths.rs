//! Graph's path grammar: which collection, user and method a path names, the way Graph reads
//! it, and the stats template of each path (`DELETE /v1.0/users/{user}/authentication/phoneMethods/{id}`).
//!
//! This stays a parser rather than axum routes because Graph's addressing does not fit a
//! route table: a user is `users/{key}` or the OData literal `users('{key}')` (quotes
//! doubled), every segment is percent-decoded only after the raw path is split (so `%2F` and
//! `%23EXT%23` inside a UPN reach the lookup intact), and a path Graph does not know or a
//! method it does not allow is answered in Graph's error shape with its own template, after
//! the pipeline (auth, throttle, faults) has run, as Graph does.

use axum::http::{Method as HttpMethod, StatusCode};
use percent_encoding::percent_decode_str;

/// A method collection under `/users/{u}/authentication/`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Collection {
    /// The path segment (`phoneMethods`).
    pub(crate) segment: &'static str,
    /// The type stem of its methods (`phone`).
    pub(crate) stem: &'static str,
    beta_only: bool,
    /// WHfB and FIDO2 answer errors in the `odata.error` shape.
    pub(crate) odata_errors: bool,
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

/// The type stem of the QR code + PIN method, a singleton at `qrCodePinMethod` (v1.0 and beta).
pub(crate) const QR_CODE_PIN_STEM: &str = "qrCodePin";

/// One of the two QR codes under `qrCodePinMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QrCode {
    /// `standardQRCode`: the badge's code.
    Standard,
    /// `temporaryQRCode`: a short-lived code.
    Temporary,
}

/// The OData casts a member list accepts.
pub(crate) const MEMBER_CASTS: [&str; 5] = [
    "microsoft.graph.user",
    "microsoft.graph.group",
    "microsoft.graph.device",
    "microsoft.graph.servicePrincipal",
    "microsoft.graph.orgContact",
];

/// What a Graph path asks for; the user is still a key (id or UPN) to look up.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    GetUser(String),
    ListMethods(String),
    GetMethod(String, Option<Collection>, String),
    ListCollection(String, Collection),
    DeleteMethod(String, Collection, String),
    /// `DELETE …/qrCodePinMethod`: the whole method (both QR codes and the PIN).
    DeleteQrCodePin(String),
    GetQrCodePin(String),
    /// `GET …/qrCodePinMethod/{standardQRCode|temporaryQRCode}`.
    GetQrCode(String, QrCode),
    /// `DELETE …/qrCodePinMethod/{standardQRCode|temporaryQRCode}`: that code only.
    DeleteQrCode(String, QrCode),
    CreateMethod(String, Collection),
    RevokeSessions(String),
    GetSignInPreferences(String),
    PatchSignInPreferences(String),
    /// `…/{transitiveMemberOf|memberOf}/microsoft.graph.directoryRole`.
    DirectoryRoles {
        user: String,
        transitive: bool,
    },
    /// `/groups/{id}/{members|transitiveMembers}[/{cast}]`.
    GroupMembers {
        group: String,
        transitive: bool,
        cast: Option<String>,
    },
    /// `GET /beta/roleManagement/directory/transitiveRoleAssignments`.
    TransitiveRoleAssignments,
    /// `GET /roleManagement/directory/roleEligibilityScheduleInstances`.
    RoleEligibilityInstances,
}

impl Route {
    /// The user key the route addresses, if it addresses one.
    pub(crate) fn user(&self) -> Option<&str> {
        match self {
            Route::GetUser(u)
            | Route::ListMethods(u)
            | Route::GetMethod(u, _, _)
            | Route::ListCollection(u, _)
            | Route::DeleteMethod(u, _, _)
            | Route::DeleteQrCodePin(u)
            | Route::GetQrCodePin(u)
            | Route::GetQrCode(u, _)
            | Route::DeleteQrCode(u, _)
            | Route::CreateMethod(u, _)
            | Route::RevokeSessions(u)
            | Route::GetSignInPreferences(u)
            | Route::PatchSignInPreferences(u)
            | Route::DirectoryRoles { user: u, .. } => Some(u),
            Route::GroupMembers { .. }
            | Route::TransitiveRoleAssignments
            | Route::RoleEligibilityInstances => None,
        }
    }
}

/// A refusal decided while parsing the path.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
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

/// Percent-decode one path segment.
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
pub(crate) fn parse_graph(
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
                    if cast.is_empty() || (cast.len() == 1 && MEMBER_CASTS.contains(&cast[0])) =>
                {
                    let cast = cast.first().map(|c| c.to_string());
                    let template = format!(
                        "{m} {version}/groups/{{id}}/{kind}{}",
                        cast.as_deref().map(|c| format!("/{c}")).unwrap_or_default()
                    );
                    let route = if method == HttpMethod::GET {
                        Ok(Route::GroupMembers {
                            group: id.to_string(),
                            transitive: *kind == "transitiveMembers",
                            cast,
                        })
                    } else {
                        Err(method_not_allowed())
                    };
                    (template, route)
                }
                ["roleManagement", "directory", kind @ ("transitiveRoleAssignments" | "roleEligibilityScheduleInstances")] =>
                {
                    let template = format!("{m} {version}/roleManagement/directory/{kind}");
                    let route = if *kind == "transitiveRoleAssignments" && !beta {
                        // Only in beta (the page has no v1.0 version).
                        Err(segment_not_found(kind))
                    } else if method != HttpMethod::GET {
                        Err(method_not_allowed())
                    } else if *kind == "transitiveRoleAssignments" {
                        Ok(Route::TransitiveRoleAssignments)
                    } else {
                        Ok(Route::RoleEligibilityInstances)
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
        // In v1.0 and beta alike.
        ["authentication", "qrCodePinMethod", tail @ ..] => {
            let template = format!(
                "/authentication/qrCodePinMethod{}",
                tail.iter().map(|t| format!("/{t}")).collect::<String>()
            );
            let code = |segment: &str| match segment {
                "standardQRCode" => Some(QrCode::Standard),
                "temporaryQRCode" => Some(QrCode::Temporary),
                _ => None,
            };
            let route = match tail {
                [] if get => Ok(Route::GetQrCodePin(user)),
                [] if delete => Ok(Route::DeleteQrCodePin(user)),
                [] => Err(method_not_allowed()),
                [segment] => match code(segment) {
                    Some(c) if get => Ok(Route::GetQrCode(user, c)),
                    Some(c) if delete => Ok(Route::DeleteQrCode(user, c)),
                    Some(_) => Err(method_not_allowed()),
                    None => Err(segment_not_found(segment)),
                },
                [other, ..] => Err(segment_not_found(other)),
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
            allowed(
                get,
                Route::DirectoryRoles {
                    user,
                    transitive: *kind == "transitiveMemberOf",
                },
            ),
        ),
        [first, ..] => (format!("/{first}"), Err(segment_not_found(first))),
    }
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
