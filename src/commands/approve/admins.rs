//! What `approve` shows of a batch's users before the approver signs: who holds a directory
//! role, who is protected under another spelling, whose roles could not be checked — by the
//! worker's own checks ([`reset::protection`]), on the first [`ADMIN_CHECK_LIMIT`] users.

use std::sync::Arc;

use futures::StreamExt;

use super::printable;
use crate::config::Settings;
use crate::reset;

/// Users whose directory roles `approve` checks (the first this many of the batch): the
/// check is one lookup and two role reads per user, so a million-user batch is not checked
/// whole before anyone can approve it; the workers check every user anyway.
pub const ADMIN_CHECK_LIMIT: usize = 500;
/// Role checks in flight at once (the Graph client's own rate budget applies too).
const ADMIN_CHECK_CONCURRENCY: usize = 8;
/// Users named per warning line; the rest are counted.
pub(super) const NAMED: usize = 50;

/// The batch's users that hold directory roles, as the worker checks them
/// ([`crate::graph::GraphClient::privilege`], which [`reset::protection`] asks), for the
/// approver to see before signing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminCheck {
    /// Users checked (at most [`ADMIN_CHECK_LIMIT`]; protected users are not checked).
    pub checked: u64,
    /// Users holding (or eligible for) a directory role, with the roles.
    pub admins: Vec<(String, String)>,
    /// Users whose roles could not be checked, and why.
    pub unchecked: Vec<(String, String)>,
    /// Users `reset.protected_users` names under another spelling (the object id for a UPN,
    /// a UPN before a rename…), found by object id as the workers find them, with the entry.
    pub protected: Vec<(String, String)>,
    /// Why protection could be matched by spelling only (`reset.protected_users` could not
    /// be resolved to object ids here).
    pub protected_note: Option<String>,
}

