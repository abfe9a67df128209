use super::*;

#[test]
fn every_setting_is_documented_in_default_toml() {
    let documented =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
            .expect("config/default.toml");
    let value = serde_json::to_value(Settings::default()).expect("settings serialise");
    let mut missing = Vec::new();
    for (section, keys) in value.as_object().expect("sections") {
        assert!(
            documented.contains(&format!("[{section}]")),
            "[{section}] missing"
        );
        for key in keys.as_object().expect("keys").keys() {
            let line = format!("\n{key} =");
            let commented = format!("\n# {key} =");
            if !documented.contains(&line) && !documented.contains(&commented) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    // The secret is skipped when serialising; it is documented as an environment variable.
    assert!(documented.contains("MFA_RESET__GRAPH__CLIENT_SECRET"));
    assert!(missing.is_empty(), "undocumented settings: {missing:?}");
}

#[test]
fn default_toml_matches_the_built_in_defaults() {
    let from_file: Settings = Settings::layers(Some(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/default.toml"
    ))))
    .extract()
    .expect("default.toml loads");
    let a = serde_json::to_value(from_file).expect("serialise");
    let b = serde_json::to_value(Settings::default()).expect("serialise");
    assert_eq!(a, b);
}

#[test]
fn the_built_in_defaults_keep_the_broker_password() {
    // Serialised into the defaults layer, a redacted URL would become the URL in use.
    let settings: Settings = Settings::layers(None).extract().expect("defaults load");
    assert_eq!(settings.broker.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
}

#[test]
fn the_broker_password_is_hidden_when_shown() {
    let broker = BrokerSettings {
        url: "amqp://mfa:s3cret@broker.example:5672/%2f".into(),
        ..BrokerSettings::default()
    };
    let shown = format!("{broker:?}");
    assert!(
        shown.contains("amqp://mfa:***@broker.example:5672/%2f"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn several_broker_urls_replace_the_one_url_and_hide_their_passwords() {
    let one = BrokerSettings::default();
    assert_eq!(one.addresses(), ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
    let cluster = BrokerSettings {
        urls: vec![
            "amqp://mfa:s3cret@rabbit-1:5672/%2f".into(),
            " amqp://mfa:s3cret@rabbit-2:5672/%2f ".into(),
            "".into(),
        ],
        ..BrokerSettings::default()
    };
    assert_eq!(
        cluster.addresses(),
        [
            "amqp://mfa:s3cret@rabbit-1:5672/%2f",
            "amqp://mfa:s3cret@rabbit-2:5672/%2f"
        ]
    );
    let shown = format!("{cluster:?} {}", cluster.shown_addresses());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("amqp://mfa:***@rabbit-2:5672/%2f"),
        "{shown}"
    );
}

#[test]
fn broker_urls_come_from_the_environment_as_comma_separated_text_or_a_list() {
    // A prefix of this test's own: the process environment is shared by the tests.
    let load = |value: &str| -> Vec<String> {
        std::env::set_var("MFA_RESET_URLS_TEST__BROKER__URLS", value);
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(
                Env::prefixed("MFA_RESET_URLS_TEST__")
                    .split("__")
                    .lowercase(true),
            )
            .extract()
            .expect("settings");
        std::env::remove_var("MFA_RESET_URLS_TEST__BROKER__URLS");
        settings.broker.urls
    };
    let both = [
        "amqp://u:p@127.0.0.1:5681/%2f".to_string(),
        "amqp://u:p@127.0.0.1:5682/%2f".to_string(),
    ];
    assert_eq!(
        load("amqp://u:p@127.0.0.1:5681/%2f, amqp://u:p@127.0.0.1:5682/%2f"),
        both
    );
    assert_eq!(
        load(r#"["amqp://u:p@127.0.0.1:5681/%2f", "amqp://u:p@127.0.0.1:5682/%2f"]"#),
        both
    );
    let toml: Settings = Figment::from(Serialized::defaults(Settings::default()))
        .merge(Toml::string(
            "[broker]\nurls = [\"amqp://a:5672\", \"amqp://b:5672\"]\n",
        ))
        .extract()
        .expect("settings");
    assert_eq!(toml.broker.urls, ["amqp://a:5672", "amqp://b:5672"]);
}

#[test]
fn redact_url_hides_the_password_only() {
    assert_eq!(
        redact_url("amqp://guest:secret@host:5672/%2f"),
        "amqp://guest:***@host:5672/%2f"
    );
    assert_eq!(redact_url("amqp://host/"), "amqp://host/");
}

#[test]
fn beta_url_is_derived_from_v1() {
    let g = GraphSettings {
        base_url: "http://127.0.0.1:9/v1.0".into(),
        ..Default::default()
    };
    assert_eq!(g.beta_url(), "http://127.0.0.1:9/beta");
    assert_eq!(
        g.token_url(),
        "https://login.microsoftonline.com//oauth2/v2.0/token"
    );
}

#[test]
fn clouds_pick_matching_endpoints() {
    let g = GraphSettings {
        cloud: Cloud::China,
        tenant_id: "t".into(),
        ..Default::default()
    };
    assert_eq!(g.v1_url(), "https://microsoftgraph.chinacloudapi.cn/v1.0");
    assert_eq!(
        g.token_url(),
        "https://login.chinacloudapi.cn/t/oauth2/v2.0/token"
    );
    assert_eq!(
        g.scope(),
        "https://microsoftgraph.chinacloudapi.cn/.default"
    );
}
