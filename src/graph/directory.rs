//! What the client reads from the directory, as types: a user resolved to its object id
//! ([`DirectoryUser`]), whether a user holds a directory role ([`Privilege`]), and a group's
//! members sorted by type ([`GroupUsers`]).

use std::fmt;

use serde_json::Value;
use uuid::Uuid;

use super::address::UserAddress;
use crate::domain::UserRef;

/// A user as the directory knows it, read once by [`super::GraphClient::resolve_user`]; every
/// later call addresses it by [`DirectoryUser::id`] (it is a [`UserAddress`]), so renaming the
/// account between two calls cannot make them reach another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    /// Object id.
    pub id: Uuid,
    /// UPN, as the directory holds it now.
    pub user_principal_name: String,
    /// `userType` (`Member`, `Guest`), when Graph gave one.
    pub user_type: Option<String>,
}

impl DirectoryUser {
    /// An external (B2B) account, `#EXT#` in the UPN: it signs in through its home tenant, so
    /// `revokeSignInSessions` answers but revokes nothing
    /// (<https://learn.microsoft.com/en-us/graph/api/user-revokesigninsessions>).
    pub fn is_external(&self) -> bool {
        self.user_principal_name
            .to_ascii_uppercase()
            .contains("#EXT#")
    }

    /// `userType` is `Guest`.
    pub fn is_guest(&self) -> bool {
        self.user_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("Guest"))
    }

    /// The object id as a [`UserRef`].
    pub fn user_ref(&self) -> UserRef {
        UserRef::ObjectId(self.id)
    }
}

impl UserAddress for DirectoryUser {
    fn graph_path(&self) -> String {
        format!("users/{}", self.id.hyphenated())
    }
}

impl fmt::Display for DirectoryUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.user_principal_name, self.id)
    }
}

/// Built-in directory roles by template id, to name them in outcomes (the same ids in every
/// tenant: <https://learn.microsoft.com/en-us/entra/identity/role-based-access-control/permissions-reference>).
const ROLE_NAMES: [(&str, &str); 15] = [
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
    (
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
        "Privileged Role Administrator",
    ),
    (
        "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
        "Privileged Authentication Administrator",
    ),
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator"),
    (
        "c4e39bd9-1100-46d3-8c65-fb160da0071f",
        "Authentication Administrator",
    ),
    (
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        "Helpdesk Administrator",
    ),
    (
        "194ae4cb-b126-40b2-bd5b-6091b380977d",
        "Security Administrator",
    ),
    ("f2ef992c-3afb-46b9-b7cf-a126ee74c451", "Global Reader"),
    (
        "29232cdf-9323-42fd-ade2-1d097af3e4de",
        "Exchange Administrator",
    ),
    (
        "f28a1f50-f6e7-4571-818b-6a12f2af6b6c",
        "SharePoint Administrator",
    ),
    (
        "b1be1c3e-b65d-4f19-8427-f6fa0d97feb9",
        "Conditional Access Administrator",
    ),
    (
        "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3",
        "Application Administrator",
    ),
    (
        "158c047a-c907-4556-b7ef-446551a6b5f7",
        "Cloud Application Administrator",
    ),
    (
        "3a2c62db-5318-420d-8d74-23affee5d9d5",
        "Intune Administrator",
    ),
    (
        "fdd7a751-b60b-444a-984c-02652fe8fa1c",
        "Groups Administrator",
    ),
];

/// How a user holds a directory role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleHold {
    /// Assigned to the user, active now.
    Active,
    /// Assigned to a role-assignable group the user belongs to, active now.
    ThroughGroup {
        /// The group (the assignment's `principalId`).
        group_id: String,
    },
    /// Eligible through PIM: the user can activate it at will (after an MFA prompt).
    Eligible,
}

/// One directory role a user holds, actively or as PIM-eligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleHeld {
    /// `roleDefinitionId`, when Graph gave one (an entry without it still counts).
    pub role_definition_id: Option<String>,
    /// `directoryScopeId` (`/` = the whole tenant, or an administrative unit).
    pub directory_scope_id: Option<String>,
    /// How it is held.
    pub hold: RoleHold,
}

