//! The simulated tenant: users, their registered authentication methods (kept as the Graph
//! JSON objects Graph would list), their default-method preference, their directory roles
//! (active, PIM-eligible, or through a role-assignable group), groups, and the other directory
//! objects a group can hold (devices, service principals, organizational contacts).
//!
//! A tenant is either generated from a seed ([`generate`]) or loaded from a JSON fixture
//! ([`Fixture`]). Generated UPNs depend only on the user's index ([`upn_for_index`]), so an
//! input file made for one seed fits every seed; object ids and methods come from the seed.
//!
//! - [`roles`]: role definitions, active (transitive) assignments and eligibility instances.

mod generate;
pub mod roles;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

pub use generate::{generate, upn_for_index, GenOptions};

/// The password method's id: the same for every user in every tenant.
pub const PASSWORD_METHOD_ID: &str = "28c10230-6103-485e-b985-444c60001490";
/// Phone method id of a `mobile` phone (fixed by Graph per phone type).
pub const MOBILE_PHONE_ID: &str = "3179e48a-750b-4051-897c-87b9720928f7";
/// Phone method id of an `alternateMobile` phone.
pub const ALTERNATE_MOBILE_PHONE_ID: &str = "b6332ec1-7057-4abe-9331-3d72feddfe41";
/// Phone method id of an `office` phone.
pub const OFFICE_PHONE_ID: &str = "e37fc753-ff3b-4958-9484-eaa9425c82bc";
/// Email method id: Graph gives the (single) email method this fixed id.
pub const EMAIL_METHOD_ID: &str = "3ddfcfc8-9383-446f-83cc-3ab9be4be18f";
/// Id of the `reset-pending` group of a generated tenant (`--group-size`).
pub const RESET_PENDING_GROUP_ID: &str = "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2a10";
/// Id of the group nested inside `reset-pending` (holds the second half of its users).
pub const NESTED_GROUP_ID: &str = "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2a11";
/// Id of the role-assignable group of a generated tenant that holds an active directory role
/// (`--group-admin-rate`): its members are admins through the group.
pub const ROLE_GROUP_ID: &str = "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2a12";
/// The devices, service principal and contact `reset-pending` holds besides its users.
pub const RESET_PENDING_OBJECT_IDS: [&str; 4] = [
    "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2b01",
    "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2b02",
    "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2b03",
    "6f1c8a52-3d2e-4b8f-9a61-7c0e5d4b2b04",
];
/// The `@odata.type` given to users by `--unknown-method-rate`: a type no client knows.
pub const UNKNOWN_METHOD_TYPE: &str = "#microsoft.graph.futureQuantumAuthenticationMethod";

const ODATA_PREFIX: &str = "#microsoft.graph.";

/// Values of `userPreferredMethodForSecondaryAuthentication` that name a method.
pub const PREFERENCES: [&str; 6] = [
    "push",
    "oath",
    "voiceMobile",
    "voiceAlternateMobile",
    "voiceOffice",
    "sms",
];

/// One registered authentication method, held as the JSON object Graph lists for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Method(pub Map<String, Value>);

impl Method {
    fn text(&self, key: &str) -> &str {
        self.0.get(key).and_then(Value::as_str).unwrap_or("")
    }

    /// The full `@odata.type`.
    pub fn odata_type(&self) -> &str {
        self.text("@odata.type")
    }

    /// The method id.
    pub fn id(&self) -> &str {
        self.text("id")
    }

    /// The type stem: `phone` for `#microsoft.graph.phoneAuthenticationMethod`, else the full type.
    pub fn stem(&self) -> &str {
        let t = self.odata_type();
        t.strip_prefix(ODATA_PREFIX)
            .and_then(|s| s.strip_suffix("AuthenticationMethod"))
            .unwrap_or(t)
    }

    /// `phoneType` of a phone method (empty for other types).
    pub fn phone_type(&self) -> &str {
        self.text("phoneType")
    }

    /// Hardware OATH tokens are only visible under `/beta`; v1.0 lists every other type
    /// (QR code + PIN included).
    pub fn is_beta_only(&self) -> bool {
        self.stem() == "hardwareOath"
    }

