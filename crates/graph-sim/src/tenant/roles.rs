//! Directory roles as the role-management API shows them: role definitions (built-in ones by
//! their fixed template ids), active role assignments (`unifiedRoleAssignment`), direct or
//! through a role-assignable group, and PIM eligibility instances
//! (`unifiedRoleEligibilityScheduleInstance`).
//!
//! <https://learn.microsoft.com/en-us/graph/api/rbacapplication-list-transitiveroleassignments?view=graph-rest-beta>:
//! a role held through a group is listed with the *group's* id as `principalId`.
//! <https://learn.microsoft.com/en-us/graph/api/rbacapplication-list-roleeligibilityscheduleinstances>.

use serde_json::{json, Value};
use uuid::Uuid;

use super::Tenant;

/// Built-in roles and their template ids (the same in every tenant).
pub const BUILT_IN_ROLES: [(&str, &str); 15] = [
    (
        "Global Administrator",
        "62e90394-69f5-4237-9190-012177145e10",
    ),
    (
        "Privileged Role Administrator",
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
    ),
    (
        "Privileged Authentication Administrator",
        "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
    ),
    ("User Administrator", "fe930be7-5e62-47db-91af-98c3a49a38b1"),
    (
        "Authentication Administrator",
        "c4e39bd9-1100-46d3-8c65-fb160da0071f",
    ),
    (
        "Helpdesk Administrator",
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    ),
    (
        "Security Administrator",
        "194ae4cb-b126-40b2-bd5b-6091b380977d",
    ),
    ("Global Reader", "f2ef992c-3afb-46b9-b7cf-a126ee74c451"),
    (
        "Exchange Administrator",
        "29232cdf-9323-42fd-ade2-1d097af3e4de",
    ),
    (
        "SharePoint Administrator",
        "f28a1f50-f6e7-4571-818b-6a12f2af6b6c",
    ),
    (
        "Conditional Access Administrator",
        "b1be1c3e-b65d-4f19-8427-f6fa0d97feb9",
    ),
    (
        "Application Administrator",
        "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3",
    ),
    (
        "Cloud Application Administrator",
        "158c047a-c907-4556-b7ef-446551a6b5f7",
    ),
    (
        "Intune Administrator",
        "3a2c62db-5318-420d-8d74-23affee5d9d5",
    ),
    (
        "Groups Administrator",
        "fdd7a751-b60b-444a-984c-02652fe8fa1c",
    ),
];

/// The role definition id of a role name: the built-in template id, or for a custom role a
/// stable id derived from its name.
pub fn role_definition_id(name: &str) -> String {
    BUILT_IN_ROLES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, id)| (*id).to_string())
        .unwrap_or_else(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string())
}

/// An active role assignment (`unifiedRoleAssignment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Assignment id.
    pub id: String,
    /// Who holds it: the user, or the group it holds it through.
    pub principal_id: String,
    /// The role.
    pub role_definition_id: String,
    /// `/` for the whole tenant.
    pub directory_scope_id: String,
}

impl Assignment {
    fn new(principal_id: &str, role: &str) -> Assignment {
        let role_definition_id = role_definition_id(role);
        let id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("assignment/{principal_id}/{role_definition_id}").as_bytes(),
        )
        .to_string();
        Assignment {
            id,
            principal_id: principal_id.to_string(),
            role_definition_id,
            directory_scope_id: "/".into(),
        }
    }

    /// As Graph lists it.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "principalId": self.principal_id,
            "directoryScopeId": self.directory_scope_id,
            "roleDefinitionId": self.role_definition_id,
        })
    }
}

/// A PIM eligibility instance (`unifiedRoleEligibilityScheduleInstance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligibility {
    /// Instance id.
    pub id: String,
    /// The eligible user.
    pub principal_id: String,
    /// The role.
    pub role_definition_id: String,
    /// `/` for the whole tenant.
    pub directory_scope_id: String,
}

