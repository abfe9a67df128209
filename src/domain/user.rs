//! [`UserRef`]: a user principal name or an object id, parsed once at the edge.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A reference to one Entra user: a UPN (`local@domain`, guest UPNs with `#EXT#` included)
/// or an object id (GUID). Only valid values can be constructed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// A user principal name, as given (case preserved).
    Upn(String),
    /// An object id.
    ObjectId(Uuid),
}

/// Why a string is not a [`UserRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserRefError {
    /// Nothing there.
    #[error("the user is empty")]
    Empty,
    /// Longer than Entra allows.
    #[error("is {0} characters long; a user principal name has at most 113 before the @ and 1024 in all")]
    TooLong(usize),
    /// Neither a GUID nor `local@domain`.
    #[error("is not a user principal name (local@domain) or an object id (GUID)")]
    NotAUser,
    /// A UPN with characters Entra does not allow.
    #[error("contains {0:?}, which a user principal name cannot hold")]
    BadCharacter(char),
}

const MAX_UPN_LEN: usize = 1024;

impl UserRef {
    /// Parse a UPN or object id; surrounding whitespace is trimmed.
    pub fn parse(input: &str) -> Result<UserRef, UserRefError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(UserRefError::Empty);
        }
        if s.len() > MAX_UPN_LEN {
            return Err(UserRefError::TooLong(s.chars().count()));
        }
        if let Ok(id) = Uuid::try_parse(s) {
            if s.len() == 36 || s.len() == 38 {
                return Ok(UserRef::ObjectId(id));
            }
        }
        if let Some(bad) = s.chars().find(|c| {
            c.is_whitespace()
                || c.is_control()
                || is_invisible(*c)
                || matches!(
                    c,
                    '"' | '<' | '>' | '\\' | ',' | ';' | '(' | ')' | '[' | ']' | ':' | '|'
                )
        }) {
            return Err(UserRefError::BadCharacter(bad));
        }
        let (local, domain) = s.rsplit_once('@').ok_or(UserRefError::NotAUser)?;
        // Entra allows exactly one `@` (a guest's own `@` becomes `_` before `#EXT#`).
        if local.contains('@') {
            return Err(UserRefError::NotAUser);
        }
        if local.is_empty() || domain.is_empty() || local.len() > 113 + "#EXT#".len() + 256 {
            return Err(UserRefError::NotAUser);
        }
        // A domain needs at least one dot, no empty labels and no leading/trailing hyphen per label.
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels
                .iter()
                .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
            || !domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
        {
            return Err(UserRefError::NotAUser);
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(UserRefError::NotAUser);
        }
        Ok(UserRef::Upn(s.to_string()))
    }

    /// The value as given: the UPN, or the id in lowercase hyphenated form.
    pub fn as_string(&self) -> String {
        match self {
            UserRef::Upn(upn) => upn.clone(),
            UserRef::ObjectId(id) => id.hyphenated().to_string(),
        }
    }

    /// A case-insensitive key: two requests for the same user have the same key.
    pub fn key(&self) -> String {
        self.as_string().to_lowercase()
    }

    /// The first character of a UPN that Entra does not allow in one, so that it cannot name a
    /// real user (Graph would answer 404 much later). Entra allows ASCII letters, digits and
    /// `' . - _ ! # ^ ~` before the `@`, and a verified domain after it
    /// (<https://learn.microsoft.com/en-us/graph/api/resources/user>, `userPrincipalName`);
    /// `$` is let through too, since Graph documents how to address a UPN that starts with
    /// one. `None` for an object id.
    pub fn entra_disallowed_character(&self) -> Option<char> {
        let UserRef::Upn(upn) = self else {
            return None;
        };
        let (local, domain) = upn.rsplit_once('@')?;
        let local_ok = |c: char| c.is_ascii_alphanumeric() || "'.-_!#^~$".contains(c);
        let domain_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        local
            .chars()
            .find(|c| !local_ok(*c))
            .or_else(|| domain.chars().find(|c| !domain_ok(*c)))
    }

    /// True for a guest (B2B) UPN such as `ann_fabrikam.com#EXT#@contoso.onmicrosoft.com`.
    pub fn is_guest(&self) -> bool {
        matches!(self, UserRef::Upn(upn) if upn.to_ascii_uppercase().contains("#EXT#"))
    }
}