    /// Is this the password method (never deletable)?
    pub fn is_password(&self) -> bool {
        self.stem() == "password"
    }

    /// Does this method serve the given `userPreferredMethodForSecondaryAuthentication`?
    pub fn matches_preference(&self, preferred: &str) -> bool {
        match (self.stem(), preferred) {
            ("microsoftAuthenticator", "push") => true,
            ("softwareOath" | "hardwareOath", "oath") => true,
            ("phone", "sms" | "voiceMobile") => self.phone_type() == "mobile",
            ("phone", "voiceAlternateMobile") => self.phone_type() == "alternateMobile",
            ("phone", "voiceOffice") => self.phone_type() == "office",
            _ => false,
        }
    }
}

/// A method removed by a DELETE, kept for inspection and for eventual consistency.
#[derive(Debug, Clone)]
pub struct DeletedMethod {
    /// What was deleted.
    pub method: Method,
    /// When the 204 was answered.
    pub deleted_at: DateTime<Utc>,
    /// Until then the method is still listed (`--consistency-delay-ms`).
    pub listed_until: Instant,
}

/// The QR codes of a user's QR code + PIN method (Graph's `standardQRCode` and
/// `temporaryQRCode` relationships): deleting one leaves the method, and its PIN, in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrCodes {
    /// The long-lived code printed on a badge.
    pub standard: bool,
    /// A short-lived code for a forgotten badge.
    pub temporary: bool,
}

impl Default for QrCodes {
    /// A method is created with its standard QR code and a PIN.
    fn default() -> Self {
        QrCodes {
            standard: true,
            temporary: false,
        }
    }
}

/// One user of the tenant.
#[derive(Debug, Clone)]
pub struct User {
    /// Object id (lowercase GUID).
    pub id: String,
    /// User principal name, case as created.
    pub user_principal_name: String,
    /// Display name.
    pub display_name: String,
    /// `userType`: `Member`, or `Guest` (every `#EXT#` user unless the fixture says otherwise).
    pub user_type: String,
    /// Writes to this user are refused with 403 (a protected / break-glass account).
    pub privileged: bool,
    /// Names of the directory roles assigned to the user directly and active now.
    pub directory_roles: Vec<String>,
    /// Names of the directory roles the user is eligible for through PIM (activated on demand).
    pub eligible_roles: Vec<String>,
    /// `userPreferredMethodForSecondaryAuthentication`, `None` when unset.
    pub preferred_method: Option<String>,
    /// `isSystemPreferredAuthenticationMethodEnabled`.
    pub system_preferred_enabled: bool,
    /// Currently registered methods, password first.
    pub methods: Vec<Method>,
    /// Methods deleted so far, oldest first.
    pub deleted: Vec<DeletedMethod>,
    /// The QR codes of the QR code + PIN method, when the user has one.
    pub qr_codes: QrCodes,
    /// How many times `revokeSignInSessions` took effect for this user (never for an external
    /// user: Graph answers, but their sessions live in their home tenant).
    pub sessions_revoked: u64,
    /// How many times `revokeSignInSessions` was answered for this user, with effect or not.
    pub revoke_requests: u64,
}

impl User {
    /// An external (B2B) user, `#EXT#` in the UPN: signs in through a home tenant, so
    /// revoking sessions here does nothing (Graph's `revokeSignInSessions` page).
    pub fn is_external(&self) -> bool {
        self.user_principal_name
            .to_ascii_uppercase()
            .contains("#EXT#")
    }

