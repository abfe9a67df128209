use super::*;

fn settings(protected: &[&str]) -> ResetSettings {
    ResetSettings {
        protected_users: protected.iter().map(|p| p.to_string()).collect(),
        ..ResetSettings::default()
    }
}

#[test]
fn protected_users_match_in_any_case_and_object_id_form() {
    let s = settings(&[
        " BreakGlass@Contoso.com ",
        "{6F9619FF-8B86-D011-B42D-00C04FC964FF}",
    ]);
    let upn = UserRef::parse("breakglass@contoso.com").unwrap();
    let id = UserRef::parse("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
    assert!(is_protected(&s, &upn));
    assert!(is_protected(&s, &id));
    let keys = protected_keys(&s);
    assert!(keys.contains(&upn.key()) && keys.contains(&id.key()));
    assert!(!is_protected(
        &s,
        &UserRef::parse("alice@contoso.com").unwrap()
    ));
}

#[test]
fn a_protected_entry_that_is_not_a_user_is_named_with_its_position() {
    let err = ProtectedUsers::parse(&settings(&["breakglass@contoso.com", "break glass"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reset.protected_users entry 2 (\"break glass\")"),
        "{err}"
    );
    assert!(err.contains("fix or remove it"), "{err}");
    assert_eq!(
        ProtectedUsers::parse(&settings(&["6f9619ff-8b86-d011-b42d-00c04fc964ff"]))
            .unwrap()
            .len(),
        1
    );
}
