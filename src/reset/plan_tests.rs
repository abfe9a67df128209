//! Unit tests of the reset plan: the default-method and alternate-mobile rules, the scope and
//! the outcome, without HTTP. Longer than ~600 lines because every kind and every default
//! value is spelled out: a change to a rule shows as a changed line here. With these tests
//! alone, `cargo mutants --file src/reset/plan.rs -- --lib` leaves no mutant alive.

use super::*;
use serde_json::json;

use MethodKind::{AlternateMobilePhone, MobilePhone, OfficePhone, OtherPhone};

const AUTHENTICATOR: MethodKind = MethodKind::MicrosoftAuthenticator;
const SOFTWARE_OATH: MethodKind = MethodKind::SoftwareOath;
const HARDWARE_OATH: MethodKind = MethodKind::HardwareOath;
const EMAIL: MethodKind = MethodKind::Email;
const FIDO2: MethodKind = MethodKind::Fido2;
const HELLO: MethodKind = MethodKind::WindowsHelloForBusiness;
const TAP: MethodKind = MethodKind::TemporaryAccessPass;

/// Every kind there is.
const ALL_KINDS: [MethodKind; 16] = [
    MethodKind::Password,
    MobilePhone,
    AlternateMobilePhone,
    OfficePhone,
    OtherPhone,
    EMAIL,
    AUTHENTICATOR,
    FIDO2,
    SOFTWARE_OATH,
    TAP,
    HELLO,
    MethodKind::PlatformCredential,
    MethodKind::External,
    HARDWARE_OATH,
    MethodKind::QrCodePin,
    MethodKind::Unknown,
];

/// Every removable kind, in the order a listing could give them (the mobile first).
const EVERY_KIND: [MethodKind; 10] = [
    MobilePhone,
    AUTHENTICATOR,
    EMAIL,
    AlternateMobilePhone,
    SOFTWARE_OATH,
    FIDO2,
    OfficePhone,
    HARDWARE_OATH,
    HELLO,
    TAP,
];

fn ordered(kinds: &[MethodKind], default: Option<DefaultMethod>) -> Vec<MethodKind> {
    order(kinds.to_vec(), |k| *k, default)
}

fn position(kinds: &[MethodKind], kind: MethodKind) -> usize {
    kinds
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_else(|| panic!("{kind:?} not in {kinds:?}"))
}

// --- the default-method rule ---

#[test]
fn the_default_goes_last_whatever_its_kind() {
    for default in DefaultMethod::ALL {
        if default == DefaultMethod::VoiceAlternateMobile {
            continue; // moved to the mobile first: see the alternate-mobile tests
        }
        let order = ordered(&EVERY_KIND, Some(default));
        let served: Vec<MethodKind> = EVERY_KIND
            .into_iter()
            .filter(|k| default.served_by(*k))
            .collect();
        assert!(!served.is_empty(), "{default:?} serves one of EVERY_KIND");
        let tail = &order[order.len() - served.len()..];
        assert_eq!(tail, served, "{default:?}: {order:?}");
        assert_eq!(order.len(), EVERY_KIND.len(), "nothing dropped: {order:?}");
    }
}

#[test]
fn an_authenticator_default_goes_after_the_phones_and_the_oath_tokens() {
    let order = ordered(
        &[
            AUTHENTICATOR,
            MobilePhone,
            SOFTWARE_OATH,
            EMAIL,
            OfficePhone,
        ],
        Some(DefaultMethod::Push),
    );
    assert_eq!(
        order,
        [
            EMAIL,
            SOFTWARE_OATH,
            OfficePhone,
            MobilePhone,
            AUTHENTICATOR
        ]
    );
}

#[test]
fn an_oath_default_keeps_both_tokens_last() {
    let order = ordered(
        &[HARDWARE_OATH, MobilePhone, SOFTWARE_OATH, AUTHENTICATOR],
        Some(DefaultMethod::Oath),
    );
    assert_eq!(
        order,
        [AUTHENTICATOR, MobilePhone, HARDWARE_OATH, SOFTWARE_OATH]
    );
}

#[test]
fn an_office_phone_default_goes_after_the_mobile() {
    // The mobile goes after the other phones: unless the office phone is the default.
    let order = ordered(
        &[OfficePhone, MobilePhone, AUTHENTICATOR],
        Some(DefaultMethod::VoiceOffice),
    );
    assert_eq!(order, [AUTHENTICATOR, MobilePhone, OfficePhone]);
}

