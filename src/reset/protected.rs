//! Who is never touched: the accounts `reset.protected_users` names (by spelling as a cheap
//! first gate, then by object id resolved when the worker starts, [`ProtectedUsers`]) and,
//! with `reset.skip_admins`, holders of a directory role ([`protection`]).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::config::ResetSettings;
use crate::domain::UserRef;
use crate::graph::{self, DirectoryUser, GraphClient, Privilege};

/// Is `user` listed in `reset.protected_users` as it is written in the request? (A cheap
/// first gate, before any Graph call; the reset then compares the user's object id with the
/// entries resolved at start, [`ProtectedUsers`], so another spelling, the other kind of
/// identifier or a rename cannot slip through.)
pub fn is_protected(settings: &ResetSettings, user: &UserRef) -> bool {
    let key = user.key();
    settings
        .protected_users
        .iter()
        .any(|p| protected_key(p) == key)
}

/// `reset.protected_users` as [`UserRef::key`]s, to check many users at once (a file's
/// rows) with one parse per entry instead of one per entry and user; the same comparison as
/// [`is_protected`].
pub fn protected_keys(settings: &ResetSettings) -> HashSet<String> {
    settings
        .protected_users
        .iter()
        .map(|p| protected_key(p))
        .collect()
}

/// An entry of `reset.protected_users` as a [`UserRef::key`] (object ids in any case or
/// with braces compare equal).
fn protected_key(entry: &str) -> String {
    UserRef::parse(entry)
        .map(|u| u.key())
        .unwrap_or_else(|_| entry.trim().to_lowercase())
}

/// `reset.protected_users`, each entry resolved to the object id of the account it names
/// when the worker starts: the reset compares object ids, which no rename changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedUsers {
    /// Object id → the entry as written in the settings.
    ids: HashMap<Uuid, String>,
}

/// Why `reset.protected_users` could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ProtectedUsersError {
    /// An entry is neither a UPN nor an object id: the worker must not start.
    #[error("reset.protected_users entry {index} ({entry:?}) {reason}: fix or remove it; the worker does not start with a protected user it cannot recognise")]
    Invalid {
        /// 1-based position in the list.
        index: usize,
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Graph has no such user: the worker must not start.
    #[error("reset.protected_users entry {index} ({entry:?}) is not a user of the tenant ({code}): fix or remove it; the worker does not start with a protected user it cannot find")]
    NotFound {
        /// 1-based position in the list.
        index: usize,
        /// The entry.
        entry: String,
        /// Graph's code.
        code: String,
    },
    /// Graph could not answer (or refuses the app): try again later.
    #[error("resolving reset.protected_users entry {entry:?}: {error}")]
    Graph {
        /// The entry.
        entry: String,
        /// Graph's error (its class says whether to halt or wait).
        error: graph::Error,
    },
}

impl ProtectedUsers {
    /// Parse every entry (all at once: an invalid entry is an error before any Graph call),
    /// then resolve each to its object id.
    pub async fn resolve(
        settings: &ResetSettings,
        graph: &GraphClient,
    ) -> Result<ProtectedUsers, ProtectedUsersError> {
        let parsed = Self::parse(settings)?;
        let mut ids = HashMap::new();
        for (index, entry, user) in parsed {
            match graph.resolve_user(&user).await {
                Ok(resolved) => {
                    ids.insert(resolved.id, entry);
                }
                Err(graph::Error::NotFound { code, .. }) => {
                    return Err(ProtectedUsersError::NotFound { index, entry, code })
                }
                Err(error) => return Err(ProtectedUsersError::Graph { entry, error }),
            }
        }
        Ok(ProtectedUsers { ids })
    }

    /// Every entry as a [`UserRef`], with its 1-based index, or the first that is not one.
    fn parse(
        settings: &ResetSettings,
    ) -> Result<Vec<(usize, String, UserRef)>, ProtectedUsersError> {
        settings
            .protected_users
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                UserRef::parse(entry)
                    .map(|user| (i + 1, entry.clone(), user))
                    .map_err(|e| ProtectedUsersError::Invalid {
                        index: i + 1,
                        entry: entry.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// The entry naming this object id, if one does.
    pub fn entry_for(&self, id: &Uuid) -> Option<&str> {
        self.ids.get(id).map(String::as_str)
    }

    /// How many accounts are protected.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no account is protected.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Why `user` must not be touched, if it must not: listed in `reset.protected_users`, or
/// (with `reset.skip_admins`) holding a directory role, or its roles could not be checked
/// (fail closed). The reset and `restore` both ask this before changing anything.
/// A retryable or halting error is returned as it is: the caller tries later.
pub async fn protection(
    graph: &GraphClient,
    user: &DirectoryUser,
    settings: &ResetSettings,
    protected: &ProtectedUsers,
) -> Result<Option<(&'static str, String)>, graph::Error> {
    if let Some(entry) = protected.entry_for(&user.id) {
        return Ok(Some((
            "protected_user",
            format!("{user} is listed in reset.protected_users (as {entry}); not touched"),
        )));
    }
    if !settings.skip_admins {
        return Ok(None);
    }
    match graph.privilege(user).await {
        Ok(Privilege::NotPrivileged) => Ok(None),
        Ok(privilege @ Privilege::Privileged { .. }) => Ok(Some((
            "directory_role",
            format!(
                "{}; not touched (reset.skip_admins)",
                privilege.describe()
            ),
        ))),
        // A passing outage or throttling: try again later, still untouched.
        Err(error) if error.is_retryable() || error.halts() => Err(error),
        // Fail closed: a check that cannot be made leaves the user alone.
        Err(error) => Ok(Some((
            "privilege_check_failed",
            format!(
                "could not check whether the user holds a directory role ({error}); not touched (reset.skip_admins fails closed)"
            ),
        ))),
    }
}

#[cfg(test)]
#[path = "protected_tests.rs"]
mod tests;