    /// `userType` Graph gives a user created with this UPN.
    pub fn default_user_type(upn: &str) -> &'static str {
        if upn.to_ascii_uppercase().contains("#EXT#") {
            "Guest"
        } else {
            "Member"
        }
    }

    /// The method the default preference points at, when one is registered.
    pub fn default_method(&self) -> Option<&Method> {
        let preferred = self.preferred_method.as_deref()?;
        self.methods
            .iter()
            .find(|m| m.matches_preference(preferred))
    }

    /// `systemPreferredAuthenticationMethod`: the strongest registered method when the
    /// system-preferred policy is on (a simplification of Entra's ordering).
    pub fn system_preferred_method(&self) -> Option<&'static str> {
        if !self.system_preferred_enabled {
            return None;
        }
        let has = |stem: &str| self.methods.iter().any(|m| m.stem() == stem);
        if has("fido2") {
            Some("Fido2")
        } else if has("microsoftAuthenticator") {
            Some("Push")
        } else if has("softwareOath") || has("hardwareOath") {
            Some("Oath")
        } else if self.methods.iter().any(|m| m.phone_type() == "mobile") {
            Some("Sms")
        } else {
            None
        }
    }
}

/// A group: direct user members, nested groups, other member objects, and the directory
/// roles assigned to it (a role-assignable group: its members hold them).
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Indexes of the direct user members in [`Tenant::users`].
    pub members: Vec<usize>,
    /// Ids of nested groups.
    pub groups: Vec<String>,
    /// Ids of direct members that are neither users nor groups (in [`Tenant::objects`]).
    pub objects: Vec<String>,
    /// Names of the directory roles assigned to the group, active now.
    pub directory_roles: Vec<String>,
}

/// The kind of a directory object that is neither a user nor a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `#microsoft.graph.device`.
    Device,
    /// `#microsoft.graph.servicePrincipal`.
    ServicePrincipal,
    /// `#microsoft.graph.orgContact`.
    OrgContact,
}

impl ObjectKind {
    /// The `@odata.type`.
    pub fn odata_type(self) -> &'static str {
        match self {
            ObjectKind::Device => "#microsoft.graph.device",
            ObjectKind::ServicePrincipal => "#microsoft.graph.servicePrincipal",
            ObjectKind::OrgContact => "#microsoft.graph.orgContact",
        }
    }

    /// The kind of an `@odata.type` (with or without the `#`).
    pub fn from_odata_type(odata_type: &str) -> Option<ObjectKind> {
        match odata_type.trim_start_matches('#') {
            "microsoft.graph.device" => Some(ObjectKind::Device),
            "microsoft.graph.servicePrincipal" => Some(ObjectKind::ServicePrincipal),
            "microsoft.graph.orgContact" => Some(ObjectKind::OrgContact),
            _ => None,
        }
    }
}

/// A device, service principal or organizational contact: only ever seen as a group member.
#[derive(Debug, Clone)]
pub struct DirectoryObject {
    /// Object id.
    pub id: String,
    /// What it is.
    pub kind: ObjectKind,
    /// Display name.
    pub display_name: String,
}

/// All users, groups and other objects, with lookup by id or UPN (case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct Tenant {
    /// The users, in creation order.
    pub users: Vec<User>,
    /// The groups.
    pub groups: Vec<Group>,
    /// Devices, service principals and contacts.
    pub objects: Vec<DirectoryObject>,
    by_key: HashMap<String, usize>,
}

impl Tenant {
    fn index(&mut self) {
        self.by_key.clear();
        for (i, user) in self.users.iter().enumerate() {
            self.by_key.insert(user.id.to_lowercase(), i);
            self.by_key
                .insert(user.user_principal_name.to_lowercase(), i);
        }
    }

    /// Index of the user with this object id or UPN (case-insensitive).
    pub fn find(&self, key: &str) -> Option<usize> {
        self.by_key.get(&key.to_lowercase()).copied()
    }

    /// End the consistency delay now: no deleted method is listed any more.
    pub fn settle_deletions(&mut self) {
        let now = Instant::now();
        for deleted in self.users.iter_mut().flat_map(|u| u.deleted.iter_mut()) {
            deleted.listed_until = deleted.listed_until.min(now);
        }
    }

    /// Give user `index` a new UPN, keeping its object id (what renaming an account in Entra
    /// does). Fails when another user holds that UPN.
    pub fn rename(&mut self, index: usize, upn: &str) -> Result<(), String> {
        let upn = upn.trim();
        if upn.is_empty() || !upn.contains('@') {
            return Err(format!("{upn:?} is not a user principal name"));
        }
        if self.find(upn).is_some_and(|other| other != index) {
            return Err(format!("another user already has the UPN {upn}"));
        }
        let user = self
            .users
            .get_mut(index)
            .ok_or_else(|| format!("no user #{index}"))?;
        user.user_principal_name = upn.to_string();
        self.index();
        Ok(())
    }

