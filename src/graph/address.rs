//! How a user goes into a URL path. STUB — the graph helper completes it.

use crate::domain::UserRef;

/// `users/{encoded}` or `users('{upn}')` for a UPN starting with `$`.
pub fn user_path(user: &UserRef) -> String {
    let _ = user;
    todo!()
}