impl Eligibility {
    fn new(principal_id: &str, role: &str) -> Eligibility {
        let role_definition_id = role_definition_id(role);
        let id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("eligibility/{principal_id}/{role_definition_id}").as_bytes(),
        )
        .to_string();
        Eligibility {
            id,
            principal_id: principal_id.to_string(),
            role_definition_id,
            directory_scope_id: "/".into(),
        }
    }

    /// As Graph lists it.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "principalId": self.principal_id,
            "roleDefinitionId": self.role_definition_id,
            "directoryScopeId": self.directory_scope_id,
            "appScopeId": null,
            "startDateTime": "2024-01-01T00:00:00Z",
            "endDateTime": null,
            "memberType": "Direct",
            "roleEligibilityScheduleId": Uuid::new_v5(&Uuid::NAMESPACE_OID, self.id.as_bytes()).to_string(),
        })
    }
}

impl Tenant {
    /// Active assignments of `principal_id`, direct and transitive: a user's own, and those of
    /// every group it belongs to (listed with the group as principal); a group's own.
    pub fn transitive_role_assignments(&self, principal_id: &str) -> Vec<Assignment> {
        if let Some(index) = self
            .users
            .iter()
            .position(|u| u.id.eq_ignore_ascii_case(principal_id))
        {
            let user = &self.users[index];
            let mut out: Vec<Assignment> = user
                .directory_roles
                .iter()
                .map(|role| Assignment::new(&user.id, role))
                .collect();
            for group in self.groups_of(index) {
                out.extend(
                    group
                        .directory_roles
                        .iter()
                        .map(|role| Assignment::new(&group.id, role)),
                );
            }
            return out;
        }
        match self.group(principal_id) {
            Some(group) => group
                .directory_roles
                .iter()
                .map(|role| Assignment::new(&group.id, role))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Every PIM eligibility instance of the tenant.
    pub fn eligibility_instances(&self) -> Vec<Eligibility> {
        self.users
            .iter()
            .flat_map(|u| {
                u.eligible_roles
                    .iter()
                    .map(move |role| Eligibility::new(&u.id, role))
            })
            .collect()
    }

    /// Names of the directory roles user `index` holds actively, directly or through groups
    /// (what `transitiveMemberOf/microsoft.graph.directoryRole` lists; eligible roles are not
    /// there until activated).
    pub fn active_role_names(&self, index: usize) -> Vec<String> {
        let mut names = self.users[index].directory_roles.clone();
        for group in self.groups_of(index) {
            for role in &group.directory_roles {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(role)) {
                    names.push(role.clone());
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Fixture;

    #[test]
    fn roles_through_groups_name_the_group_and_eligibility_is_separate() {
        let fixture: Fixture = serde_json::from_value(json!({
            "users": [
                {"id": "00000000-0000-4000-8000-000000000001", "userPrincipalName": "a@x.com", "directoryRoles": ["Global Administrator"]},
                {"id": "00000000-0000-4000-8000-000000000002", "userPrincipalName": "b@x.com", "eligibleRoles": ["User Administrator"]},
                {"id": "00000000-0000-4000-8000-000000000003", "userPrincipalName": "c@x.com"}
            ],
            "groups": [
                {"id": "00000000-0000-4000-8000-0000000000a1", "members": ["c@x.com"], "directoryRoles": ["Helpdesk Administrator"]}
            ]
        }))
        .unwrap();
        let tenant = Tenant::from_fixture(fixture).unwrap();

        let a = tenant.transitive_role_assignments("00000000-0000-4000-8000-000000000001");
        let b = tenant.transitive_role_assignments("00000000-0000-4000-8000-000000000002");
        let c = tenant.transitive_role_assignments("00000000-0000-4000-8000-000000000003");

        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0].role_definition_id,
            "62e90394-69f5-4237-9190-012177145e10"
        );
        assert!(b.is_empty(), "eligible is not active");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].principal_id, "00000000-0000-4000-8000-0000000000a1");
        assert_eq!(tenant.active_role_names(2), ["Helpdesk Administrator"]);
        let eligible = tenant.eligibility_instances();
        assert_eq!(eligible.len(), 1);
        assert_eq!(
            eligible[0].principal_id,
            "00000000-0000-4000-8000-000000000002"
        );
    }
}