#[test]
fn a_mobile_default_by_sms_or_voice_goes_last() {
    for default in [DefaultMethod::Sms, DefaultMethod::VoiceMobile] {
        let order = ordered(&[MobilePhone, OfficePhone, AUTHENTICATOR], Some(default));
        assert_eq!(
            order,
            [OfficePhone, AUTHENTICATOR, MobilePhone],
            "{default:?}"
        );
    }
}

#[test]
fn methods_that_cannot_be_the_default_go_first_in_listed_order() {
    let order = ordered(
        &[
            AUTHENTICATOR,
            FIDO2,
            MobilePhone,
            EMAIL,
            SOFTWARE_OATH,
            HELLO,
            TAP,
        ],
        Some(DefaultMethod::Push),
    );
    assert_eq!(
        order,
        [
            FIDO2,
            EMAIL,
            HELLO,
            TAP,
            SOFTWARE_OATH,
            MobilePhone,
            AUTHENTICATOR
        ]
    );
}

#[test]
fn without_a_known_default_the_candidates_keep_their_listed_order_but_the_mobile() {
    let order = ordered(
        &[
            MobilePhone,
            AUTHENTICATOR,
            EMAIL,
            OfficePhone,
            SOFTWARE_OATH,
        ],
        None,
    );
    assert_eq!(
        order,
        [
            EMAIL,
            AUTHENTICATOR,
            OfficePhone,
            SOFTWARE_OATH,
            MobilePhone
        ]
    );
}

#[test]
fn a_default_no_target_serves_changes_nothing_but_the_mobile_rule() {
    let order = ordered(
        &[MobilePhone, AUTHENTICATOR, OfficePhone],
        Some(DefaultMethod::Oath),
    );
    assert_eq!(order, [AUTHENTICATOR, OfficePhone, MobilePhone]);
}

#[test]
fn order_keeps_the_items_it_is_given() {
    let targets = vec![("m", MobilePhone), ("a", AUTHENTICATOR), ("e", EMAIL)];
    let ordered = order(targets, |t| t.1, Some(DefaultMethod::Push));
    let names: Vec<&str> = ordered.iter().map(|t| t.0).collect();
    assert_eq!(names, ["e", "m", "a"]);
    assert!(order(Vec::<MethodKind>::new(), |k| *k, None).is_empty());
}

#[test]
fn the_default_is_read_only_when_more_than_one_method_could_be_it() {
    assert!(!needs_default_read(&[]));
    assert!(!needs_default_read(&[MobilePhone]));
    assert!(!needs_default_read(&[
        MobilePhone,
        EMAIL,
        FIDO2,
        HELLO,
        TAP
    ]));
    assert!(needs_default_read(&[MobilePhone, OfficePhone]));
    assert!(needs_default_read(&[SOFTWARE_OATH, HARDWARE_OATH, EMAIL]));
    assert!(needs_default_read(&EVERY_KIND));
}

// --- the alternate-mobile rule ---

#[test]
fn the_mobile_goes_after_the_alternate_mobile() {
    for default in [None, Some(DefaultMethod::Push), Some(DefaultMethod::Oath)] {
        let order = ordered(&[MobilePhone, AlternateMobilePhone, AUTHENTICATOR], default);
        assert!(
            position(&order, AlternateMobilePhone) < position(&order, MobilePhone),
            "{default:?}: {order:?}"
        );
    }
}

#[test]
fn an_alternate_mobile_default_is_moved_to_the_mobile_first() {
    let both = [MobilePhone, AlternateMobilePhone, FIDO2];
    assert!(must_move_default_to_mobile(
        &both,
        Some(DefaultMethod::VoiceAlternateMobile)
    ));

    // Once moved, the mobile is the default: last, after the alternate.
    let order = ordered(&both, Some(DefaultMethod::VoiceMobile));
    assert_eq!(order, [FIDO2, AlternateMobilePhone, MobilePhone]);
}