    /// The group with this id (case-insensitive).
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id))
    }

    /// The device, service principal or contact with this id (case-insensitive).
    pub fn object(&self, id: &str) -> Option<&DirectoryObject> {
        self.objects.iter().find(|o| o.id.eq_ignore_ascii_case(id))
    }

    /// Users of a group: direct members, or, with `transitive`, also those of nested groups
    /// (depth first, each user once, cycles ignored).
    pub fn group_users(&self, id: &str, transitive: bool) -> Option<Vec<usize>> {
        let members = self.group_members(id, transitive)?;
        Some(
            members
                .into_iter()
                .filter_map(|m| match m {
                    Member::User(i) => Some(i),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Every member of a group, as Graph lists `members` (direct) or `transitiveMembers`
    /// (nested groups themselves, then their members too): users, groups and other objects,
    /// each once, cycles ignored.
    pub fn group_members(&self, id: &str, transitive: bool) -> Option<Vec<Member>> {
        let root = self.group(id)?;
        let mut seen_users = HashSet::new();
        let mut seen_groups = HashSet::from([root.id.to_lowercase()]);
        let mut seen_objects = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(group) = stack.pop() {
            for &u in &group.members {
                if seen_users.insert(u) {
                    out.push(Member::User(u));
                }
            }
            for o in &group.objects {
                if seen_objects.insert(o.to_lowercase()) {
                    out.push(Member::Object(o.clone()));
                }
            }
            // Reverse so that nested groups are visited in their listed order.
            for nested in group.groups.iter().rev() {
                let Some(g) = self.group(nested) else {
                    continue;
                };
                if !seen_groups.insert(g.id.to_lowercase()) {
                    continue;
                }
                out.push(Member::Group(g.id.clone()));
                if transitive {
                    stack.push(g);
                }
            }
        }
        Some(out)
    }

    /// The groups user `index` belongs to, directly or through nested groups.
    pub fn groups_of(&self, index: usize) -> Vec<&Group> {
        let mut found: Vec<&Group> = self
            .groups
            .iter()
            .filter(|g| g.members.contains(&index))
            .collect();
        let mut i = 0;
        while i < found.len() {
            let child = found[i].id.clone();
            for parent in &self.groups {
                let holds = parent.groups.iter().any(|g| g.eq_ignore_ascii_case(&child));
                if holds && !found.iter().any(|f| f.id.eq_ignore_ascii_case(&parent.id)) {
                    found.push(parent);
                }
            }
            i += 1;
        }
        found
    }

    /// Build a tenant from a parsed fixture.
    pub fn from_fixture(fixture: Fixture) -> anyhow::Result<Tenant> {
        let mut tenant = Tenant::default();
        for (n, fu) in fixture.users.into_iter().enumerate() {
            let id = match fu.id {
                Some(id) => id.to_lowercase(),
                // Deterministic so a fixture without ids gives the same ids on every run.
                None => Uuid::new_v5(&Uuid::NAMESPACE_OID, fu.user_principal_name.as_bytes())
                    .to_string(),
            };
            let mut methods = vec![password_method(fixed_date(0))];
            for (k, raw) in fu.methods.into_iter().enumerate() {
                let mut m = Method(raw);
                if m.odata_type().is_empty() {
                    anyhow::bail!(
                        "fixture user {} ({}): method {} has no \"@odata.type\"",
                        n,
                        fu.user_principal_name,
                        k
                    );
                }
                if m.is_password() {
                    continue;
                }
                if m.id().is_empty() {
                    let id = match (m.stem(), m.phone_type()) {
                        ("phone", t) => phone_id(t).unwrap_or(MOBILE_PHONE_ID).to_string(),
                        ("email", _) => EMAIL_METHOD_ID.to_string(),
                        _ => Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{id}/{k}").as_bytes())
                            .to_string(),
                    };
                    m.0.insert("id".into(), Value::String(id));
                }
                methods.push(m);
            }
            let display_name = fu
                .display_name
                .unwrap_or_else(|| display_name_from_upn(&fu.user_principal_name));
            let user_type = fu
                .user_type
                .unwrap_or_else(|| User::default_user_type(&fu.user_principal_name).into());
            let qr_codes = match fu.qr_codes {
                None => QrCodes::default(),
                Some(codes) => QrCodes {
                    standard: codes.iter().any(|c| c == "standard"),
                    temporary: codes.iter().any(|c| c == "temporary"),
                },
            };
            let mut user = User {
                id,
                user_principal_name: fu.user_principal_name,
                display_name,
                user_type,
                privileged: fu.privileged,
                directory_roles: fu.directory_roles,
                eligible_roles: fu.eligible_roles,
                preferred_method: None,
                system_preferred_enabled: false,
                methods,
                deleted: Vec::new(),
                qr_codes,
                sessions_revoked: 0,
                revoke_requests: 0,
            };
            user.preferred_method = match fu.default_method {
                Some(p) if PREFERENCES.contains(&p.as_str()) => Some(p),
                Some(p) => anyhow::bail!(
                    "fixture user {}: defaultMethod {:?} is not one of {:?}",
                    user.user_principal_name,
                    p,
                    PREFERENCES
                ),
                None => derived_preference(&user.methods, false),
            };
            tenant.users.push(user);
        }
        tenant.index();
        for fo in fixture.objects {
            let kind = ObjectKind::from_odata_type(&fo.odata_type).ok_or_else(|| {
                anyhow::anyhow!(
                    "fixture object {}: \"@odata.type\" {:?} is not a device, service principal or orgContact",
                    fo.id,
                    fo.odata_type
                )
            })?;
            tenant.objects.push(DirectoryObject {
                display_name: fo.display_name.unwrap_or_else(|| fo.id.clone()),
                id: fo.id.to_lowercase(),
                kind,
            });
        }
        for fg in fixture.groups {
            let mut members = Vec::new();
            let mut objects = Vec::new();
            for m in &fg.members {
                if let Some(i) = tenant.find(m) {
                    members.push(i);
                } else if let Some(o) = tenant.object(m) {
                    objects.push(o.id.clone());
                } else {
                    anyhow::bail!(
                        "fixture group {}: member {:?} is neither a fixture user nor a fixture object",
                        fg.id,
                        m
                    );
                }
            }
            tenant.groups.push(Group {
                display_name: fg.display_name.unwrap_or_else(|| fg.id.clone()),
                id: fg.id,
                members,
                groups: fg.groups,
                objects,
                directory_roles: fg.directory_roles,
            });
        }
        Ok(tenant)
    }
}

/// The fixture file (`--tenant FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// The users.
    pub users: Vec<FixtureUser>,
    /// The groups.
    #[serde(default)]
    pub groups: Vec<FixtureGroup>,
    /// Devices, service principals and contacts (group members that are not users).
    #[serde(default)]
    pub objects: Vec<FixtureObject>,
}

impl Fixture {
    /// Read and parse a fixture file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Fixture> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read tenant fixture {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("tenant fixture {} is not valid: {e}", path.display()))
    }
}

/// A user in the fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureUser {
    /// Object id; derived from the UPN when absent.
    pub id: Option<String>,
    /// UPN.
    pub user_principal_name: String,
    /// Display name; derived from the UPN when absent.
    pub display_name: Option<String>,
    /// Writes are refused with 403.
    #[serde(default)]
    pub privileged: bool,
    /// `userType` (`Member` or `Guest`); `Guest` for an `#EXT#` UPN when absent.
    pub user_type: Option<String>,
    /// Directory roles assigned directly and active.
    #[serde(default)]
    pub directory_roles: Vec<String>,
    /// Directory roles the user is eligible for through PIM.
    #[serde(default)]
    pub eligible_roles: Vec<String>,
    /// QR codes of a QR code + PIN method (`standard`, `temporary`); `["standard"]` when absent.
    pub qr_codes: Option<Vec<String>>,
    /// `userPreferredMethodForSecondaryAuthentication`; derived from the methods when absent.
    pub default_method: Option<String>,
    /// Graph-shaped method objects (the password is added when missing; ids filled when absent).
    #[serde(default)]
    pub methods: Vec<Map<String, Value>>,
}

