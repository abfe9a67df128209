use super::*;

#[test]
fn admin_warnings_name_the_users_and_say_they_will_be_skipped() {
    let check = AdminCheck {
        checked: 3,
        admins: vec![(
            "global.admin@contoso.com".into(),
            "holds Global Administrator".into(),
        )],
        unchecked: vec![("x@contoso.com".into(), "forbidden".into())],
        protected: vec![(
            "0d6f1b2c-0000-4000-8000-000000000001".into(),
            "break.glass@contoso.com".into(),
        )],
        protected_note: None,
    };
    let lines = admin_warnings(&check, 3, true).join("\n");
    assert!(
        lines.contains("1 user(s) in the batch hold a directory role"),
        "{lines}"
    );
    assert!(lines.contains("will skip them"), "{lines}");
    assert!(
        lines.contains("global.admin@contoso.com: holds Global Administrator"),
        "{lines}"
    );
    assert!(lines.contains("x@contoso.com (forbidden)"), "{lines}");
    assert!(
        lines.contains("0d6f1b2c-0000-4000-8000-000000000001 (entry \"break.glass@contoso.com\")"),
        "{lines}"
    );
    assert!(lines.contains("found by object id"), "{lines}");
    let lines = admin_warnings(&check, 3, false).join("\n");
    assert!(lines.contains("WILL be reset"), "{lines}");
    let partial = AdminCheck {
        checked: ADMIN_CHECK_LIMIT as u64,
        ..AdminCheck::default()
    };
    let lines = admin_warnings(&partial, 10_000, true).join("\n");
    assert!(
        lines.contains("checked the first 500 of 10000 users"),
        "{lines}"
    );
}

#[test]
fn every_warning_names_the_first_fifty_and_counts_the_rest() {
    let users = |n: usize| {
        (0..n)
            .map(|i| format!("u{i}@contoso.com"))
            .collect::<Vec<_>>()
    };
    let check = AdminCheck {
        checked: 300,
        admins: users(120)
            .into_iter()
            .map(|u| (u, "holds Global Reader".to_string()))
            .collect(),
        unchecked: users(51)
            .into_iter()
            .map(|u| (u, "forbidden".to_string()))
            .collect(),
        protected: users(50).into_iter().map(|u| (u.clone(), u)).collect(),
        protected_note: None,
    };
    let lines = admin_warnings(&check, 300, true);
    let line = |start: &str| lines.iter().find(|l| l.contains(start)).unwrap().clone();
    let admins = line("hold a directory role");
    assert!(admins.contains("u49@contoso.com and 70 more"), "{admins}");
    assert!(!admins.contains("u50@"), "{admins}");
    let unchecked = line("could not be checked");
    assert!(
        unchecked.ends_with("u49@contoso.com (forbidden) and 1 more"),
        "{unchecked}"
    );
    // Exactly fifty: all named, nothing counted.
    let protected = line("found by object id");
    assert!(
        protected.ends_with("u49@contoso.com (entry \"u49@contoso.com\")"),
        "{protected}"
    );
    assert_eq!(
        named(users(3).into_iter(), 3),
        "u0@contoso.com, u1@contoso.com, u2@contoso.com"
    );
}

#[test]
fn control_characters_from_the_queue_are_not_printed() {
    // Escaped as the rest of the tool escapes outside text (`net::printable`), bidi
    // overrides included: a user name cannot reorder what the approver reads.
    assert_eq!(printable("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
    assert_eq!(
        printable("evil\u{202e}moc.osotnoc"),
        "evil\\u{202e}moc.osotnoc"
    );
}
