//! Unit tests of the allowed-signers parser and lookup.

use super::*;
use ssh_key::private::Ed25519Keypair;

/// A 1024-bit RSA public key, made once with `ssh-keygen -t rsa -b 1024`: only its type matters.
const RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDGOLktN+byb3zj+xkUxewwksr6nYL3S1pr+c9TfMcHAGj6Z+2wHP8OyfPjT4+bQZ3DwwafhmDR0mDZtsN0GxRWe53nxjpvzPQvK6Aq/X3+Tic9XkSwarPAzOiI8ZUKsmAJZySDdc7zbuvUBfs4yzkLaBf/28AmTMfsciPsf/rQ4w==";
const ECDSA_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIVKY+Hioj79aSR5+pgMtenNwYhl0PxA32r4RpqvZ9vZ8McEOc9T8MdLwQNU79C3LjE3byZtsL6TPZ0sdJZ5nus=";

fn key(seed: u8) -> PublicKey {
    let keypair = Ed25519Keypair::from_seed(&[seed; 32]);
    PublicKey::new(KeyData::Ed25519(keypair.public), "")
}

fn line(seed: u8) -> String {
    key(seed).to_openssh().unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn now() -> DateTime<Utc> {
    at("2026-06-01T12:00:00Z")
}

fn parse(text: &str) -> Result<AllowedSigners, AllowedSignersError> {
    AllowedSigners::parse(text, "allowed_signers")
}

fn parse_error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn lines_with_options_comments_and_blank_lines_parse() {
    let text = format!(
        "# operators\n\n   \nalice@contoso.com namespaces=\"mfa-reset-request,mfa-reset-approve\" {} alice laptop\n\
         \tbob@contoso.com {}\nworker-1 {ECDSA_KEY} worker\n",
        line(1),
        line(2)
    );
    let signers = parse(&text).unwrap();
    assert_eq!(signers.len(), 3);
    let principal = signers
        .principal_for(key(1).key_data(), Namespace::Approve, now())
        .unwrap();
    assert_eq!(principal.as_str(), "alice@contoso.com");
    // Without namespaces= a key may sign in every namespace.
    let bob = signers
        .principal_for(key(2).key_data(), Namespace::Admin, now())
        .unwrap();
    assert_eq!(bob.as_str(), "bob@contoso.com");
    let ecdsa = PublicKey::from_openssh(ECDSA_KEY).unwrap();
    let worker = signers
        .principal_for(ecdsa.key_data(), Namespace::Worker, now())
        .unwrap();
    assert_eq!(worker.as_str(), "worker-1");
}

#[test]
fn a_key_listed_for_other_namespaces_is_refused_for_this_one() {
    let signers = parse(&format!(
        "alice@contoso.com namespaces=\"mfa-reset-request\" {}",
        line(1)
    ))
    .unwrap();
    let refusal = signers
        .principal_for(key(1).key_data(), Namespace::Approve, now())
        .unwrap_err();
    assert!(
        matches!(refusal, NotAllowed::Namespace { line: 1, .. }),
        "{refusal:?}"
    );
    let message = refusal.to_string();
    assert!(
        message.contains("mfa-reset-approve") && message.contains("alice@contoso.com"),
        "{message}"
    );
}

#[test]
fn an_unlisted_key_is_refused_by_fingerprint() {
    let signers = parse(&format!("alice@contoso.com {}", line(1))).unwrap();
    let refusal = signers
        .principal_for(key(9).key_data(), Namespace::Request, now())
        .unwrap_err();
    assert_eq!(
        refusal,
        NotAllowed::NotListed {
            fingerprint: fingerprint(key(9).key_data())
        }
    );
    assert!(refusal.to_string().starts_with("key SHA256:"));
}

#[test]
fn validity_windows_hold_at_their_edges() {
    let text = format!(
        "alice@contoso.com valid-after=\"20260101Z\",valid-before=\"20261231235959Z\" {}",
        line(1)
    );
    let signers = parse(&text).unwrap();
    let alice = key(1);
    let lookup = |time: &str| signers.principal_for(alice.key_data(), Namespace::Request, at(time));
    assert!(matches!(
        lookup("2025-12-31T23:59:59Z"),
        Err(NotAllowed::NotYetValid { .. })
    ));
    assert!(lookup("2026-01-01T00:00:00Z").is_ok());
    assert!(lookup("2026-12-31T23:59:59Z").is_ok());
    assert!(matches!(
        lookup("2027-01-01T00:00:00Z"),
        Err(NotAllowed::Expired { .. })
    ));
}

#[test]
fn a_later_line_for_the_same_key_can_allow_what_the_first_does_not() {
    let text = format!(
        "alice@contoso.com valid-before=\"20250101Z\" {k}\nalice@contoso.com namespaces=\"mfa-reset-*\" {k}",
        k = line(1)
    );
    let signers = parse(&text).unwrap();
    assert!(signers
        .principal_for(key(1).key_data(), Namespace::Admin, now())
        .is_ok());
}

#[test]
fn the_first_principal_of_a_line_is_who_signs() {
    let signers = parse(&format!("alice@contoso.com,alice@fabrikam.com {}", line(1))).unwrap();
    let principal = signers
        .principal_for(key(1).key_data(), Namespace::Request, now())
        .unwrap();
    assert_eq!(principal.as_str(), "alice@contoso.com");
}

#[test]
fn one_key_for_two_people_is_refused() {
    let text = format!("alice@contoso.com {k}\nbob@contoso.com {k}", k = line(1));
    let message = parse_error(&text);
    assert!(message.starts_with("allowed_signers line 2:"), "{message}");
    assert!(message.contains("alice@contoso.com on line 1"), "{message}");
}

#[test]
fn cert_authority_is_refused_naming_the_line() {
    let message = parse_error(&format!("# ca\n*@contoso.com cert-authority {}", line(1)));
    // The pattern principal is refused first; a plain principal reaches the option.
    assert!(message.starts_with("allowed_signers line 2:"), "{message}");
    let message = parse_error(&format!(
        "\nops@contoso.com cert-authority,namespaces=\"x\" {}",
        line(1)
    ));
    assert!(
        message.starts_with("allowed_signers line 2: cert-authority is not supported"),
        "{message}"
    );
}

#[test]
fn an_rsa_key_is_refused_naming_the_supported_types() {
    let message = parse_error(&format!("alice@contoso.com {RSA_KEY}"));
    assert!(
        message.contains("ssh-rsa keys are not supported"),
        "{message}"
    );
    assert!(
        message.contains("ssh-ed25519") && message.contains("sk-ssh-ed25519@openssh.com"),
        "{message}"
    );
}

#[test]
fn principal_patterns_are_refused() {
    for principals in [
        "*@contoso.com",
        "alice@contoso.?om",
        "!mallory,alice",
        "alice,,bob",
    ] {
        let message = parse_error(&format!("{principals} {}", line(1)));
        assert!(message.starts_with("allowed_signers line 1:"), "{message}");
    }
}

#[test]
fn malformed_lines_say_what_to_fix() {
    let cases = [
        ("alice@contoso.com".to_string(), "missing key"),
        (
            "alice@contoso.com namespaces=\"x\"".to_string(),
            "missing key",
        ),
        (
            format!("alice@contoso.com nosuch=\"x\" {}", line(1)),
            "unknown option \"nosuch\"",
        ),
        (
            format!("alice@contoso.com namespaces=x {}", line(1)),
            "double-quoted",
        ),
        (
            format!("alice@contoso.com namespaces=\"x {}", line(1)),
            "unterminated",
        ),
        (
            format!(
                "alice@contoso.com namespaces=\"a\",namespaces=\"b\" {}",
                line(1)
            ),
            "appears twice",
        ),
        (
            format!("alice@contoso.com namespaces=\"a\", {}", line(1)),
            "comma",
        ),
        (
            format!("alice@contoso.com valid-after=\"2026\" {}", line(1)),
            "YYYYMMDD",
        ),
        (
            format!("alice@contoso.com valid-after=\"20261341Z\" {}", line(1)),
            "YYYYMMDD",
        ),
        (
            format!(
                "alice@contoso.com valid-after=\"20260102Z\",valid-before=\"20260101Z\" {}",
                line(1)
            ),
            "not after valid-after",
        ),
        (
            "alice@contoso.com ssh-ed25519 AAAA!!".to_string(),
            "not valid",
        ),
        (
            format!(
                "alice@contoso.com ssh-ed25519 {}",
                ECDSA_KEY.split(' ').nth(1).unwrap()
            ),
            "is not valid",
        ),
        (
            "alice@contoso.com ssh-ed25519-cert-v01@openssh.com AAAA".to_string(),
            "keys are not supported",
        ),
        (
            "alice@contoso.com ssh-foo AAAA".to_string(),
            "certificates are not supported",
        ),
    ];
    for (text, expected) in cases {
        let message = parse_error(&text);
        assert!(
            message.starts_with("allowed_signers line 1: "),
            "{text}: {message}"
        );
        assert!(message.contains(expected), "{text}: {message}");
    }
}

#[test]
fn options_are_case_insensitive_and_values_may_hold_escaped_quotes_and_spaces() {
    let text = format!(
        "alice@contoso.com NAMESPACES=\"mfa-reset-request,with \\\"quote\\\" x\",Valid-After=\"202601011200UTC\" {}",
        line(1)
    );
    let signers = parse(&text).unwrap();
    assert!(signers
        .principal_for(key(1).key_data(), Namespace::Request, now())
        .is_ok());
    assert!(signers
        .principal_for(key(1).key_data(), Namespace::Admin, now())
        .is_err());
    let early = at("2026-01-01T11:59:59Z");
    assert!(signers
        .principal_for(key(1).key_data(), Namespace::Request, early)
        .is_err());
}

#[test]
fn namespace_patterns_follow_openssh_matching() {
    assert!(match_pattern_list("mfa-reset-request", "mfa-reset-*"));
    assert!(match_pattern_list("mfa-reset-admin", "git,mfa-reset-?dmin"));
    assert!(!match_pattern_list(
        "mfa-reset-admin",
        "mfa-reset-*,!mfa-reset-admin"
    ));
    assert!(!match_pattern_list(
        "mfa-reset-admin",
        "!mfa-reset-admin,mfa-reset-*"
    ));
    assert!(!match_pattern_list("mfa-reset-worker", "!mfa-reset-admin"));
    assert!(!match_pattern_list(
        "mfa-reset-request",
        "mfa-reset-requests"
    ));
    assert!(!match_pattern_list(
        "mfa-reset-request",
        "MFA-RESET-REQUEST"
    ));
    assert!(match_pattern("".as_bytes(), b"*"));
    assert!(!match_pattern("ab".as_bytes(), b"a"));
}

#[test]
fn times_parse_like_openssh() {
    let utc = |text: &str| parse_time(text, "valid-after").unwrap();
    assert_eq!(utc("20260101Z"), at("2026-01-01T00:00:00Z").timestamp());
    assert_eq!(utc("202601011230Z"), at("2026-01-01T12:30:00Z").timestamp());
    assert_eq!(
        utc("20260101123045z"),
        at("2026-01-01T12:30:45Z").timestamp()
    );
    assert_eq!(utc("20260101utc"), at("2026-01-01T00:00:00Z").timestamp());
    // Without a suffix: local time, as OpenSSH reads it.
    let local = Local
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .earliest()
        .unwrap()
        .timestamp();
    assert_eq!(utc("20260101"), local);
    for bad in [
        "",
        "Z",
        "2026010",
        "202601011",
        "2026-01-01",
        "20260230Z",
        "20260101250000Z",
        "00000000Z",
    ] {
        assert!(parse_time(bad, "valid-after").is_err(), "{bad}");
    }
}

#[test]
fn reading_a_missing_file_names_it_and_the_setting() {
    let error = AllowedSigners::read(Path::new("/nonexistent/allowed_signers")).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("/nonexistent/allowed_signers"),
        "{message}"
    );
    assert!(message.contains("security.allowed_signers"), "{message}");
}
