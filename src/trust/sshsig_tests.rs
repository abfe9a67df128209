//! Unit tests of signing (`signer`) and verifying (`sshsig`) (interoperability with ssh-keygen and ssh-agent is in
//! tests/it/trust.rs).

use super::*;
use crate::trust::signer::{armor, generate_ed25519, write_key_pair, Signer, SignerError};
use crate::trust::test_keys::{allowed, ecdsa, ed25519, signer, SkKey};
use serde_json::json;
use ssh_key::PrivateKey;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

const MESSAGE: &[u8] = b"batch 7f3a: 1000 users, root 5e1f";

#[test]
fn ed25519_and_ecdsa_signatures_verify_as_their_principal() {
    for (name, key) in [
        ("alice@contoso.com", ed25519(1)),
        ("bob@contoso.com", ecdsa(2)),
    ] {
        let signer = signer(key);
        let signers = allowed(&[(name, "", signer.public_key())]);
        let armored = signer.sign(Namespace::Request, MESSAGE).unwrap();
        assert!(
            armored.starts_with("-----BEGIN SSH SIGNATURE-----\n"),
            "{armored}"
        );
        assert!(
            armored.ends_with("-----END SSH SIGNATURE-----\n"),
            "{armored}"
        );
        let verified = verify(&armored, Namespace::Request, MESSAGE, &signers, now()).unwrap();
        assert_eq!(verified.principal.as_str(), name);
        assert_eq!(verified.fingerprint, signer.fingerprint());
    }
}

#[test]
fn a_changed_message_is_a_bad_signature() {
    let signer = signer(ed25519(1));
    let signers = allowed(&[("alice@contoso.com", "", signer.public_key())]);
    let armored = signer.sign(Namespace::Request, MESSAGE).unwrap();
    let error = verify(
        &armored,
        Namespace::Request,
        b"batch 7f3a: 1001 users",
        &signers,
        now(),
    )
    .unwrap_err();
    assert!(matches!(error, VerifyError::BadSignature(_)), "{error:?}");
    assert_eq!(error.reason(), "bad_signature");
}

#[test]
fn a_signature_for_one_namespace_does_not_pass_for_another() {
    let signer = signer(ed25519(1));
    let signers = allowed(&[("alice@contoso.com", "", signer.public_key())]);
    let approval = signer.sign(Namespace::Approve, MESSAGE).unwrap();
    let error = verify(&approval, Namespace::Request, MESSAGE, &signers, now()).unwrap_err();
    assert_eq!(error.reason(), "bad_signature");
    assert!(error.to_string().contains("mfa-reset-approve"), "{error}");
}

#[test]
fn a_valid_signature_by_an_unlisted_or_unauthorised_key_is_signer_not_allowed() {
    let alice = signer(ed25519(1));
    let mallory = signer(ed25519(66));
    let signers = allowed(&[(
        "alice@contoso.com",
        "namespaces=\"mfa-reset-request\"",
        alice.public_key(),
    )]);
    let forged = mallory.sign(Namespace::Request, MESSAGE).unwrap();
    let error = verify(&forged, Namespace::Request, MESSAGE, &signers, now()).unwrap_err();
    assert!(
        matches!(
            error,
            VerifyError::SignerNotAllowed(NotAllowed::NotListed { .. })
        ),
        "{error:?}"
    );
    assert_eq!(error.reason(), "signer_not_allowed");
    let admin = alice.sign(Namespace::Admin, MESSAGE).unwrap();
    let error = verify(&admin, Namespace::Admin, MESSAGE, &signers, now()).unwrap_err();
    assert!(
        matches!(
            error,
            VerifyError::SignerNotAllowed(NotAllowed::Namespace { .. })
        ),
        "{error:?}"
    );
}

