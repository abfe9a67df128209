use super::*;

fn settings() -> GraphSettings {
    GraphSettings {
        tenant_id: "t".into(),
        client_id: "c".into(),
        client_secret: Some(SecretString::from("s")),
        base_url: "http://127.0.0.1:9/v1.0".into(),
        ..GraphSettings::default()
    }
}

#[test]
fn a_client_needs_a_credential_and_ids() {
    let none = GraphSettings {
        client_secret: None,
        ..settings()
    };
    let err = GraphClient::new(&none, &RateSettings::default(), &RetrySettings::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("set graph.client_secret (MFA_RESET__GRAPH__CLIENT_SECRET) or graph.client_certificate + graph.client_private_key"), "{err}");
    let no_client = GraphSettings {
        client_id: " ".into(),
        ..settings()
    };
    assert!(GraphClient::new(
        &no_client,
        &RateSettings::default(),
        &RetrySettings::default()
    )
    .is_err());
    assert!(GraphClient::new(
        &settings(),
        &RateSettings::default(),
        &RetrySettings::default()
    )
    .is_ok());
}

#[test]
fn user_urls_use_the_right_root_and_encoding() {
    let client = GraphClient::new(
        &settings(),
        &RateSettings::default(),
        &RetrySettings::default(),
    )
    .unwrap();
    let guest = UserRef::parse("ann_fabrikam.com#EXT#@contoso.onmicrosoft.com").unwrap();
    assert_eq!(
            client.user_url(true, &guest, "/authentication/methods"),
            "http://127.0.0.1:9/beta/users/ann_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/authentication/methods"
        );
}