/// Which of `users` hold directory roles, and which are protected by object id, by the
/// worker's own checks, when Graph settings are present (`graph.tenant_id` and
/// `graph.client_id`); `None` otherwise. At most [`ADMIN_CHECK_CONCURRENCY`] users are
/// checked at once. A check that cannot be made is reported, not fatal: the approver decides,
/// and workers fail closed on it.
pub(super) async fn check_admins(
    settings: &Settings,
    users: &[crate::domain::UserRef],
) -> Option<AdminCheck> {
    let graph_set =
        !settings.graph.tenant_id.trim().is_empty() && !settings.graph.client_id.trim().is_empty();
    if !graph_set || users.is_empty() {
        return None;
    }
    let graph =
        match crate::graph::GraphClient::new(&settings.graph, &settings.rate, &settings.retry) {
            Ok(graph) => graph,
            Err(error) => {
                eprintln!("warning: cannot check the batch for admins ({error:#})");
                return None;
            }
        };
    // The workers compare object ids with reset.protected_users resolved at start: the same
    // here, so an entry written another way than the batch writes the user still warns.
    let (protected, protected_note) =
        match reset::ProtectedUsers::resolve(&settings.reset, &graph).await {
            Ok(protected) => (Arc::new(protected), None),
            Err(error) => (
                Arc::default(),
                Some(format!(
                    "reset.protected_users could not be resolved to object ids here ({error}): \
                 protected users are matched by spelling only"
                )),
            ),
        };
    // Owned futures, made up front: a closure over borrowed users inside the stream makes
    // the future not `Send` for every lifetime, which the console's handler needs.
    let checks: Vec<_> = users
        .iter()
        .cloned()
        .map(|user| check_user(graph.clone(), protected.clone(), user))
        .collect();
    let results: Vec<(String, UserCheck)> = futures::stream::iter(checks)
        .buffer_unordered(ADMIN_CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut check = AdminCheck {
        checked: users.len() as u64,
        protected_note,
        ..AdminCheck::default()
    };
    for (user, verdict) in results {
        match verdict {
            UserCheck::Clear => {}
            UserCheck::Protected(entry) => {
                check.protected.push((user, printable(&entry).into_owned()))
            }
            UserCheck::Roles(roles) => check.admins.push((user, printable(&roles).into_owned())),
            UserCheck::Unchecked(why) => check.unchecked.push((user, printable(&why).into_owned())),
        }
    }
    check.admins.sort();
    check.unchecked.sort();
    check.protected.sort();
    Some(check)
}

/// What the worker's checks say of one user.
enum UserCheck {
    /// Neither protected nor holding a role.
    Clear,
    /// Named by this `reset.protected_users` entry (by object id).
    Protected(String),
    /// Holds (or is eligible for) these directory roles.
    Roles(String),
    /// Could not be checked, and why.
    Unchecked(String),
}

/// `user` as printed, and whether `protected` names its object id, else the roles it holds.
async fn check_user(
    graph: crate::graph::GraphClient,
    protected: Arc<reset::ProtectedUsers>,
    user: crate::domain::UserRef,
) -> (String, UserCheck) {
    let shown = printable(&user.to_string()).into_owned();
    // The worker's own checks (`reset::protection`): the object id against the resolved
    // reset.protected_users, then active and PIM-eligible role assignments, by object id.
    let verdict = match graph.resolve_user(&user).await {
        Err(error) => UserCheck::Unchecked(format!("not looked up: {error}")),
        Ok(resolved) => match protected.entry_for(&resolved.id) {
            Some(entry) => UserCheck::Protected(entry.to_string()),
            None => match graph.privilege(&resolved).await {
                Ok(privilege) if privilege.is_privileged() => {
                    UserCheck::Roles(privilege.describe())
                }
                Ok(_) => UserCheck::Clear,
                Err(error) => UserCheck::Unchecked(error.to_string()),
            },
        },
    };
    (shown, verdict)
}

/// The first [`NAMED`] of `total` names, then how many more: a warning line stays readable
/// for a batch of thousands.
pub(super) fn named(names: impl Iterator<Item = String>, total: usize) -> String {
    let listed: Vec<String> = names.take(NAMED).collect();
    let more = total.saturating_sub(listed.len());
    if more > 0 {
        format!("{} and {more} more", listed.join(", "))
    } else {
        listed.join(", ")
    }
}

/// The warning lines for what [`check_admins`] found, in a batch of `count` users.
pub(super) fn admin_warnings(check: &AdminCheck, count: u64, skip_admins: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if !check.protected.is_empty() {
        lines.push(format!(
            "WARNING: {} more protected account(s) in the batch, written otherwise than in \
             reset.protected_users and found by object id (workers will not touch them): {}",
            check.protected.len(),
            named(
                check
                    .protected
                    .iter()
                    .map(|(user, entry)| format!("{user} (entry {entry:?})")),
                check.protected.len()
            )
        ));
    }
    if let Some(note) = &check.protected_note {
        lines.push(format!("note: {note}"));
    }
    if !check.admins.is_empty() {
        let fate = if skip_admins {
            "the workers will skip them and leave them untouched (reset.skip_admins = true)"
        } else {
            "reset.skip_admins is false here: they WILL be reset if the workers run with the \
             same setting"
        };
        lines.push(format!(
            "WARNING: {} user(s) in the batch hold a directory role; {fate}: {}",
            check.admins.len(),
            named(
                check.admins.iter().map(|(user, _)| user.clone()),
                check.admins.len()
            )
        ));
        for (user, roles) in check.admins.iter().take(NAMED) {
            lines.push(format!("  {user}: {roles}"));
        }
    }
    if !check.unchecked.is_empty() {
        lines.push(format!(
            "WARNING: the roles of {} user(s) could not be checked; workers leave such a user \
             untouched (they fail closed): {}",
            check.unchecked.len(),
            named(
                check
                    .unchecked
                    .iter()
                    .map(|(user, why)| format!("{user} ({why})")),
                check.unchecked.len()
            )
        ));
    }
    if check.checked < count {
        lines.push(format!(
            "admins:       checked the first {} of {count} users for directory roles and \
             protection by object id; every user is checked again by the workers before \
             anything is deleted",
            check.checked
        ));
    } else if check.admins.is_empty() && check.unchecked.is_empty() {
        lines.push(format!(
            "admins:       none: no user of the batch holds a directory role (checked {})",
            check.checked
        ));
    }
    lines
}