/// A group in the fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureGroup {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Direct members: users by UPN or id, other objects (of `objects`) by id.
    #[serde(default)]
    pub members: Vec<String>,
    /// Ids of nested groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Directory roles assigned to the group (a role-assignable group), active.
    #[serde(default)]
    pub directory_roles: Vec<String>,
}

/// A device, service principal or contact in the fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureObject {
    /// Object id.
    pub id: String,
    /// `#microsoft.graph.device`, `#microsoft.graph.servicePrincipal` or `#microsoft.graph.orgContact`.
    #[serde(rename = "@odata.type")]
    pub odata_type: String,
    /// Display name.
    pub display_name: Option<String>,
}

/// A member of a group, as [`Tenant::group_members`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A user (index in [`Tenant::users`]).
    User(usize),
    /// A nested group (its id).
    Group(String),
    /// A device, service principal or contact (its id in [`Tenant::objects`]).
    Object(String),
}

pub(super) fn fixed_date(days: i64) -> DateTime<Utc> {
    // 2020-01-01T00:00:00Z is a valid instant, so `single()` cannot be None here.
    Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
        + ChronoDuration::days(days)
}

/// Graph's `createdDateTime` format.
pub fn graph_date(d: DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn method(stem: &str, id: &str, fields: Value) -> Method {
    let mut map = Map::new();
    map.insert(
        "@odata.type".into(),
        Value::String(format!("{ODATA_PREFIX}{stem}AuthenticationMethod")),
    );
    map.insert("id".into(), Value::String(id.to_string()));
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    Method(map)
}

/// The password method (always registered).
pub fn password_method(created: DateTime<Utc>) -> Method {
    method(
        "password",
        PASSWORD_METHOD_ID,
        json!({"password": null, "createdDateTime": graph_date(created)}),
    )
}

/// The fixed id Graph uses for a phone type.
pub fn phone_id(phone_type: &str) -> Option<&'static str> {
    match phone_type {
        "mobile" => Some(MOBILE_PHONE_ID),
        "alternateMobile" => Some(ALTERNATE_MOBILE_PHONE_ID),
        "office" => Some(OFFICE_PHONE_ID),
        _ => None,
    }
}