#[test]
fn the_default_is_moved_only_when_the_alternate_is_it_and_both_phones_go() {
    let alternate = Some(DefaultMethod::VoiceAlternateMobile);
    assert!(!must_move_default_to_mobile(
        &[AlternateMobilePhone, FIDO2],
        alternate
    ));
    assert!(!must_move_default_to_mobile(
        &[MobilePhone, FIDO2],
        alternate
    ));
    assert!(!must_move_default_to_mobile(&[], alternate));
    for default in DefaultMethod::ALL {
        if default != DefaultMethod::VoiceAlternateMobile {
            assert!(
                !must_move_default_to_mobile(&[MobilePhone, AlternateMobilePhone], Some(default)),
                "{default:?}"
            );
        }
    }
    assert!(!must_move_default_to_mobile(
        &[MobilePhone, AlternateMobilePhone],
        None
    ));
}

#[test]
fn an_alternate_mobile_default_that_could_not_be_moved_still_goes_last() {
    // Graph will refuse one of the two; the two-pass retry and the outcome say so.
    let order = ordered(
        &[AlternateMobilePhone, MobilePhone, AUTHENTICATOR],
        Some(DefaultMethod::VoiceAlternateMobile),
    );
    assert_eq!(order, [AUTHENTICATOR, MobilePhone, AlternateMobilePhone]);
}

// --- kinds and defaults ---

#[test]
fn every_default_value_names_the_kinds_that_serve_it() {
    let expected = |default: DefaultMethod| -> Vec<MethodKind> {
        match default {
            DefaultMethod::Push => vec![AUTHENTICATOR],
            DefaultMethod::Oath => vec![SOFTWARE_OATH, HARDWARE_OATH],
            DefaultMethod::VoiceMobile | DefaultMethod::Sms => vec![MobilePhone],
            DefaultMethod::VoiceAlternateMobile => vec![AlternateMobilePhone],
            DefaultMethod::VoiceOffice => vec![OfficePhone],
        }
    };
    for default in DefaultMethod::ALL {
        let served: Vec<MethodKind> = ALL_KINDS
            .into_iter()
            .filter(|k| default.served_by(*k))
            .collect();
        assert_eq!(served, expected(default), "{default:?}");
    }
}

#[test]
fn default_values_parse_from_graphs_names_only() {
    for default in DefaultMethod::ALL {
        assert_eq!(DefaultMethod::parse(default.as_str()), Some(default));
    }
    let names: Vec<&str> = DefaultMethod::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(
        names,
        [
            "push",
            "oath",
            "voiceMobile",
            "voiceAlternateMobile",
            "voiceOffice",
            "sms"
        ]
    );
    for other in ["none", "unknownFutureValue", "", "Push", "email"] {
        assert_eq!(DefaultMethod::parse(other), None, "{other:?}");
    }
}

#[test]
fn only_phones_the_authenticator_and_oath_tokens_can_be_the_default() {
    let can: Vec<MethodKind> = ALL_KINDS
        .into_iter()
        .filter(|k| k.can_be_default())
        .collect();
    assert_eq!(
        can,
        [
            MobilePhone,
            AlternateMobilePhone,
            OfficePhone,
            OtherPhone,
            AUTHENTICATOR,
            SOFTWARE_OATH,
            HARDWARE_OATH
        ]
    );
}