impl RoleHeld {
    /// The role's name when it is a built-in role this build knows.
    pub fn name(&self) -> Option<&'static str> {
        let id = self.role_definition_id.as_deref()?;
        ROLE_NAMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(id))
            .map(|(_, name)| *name)
    }

    /// `Global Administrator (active)`, `role 1234… (eligible through PIM)`.
    pub fn describe(&self) -> String {
        let role = match (self.name(), &self.role_definition_id) {
            (Some(name), _) => name.to_string(),
            (None, Some(id)) => format!("role {id}"),
            (None, None) => "a role Graph did not name".to_string(),
        };
        let hold = match &self.hold {
            RoleHold::Active => "active".to_string(),
            RoleHold::ThroughGroup { group_id } => format!("active through group {group_id}"),
            RoleHold::Eligible => "eligible through PIM".to_string(),
        };
        let scope = match self.directory_scope_id.as_deref() {
            None | Some("/") => String::new(),
            Some(scope) => format!(", scope {scope}"),
        };
        format!("{role} ({hold}{scope})")
    }

    /// From one entry of `transitiveRoleAssignments` (active) or
    /// `roleEligibilityScheduleInstances` (eligible) of principal `user_id`.
    pub(super) fn from_entry(entry: &Value, user_id: &Uuid, eligible: bool) -> RoleHeld {
        let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_string);
        let hold = if eligible {
            RoleHold::Eligible
        } else {
            match text("principalId") {
                Some(p) if Uuid::try_parse(&p).ok() != Some(*user_id) => {
                    RoleHold::ThroughGroup { group_id: p }
                }
                _ => RoleHold::Active,
            }
        };
        RoleHeld {
            role_definition_id: text("roleDefinitionId"),
            directory_scope_id: text("directoryScopeId"),
            hold,
        }
    }
}

/// Whether a user holds any directory role: the answer of
/// [`super::GraphClient::privilege`]. Any entry, however little Graph says about it, makes
/// the user privileged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a privileged user must not be reset"]
pub enum Privilege {
    /// No active assignment, direct or through a group, and no PIM eligibility.
    NotPrivileged,
    /// At least one role.
    Privileged {
        /// Every role found (never empty).
        roles: Vec<RoleHeld>,
    },
}

impl Privilege {
    /// True for [`Privilege::Privileged`].
    pub fn is_privileged(&self) -> bool {
        matches!(self, Privilege::Privileged { .. })
    }

    /// `holds Global Administrator (active), User Administrator (eligible through PIM)`.
    pub fn describe(&self) -> String {
        match self {
            Privilege::NotPrivileged => "holds no directory role".to_string(),
            Privilege::Privileged { roles } => format!(
                "holds {}",
                roles
                    .iter()
                    .map(RoleHeld::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A user member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Object id.
    pub id: String,
    /// UPN, when Graph gave one (an app without `User.Read.All` gets only the id).
    pub user_principal_name: Option<String>,
}

/// Members of a group that are not users, by type: never enqueued, reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkippedMembers {
    /// `#microsoft.graph.device`.
    pub devices: usize,
    /// `#microsoft.graph.servicePrincipal`.
    pub service_principals: usize,
    /// `#microsoft.graph.group` (nested groups; with `transitive`, their users are listed too).
    pub groups: usize,
    /// `#microsoft.graph.orgContact`.
    pub contacts: usize,
    /// Any other type, or an entry without a type or an id.
    pub other: usize,
}

impl SkippedMembers {
    /// How many members were skipped.
    pub fn total(&self) -> usize {
        self.devices + self.service_principals + self.groups + self.contacts + self.other
    }

    /// Count one member of `odata_type` that is not a user.
    pub(super) fn count(&mut self, odata_type: Option<&str>) {
        match odata_type.map(|t| t.trim_start_matches('#')) {
            Some("microsoft.graph.device") => self.devices += 1,
            Some("microsoft.graph.servicePrincipal") => self.service_principals += 1,
            Some("microsoft.graph.group") => self.groups += 1,
            Some("microsoft.graph.orgContact") => self.contacts += 1,
            _ => self.other += 1,
        }
    }
}

impl fmt::Display for SkippedMembers {
    /// `skipped 3 devices, 1 service principal, 2 groups` (empty when nothing was skipped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            (self.devices, "device", "devices"),
            (
                self.service_principals,
                "service principal",
                "service principals",
            ),
            (self.groups, "group", "groups"),
            (self.contacts, "contact", "contacts"),
            (self.other, "other object", "other objects"),
        ]
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect();
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, "skipped {}", parts.join(", "))
        }
    }
}