#[test]
fn a_key_outside_its_validity_window_is_signer_not_allowed() {
    let alice = signer(ed25519(1));
    let signers = allowed(&[(
        "alice@contoso.com",
        "valid-before=\"20260101Z\"",
        alice.public_key(),
    )]);
    let armored = alice.sign(Namespace::Request, MESSAGE).unwrap();
    let error = verify(&armored, Namespace::Request, MESSAGE, &signers, now()).unwrap_err();
    assert!(
        matches!(
            error,
            VerifyError::SignerNotAllowed(NotAllowed::Expired { .. })
        ),
        "{error:?}"
    );
    let before = DateTime::parse_from_rfc3339("2025-12-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert!(verify(&armored, Namespace::Request, MESSAGE, &signers, before).is_ok());
}

#[test]
fn missing_and_malformed_signatures_are_told_apart() {
    let signers = allowed(&[("alice@contoso.com", "", signer(ed25519(1)).public_key())]);
    let check =
        |armored: &str| verify(armored, Namespace::Request, MESSAGE, &signers, now()).unwrap_err();
    assert_eq!(check(""), VerifyError::Unsigned);
    assert_eq!(check("  \n"), VerifyError::Unsigned);
    assert_eq!(check("").reason(), "unsigned");
    for garbage in [
        "hello".to_string(),
        "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n".to_string(),
        format!(
            "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
            "A".repeat(20_000)
        ),
    ] {
        let error = check(&garbage);
        assert!(matches!(error, VerifyError::Malformed(_)), "{error:?}");
        assert_eq!(error.reason(), "bad_signature");
    }
}

#[test]
fn no_flipped_byte_of_a_signature_verifies() {
    use base64::Engine as _;
    let (ed, ec, sk) = (signer(ed25519(1)), signer(ecdsa(2)), SkKey::ecdsa(3));
    let cases = [
        (
            ed.sign(Namespace::Request, MESSAGE).unwrap(),
            ed.public_key(),
        ),
        (
            ec.sign(Namespace::Request, MESSAGE).unwrap(),
            ec.public_key(),
        ),
        (sk.sign(Namespace::Request, MESSAGE, 0x01, 7), &sk.public),
    ];
    for (armored, key) in cases {
        let signers = allowed(&[("alice@contoso.com", "", key)]);
        assert!(verify(&armored, Namespace::Request, MESSAGE, &signers, now()).is_ok());
        let body: String = armored
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        for index in 0..blob.len() {
            let mut changed = blob.clone();
            changed[index] ^= 0x01;
            let armored = armor(&changed);
            assert!(
                verify(&armored, Namespace::Request, MESSAGE, &signers, now()).is_err(),
                "{}: byte {index} of {}",
                key.algorithm().as_str(),
                blob.len()
            );
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(verify(
            &armor(&longer),
            Namespace::Request,
            MESSAGE,
            &signers,
            now()
        )
        .is_err());
    }
}

#[test]
fn fido2_signatures_verify_with_user_presence_and_its_flags_and_counter_are_signed() {
    for key in [SkKey::ed25519(3), SkKey::ecdsa(4)] {
        let signers = allowed(&[("carol@contoso.com", "", &key.public)]);
        let touched = key.sign(Namespace::Approve, MESSAGE, 0x01, 42);
        let verified = verify(&touched, Namespace::Approve, MESSAGE, &signers, now()).unwrap();
        assert_eq!(verified.principal.as_str(), "carol@contoso.com");
        // Touch plus PIN (user verification) is fine too.
        assert!(verify(
            &key.sign(Namespace::Approve, MESSAGE, 0x05, 43),
            Namespace::Approve,
            MESSAGE,
            &signers,
            now()
        )
        .is_ok());

        let untouched = key.sign(Namespace::Approve, MESSAGE, 0x00, 44);
        let error = verify(&untouched, Namespace::Approve, MESSAGE, &signers, now()).unwrap_err();
        assert!(error.to_string().contains("user presence"), "{error}");
        assert_eq!(error.reason(), "bad_signature");

        // The flags and the counter are part of what the token signed: changing them breaks it.
        let blob = |armored: &str| {
            use base64::Engine as _;
            let body: String = armored
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        };
        let mut counter_changed = blob(&touched);
        let last = counter_changed.len() - 1;
        counter_changed[last] ^= 0x01;
        assert!(verify(
            &armor(&counter_changed),
            Namespace::Approve,
            MESSAGE,
            &signers,
            now()
        )
        .is_err());
        let mut flags_changed = blob(&touched);
        flags_changed[last - 4] = 0x05;
        assert!(verify(
            &armor(&flags_changed),
            Namespace::Approve,
            MESSAGE,
            &signers,
            now()
        )
        .is_err());
    }
}

#[test]
fn re_serialised_values_verify_and_changed_fields_do_not() {
    let alice = signer(ed25519(1));
    let signers = allowed(&[("alice@contoso.com", "", alice.public_key())]);
    let manifest = json!({"batch": "7f3a", "count": 1000, "root": "5e1f", "reason": "phishing"});
    let armored = alice.sign_canonical(Namespace::Request, &manifest).unwrap();
    // As received over the wire: other key order, whitespace.
    let received: serde_json::Value = serde_json::from_str(
        r#"{ "root": "5e1f", "reason": "phishing", "count": 1000, "batch": "7f3a" }"#,
    )
    .unwrap();
    assert!(verify_canonical(&armored, Namespace::Request, &received, &signers, now()).is_ok());
    for (field, value) in [
        ("batch", json!("7f3b")),
        ("count", json!(1001)),
        ("root", json!("5e1e")),
        ("extra", json!(1)),
    ] {
        let mut changed = manifest.clone();
        changed[field] = value;
        let error =
            verify_canonical(&armored, Namespace::Request, &changed, &signers, now()).unwrap_err();
        assert_eq!(error.reason(), "bad_signature", "{field}");
    }
}

#[test]
fn key_files_round_trip_and_are_refused_when_others_can_read_them() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id_ed25519");
    let key = generate_ed25519("worker-1").unwrap();
    write_key_pair(&key, &path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        write_key_pair(&key, &path).is_err(),
        "an existing key is never overwritten"
    );

    let signer = Signer::from_key_file(&path).unwrap();
    assert_eq!(signer.public_key().key_data(), key.public_key().key_data());
    let public = PublicKey::from_openssh(
        &std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap(),
    )
    .unwrap();
    assert_eq!(public.key_data(), key.public_key().key_data());
    let debug = format!("{signer:?}");
    assert!(
        debug.contains("SHA256:") && !debug.contains("PRIVATE"),
        "{debug}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Signer::from_key_file(&path).unwrap_err();
    assert!(
        matches!(error, SignerError::Unprotected { mode: 0o644, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("chmod 600"), "{error}");
}

#[test]
fn files_that_hold_no_key_are_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notakey");
    std::fs::write(&path, "secret-looking-content 12345\n").unwrap();
    let error = Signer::from_key_file(&path).unwrap_err().to_string();
    assert!(
        error.contains("is not an OpenSSH private or public key"),
        "{error}"
    );
    assert!(!error.contains("secret-looking-content"), "{error}");
    let missing = Signer::from_key_file(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn fido2_keys_cannot_be_held_in_memory() {
    let error = Signer::from_private_key(fake_sk_private_key()).unwrap_err();
    assert!(
        matches!(error, SignerError::SkNeedsAgent { .. }),
        "{error:?}"
    );
}

fn fake_sk_private_key() -> PrivateKey {
    let public = match SkKey::ed25519(5).public.key_data() {
        ssh_key::public::KeyData::SkEd25519(public) => public.clone(),
        _ => unreachable!(),
    };
    let keypair = ssh_key::private::SkEd25519::new(public, 0x01, vec![1, 2, 3]).unwrap();
    PrivateKey::new(ssh_key::private::KeypairData::SkEd25519(keypair), "sk").unwrap()
}