/// A phone method as Graph lists it.
pub fn phone_method(phone_type: &str, number: &str) -> Method {
    method(
        "phone",
        phone_id(phone_type).unwrap_or(MOBILE_PHONE_ID),
        json!({"phoneNumber": number, "phoneType": phone_type, "smsSignInState": "notAllowedByPolicy"}),
    )
}

/// An email method as Graph lists it.
pub fn email_method(address: &str) -> Method {
    method("email", EMAIL_METHOD_ID, json!({"emailAddress": address}))
}

/// The preference Entra would have set: `push` with an Authenticator, else `sms` (or
/// `voiceMobile`) with a mobile phone, else `oath`, else an office/alternate phone.
pub(super) fn derived_preference(methods: &[Method], voice: bool) -> Option<String> {
    let has = |stem: &str| methods.iter().any(|m| m.stem() == stem);
    let phone = |t: &str| methods.iter().any(|m| m.phone_type() == t);
    let p = if has("microsoftAuthenticator") {
        "push"
    } else if phone("mobile") {
        if voice {
            "voiceMobile"
        } else {
            "sms"
        }
    } else if has("softwareOath") || has("hardwareOath") {
        "oath"
    } else if phone("office") {
        "voiceOffice"
    } else if phone("alternateMobile") {
        "voiceAlternateMobile"
    } else {
        return None;
    };
    Some(p.to_string())
}

pub(super) fn display_name_from_upn(upn: &str) -> String {
    let local = upn.split(['@', '#']).next().unwrap_or(upn);
    local
        .split(['.', '_'])
        .filter(|s| !s.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
