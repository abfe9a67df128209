//! The simulated tenant: users, their registered authentication methods (kept as the Graph
//! JSON objects Graph would list), their default-method preference, and groups.
//!
//! A tenant is either generated from a seed ([`generate`]) or loaded from a JSON fixture
//! ([`Fixture`]). Generated UPNs depend only on the user's index ([`upn_for_index`]), so an
//! input file made for one seed fits every seed; object ids and methods come from the seed.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

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

const FIRST_NAMES: [&str; 50] = [
    "adele", "alex", "allan", "amber", "ben", "bianca", "carlos", "chloe", "daniel", "diego",
    "elena", "emily", "farah", "felix", "grace", "gustav", "hana", "henry", "irene", "isaac",
    "jana", "joni", "karim", "kate", "lars", "lee", "lidia", "lynne", "megan", "miriam", "nadia",
    "nestor", "olga", "omar", "patti", "pradeep", "quinn", "raul", "rosa", "sanjay", "sofia",
    "tariq", "tess", "ulla", "victor", "wanda", "xavier", "yara", "yusuf", "zoe",
];

const LAST_NAMES: [&str; 50] = [
    "vance", "wilber", "deyoung", "brown", "adams", "berg", "castro", "dubois", "eriksen",
    "fischer", "garcia", "hansen", "ivanova", "jensen", "kowalski", "larsen", "moreau", "novak",
    "olsen", "petrov", "quispe", "rossi", "schmidt", "tanaka", "ueda", "varga", "weber", "xu",
    "young", "zimmer", "abbott", "baker", "clark", "dalton", "evans", "foster", "gray", "hughes",
    "irwin", "jordan", "keller", "lopez", "morgan", "nash", "owens", "parker", "reyes", "sutton",
    "turner", "walsh",
];

/// The UPN of generated user `index` (0-based): a function of the index alone.
///
/// `first.last@contoso.com` for the first 2,500 users, `first.last{index}@contoso.com` beyond;
/// every 25th user (`index % 25 == 24`) is a guest `first.last_fabrikam.com#EXT#@contoso.onmicrosoft.com`.
pub fn upn_for_index(index: usize) -> String {
    let first = FIRST_NAMES[index % 50];
    let last = LAST_NAMES[(index / 50) % 50];
    let suffix = if index >= 2_500 {
        index.to_string()
    } else {
        String::new()
    };
    if index % 25 == 24 {
        format!("{first}.{last}{suffix}_fabrikam.com#EXT#@contoso.onmicrosoft.com")
    } else {
        format!("{first}.{last}{suffix}@contoso.com")
    }
}

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

/// Knobs of a generated tenant.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Fewest removable methods a user gets (0 lets ~3% of users be clean already).
    pub methods_min: usize,
    /// Most removable methods a user gets.
    pub methods_max: usize,
    /// Fraction of users given a method of [`UNKNOWN_METHOD_TYPE`].
    pub unknown_method_rate: f64,
    /// Fraction of users marked privileged (writes refused with 403).
    pub privileged_rate: f64,
    /// Fraction of users holding a directory role.
    pub admin_rate: f64,
    /// With N > 0: a `reset-pending` group ([`RESET_PENDING_GROUP_ID`]) of the first N users,
    /// the second half of them through a nested group ([`NESTED_GROUP_ID`]).
    pub group_size: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            methods_min: 0,
            methods_max: 6,
            unknown_method_rate: 0.0,
            privileged_rate: 0.0,
            admin_rate: 0.0,
            group_size: 0,
        }
    }
}

const ROLES: [&str; 4] = [
    "Global Administrator",
    "Privileged Role Administrator",
    "User Administrator",
    "Authentication Administrator",
];

/// Generate `n` users deterministically from `seed`.
///
/// Each user draws from its own random stream (the seed, stream = index), so user `i` is the
/// same whatever `n` is.
pub fn generate(n: usize, seed: u64, options: &GenOptions) -> Tenant {
    let mut tenant = Tenant::default();
    for i in 0..n {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        tenant.users.push(generate_user(i, &mut rng, options));
    }
    tenant.index();
    if options.group_size > 0 {
        let size = options.group_size.min(n);
        let half = size / 2;
        tenant.groups.push(Group {
            id: RESET_PENDING_GROUP_ID.into(),
            display_name: "reset-pending".into(),
            members: (0..half).collect(),
            groups: vec![NESTED_GROUP_ID.into()],
        });
        tenant.groups.push(Group {
            id: NESTED_GROUP_ID.into(),
            display_name: "reset-pending-nested".into(),
            // Overlaps the parent by one user so transitive listing must deduplicate.
            members: (half.saturating_sub(1)..size).collect(),
            groups: Vec::new(),
        });
    }
    tenant
}