#[test]
fn listed_methods_map_to_their_kinds() {
    let of = |odata: &str, extra: serde_json::Value| {
        let mut v = json!({"@odata.type": format!("#microsoft.graph.{odata}"), "id": "x"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        MethodKind::of(&AuthMethod::from_json(&v))
    };
    let phone = |t: &str| of("phoneAuthenticationMethod", json!({"phoneType": t}));
    assert_eq!(phone("mobile"), MobilePhone);
    assert_eq!(phone("alternateMobile"), AlternateMobilePhone);
    assert_eq!(phone("office"), OfficePhone);
    assert_eq!(phone("satellite"), OtherPhone);
    assert_eq!(
        of("passwordAuthenticationMethod", json!({})),
        MethodKind::Password
    );
    assert_eq!(
        of("quantumAuthenticationMethod", json!({})),
        MethodKind::Unknown
    );
    for kind in ALL_KINDS {
        if let Some(t) = kind.method_type().filter(|t| *t != MethodType::Phone) {
            assert_eq!(
                of(&format!("{}AuthenticationMethod", t.stem()), json!({})),
                kind
            );
        }
    }
}

#[test]
fn kinds_belong_to_their_type() {
    let types: Vec<Option<&str>> = ALL_KINDS
        .iter()
        .map(|k| k.method_type().map(MethodType::stem))
        .collect();
    assert_eq!(
        types,
        [
            None,
            Some("phone"),
            Some("phone"),
            Some("phone"),
            Some("phone"),
            Some("email"),
            Some("microsoftAuthenticator"),
            Some("fido2"),
            Some("softwareOath"),
            Some("temporaryAccessPass"),
            Some("windowsHelloForBusiness"),
            Some("platformCredential"),
            Some("external"),
            Some("hardwareOath"),
            Some("qrCodePin"),
            None
        ]
    );
}

#[test]
fn method_types_round_trip_through_their_stems() {
    let stems: Vec<&str> = MethodType::ALL.iter().map(|t| t.stem()).collect();
    assert_eq!(
        stems,
        [
            "phone",
            "email",
            "microsoftAuthenticator",
            "fido2",
            "softwareOath",
            "temporaryAccessPass",
            "windowsHelloForBusiness",
            "platformCredential",
            "external",
            "hardwareOath",
            "qrCodePin"
        ]
    );
    for t in MethodType::ALL {
        assert_eq!(MethodType::from_stem(t.stem()), Some(t));
    }
    assert_eq!(MethodType::from_stem("password"), None);
    assert_eq!(MethodType::from_stem("Phone"), None);
}

// --- scope ---

/// A kind of type `t` (the mobile for phones).
fn a_kind_of(t: MethodType) -> MethodKind {
    ALL_KINDS
        .into_iter()
        .find(|k| k.method_type() == Some(t))
        .unwrap_or_else(|| panic!("no kind of {t:?}"))
}

#[test]
fn the_all_preset_takes_every_removable_type_and_never_the_password() {
    let scope = Scope::from_settings(&MethodSelection::Preset("all".into())).unwrap();
    for t in MethodType::ALL {
        assert!(scope.includes(a_kind_of(t)), "{t:?}");
    }
    assert!(scope.includes(AlternateMobilePhone));
    assert!(!scope.includes(MethodKind::Password));
    assert!(!scope.includes(MethodKind::Unknown));
}

#[test]
fn the_portal_preset_takes_phones_the_authenticator_and_software_oath_but_not_hardware_tokens() {
    let scope = Scope::from_settings(&MethodSelection::Preset("portal".into())).unwrap();
    let taken: Vec<MethodType> = MethodType::ALL
        .into_iter()
        .filter(|t| scope.includes(a_kind_of(*t)))
        .collect();
    assert_eq!(taken, MethodType::PORTAL);
    assert!(scope.includes(OfficePhone));
    assert!(
        !scope.includes(HARDWARE_OATH),
        "a DELETE would un-assign the token"
    );
}

#[test]
fn a_list_takes_exactly_its_types() {
    let list = MethodSelection::List(vec!["phone".into(), "fido2".into()]);
    let scope = Scope::from_settings(&list).unwrap();
    assert!(scope.includes(MobilePhone) && scope.includes(FIDO2));
    assert!(!scope.includes(EMAIL) && !scope.includes(AUTHENTICATOR));
    let phone = AuthMethod::Phone {
        id: "p".into(),
        phone_number: "+1 5555551234".into(),
        phone_type: "office".into(),
    };
    assert!(scope.contains(&phone));
    assert!(!scope.contains(&AuthMethod::Email {
        id: "e".into(),
        email_address: "a@b.example".into()
    }));
}

#[test]
fn an_unknown_name_in_reset_methods_is_refused_naming_the_accepted_ones() {
    let err = Scope::from_settings(&MethodSelection::List(vec!["sms".into()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"sms\" is not a removable method type"),
        "{err}"
    );
    assert!(
        err.contains("phone, email, microsoftAuthenticator"),
        "{err}"
    );
    let err = Scope::from_settings(&MethodSelection::Preset("most".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("use \"all\", \"portal\" or a list of method types (phone, email,"),
        "{err}"
    );
}

// --- deletes refused, earlier attempts, the outcome ---

#[test]
fn a_refused_delete_is_asked_again_only_when_others_were_deleted_in_between() {
    assert!(!ask_again_after_the_others(0));
    assert!(!ask_again_after_the_others(1));
    assert!(ask_again_after_the_others(2));
}

#[test]
fn a_method_registered_after_the_request_is_the_users_and_one_without_a_date_is_not() {
    let requested_at = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let at = |t: &str| {
        Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .with_timezone(&chrono::Utc),
        )
    };
    assert!(registered_after(at("2026-01-01T10:00:01Z"), requested_at));
    assert!(!registered_after(at("2026-01-01T10:00:00Z"), requested_at));
    assert!(!registered_after(at("2025-12-31T23:00:00Z"), requested_at));
    assert!(
        !registered_after(None, requested_at),
        "no date: counted as before"
    );
}

#[test]
fn a_method_still_listed_after_its_204_is_remaining_with_our_code() {
    let c = conclude(&Tally {
        removed_any: true,
        remaining: 1,
        lingering: vec!["qrCodePin:q".into()],
        ..Tally::default()
    });
    assert_eq!(c.status, Status::Partial);
    assert_eq!(
        c.error,
        Some((
            "still_listed".to_string(),
            "deleted (Graph answered 204, or 404: gone) but still listed after \
             reset.consistency_wait: qrCodePin:q"
                .to_string()
        ))
    );
}

fn record(kind: &str, id: &str) -> MethodRecord {
    MethodRecord {
        kind: kind.into(),
        id: id.into(),
        ..MethodRecord::default()
    }
}

#[test]
fn what_an_interrupted_attempt_planned_and_is_gone_was_removed_by_it() {
    let planned = vec![
        record("phone", "m"),
        record("email", "e"),
        record("fido2", "f"),
        record("phone", "m"),
        record("softwareOath", "o"),
    ];
    let removed = vec![record("fido2", "f")];
    let listed: HashSet<String> = ["email:e".to_string()].into();

    let (adopted, still_listed) = removed_earlier(planned, &removed, &listed);

    assert_eq!(
        adopted,
        [record("phone", "m"), record("softwareOath", "o")],
        "still listed, already recorded and repeated entries are left out"
    );
    assert_eq!(still_listed, [record("email", "e")]);
}

#[test]
fn a_permanent_error_fails_a_reset_that_removed_nothing() {
    assert_eq!(stopped(false), Status::Failed);
    assert_eq!(stopped(true), Status::Partial);
}

#[test]
fn a_reset_that_removed_everything_in_scope_is_reset() {
    let c = conclude(&Tally {
        removed_any: true,
        ..Tally::default()
    });
    assert_eq!(
        c,
        Conclusion {
            status: Status::Reset,
            error: None
        }
    );
}

#[test]
fn a_reset_that_found_nothing_is_already_clean() {
    let c = conclude(&Tally::default());
    assert_eq!(c.status, Status::AlreadyClean);
    assert_eq!(c.error, None);
}

#[test]
fn a_method_still_listed_makes_the_reset_partial_with_graphs_code() {
    let refusal = Some((
        "badRequest".to_string(),
        "phone p: Cannot delete default method".to_string(),
    ));
    for removed_any in [false, true] {
        let c = conclude(&Tally {
            removed_any,
            remaining: 1,
            unknown: Vec::new(),
            refusal: refusal.clone(),
            lingering: Vec::new(),
        });
        assert_eq!(c.status, Status::Partial);
        assert_eq!(c.error, refusal);
    }
}

#[test]
fn an_unknown_type_makes_the_reset_partial_and_is_named() {
    let unknown = vec![
        "#microsoft.graph.a".to_string(),
        "#microsoft.graph.b".to_string(),
    ];
    let c = conclude(&Tally {
        removed_any: true,
        remaining: 0,
        unknown: unknown.clone(),
        refusal: None,
        lingering: Vec::new(),
    });
    assert_eq!(c.status, Status::Partial);
    assert_eq!(
        c.error,
        Some((
            "unknown_method_type".to_string(),
            "method type(s) this build does not know were left in place: \
             #microsoft.graph.a, #microsoft.graph.b"
                .to_string()
        ))
    );

    let both = conclude(&Tally {
        removed_any: false,
        remaining: 1,
        unknown,
        refusal: Some(("badRequest".into(), "phone p: refused".into())),
        lingering: Vec::new(),
    });
    assert_eq!(both.status, Status::Partial);
    assert_eq!(
        both.error,
        Some((
            "badRequest".to_string(),
            "phone p: refused; method type(s) this build does not know were left in place: \
             #microsoft.graph.a, #microsoft.graph.b"
                .to_string()
        ))
    );
}