/// Characters that print as nothing (zero-width spaces and joiners, a byte order mark, a soft
/// hyphen). They arrive by copy-paste from mail and web pages, are neither whitespace nor
/// control characters to Rust, and would make a UPN that Graph never finds.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
    )
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Upn(upn) => f.write_str(upn),
            UserRef::ObjectId(id) => write!(f, "{}", id.hyphenated()),
        }
    }
}

impl Serialize for UserRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for UserRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserRef::parse(&s).map_err(|e| serde::de::Error::custom(format!("user {s:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upns_guests_and_object_ids() {
        assert!(matches!(
            UserRef::parse("alice@contoso.com"),
            Ok(UserRef::Upn(_))
        ));
        let guest = UserRef::parse("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com").unwrap();
        assert!(guest.is_guest());
        assert!(matches!(
            UserRef::parse("$admin@contoso.com"),
            Ok(UserRef::Upn(_))
        ));
        assert!(matches!(
            UserRef::parse("o'brien+test&x@contoso.com"),
            Ok(UserRef::Upn(_))
        ));
        assert!(matches!(
            UserRef::parse(" 6F9619FF-8B86-D011-B42D-00C04FC964FF "),
            Ok(UserRef::ObjectId(_))
        ));
    }

    #[test]
    fn rejects_what_is_not_a_user() {
        assert_eq!(UserRef::parse(""), Err(UserRefError::Empty));
        assert_eq!(UserRef::parse("bob@"), Err(UserRefError::NotAUser));
        assert_eq!(UserRef::parse("bob"), Err(UserRefError::NotAUser));
        assert_eq!(UserRef::parse("bob@localhost"), Err(UserRefError::NotAUser));
        assert_eq!(
            UserRef::parse("bo b@x.com"),
            Err(UserRefError::BadCharacter(' '))
        );
        assert_eq!(
            UserRef::parse("a\0b@x.com"),
            Err(UserRefError::BadCharacter('\0'))
        );
        assert!(matches!(
            UserRef::parse(&"a".repeat(2000)),
            Err(UserRefError::TooLong(_))
        ));
    }

    #[test]
    fn rejects_a_second_at_sign_and_invisible_characters() {
        assert_eq!(
            UserRef::parse("bob@contoso.com@contoso.com"),
            Err(UserRefError::NotAUser)
        );
        assert_eq!(
            UserRef::parse("\u{feff}alice@contoso.com"),
            Err(UserRefError::BadCharacter('\u{feff}'))
        );
        assert_eq!(
            UserRef::parse("alice\u{200b}@contoso.com"),
            Err(UserRefError::BadCharacter('\u{200b}'))
        );
    }

    #[test]
    fn characters_entra_does_not_allow_in_a_upn_are_found() {
        let bad = |s: &str| UserRef::parse(s).unwrap().entra_disallowed_character();
        assert_eq!(bad("o'neil+mfa@contoso.com"), Some('+'));
        assert_eq!(bad("r&d@contoso.com"), Some('&'));
        assert_eq!(bad("a/b@contoso.com"), Some('/'));
        assert_eq!(bad("jürgen@contoso.com"), Some('ü'));
        assert_eq!(bad("ann@bücher.example"), Some('ü'));
        assert_eq!(bad("o'neil_x!y#z^w~v.u-t@contoso.com"), None);
        assert_eq!(bad("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com"), None);
        assert_eq!(bad("$admin@contoso.com"), None);
        assert_eq!(bad("6f9619ff-8b86-d011-b42d-00c04fc964ff"), None);
    }

    #[test]
    fn keys_are_case_insensitive() {
        let a = UserRef::parse("Alice@Contoso.com").unwrap();
        let b = UserRef::parse("alice@contoso.COM").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.to_string(), "Alice@Contoso.com");
    }
}