fn random_uuid(rng: &mut ChaCha8Rng) -> String {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn fixed_date(days: i64) -> DateTime<Utc> {
    // 2020-01-01T00:00:00Z is a valid instant, so `single()` cannot be None here.
    Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
        + ChronoDuration::days(days)
}

fn random_date(rng: &mut ChaCha8Rng) -> DateTime<Utc> {
    fixed_date(rng.random_range(0..1_800)) + ChronoDuration::seconds(rng.random_range(0..86_400))
}

/// Graph's `createdDateTime` format.
pub fn graph_date(d: DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn method(stem: &str, id: &str, fields: Value) -> Method {
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

fn random_phone(rng: &mut ChaCha8Rng) -> String {
    format!("+1 555555{:04}", rng.random_range(0..10_000))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Mobile,
    AlternateMobile,
    Office,
    Email,
    Authenticator,
    Fido2,
    SoftwareOath,
    Tap,
    Whfb,
    Platform,
    External,
    HardwareOath,
    QrCodePin,
}

/// Kinds that may be registered more than once.
fn repeatable(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Authenticator
            | Kind::Fido2
            | Kind::SoftwareOath
            | Kind::Whfb
            | Kind::Platform
            | Kind::External
            | Kind::HardwareOath
    )
}

fn make_method(kind: Kind, rng: &mut ChaCha8Rng, upn: &str) -> Method {
    let created = graph_date(random_date(rng));
    let id = random_uuid(rng);
    match kind {
        Kind::Mobile => phone_method("mobile", &random_phone(rng)),
        Kind::AlternateMobile => phone_method("alternateMobile", &random_phone(rng)),
        Kind::Office => phone_method("office", &random_phone(rng)),
        Kind::Email => {
            let local = upn.split(['@', '#']).next().unwrap_or("user");
            email_method(&format!("{local}@personal.example.com"))
        }
        Kind::Authenticator => {
            const DEVICES: [&str; 4] = ["iPhone 15", "Pixel 8", "Galaxy S23", "iPhone 13"];
            method(
                "microsoftAuthenticator",
                &id,
                json!({
                    "displayName": DEVICES[rng.random_range(0..DEVICES.len())],
                    "deviceTag": "SoftwareTokenActivated",
                    "phoneAppVersion": format!("6.2{:03}.{:04}", rng.random_range(300..512), rng.random_range(1..9999)),
                    "createdDateTime": created,
                }),
            )
        }
        Kind::Fido2 => {
            const KEYS: [(&str, &str); 3] = [
                ("YubiKey 5 NFC", "2fc0579f-8113-47ea-b116-bb5a8db9202a"),
                ("YubiKey 5Ci", "c5ef55ff-ad9a-4b9f-b580-adebafe026d0"),
                (
                    "Feitian ePass FIDO2",
                    "833b721a-ff5f-4d00-bb2e-bdda3ec01e29",
                ),
            ];
            let (model, aaguid) = KEYS[rng.random_range(0..KEYS.len())];
            method(
                "fido2",
                &id,
                json!({
                    "displayName": format!("{model} key"),
                    "model": model,
                    "aaGuid": aaguid,
                    "attestationLevel": "attested",
                    "attestationCertificates": [],
                    "createdDateTime": created,
                }),
            )
        }
        Kind::SoftwareOath => method("softwareOath", &id, json!({"secretKey": null})),
        Kind::Tap => method(
            "temporaryAccessPass",
            &id,
            json!({
                "temporaryAccessPass": null,
                "createdDateTime": created,
                "startDateTime": created,
                "lifetimeInMinutes": 60,
                "isUsableOnce": false,
                "isUsable": false,
                "methodUsabilityReason": "Expired",
            }),
        ),
        Kind::Whfb => method(
            "windowsHelloForBusiness",
            &id,
            json!({
                "displayName": format!("DESKTOP-{:06X}", rng.random_range(0..0xFF_FFFF)),
                "keyStrength": "normal",
                "createdDateTime": created,
            }),
        ),
        Kind::Platform => method(
            "platformCredential",
            &id,
            json!({
                "displayName": "MacBook Pro",
                "keyStrength": "strong",
                "platform": "macOS",
                "createdDateTime": created,
            }),
        ),
        Kind::External => method(
            "external",
            &id,
            json!({
                "displayName": "Contoso external MFA",
                "configurationId": "b9a5b7a2-5a55-4d3f-a5d1-5c1fb4f5a3e1",
                "createdDateTime": created,
            }),
        ),
        Kind::HardwareOath => method(
            "hardwareOath",
            &id,
            json!({
                "displayName": format!("Token {:06}", rng.random_range(0..1_000_000)),
                "serialNumber": format!("SN{:08}", rng.random_range(0..100_000_000)),
                "manufacturer": "Contoso Tokens",
                "model": "OATH-TOTP-6",
                "createdDateTime": created,
            }),
        ),
        Kind::QrCodePin => method("qrCodePin", &id, json!({"createdDateTime": created})),
    }
}

/// The preference Entra would have set: `push` with an Authenticator, else `sms` (or
/// `voiceMobile`) with a mobile phone, else `oath`, else an office/alternate phone.
fn derived_preference(methods: &[Method], voice: bool) -> Option<String> {
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

fn display_name_from_upn(upn: &str) -> String {
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

fn generate_user(index: usize, rng: &mut ChaCha8Rng, options: &GenOptions) -> User {
    let upn = upn_for_index(index);
    let id = random_uuid(rng);
    let mut kinds: Vec<Kind> = Vec::new();
    let clean = options.methods_min == 0 && rng.random_bool(0.03);
    if !clean {
        let chances: [(Kind, f64); 12] = [
            (Kind::Mobile, 0.80),
            (Kind::Office, 0.08),
            (Kind::Email, 0.30),
            (Kind::Authenticator, 0.60),
            (Kind::Fido2, 0.15),
            (Kind::SoftwareOath, 0.15),
            (Kind::Tap, 0.03),
            (Kind::Whfb, 0.20),
            (Kind::Platform, 0.03),
            (Kind::External, 0.02),
            (Kind::HardwareOath, 0.03),
            (Kind::QrCodePin, 0.02),
        ];
        for (kind, p) in chances {
            if rng.random_bool(p) {
                kinds.push(kind);
                if kind == Kind::Mobile && rng.random_bool(0.12) {
                    kinds.push(Kind::AlternateMobile);
                }
                if kind == Kind::Authenticator && rng.random_bool(0.25) {
                    kinds.push(Kind::Authenticator);
                }
            }
        }
        let max = options.methods_max.max(options.methods_min);
        while kinds.len() > max {
            let i = rng.random_range(0..kinds.len());
            let removed = kinds.remove(i);
            if removed == Kind::Mobile {
                // An alternateMobile cannot exist without a mobile.
                kinds.retain(|k| *k != Kind::AlternateMobile);
            }
        }
        const FILL: [Kind; 9] = [
            Kind::Authenticator,
            Kind::Mobile,
            Kind::SoftwareOath,
            Kind::Fido2,
            Kind::Whfb,
            Kind::Email,
            Kind::Office,
            Kind::Authenticator,
            Kind::Fido2,
        ];
        while kinds.len() < options.methods_min {
            let kind = FILL[rng.random_range(0..FILL.len())];
            if repeatable(kind) || !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    let mut methods = vec![password_method(random_date(rng))];
    for kind in kinds {
        methods.push(make_method(kind, rng, &upn));
    }
    if rng.random_bool(options.unknown_method_rate.clamp(0.0, 1.0)) {
        let created = graph_date(random_date(rng));
        let mut m = Map::new();
        m.insert(
            "@odata.type".into(),
            Value::String(UNKNOWN_METHOD_TYPE.into()),
        );
        m.insert("id".into(), Value::String(random_uuid(rng)));
        m.insert("createdDateTime".into(), Value::String(created));
        methods.push(Method(m));
    }
    let privileged = rng.random_bool(options.privileged_rate.clamp(0.0, 1.0));
    let directory_roles = if rng.random_bool(options.admin_rate.clamp(0.0, 1.0)) {
        vec![ROLES[rng.random_range(0..ROLES.len())].to_string()]
    } else {
        Vec::new()
    };
    let voice = rng.random_bool(0.2);
    User {
        id,
        display_name: display_name_from_upn(&upn),
        user_principal_name: upn,
        privileged,
        directory_roles,
        preferred_method: derived_preference(&methods, voice),
        system_preferred_enabled: false,
        methods,
        deleted: Vec::new(),
        sessions_revoked: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upns_depend_on_the_index_only() {
        assert_eq!(upn_for_index(0), "adele.vance@contoso.com");
        assert_eq!(upn_for_index(51), "alex.wilber@contoso.com");
        assert_eq!(
            upn_for_index(24),
            "lars.vance_fabrikam.com#EXT#@contoso.onmicrosoft.com"
        );
        assert_eq!(upn_for_index(2_500), "adele.vance2500@contoso.com");
        let a = generate(30, 1, &GenOptions::default());
        let b = generate(30, 2, &GenOptions::default());
        assert_eq!(
            a.users[7].user_principal_name,
            b.users[7].user_principal_name
        );
        assert_ne!(a.users[7].id, b.users[7].id);
    }

    #[test]
    fn generated_upns_are_unique_and_generation_is_deterministic() {
        let a = generate(3_000, 9, &GenOptions::default());
        let upns: HashSet<_> = a.users.iter().map(|u| &u.user_principal_name).collect();
        assert_eq!(upns.len(), 3_000);
        let b = generate(3_000, 9, &GenOptions::default());
        assert_eq!(a.users[1234].methods, b.users[1234].methods);
    }

    #[test]
    fn method_counts_respect_min_and_max() {
        let options = GenOptions {
            methods_min: 2,
            methods_max: 5,
            ..GenOptions::default()
        };
        let t = generate(500, 3, &options);
        for u in &t.users {
            let removable = u.methods.iter().filter(|m| !m.is_password()).count();
            assert!((2..=5).contains(&removable), "{removable}");
            let alt = u
                .methods
                .iter()
                .any(|m| m.phone_type() == "alternateMobile");
            let mobile = u.methods.iter().any(|m| m.phone_type() == "mobile");
            assert!(!alt || mobile);
        }
    }
}
