//! Generated tenants: users made from a seed, so that a benchmark or a test gets the same
//! users every run. UPNs depend only on the user's index ([`upn_for_index`]), so an input
//! file made for one seed fits every seed; object ids and methods come from the seed.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::{
    derived_preference, display_name_from_upn, email_method, fixed_date, graph_date, method,
    password_method, phone_method, DirectoryObject, Group, Method, ObjectKind, QrCodes, Tenant,
    User, NESTED_GROUP_ID, RESET_PENDING_GROUP_ID, RESET_PENDING_OBJECT_IDS, ROLE_GROUP_ID,
    UNKNOWN_METHOD_TYPE,
};

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
    /// Fraction of users holding a directory role, assigned directly and active.
    pub admin_rate: f64,
    /// Fraction of users eligible for a directory role through PIM (not active until
    /// activated: invisible to `transitiveMemberOf`).
    pub eligible_admin_rate: f64,
    /// Fraction of users holding a directory role through the role-assignable group
    /// [`ROLE_GROUP_ID`] (Privileged Authentication Administrator).
    pub group_admin_rate: f64,
    /// With N > 0: a `reset-pending` group ([`RESET_PENDING_GROUP_ID`]) of the first N users,
    /// the second half of them through a nested group ([`NESTED_GROUP_ID`]); it also holds two
    /// devices, a service principal and a contact ([`RESET_PENDING_OBJECT_IDS`]).
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
            eligible_admin_rate: 0.0,
            group_admin_rate: 0.0,
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
    let mut role_group_members = Vec::new();
    for i in 0..n {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let (user, through_group) = generate_user(i, &mut rng, options);
        tenant.users.push(user);
        if through_group {
            role_group_members.push(i);
        }
    }
    tenant.index();
    if !role_group_members.is_empty() {
        tenant.groups.push(Group {
            id: ROLE_GROUP_ID.into(),
            display_name: "authentication-admins".into(),
            members: role_group_members,
            directory_roles: vec!["Privileged Authentication Administrator".into()],
            ..Group::default()
        });
    }
    if options.group_size > 0 {
        let size = options.group_size.min(n);
        let half = size / 2;
        let kinds = [
            (ObjectKind::Device, "DESKTOP-KIOSK01"),
            (ObjectKind::Device, "DESKTOP-KIOSK02"),
            (ObjectKind::ServicePrincipal, "Provisioning connector"),
            (ObjectKind::OrgContact, "Facilities contractor"),
        ];
        for (id, (kind, name)) in RESET_PENDING_OBJECT_IDS.iter().zip(kinds) {
            tenant.objects.push(DirectoryObject {
                id: (*id).into(),
                kind,
                display_name: name.into(),
            });
        }
        tenant.groups.push(Group {
            id: RESET_PENDING_GROUP_ID.into(),
            display_name: "reset-pending".into(),
            members: (0..half).collect(),
            groups: vec![NESTED_GROUP_ID.into()],
            objects: RESET_PENDING_OBJECT_IDS
                .iter()
                .map(|id| (*id).into())
                .collect(),
            ..Group::default()
        });
        tenant.groups.push(Group {
            id: NESTED_GROUP_ID.into(),
            display_name: "reset-pending-nested".into(),
            // Overlaps the parent by one user so transitive listing must deduplicate.
            members: (half.saturating_sub(1)..size).collect(),
            ..Group::default()
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

fn random_date(rng: &mut ChaCha8Rng) -> DateTime<Utc> {
    fixed_date(rng.random_range(0..1_800)) + ChronoDuration::seconds(rng.random_range(0..86_400))
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

/// User `index`, and whether it holds its role through [`ROLE_GROUP_ID`].
fn generate_user(index: usize, rng: &mut ChaCha8Rng, options: &GenOptions) -> (User, bool) {
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
    // Drawn after everything else, so that the users of earlier builds stay the same.
    let eligible_roles = if rng.random_bool(options.eligible_admin_rate.clamp(0.0, 1.0)) {
        vec![ROLES[rng.random_range(0..ROLES.len())].to_string()]
    } else {
        Vec::new()
    };
    let through_group = rng.random_bool(options.group_admin_rate.clamp(0.0, 1.0));
    let user = User {
        id,
        display_name: display_name_from_upn(&upn),
        user_type: User::default_user_type(&upn).into(),
        user_principal_name: upn,
        privileged,
        directory_roles,
        eligible_roles,
        preferred_method: derived_preference(&methods, voice),
        system_preferred_enabled: false,
        methods,
        deleted: Vec::new(),
        qr_codes: QrCodes::default(),
        sessions_revoked: 0,
        revoke_requests: 0,
    };
    (user, through_group)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

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
