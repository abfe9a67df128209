//! The simulated tenant: users, their registered authentication methods (kept as the Graph
//! JSON objects Graph would list), their default-method preference, and groups.
//!
//! A tenant is either generated from a seed ([`generate`]) or loaded from a JSON fixture
//! ([`Fixture`]). Generated UPNs depend only on the user's index ([`upn_for_index`]), so an
//! input file made for one seed fits every seed; object ids and methods come from the seed.

mod generate;

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

    /// Hardware OATH and QR code PIN are only visible under `/beta`.
    pub fn is_beta_only(&self) -> bool {
        matches!(self.stem(), "hardwareOath" | "qrCodePin")
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

/// One user of the tenant.
#[derive(Debug, Clone)]
pub struct User {
    /// Object id (lowercase GUID).
    pub id: String,
    /// User principal name, case as created.
    pub user_principal_name: String,
    /// Display name.
    pub display_name: String,
    /// Writes to this user are refused with 403 (a protected / break-glass account).
    pub privileged: bool,
    /// Names of the directory roles the user holds.
    pub directory_roles: Vec<String>,
    /// `userPreferredMethodForSecondaryAuthentication`, `None` when unset.
    pub preferred_method: Option<String>,
    /// `isSystemPreferredAuthenticationMethodEnabled`.
    pub system_preferred_enabled: bool,
    /// Currently registered methods, password first.
    pub methods: Vec<Method>,
    /// Methods deleted so far, oldest first.
    pub deleted: Vec<DeletedMethod>,
    /// How many times `revokeSignInSessions` was called for this user.
    pub sessions_revoked: u64,
}

impl User {
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

/// A group: direct user members and nested groups.
#[derive(Debug, Clone)]
pub struct Group {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Indexes of the direct user members in [`Tenant::users`].
    pub members: Vec<usize>,
    /// Ids of nested groups.
    pub groups: Vec<String>,
}

/// All users and groups, with lookup by id or UPN (case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct Tenant {
    /// The users, in creation order.
    pub users: Vec<User>,
    /// The groups.
    pub groups: Vec<Group>,
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

    /// The group with this id (case-insensitive).
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id))
    }

    /// Users of a group: direct members, or, with `transitive`, also those of nested groups
    /// (depth first, each user once, cycles ignored).
    pub fn group_users(&self, id: &str, transitive: bool) -> Option<Vec<usize>> {
        let root = self.group(id)?;
        let mut seen_users = HashSet::new();
        let mut seen_groups = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(group) = stack.pop() {
            if !seen_groups.insert(group.id.to_lowercase()) {
                continue;
            }
            for &u in &group.members {
                if seen_users.insert(u) {
                    out.push(u);
                }
            }
            if transitive {
                // Reverse so that nested groups are visited in their listed order.
                for nested in group.groups.iter().rev() {
                    if let Some(g) = self.group(nested) {
                        stack.push(g);
                    }
                }
            }
        }
        Some(out)
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
            let mut user = User {
                id,
                user_principal_name: fu.user_principal_name,
                display_name,
                privileged: fu.privileged,
                directory_roles: fu.directory_roles,
                preferred_method: None,
                system_preferred_enabled: false,
                methods,
                deleted: Vec::new(),
                sessions_revoked: 0,
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
        for fg in fixture.groups {
            let mut members = Vec::new();
            for m in &fg.members {
                let i = tenant.find(m).ok_or_else(|| {
                    anyhow::anyhow!(
                        "fixture group {}: member {:?} is not a fixture user",
                        fg.id,
                        m
                    )
                })?;
                members.push(i);
            }
            tenant.groups.push(Group {
                display_name: fg.display_name.unwrap_or_else(|| fg.id.clone()),
                id: fg.id,
                members,
                groups: fg.groups,
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
    /// Directory roles held.
    #[serde(default)]
    pub directory_roles: Vec<String>,
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
    /// Direct user members by UPN or id.
    #[serde(default)]
    pub members: Vec<String>,
    /// Ids of nested groups.
    #[serde(default)]
    pub groups: Vec<String>,
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