/// The members of a group, as [`super::GraphClient::group_users`] reads them: the users, and
/// what was skipped by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupUsers {
    /// The users, each once.
    pub users: Vec<GroupMember>,
    /// Members that are not users.
    pub skipped: SkippedMembers,
    /// `@odata.count` as Graph reported it (all members, users or not; eventually consistent).
    pub reported_count: Option<u64>,
}

impl fmt::Display for GroupUsers {
    /// `250 users; skipped 3 devices, 1 service principal, 2 groups`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.users.len();
        write!(f, "{n} {}", if n == 1 { "user" } else { "users" })?;
        if self.skipped.total() > 0 {
            write!(f, "; {}", self.skipped)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skipped_members_read_as_the_issue_asks() {
        let mut skipped = SkippedMembers::default();
        for t in [
            "#microsoft.graph.device",
            "#microsoft.graph.device",
            "#microsoft.graph.device",
            "#microsoft.graph.servicePrincipal",
            "#microsoft.graph.group",
            "#microsoft.graph.group",
        ] {
            skipped.count(Some(t));
        }
        let group = GroupUsers {
            users: vec![
                GroupMember {
                    id: "a".into(),
                    user_principal_name: None
                };
                250
            ],
            skipped,
            reported_count: None,
        };
        assert_eq!(
            group.to_string(),
            "250 users; skipped 3 devices, 1 service principal, 2 groups"
        );
        assert_eq!(SkippedMembers::default().to_string(), "");
    }

    #[test]
    fn roles_are_named_and_held_directly_through_groups_or_by_eligibility() {
        let user = Uuid::parse_str("11111111-1111-4111-8111-000000000001").unwrap();
        let direct = RoleHeld::from_entry(
            &json!({"principalId": user.to_string(), "roleDefinitionId": "62e90394-69f5-4237-9190-012177145e10", "directoryScopeId": "/"}),
            &user,
            false,
        );
        let through_group = RoleHeld::from_entry(
            &json!({"principalId": "22222222-2222-4222-8222-000000000004", "roleDefinitionId": "00000000-0000-0000-0000-00000000abcd", "directoryScopeId": "/administrativeUnits/au1"}),
            &user,
            false,
        );
        let eligible = RoleHeld::from_entry(&json!({"id": "x"}), &user, true);

        assert_eq!(direct.describe(), "Global Administrator (active)");
        assert_eq!(
            through_group.describe(),
            "role 00000000-0000-0000-0000-00000000abcd (active through group 22222222-2222-4222-8222-000000000004, scope /administrativeUnits/au1)"
        );
        assert_eq!(
            eligible.describe(),
            "a role Graph did not name (eligible through PIM)"
        );
        let privilege = Privilege::Privileged {
            roles: vec![direct, eligible],
        };
        assert!(privilege.is_privileged());
        assert_eq!(
            privilege.describe(),
            "holds Global Administrator (active), a role Graph did not name (eligible through PIM)"
        );
    }

    #[test]
    fn external_users_are_told_by_ext_and_guests_by_user_type() {
        let user = |upn: &str, user_type: Option<&str>| DirectoryUser {
            id: Uuid::nil(),
            user_principal_name: upn.into(),
            user_type: user_type.map(str::to_string),
        };
        assert!(user(
            "ann_fabrikam.com#EXT#@contoso.onmicrosoft.com",
            Some("Guest")
        )
        .is_external());
        assert!(!user("ann@contoso.com", Some("Guest")).is_external());
        assert!(user("ann@contoso.com", Some("Guest")).is_guest());
        assert_eq!(
            user("ann@contoso.com", None).graph_path(),
            "users/00000000-0000-0000-0000-000000000000"
        );
    }
}
