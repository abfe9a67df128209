//! How a user, a method id or a nextLink goes into (or comes from) a URL.
//!
//! Graph addresses a user as `/users/{id}` or `/users/{userPrincipalName}`. UPNs need care:
//! a guest UPN holds `#EXT#`, and an unencoded `#` starts a URL fragment, so Graph sees
//! `/users/ann_fabrikam.com` and answers 404; a UPN starting with `$` is read as a system
//! segment (400) unless it is written as the key literal `users('$x@y.com')`.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::domain::UserRef;

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) and `@`, which
/// Graph accepts literally in a UPN segment and which keeps log lines readable.
const UPN_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// Percent-encode one path segment (also used for group ids and method ids from outside).
pub(crate) fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, UPN_SEGMENT).to_string()
}

/// What a Graph call can address a user by: a [`UserRef`] as requested (UPN or object id), or
/// a user already resolved to its object id ([`super::DirectoryUser`]), which every call after
/// the first should use: an object id cannot be renamed between two calls.
pub trait UserAddress {
    /// The path under the Graph root: `users/{id}` or `users/{encoded upn}`.
    fn graph_path(&self) -> String;
}

impl UserAddress for UserRef {
    fn graph_path(&self) -> String {
        user_path(self)
    }
}

/// `users/{id}`, `users/{encoded upn}`, or `users('{encoded upn}')` for a UPN starting with `$`
/// (single quotes inside the key doubled, as OData string literals require, then encoded).
pub fn user_path(user: &UserRef) -> String {
    match user {
        UserRef::ObjectId(id) => format!("users/{}", id.hyphenated()),
        UserRef::Upn(upn) if upn.starts_with('$') => {
            format!("users('{}')", encode_segment(&upn.replace('\'', "''")))
        }
        UserRef::Upn(upn) => format!("users/{}", encode_segment(upn)),
    }
}

/// Percent-encode the id segments of a method's DELETE path, keeping `/` and `$ref`.
pub(super) fn encode_delete_path(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s == "$ref" {
                s.to_string()
            } else {
                encode_segment(s)
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `scheme://authority` of a URL: the origin an `@odata.nextLink` must keep (a link elsewhere
/// would receive our bearer token).
pub(super) fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    url[..end].to_ascii_lowercase()
}

/// True when `link` lies under `origin` (same scheme, host and port).
pub(super) fn is_under(link: &str, origin: &str) -> bool {
    link.len() > origin.len()
        && link[..origin.len()].eq_ignore_ascii_case(origin)
        && link.as_bytes()[origin.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> String {
        user_path(&UserRef::parse(s).unwrap())
    }

    #[test]
    fn object_ids_are_used_as_is_in_lowercase() {
        assert_eq!(
            path("6F9619FF-8B86-D011-B42D-00C04FC964FF"),
            "users/6f9619ff-8b86-d011-b42d-00c04fc964ff"
        );
    }

    #[test]
    fn plain_upns_keep_unreserved_characters_and_the_at_sign() {
        assert_eq!(
            path("Alice.Smith-1_x~y@contoso.com"),
            "users/Alice.Smith-1_x~y@contoso.com"
        );
    }

    #[test]
    fn guest_upns_encode_the_hash_so_it_is_not_a_fragment() {
        assert_eq!(
            path("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com"),
            "users/ann_fabrikam.com%23EXT%23@contoso.onmicrosoft.com"
        );
    }

    #[test]
    fn quotes_plus_ampersand_percent_slash_and_question_mark_are_encoded() {
        assert_eq!(
            path("o'brien+test&x@contoso.com"),
            "users/o%27brien%2Btest%26x@contoso.com"
        );
        assert_eq!(
            path("a%b/c?d=e@contoso.com"),
            "users/a%25b%2Fc%3Fd%3De@contoso.com"
        );
        assert_eq!(encode_segment("a b"), "a%20b");
        assert_eq!(encode_segment("jürgen"), "j%C3%BCrgen");
    }

    #[test]
    fn upns_starting_with_dollar_use_the_key_literal_with_quotes_doubled() {
        assert_eq!(path("$admin@contoso.com"), "users('%24admin@contoso.com')");
        assert_eq!(
            path("$o'neil@contoso.com"),
            "users('%24o%27%27neil@contoso.com')"
        );
    }

    #[test]
    fn next_links_must_stay_on_graph() {
        let o = origin("https://graph.microsoft.com/v1.0");
        assert_eq!(o, "https://graph.microsoft.com");
        assert!(is_under(
            "https://graph.microsoft.com/v1.0/groups/x?$skiptoken=1",
            &o
        ));
        assert!(!is_under(
            "https://graph.microsoft.com.evil.example/v1.0",
            &o
        ));
        assert!(!is_under("http://graph.microsoft.com/v1.0", &o));
    }

    #[test]
    fn delete_paths_keep_ref_and_encode_ids() {
        assert_eq!(
            encode_delete_path("externalAuthenticationMethods/a b/$ref"),
            "externalAuthenticationMethods/a%20b/$ref"
        );
        assert_eq!(
            encode_delete_path("phoneMethods/3179e48a-750b"),
            "phoneMethods/3179e48a-750b"
        );
    }
}
