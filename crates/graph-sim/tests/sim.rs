//! Integration tests of the Graph simulator, over real HTTP: the token endpoint, addressing
//! users, listing and deleting methods, Graph's refusals, throttling, faults and groups.
//!
//! The fixtures are the workspace's (`tests/fixtures/` at the root), shared with mfa-reset's
//! tests so that both read the same tenant and the same client certificate.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use graph_sim::tenant::{PASSWORD_METHOD_ID, RESET_PENDING_GROUP_ID};
use graph_sim::{
    AppPatch, FaultSettings, Fixture, GenOptions, SimConfig, SimServer, ThrottleSettings,
    TokenFault,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CERT_PEM: &str = include_str!("../../../tests/fixtures/client-cert.pem");
const KEY_PEM: &str = include_str!("../../../tests/fixtures/client-key.pem");

const ADELE: &str = "adele.vance%40contoso.com";
const GLOBAL_ADMIN_ID: &str = "11111111-1111-4111-8111-000000000006";
const ELIGIBLE_ADMIN_ID: &str = "11111111-1111-4111-8111-00000000000a";
const GROUP_ADMIN_ID: &str = "11111111-1111-4111-8111-00000000000b";
const ADELE_ID: &str = "11111111-1111-4111-8111-000000000001";
const HELPDESK_GROUP_ID: &str = "22222222-2222-4222-8222-000000000004";
const MIXED_GROUP_ID: &str = "22222222-2222-4222-8222-000000000003";
const EVERY: &str = "every.method%40contoso.com";
const MOBILE: &str = "3179e48a-750b-4051-897c-87b9720928f7";
const ALTERNATE_MOBILE: &str = "b6332ec1-7057-4abe-9331-3d72feddfe41";
const OFFICE: &str = "e37fc753-ff3b-4958-9484-eaa9425c82bc";
const EMAIL: &str = "3ddfcfc8-9383-446f-83cc-3ab9be4be18f";

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("../../../tests/fixtures/tenant.json"))
        .expect("fixture parses")
}

fn fixture_config() -> SimConfig {
    SimConfig {
        fixture: Some(fixture()),
        ..SimConfig::default()
    }
}

/// Start a simulator on a free port.
async fn start_sim(config: SimConfig) -> SimServer {
    graph_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// A simulator and an HTTP client holding a token.
struct Graph {
    sim: SimServer,
    http: reqwest::Client,
    token: String,
}

impl Graph {
    async fn start(config: SimConfig) -> Graph {
        let sim = start_sim(config).await;
        let http = reqwest::Client::new();
        let token = secret_token(&http, &sim, "sim-secret").await["access_token"]
            .as_str()
            .expect("token issued")
            .to_string();
        Graph { sim, http, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.sim.url(), path)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request answered")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// A GET with `ConsistencyLevel: eventual` (an advanced query, with `$count=true` in `path`).
    async fn get_eventual(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .header("ConsistencyLevel", "eventual")
            .send()
            .await
            .expect("request answered")
    }

    async fn post_sim(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("simulator answers")
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn methods(&self, version: &str, user: &str) -> Vec<Value> {
        let response = self
            .get(&format!("/{version}/users/{user}/authentication/methods"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        body["value"].as_array().expect("value array").clone()
    }

    async fn method_ids(&self, version: &str, user: &str) -> Vec<String> {
        self.methods(version, user)
            .await
            .iter()
            .map(|m| m["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

async fn secret_token(http: &reqwest::Client, sim: &SimServer, secret: &str) -> Value {
    http.post(sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-0000-0000-0000-000000000002"),
            ("client_secret", secret),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token endpoint answers")
        .json()
        .await
        .expect("json")
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("json error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn assertion(aud: &str, lifetime_secs: i64) -> String {
    let der = pem::parse(CERT_PEM).expect("cert pem").into_contents();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&der)));
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "aud": aud,
        "iss": "00000000-0000-0000-0000-000000000002",
        "sub": "00000000-0000-0000-0000-000000000002",
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now,
        "iat": now,
        "exp": now + lifetime_secs,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(KEY_PEM.as_bytes()).expect("key pem");
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

async fn assertion_token(http: &reqwest::Client, sim: &SimServer, jwt: &str) -> reqwest::Response {
    http.post(sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-0000-0000-0000-000000000002"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", jwt),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token endpoint answers")
}

// ---- token endpoint ----

#[tokio::test]
async fn token_by_secret_is_issued_and_a_wrong_secret_is_refused_with_aadsts7000215() {
    let sim = start_sim(SimConfig::default()).await;
    let http = reqwest::Client::new();

    let ok = secret_token(&http, &sim, "sim-secret").await;
    let bad = secret_token(&http, &sim, "wrong").await;

    assert_eq!(ok["token_type"], "Bearer");
    assert_eq!(ok["expires_in"], 3599);
    assert!(ok["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(bad["error"], "invalid_client");
    assert_eq!(bad["error_codes"], json!([7000215]));
    assert!(bad["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215"));
    assert!(bad["trace_id"].is_string() && bad["correlation_id"].is_string());
    assert_eq!(sim.stats().tokens_issued, 1);
}

#[tokio::test]
async fn token_for_an_unknown_tenant_is_refused_with_aadsts90002() {
    let sim = start_sim(SimConfig::default()).await;

    let body: Value = reqwest::Client::new()
        .post(format!(
            "{}/contoso.onmicrosoft.com/oauth2/v2.0/token",
            sim.url()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "x"),
            ("client_secret", "y"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(body["error_codes"], json!([90002]));
}

#[tokio::test]
async fn token_by_certificate_assertion_is_issued_and_a_wrong_audience_is_refused() {
    let sim = start_sim(SimConfig {
        client_certificate_pem: Some(CERT_PEM.to_string()),
        ..SimConfig::default()
    })
    .await;
    let http = reqwest::Client::new();

    let ok = assertion_token(&http, &sim, &assertion(&sim.token_url(), 600)).await;
    let wrong_aud = assertion_token(
        &http,
        &sim,
        &assertion("https://login.microsoftonline.com/x/oauth2/v2.0/token", 600),
    )
    .await;
    let too_long = assertion_token(&http, &sim, &assertion(&sim.token_url(), 3600)).await;

    assert_eq!(ok.status(), StatusCode::OK);
    let ok: Value = ok.json().await.unwrap();
    assert!(ok["access_token"].is_string());
    for refused in [wrong_aud, too_long] {
        // invalid_client: client authentication failed, 401 (RFC 6749 §5.2).
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_codes"], json!([700027]));
    }
}

#[tokio::test]
async fn expired_or_missing_token_is_refused_with_401_invalid_authentication_token() {
    let graph = Graph::start(fixture_config()).await;
    graph.sim.expire_tokens();

    let expired = graph
        .get(&format!("/v1.0/users/{ADELE}/authentication/methods"))
        .await;
    let missing = graph
        .http
        .get(graph.url(&format!("/v1.0/users/{ADELE}/authentication/methods")))
        .header("client-request-id", "my-request-1")
        .send()
        .await
        .unwrap();

    let (status, code, message) = error_code(expired).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken")
    );
    assert!(message.contains("expired"), "{message}");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        body["error"]["innerError"]["client-request-id"],
        "my-request-1"
    );
}

// ---- listing ----

#[tokio::test]
async fn listing_shows_methods_with_realistic_fields_and_hides_hardware_oath_under_v1() {
    let graph = Graph::start(fixture_config()).await;

    let v1 = graph.methods("v1.0", EVERY).await;
    let beta = graph.methods("beta", EVERY).await;

    let types = |list: &[Value]| -> Vec<String> {
        list.iter()
            .map(|m| m["@odata.type"].as_str().unwrap().to_string())
            .collect()
    };
    let v1_types = types(&v1);
    // v1.0 lists every type but hardware OATH (QR code + PIN is in v1.0); beta lists all.
    assert_eq!(v1.len(), 12, "{v1_types:?}");
    assert_eq!(beta.len(), 13);
    assert!(!v1_types.iter().any(|t| t.contains("hardwareOath")));
    assert!(v1_types.iter().any(|t| t.contains("qrCodePin")));
    assert!(types(&beta).iter().any(|t| t.contains("hardwareOath")));
    assert!(types(&beta).iter().any(|t| t.contains("qrCodePin")));
    let password = v1
        .iter()
        .find(|m| m["id"] == PASSWORD_METHOD_ID)
        .expect("password listed");
    assert_eq!(
        password["@odata.type"],
        "#microsoft.graph.passwordAuthenticationMethod"
    );
    let mobile = v1
        .iter()
        .find(|m| m["id"] == MOBILE)
        .expect("mobile listed");
    assert_eq!(mobile["phoneType"], "mobile");
    assert_eq!(mobile["phoneNumber"], "+1 5555550008");
    let fido = v1
        .iter()
        .find(|m| m["@odata.type"] == "#microsoft.graph.fido2AuthenticationMethod")
        .unwrap();
    assert!(fido["model"].is_string() && fido["aaGuid"].is_string());
}

#[tokio::test]
async fn generated_users_have_a_password_and_methods_within_the_asked_range() {
    let graph = Graph::start(SimConfig {
        users: 40,
        seed: 7,
        generation: GenOptions {
            methods_min: 2,
            methods_max: 5,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    })
    .await;

    for user in graph.sim.users_snapshot().iter().take(10) {
        let listed = graph.methods("beta", &user.id).await;
        assert_eq!(listed[0]["id"], PASSWORD_METHOD_ID);
        assert!((3..=6).contains(&listed.len()), "{}", listed.len());
    }
}

// ---- deleting ----

#[tokio::test]
async fn deleting_each_method_type_answers_204_and_removes_it() {
    let graph = Graph::start(fixture_config()).await;
    let base = format!("/beta/users/{EVERY}/authentication");
    // Everything but the default (the mobile phone), which goes last.
    let deletes = [
        format!("{base}/phoneMethods/{OFFICE}"),
        format!("{base}/emailMethods/{EMAIL}"),
        format!("{base}/microsoftAuthenticatorMethods/a1a1a1a1-0000-4000-8000-000000000008"),
        format!("{base}/fido2Methods/f1d0f1d0-0000-4000-8000-000000000008"),
        format!("{base}/softwareOathMethods/50f7ab52-0000-4000-8000-000000000008"),
        format!("{base}/temporaryAccessPassMethods/7a907a90-0000-4000-8000-000000000008"),
        format!("{base}/windowsHelloForBusinessMethods/d7d7d7d7-0000-4000-8000-000000000008"),
        format!("{base}/platformCredentialMethods/9c9c9c9c-0000-4000-8000-000000000008"),
        format!("{base}/externalAuthenticationMethods/e0e0e0e0-0000-4000-8000-000000000008/$ref"),
        format!("{base}/hardwareOathMethods/4a4a4a4a-0000-4000-8000-000000000008"),
        format!("{base}/qrCodePinMethod"),
        format!("{base}/phoneMethods/{MOBILE}"),
    ];

    for path in &deletes {
        assert_eq!(
            graph.delete(path).await.status(),
            StatusCode::NO_CONTENT,
            "{path}"
        );
    }

    assert_eq!(
        graph.method_ids("beta", EVERY).await,
        vec![PASSWORD_METHOD_ID.to_string()]
    );
    let user = graph.sim.user("every.method@contoso.com").unwrap();
    assert_eq!(user.deleted_methods.len(), 12);
    assert_eq!(
        user.default_method, None,
        "preference cleared when the default went last"
    );
}

#[tokio::test]
async fn password_cannot_be_deleted() {
    let graph = Graph::start(fixture_config()).await;

    let response = graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/passwordMethods/{PASSWORD_METHOD_ID}"
        ))
        .await;

    let (status, code, _) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "badRequest")
    );
    assert!(graph
        .method_ids("v1.0", ADELE)
        .await
        .contains(&PASSWORD_METHOD_ID.to_string()));
}

#[tokio::test]
async fn there_is_no_generic_delete_of_a_method() {
    let graph = Graph::start(fixture_config()).await;

    let response = graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/methods/{EMAIL}"
        ))
        .await;

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(graph
        .method_ids("v1.0", ADELE)
        .await
        .contains(&EMAIL.to_string()));
}

#[tokio::test]
async fn deleting_default_method_first_is_refused_and_accepted_last() {
    let graph = Graph::start(fixture_config()).await;
    let mobile =
        format!("/v1.0/users/every.method%40contoso.com/authentication/phoneMethods/{MOBILE}");

    let first = graph.delete(&mobile).await;
    let (status, code, message) = error_code(first).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "badRequest")
    );
    assert_eq!(message, "Cannot delete default method with other methods configured. Please change default method before deletion.");

    let user = graph.sim.user("every.method@contoso.com").unwrap();
    for m in user
        .methods
        .iter()
        .filter(|m| m["id"] != PASSWORD_METHOD_ID && m["id"] != MOBILE)
    {
        // Stand-in for the client's plan: every other method through the admin view.
        let stem = m["@odata.type"].as_str().unwrap();
        let id = m["id"].as_str().unwrap();
        let path = match stem
            .trim_start_matches("#microsoft.graph.")
            .trim_end_matches("AuthenticationMethod")
        {
            "phone" => format!("phoneMethods/{id}"),
            "email" => format!("emailMethods/{id}"),
            "microsoftAuthenticator" => format!("microsoftAuthenticatorMethods/{id}"),
            "fido2" => format!("fido2Methods/{id}"),
            "softwareOath" => format!("softwareOathMethods/{id}"),
            "temporaryAccessPass" => format!("temporaryAccessPassMethods/{id}"),
            "windowsHelloForBusiness" => format!("windowsHelloForBusinessMethods/{id}"),
            "platformCredential" => format!("platformCredentialMethods/{id}"),
            "external" => format!("externalAuthenticationMethods/{id}/$ref"),
            "hardwareOath" => format!("hardwareOathMethods/{id}"),
            _ => "qrCodePinMethod".to_string(),
        };
        let r = graph
            .delete(&format!("/beta/users/{EVERY}/authentication/{path}"))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{path}");
    }
    let last = graph.delete(&mobile).await;

    assert_eq!(last.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn deleting_mobile_while_an_alternate_mobile_exists_is_refused() {
    let graph = Graph::start(fixture_config()).await;
    // Make the authenticator the default so only the alternateMobile rule applies.
    let patched = graph
        .send(
            reqwest::Method::PATCH,
            &format!("/beta/users/{ADELE}/authentication/signInPreferences"),
            Some(json!({"userPreferredMethodForSecondaryAuthentication": "push"})),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::NO_CONTENT);

    let refused = graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/phoneMethods/{MOBILE}"
        ))
        .await;
    let (status, code, _) = error_code(refused).await;
    let alternate = graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/phoneMethods/{ALTERNATE_MOBILE}"
        ))
        .await;
    let mobile = graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/phoneMethods/{MOBILE}"
        ))
        .await;

    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "badRequest")
    );
    assert_eq!(alternate.status(), StatusCode::NO_CONTENT);
    assert_eq!(mobile.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn unknown_ids_and_methods_of_another_type_are_not_found() {
    let graph = Graph::start(fixture_config()).await;
    let base = format!("/v1.0/users/{ADELE}/authentication");

    let unknown = graph
        .delete(&format!(
            "{base}/softwareOathMethods/00000000-0000-0000-0000-00000000dead"
        ))
        .await;
    let wrong_collection = graph
        .delete(&format!("{base}/softwareOathMethods/{EMAIL}"))
        .await;

    assert_eq!(error_code(unknown).await.0, StatusCode::NOT_FOUND);
    assert_eq!(error_code(wrong_collection).await.0, StatusCode::NOT_FOUND);
    assert!(graph
        .method_ids("v1.0", ADELE)
        .await
        .contains(&EMAIL.to_string()));
}

#[tokio::test]
async fn whfb_and_fido2_not_found_answer_in_the_odata_error_shape() {
    let graph = Graph::start(fixture_config()).await;

    for collection in ["windowsHelloForBusinessMethods", "fido2Methods"] {
        let response = graph
            .delete(&format!("/v1.0/users/{ADELE}/authentication/{collection}/00000000-0000-0000-0000-000000000000"))
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["odata.error"]["code"], "invalid_request");
        assert!(body["odata.error"]["message"]["value"].is_string());
    }
}

#[tokio::test]
async fn hardware_oath_cannot_be_reached_under_v1() {
    let graph = Graph::start(fixture_config()).await;

    let hardware = graph
        .delete(&format!("/v1.0/users/{EVERY}/authentication/hardwareOathMethods/4a4a4a4a-0000-4000-8000-000000000008"))
        .await;
    let listed_v1 = graph
        .get(&format!(
            "/v1.0/users/{EVERY}/authentication/hardwareOathMethods"
        ))
        .await;
    let listed_beta: Value = graph
        .get(&format!(
            "/beta/users/{EVERY}/authentication/hardwareOathMethods"
        ))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(hardware.status(), StatusCode::BAD_REQUEST);
    assert_eq!(listed_v1.status(), StatusCode::BAD_REQUEST);
    assert_eq!(listed_beta["value"].as_array().unwrap().len(), 1);
    assert_eq!(graph.methods("beta", EVERY).await.len(), 13);
}

#[tokio::test]
async fn deleting_the_standard_qr_code_leaves_the_qr_code_pin_method_listed() {
    let graph = Graph::start(fixture_config()).await;
    let method = format!("/v1.0/users/{EVERY}/authentication/qrCodePinMethod");
    let qr_listed = |methods: Vec<Value>| {
        methods
            .iter()
            .any(|m| m["@odata.type"] == "#microsoft.graph.qrCodePinAuthenticationMethod")
    };

    let standard = graph.delete(&format!("{method}/standardQRCode")).await;
    let again = graph.delete(&format!("{method}/standardQRCode")).await;

    assert_eq!(standard.status(), StatusCode::NO_CONTENT);
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "that code is gone");
    assert!(
        qr_listed(graph.methods("v1.0", EVERY).await),
        "the method, with its PIN, stays registered"
    );
    assert_eq!(graph.get(&method).await.status(), StatusCode::OK);
    let user = graph.sim.user("every.method@contoso.com").unwrap();
    assert!(user.qr_codes.is_empty(), "{:?}", user.qr_codes);
    assert_eq!(user.deleted_methods.len(), 0);

    let whole = graph.delete(&method).await;

    assert_eq!(whole.status(), StatusCode::NO_CONTENT);
    assert!(!qr_listed(graph.methods("v1.0", EVERY).await));
    assert!(!qr_listed(graph.methods("beta", EVERY).await));
    assert_eq!(graph.get(&method).await.status(), StatusCode::NOT_FOUND);
    let user = graph.sim.user("every.method@contoso.com").unwrap();
    assert_eq!(user.deleted_methods.len(), 1);
}

// ---- addressing users ----

#[tokio::test]
async fn guest_is_found_through_a_percent_encoded_ext() {
    let graph = Graph::start(fixture_config()).await;

    let ids = graph
        .method_ids(
            "v1.0",
            "megan.bowen_fabrikam.com%23EXT%23%40contoso.onmicrosoft.com",
        )
        .await;

    assert!(ids.contains(&MOBILE.to_string()));
}

#[tokio::test]
async fn dollar_user_is_found_in_the_quoted_form_and_refused_as_a_plain_segment() {
    let graph = Graph::start(fixture_config()).await;

    let quoted = graph
        .get("/v1.0/users('$admin@contoso.com')/authentication/methods")
        .await;
    let plain = graph
        .get("/v1.0/users/$admin@contoso.com/authentication/methods")
        .await;

    assert_eq!(quoted.status(), StatusCode::OK);
    let (status, code, _) = error_code(plain).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "Request_BadRequest")
    );
}

#[tokio::test]
async fn upn_with_quote_plus_and_ampersand_is_found_encoded_and_quoted() {
    let graph = Graph::start(fixture_config()).await;

    let encoded = graph
        .method_ids("v1.0", "o%27neil%2Bmfa%26co%40contoso.com")
        .await;
    let quoted: Value = graph
        .get("/v1.0/users('o''neil+mfa&co@contoso.com')/authentication/methods")
        .await
        .json()
        .await
        .unwrap();
    let quoted: Vec<String> = quoted["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();

    assert_eq!(encoded.len(), 2);
    assert_eq!(encoded, quoted);
}

#[tokio::test]
async fn users_are_found_by_id_and_case_insensitive_upn() {
    let graph = Graph::start(fixture_config()).await;

    let by_id = graph
        .method_ids("v1.0", "11111111-1111-4111-8111-000000000001")
        .await;
    let by_upper = graph.method_ids("v1.0", "ADELE.VANCE%40CONTOSO.COM").await;

    assert_eq!(by_id, by_upper);
}

#[tokio::test]
async fn unknown_user_is_not_found() {
    let graph = Graph::start(fixture_config()).await;

    let response = graph
        .get("/v1.0/users/nobody%40contoso.com/authentication/methods")
        .await;

    let (status, code, message) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "Request_ResourceNotFound")
    );
    assert!(message.starts_with("Resource 'nobody@contoso.com' does not exist"));
}

#[tokio::test]
async fn privileged_user_writes_are_forbidden() {
    let graph = Graph::start(fixture_config()).await;
    let user = "breakglass%40contoso.com";

    let delete = graph
        .delete(&format!(
            "/v1.0/users/{user}/authentication/fido2Methods/f1d0f1d0-0000-4000-8000-000000000005"
        ))
        .await;
    let revoke = graph
        .post(
            &format!("/v1.0/users/{user}/revokeSignInSessions"),
            json!({}),
        )
        .await;

    for response in [delete, revoke] {
        let (status, code, message) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "Authorization_RequestDenied")
        );
        assert_eq!(
            message,
            "Insufficient privileges to complete the operation."
        );
    }
    assert_eq!(graph.methods("v1.0", user).await.len(), 2);
}

// ---- related actions ----

#[tokio::test]
async fn revoking_sign_in_sessions_answers_true_and_is_counted() {
    let graph = Graph::start(fixture_config()).await;

    let response = graph
        .post(
            &format!("/v1.0/users/{ADELE}/revokeSignInSessions"),
            json!({}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["value"], true);
    assert_eq!(
        graph
            .sim
            .user("adele.vance@contoso.com")
            .unwrap()
            .sessions_revoked,
        1
    );
}

#[tokio::test]
async fn sign_in_preferences_show_the_default_and_can_change_it() {
    let graph = Graph::start(fixture_config()).await;
    let path = format!("/beta/users/{ADELE}/authentication/signInPreferences");

    let before: Value = graph.get(&path).await.json().await.unwrap();
    let unregistered = graph
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"userPreferredMethodForSecondaryAuthentication": "oath"})),
        )
        .await;
    graph
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"userPreferredMethodForSecondaryAuthentication": "push"})),
        )
        .await;
    let after: Value = graph.get(&path).await.json().await.unwrap();
    let v1 = graph
        .get(&format!(
            "/v1.0/users/{ADELE}/authentication/signInPreferences"
        ))
        .await;

    assert_eq!(
        before["userPreferredMethodForSecondaryAuthentication"],
        "sms"
    );
    assert_eq!(unregistered.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        after["userPreferredMethodForSecondaryAuthentication"],
        "push"
    );
    assert_eq!(v1.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn directory_roles_of_a_role_holder_are_listed() {
    let graph = Graph::start(fixture_config()).await;
    let roles = |user: &str| {
        format!("/v1.0/users/{user}/transitiveMemberOf/microsoft.graph.directoryRole?$count=true")
    };

    let admin: Value = graph
        .get_eventual(&roles("global.admin%40contoso.com"))
        .await
        .json()
        .await
        .unwrap();
    let plain: Value = graph
        .get_eventual(&roles(ADELE))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(admin["value"][0]["displayName"], "Global Administrator");
    assert_eq!(
        admin["value"][0]["@odata.type"],
        "#microsoft.graph.directoryRole"
    );
    assert_eq!(admin["@odata.count"], 1);
    assert_eq!(plain["value"], json!([]));
}

#[tokio::test]
async fn tap_phone_and_email_methods_can_be_created() {
    let graph = Graph::start(fixture_config()).await;
    let user = "already.clean%40contoso.com";
    let base = format!("/v1.0/users/{user}/authentication");

    let tap1 = graph
        .post(
            &format!("{base}/temporaryAccessPassMethods"),
            json!({"lifetimeInMinutes": 60, "isUsableOnce": true}),
        )
        .await;
    assert_eq!(tap1.status(), StatusCode::CREATED);
    let tap1: Value = tap1.json().await.unwrap();
    let tap2: Value = graph
        .post(
            &format!("{base}/temporaryAccessPassMethods"),
            json!({"lifetimeInMinutes": 10, "isUsableOnce": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    let too_short = graph
        .post(
            &format!("{base}/temporaryAccessPassMethods"),
            json!({"lifetimeInMinutes": 5}),
        )
        .await;
    let alternate_first = graph
        .post(
            &format!("{base}/phoneMethods"),
            json!({"phoneNumber": "+1 5555550100", "phoneType": "alternateMobile"}),
        )
        .await;
    let mobile = graph
        .post(
            &format!("{base}/phoneMethods"),
            json!({"phoneNumber": "+1 5555550101", "phoneType": "mobile"}),
        )
        .await;
    let mobile_again = graph
        .post(
            &format!("{base}/phoneMethods"),
            json!({"phoneNumber": "+1 5555550102", "phoneType": "mobile"}),
        )
        .await;
    let email = graph
        .post(
            &format!("{base}/emailMethods"),
            json!({"emailAddress": "clean@example.com"}),
        )
        .await;

    assert!(tap1["temporaryAccessPass"]
        .as_str()
        .is_some_and(|p| p.len() >= 8));
    assert_eq!(too_short.status(), StatusCode::BAD_REQUEST);
    assert_eq!(alternate_first.status(), StatusCode::BAD_REQUEST);
    assert_eq!(mobile.status(), StatusCode::CREATED);
    let mobile: Value = mobile.json().await.unwrap();
    assert_eq!(mobile["id"], MOBILE);
    assert_eq!(mobile_again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(email.status(), StatusCode::CREATED);
    let listed = graph.methods("v1.0", user).await;
    let taps: Vec<&Value> = listed
        .iter()
        .filter(|m| m["@odata.type"] == "#microsoft.graph.temporaryAccessPassAuthenticationMethod")
        .collect();
    assert_eq!(taps.len(), 1, "a new TAP replaces the old");
    assert_eq!(taps[0]["id"], tap2["id"]);
    assert_eq!(
        taps[0]["temporaryAccessPass"],
        Value::Null,
        "the plaintext is shown once"
    );
    assert_eq!(listed.len(), 4);
}

#[tokio::test]
async fn the_tap_policy_bounds_what_may_be_created_and_the_pass_is_shown_only_once() {
    let graph = Graph::start(fixture_config()).await;
    let user = "already.clean%40contoso.com";
    let taps = format!("/v1.0/users/{user}/authentication/temporaryAccessPassMethods");
    let policy = "/_sim/policies/temporaryAccessPass";

    // Narrowed: 30 minutes to 2 hours, default 45, one-time only.
    let narrowed = graph
        .post_sim(
            policy,
            json!({"minimumLifetimeInMinutes": 30, "maximumLifetimeInMinutes": 120,
                   "defaultLifetimeInMinutes": 45, "isUsableOnce": true, "defaultLength": 12}),
        )
        .await;
    assert_eq!(narrowed.status(), StatusCode::OK);
    let too_long = graph.post(&taps, json!({"lifetimeInMinutes": 121})).await;
    let reusable = graph
        .post(
            &taps,
            json!({"lifetimeInMinutes": 60, "isUsableOnce": false}),
        )
        .await;
    let defaulted = graph.post(&taps, json!({})).await;
    assert_eq!(error_code(too_long).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(reusable).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(defaulted.status(), StatusCode::CREATED);
    let defaulted: Value = defaulted.json().await.unwrap();
    assert_eq!(defaulted["lifetimeInMinutes"], 45);
    assert_eq!(defaulted["isUsableOnce"], true);
    let pass = defaulted["temporaryAccessPass"]
        .as_str()
        .expect("the pass, once");
    assert_eq!(pass.len(), 12);
    // Only the simulator's own endpoint shows it again (for tests); Graph lists it as null.
    let kept: Value = graph
        .get(&format!("/_sim/users/{user}/tap"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["temporaryAccessPass"], pass);
    let listed = graph.methods("v1.0", user).await;
    assert!(listed
        .iter()
        .filter(|m| m["@odata.type"] == "#microsoft.graph.temporaryAccessPassAuthenticationMethod")
        .all(|m| m["temporaryAccessPass"].is_null()));

    // Disabled: refused as Entra refuses it.
    let disabled = graph.post_sim(policy, json!({"state": "disabled"})).await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let (status, code, message) = error_code(graph.post(&taps, json!({})).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "badRequest")
    );
    assert!(
        message.contains("AuthMethodType [TemporaryAccessPass]"),
        "{message}"
    );
    // A policy outside Graph's own bounds is not accepted.
    let invalid = graph
        .post_sim(policy, json!({"maximumLifetimeInMinutes": 50000}))
        .await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_token_is_refused_once_its_lifetime_has_passed() {
    // A lifetime of 0 s has passed as soon as the token is issued: no waiting on a clock.
    let sim = start_sim(SimConfig {
        token_ttl_secs: 0,
        ..fixture_config()
    })
    .await;
    let http = reqwest::Client::new();
    let issued = secret_token(&http, &sim, "sim-secret").await;

    let answer = http
        .get(format!(
            "{}/v1.0/users/{ADELE}/authentication/methods",
            sim.url()
        ))
        .bearer_auth(issued["access_token"].as_str().expect("token issued"))
        .send()
        .await
        .unwrap();

    assert_eq!(issued["expires_in"], 0);
    let (status, code, message) = error_code(answer).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken")
    );
    assert!(message.contains("expired"), "{message}");
}

// ---- throttling ----

fn throttled_config(requests: u32) -> SimConfig {
    SimConfig {
        throttle: ThrottleSettings {
            requests_per_period: requests,
            requests_period: Duration::from_secs(10),
            ..ThrottleSettings::default()
        },
        ..fixture_config()
    }
}

#[tokio::test]
async fn an_empty_bucket_answers_429_at_once_with_retry_after_seconds_and_throttle_headers() {
    let mut config = throttled_config(5);
    // A long period keeps refill during the test far below a token.
    config.throttle.requests_period = Duration::from_secs(100);
    let graph = Graph::start(config).await;
    let path = format!("/v1.0/users/{ADELE}/authentication/methods");
    let mut percentages = Vec::new();
    let bucket_opened = std::time::Instant::now();
    for _ in 0..5 {
        let r = graph.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-ms-resource-unit"], "1");
        percentages.push(
            r.headers()
                .get("x-ms-throttle-limit-percentage")
                .map(|v| v.to_str().unwrap().to_string()),
        );
    }

    // Latency from now on, far longer than any answer takes: a 429 must not wait for it.
    graph.sim.set_faults(graph_sim::FaultPatch {
        latency_ms: Some(60_000),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let refused = graph.get(&path).await;
    let took = started.elapsed();
    let bucket_age = bucket_opened.elapsed();

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        took < Duration::from_secs(30),
        "429 without the added latency: {took:?}"
    );
    let secs: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One of 5 tokens per 100 s refills in 20 s, less what refilled since the bucket opened
    // (nothing worth a second unless this machine took a second for six requests).
    let fewest = (20.0 - bucket_age.as_secs_f64()).ceil().max(1.0) as u64;
    assert!(
        (fewest..=20).contains(&secs),
        "Retry-After {secs} s, expected {fewest}..=20 s after {bucket_age:?}"
    );
    assert!(refused.headers().contains_key("x-ms-throttle-scope"));
    assert!(refused.headers().contains_key("x-ms-throttle-information"));
    assert_eq!(error_code(refused).await.1, "TooManyRequests");
    assert_eq!(percentages[..3], [None, None, None]);
    assert_eq!(percentages[3].as_deref(), Some("80"));
    assert_eq!(percentages[4].as_deref(), Some("100"));
    assert_eq!(graph.sim.stats().throttled, 1);
}

#[tokio::test]
async fn retry_after_is_an_http_date_when_asked() {
    let mut config = throttled_config(1);
    config.throttle.retry_after_http_date = true;
    let graph = Graph::start(config).await;
    let path = format!("/v1.0/users/{ADELE}/authentication/methods");
    graph.get(&path).await;

    let before = std::time::SystemTime::now();
    let refused = graph.get(&path).await;
    let after = std::time::SystemTime::now();

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let date =
        httpdate::parse_http_date(refused.headers()["retry-after"].to_str().unwrap()).unwrap();
    // The 10 s wait (1 token per 10 s), rounded up to the date's whole second, counted from
    // the moment the 429 was sent: somewhere between `before` and `after`.
    assert!(
        date >= before + Duration::from_secs(10),
        "{date:?} is less than 10 s after {before:?}"
    );
    assert!(
        date <= after + Duration::from_secs(11),
        "{date:?} is more than 11 s after {after:?}"
    );
}

#[tokio::test]
async fn requests_ignoring_retry_after_are_counted_as_violations() {
    let mut config = throttled_config(1);
    // No grace for requests already on the wire: the next request ignores the Retry-After.
    config.throttle.violation_grace = Duration::ZERO;
    let graph = Graph::start(config).await;
    let path = format!("/v1.0/users/{ADELE}/authentication/methods");
    graph.get(&path).await;
    let refused = graph.get(&path).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(graph.sim.stats().violations, 0);

    let ignoring = graph.get(&path).await;

    assert_eq!(ignoring.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(graph.sim.stats().violations, 1);
}

#[tokio::test]
async fn a_refused_request_does_not_consume_tokens() {
    let mut config = throttled_config(10);
    config.throttle.writes_per_period = 1;
    config.throttle.writes_period = Duration::from_secs(100);
    let graph = Graph::start(config).await;
    let base = format!("/v1.0/users/{EVERY}/authentication");
    assert_eq!(
        graph
            .delete(&format!("{base}/phoneMethods/{OFFICE}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let mut refused = Vec::new();
    for _ in 0..3 {
        refused.push(
            graph
                .delete(&format!("{base}/emailMethods/{EMAIL}"))
                .await
                .status(),
        );
    }
    // 1 + 3 writes charged against 10 requests would leave 6; refused ones leave 9.
    let mut reads_ok = 0;
    for _ in 0..9 {
        if graph.get(&format!("{base}/methods")).await.status() == StatusCode::OK {
            reads_ok += 1;
        }
    }

    assert_eq!(refused, vec![StatusCode::TOO_MANY_REQUESTS; 3]);
    assert_eq!(reads_ok, 9);
}

// ---- faults and consistency ----

#[tokio::test]
async fn a_ghost_delete_is_applied_though_answered_with_an_error_so_the_retry_sees_404() {
    let graph = Graph::start(SimConfig {
        faults: FaultSettings {
            ghost_rate: 1.0,
            ..FaultSettings::default()
        },
        ..fixture_config()
    })
    .await;
    let path = format!("/v1.0/users/{ADELE}/authentication/emailMethods/{EMAIL}");

    let first = graph.delete(&path).await;
    let retry = graph.delete(&path).await;

    assert!(
        matches!(first.status().as_u16(), 429 | 503),
        "{}",
        first.status()
    );
    assert_eq!(retry.status(), StatusCode::NOT_FOUND);
    assert_eq!(graph.sim.stats().ghost_successes, 1);
    assert!(!graph
        .method_ids("v1.0", ADELE)
        .await
        .contains(&EMAIL.to_string()));
}

#[tokio::test]
async fn a_deleted_method_stays_listed_during_the_consistency_delay() {
    // A delay no test run outlasts; the test ends it through the simulator, not the clock.
    let graph = Graph::start(SimConfig {
        consistency_delay_ms: 3_600_000,
        ..fixture_config()
    })
    .await;
    let path = format!("/v1.0/users/{ADELE}/authentication/emailMethods/{EMAIL}");

    assert_eq!(graph.delete(&path).await.status(), StatusCode::NO_CONTENT);
    let soon = graph.method_ids("v1.0", ADELE).await;
    let again = graph.delete(&path).await;
    graph.sim.settle_deletions();
    let later = graph.method_ids("v1.0", ADELE).await;

    assert!(soon.contains(&EMAIL.to_string()));
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert!(!later.contains(&EMAIL.to_string()));
}

#[tokio::test]
async fn a_dropped_connection_gives_the_client_no_answer() {
    let graph = Graph::start(fixture_config()).await;
    graph.sim.set_faults(graph_sim::FaultPatch {
        drop_rate: Some(1.0),
        ..Default::default()
    });

    let result = graph
        .http
        .get(graph.url(&format!("/v1.0/users/{ADELE}/authentication/methods")))
        .bearer_auth(&graph.token)
        .send()
        .await;

    assert!(result.is_err(), "{result:?}");
    assert_eq!(graph.sim.stats().dropped_connections, 1);
}

#[tokio::test]
async fn server_error_faults_are_injected_and_adjustable_over_http() {
    let graph = Graph::start(fixture_config()).await;
    let set: Value = graph
        .http
        .post(graph.url("/_sim/faults"))
        .json(&json!({"fault_rate": 1.0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set["fault_rate"], 1.0);

    let response = graph
        .get(&format!("/v1.0/users/{ADELE}/authentication/methods"))
        .await;

    assert!(matches!(response.status().as_u16(), 500 | 502 | 503 | 504));
    assert_eq!(graph.sim.stats().faults_injected, 1);
}

#[tokio::test]
async fn an_outage_fails_token_requests_too() {
    let sim = start_sim(SimConfig {
        faults: FaultSettings {
            outage_secs: 30,
            ..FaultSettings::default()
        },
        ..SimConfig::default()
    })
    .await;

    let result = reqwest::Client::new()
        .post(sim.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;

    assert!(result
        .map(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        .unwrap_or(true));
    assert_eq!(sim.stats().tokens_issued, 0);
}

// ---- groups ----

#[tokio::test]
async fn group_members_are_paged_over_250_users_through_nested_groups_without_duplicates() {
    let graph = Graph::start(SimConfig {
        users: 300,
        generation: GenOptions {
            group_size: 260,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    })
    .await;

    let mut next = Some(graph.url(&format!(
        "/v1.0/groups/{RESET_PENDING_GROUP_ID}/transitiveMembers/microsoft.graph.user?$select=id,userPrincipalName&$top=100&$count=true"
    )));
    let mut upns = Vec::new();
    let mut pages = 0;
    while let Some(url) = next {
        let page: Value = graph
            .http
            .get(&url)
            .bearer_auth(&graph.token)
            .header("ConsistencyLevel", "eventual")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for u in page["value"].as_array().unwrap() {
            assert!(u.get("displayName").is_none(), "$select honoured");
            upns.push(u["userPrincipalName"].as_str().unwrap().to_string());
        }
        next = page["@odata.nextLink"].as_str().map(str::to_string);
        if let Some(link) = &next {
            assert!(link.starts_with("http://") && link.contains("$skiptoken="));
        }
    }
    let direct: Value = graph
        .get_eventual(&format!(
            "/v1.0/groups/{RESET_PENDING_GROUP_ID}/members/microsoft.graph.user?$top=999&$count=true"
        ))
        .await
        .json()
        .await
        .unwrap();
    let unknown = graph
        .get_eventual(
            "/v1.0/groups/00000000-0000-0000-0000-0000000000aa/members/microsoft.graph.user?$count=true",
        )
        .await;

    assert_eq!(pages, 3);
    assert_eq!(upns.len(), 260);
    let unique: std::collections::HashSet<_> = upns.iter().collect();
    assert_eq!(unique.len(), 260);
    assert_eq!(direct["value"].as_array().unwrap().len(), 130);
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

// ---- the app's state: credentials, consent, permissions ----

async fn token_answer(
    http: &reqwest::Client,
    sim: &SimServer,
    secret: &str,
) -> (StatusCode, Value) {
    let response = http
        .post(sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-0000-0000-0000-000000000002"),
            ("client_secret", secret),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token endpoint answers");
    (response.status(), response.json().await.expect("json"))
}

#[tokio::test]
async fn a_wrong_or_expired_secret_is_refused_with_401_invalid_client_until_fixed() {
    let sim = start_sim(SimConfig::default()).await;
    let http = reqwest::Client::new();

    let (wrong_status, wrong) = token_answer(&http, &sim, "wrong").await;
    sim.set_app(AppPatch {
        secret_expired: Some(true),
        ..AppPatch::default()
    });
    let (expired_status, expired) = token_answer(&http, &sim, "sim-secret").await;
    sim.set_app(AppPatch {
        secret_expired: Some(false),
        client_secret: Some("rotated".into()),
        ..AppPatch::default()
    });
    let (rotated_status, rotated) = token_answer(&http, &sim, "sim-secret").await;
    let (fixed_status, _) = token_answer(&http, &sim, "rotated").await;

    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (wrong["error"].as_str(), &wrong["error_codes"]),
        (Some("invalid_client"), &json!([7000215]))
    );
    assert_eq!(expired_status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (expired["error"].as_str(), &expired["error_codes"]),
        (Some("invalid_client"), &json!([7000222]))
    );
    assert_eq!(rotated_status, StatusCode::UNAUTHORIZED);
    assert_eq!(rotated["error_codes"], json!([7000215]));
    assert_eq!(fixed_status, StatusCode::OK);
    assert_eq!(sim.stats().tokens_issued, 1);
}

#[tokio::test]
async fn a_disabled_app_an_unknown_tenant_and_an_unregistered_certificate_are_refused() {
    let sim = start_sim(SimConfig {
        client_certificate_pem: Some(CERT_PEM.to_string()),
        ..SimConfig::default()
    })
    .await;
    let http = reqwest::Client::new();

    sim.set_app(AppPatch {
        disabled: Some(true),
        ..AppPatch::default()
    });
    let (disabled_status, disabled) = token_answer(&http, &sim, "sim-secret").await;
    sim.set_app(AppPatch {
        disabled: Some(false),
        tenant_found: Some(false),
        ..AppPatch::default()
    });
    let (tenant_status, tenant) = token_answer(&http, &sim, "sim-secret").await;
    sim.set_app(AppPatch {
        tenant_found: Some(true),
        certificate_registered: Some(false),
        ..AppPatch::default()
    });
    let certificate = assertion_token(&http, &sim, &assertion(&sim.token_url(), 600)).await;

    assert_eq!(disabled_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (disabled["error"].as_str(), &disabled["error_codes"]),
        (Some("unauthorized_client"), &json!([7000112]))
    );
    assert_eq!(tenant_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (tenant["error"].as_str(), &tenant["error_codes"]),
        (Some("invalid_request"), &json!([90002]))
    );
    assert_eq!(certificate.status(), StatusCode::UNAUTHORIZED);
    let certificate: Value = certificate.json().await.unwrap();
    assert_eq!(certificate["error_codes"], json!([700027]));
    assert_eq!(sim.stats().tokens_issued, 0);
}

#[tokio::test]
async fn transient_token_errors_are_answered_then_tokens_are_issued_again() {
    let sim = start_sim(SimConfig::default()).await;
    let http = reqwest::Client::new();
    sim.set_app(AppPatch {
        token_fault: Some(Some(TokenFault::TemporarilyUnavailable)),
        token_faults: Some(1),
        ..AppPatch::default()
    });

    let (busy_status, busy) = token_answer(&http, &sim, "sim-secret").await;
    let (ok_status, _) = token_answer(&http, &sim, "sim-secret").await;
    sim.set_app(AppPatch {
        token_fault: Some(Some(TokenFault::ServerError)),
        token_faults: Some(1),
        ..AppPatch::default()
    });
    let (error_status, error) = token_answer(&http, &sim, "sim-secret").await;

    assert_eq!(busy_status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy["error"], "temporarily_unavailable");
    assert_eq!(ok_status, StatusCode::OK);
    assert_eq!(error_status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error["error"], "server_error");
    assert_eq!(sim.app().token_faults, 0);
}

#[tokio::test]
async fn without_admin_consent_a_token_is_issued_and_graph_refuses_it_everywhere() {
    let graph = Graph::start(fixture_config()).await;
    graph.sim.set_app(AppPatch {
        admin_consent: Some(false),
        ..AppPatch::default()
    });
    let http = reqwest::Client::new();

    let (status, answer) = token_answer(&http, &graph.sim, "sim-secret").await;
    let no_roles = answer["access_token"].as_str().unwrap().to_string();
    let refused = http
        .get(graph.url(&format!("/v1.0/users/{ADELE}/authentication/methods")))
        .bearer_auth(&no_roles)
        .send()
        .await
        .unwrap();
    graph.sim.set_app(AppPatch {
        admin_consent: Some(true),
        ..AppPatch::default()
    });
    let still_refused = http
        .get(graph.url(&format!("/v1.0/users/{ADELE}")))
        .bearer_auth(&no_roles)
        .send()
        .await
        .unwrap();

    assert_eq!(status, StatusCode::OK, "Entra issues the token anyway");
    let (status, code, _) = error_code(refused).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "Authorization_RequestDenied")
    );
    assert_eq!(
        still_refused.status(),
        StatusCode::FORBIDDEN,
        "a token keeps the roles it was issued with"
    );
    assert_eq!(
        graph.methods("v1.0", ADELE).await.len(),
        5,
        "the earlier token had them"
    );
}

#[tokio::test]
async fn the_app_state_is_shown_and_changed_over_http_without_the_secret() {
    let graph = Graph::start(fixture_config()).await;

    let changed: Value = graph
        .post_sim(
            "/_sim/app",
            json!({"disabled": true, "tokenFault": "server_error", "tokenFaults": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
    let shown: Value = graph.get("/_sim/app").await.json().await.unwrap();
    let typo = graph.post_sim("/_sim/app", json!({"disbled": true})).await;

    assert_eq!(changed["disabled"], true);
    assert_eq!(changed["tokenFault"], "server_error");
    assert_eq!(shown, changed);
    assert!(shown.get("clientSecret").is_none());
    assert_eq!(typo.status(), StatusCode::BAD_REQUEST);
}

// ---- users: properties, renaming, guests ----

#[tokio::test]
async fn a_user_is_read_by_upn_or_id_with_select_and_refused_without_user_read() {
    let graph = Graph::start(fixture_config()).await;

    let by_upn: Value = graph
        .get(&format!("/v1.0/users/{ADELE}?$select=id,userPrincipalName"))
        .await
        .json()
        .await
        .unwrap();
    let guest: Value = graph
        .get("/v1.0/users/11111111-1111-4111-8111-000000000002?$select=id,userType")
        .await
        .json()
        .await
        .unwrap();
    let unknown_property = graph
        .get(&format!("/v1.0/users/{ADELE}?$select=id,shoeSize"))
        .await;
    graph.sim.set_app(AppPatch {
        user_read: Some(false),
        ..AppPatch::default()
    });
    let denied = graph.get(&format!("/v1.0/users/{ADELE}")).await;

    assert_eq!(by_upn["id"], ADELE_ID);
    assert_eq!(by_upn["userPrincipalName"], "adele.vance@contoso.com");
    assert!(by_upn.get("displayName").is_none(), "$select honoured");
    assert_eq!(guest["userType"], "Guest");
    assert_eq!(unknown_property.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(denied).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_renamed_user_keeps_its_id_and_its_old_upn_is_not_found() {
    let graph = Graph::start(fixture_config()).await;

    let renamed = graph
        .post_sim(
            "/_sim/users/adele.vance@contoso.com/rename",
            json!({"userPrincipalName": "adele.smith@contoso.com"}),
        )
        .await;
    let taken = graph
        .post_sim(
            &format!("/_sim/users/{ADELE_ID}/rename"),
            json!({"userPrincipalName": "breakglass@contoso.com"}),
        )
        .await;
    let old = graph.get(&format!("/v1.0/users/{ADELE}")).await;
    let by_id: Value = graph
        .get(&format!("/v1.0/users/{ADELE_ID}?$select=userPrincipalName"))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(renamed.status(), StatusCode::OK);
    let renamed: Value = renamed.json().await.unwrap();
    assert_eq!(renamed["id"], ADELE_ID);
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(old).await.0, StatusCode::NOT_FOUND);
    assert_eq!(by_id["userPrincipalName"], "adele.smith@contoso.com");
    assert_eq!(
        graph
            .method_ids("v1.0", "adele.smith%40contoso.com")
            .await
            .len(),
        5
    );
}

#[tokio::test]
async fn revoking_a_guests_sessions_answers_true_but_revokes_nothing() {
    let graph = Graph::start(fixture_config()).await;
    let guest = "megan.bowen_fabrikam.com%23EXT%23%40contoso.onmicrosoft.com";

    let response = graph
        .post(
            &format!("/v1.0/users/{guest}/revokeSignInSessions"),
            json!({}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["value"], true, "Graph's answer does not tell");
    let user = graph
        .sim
        .user("megan.bowen_fabrikam.com#EXT#@contoso.onmicrosoft.com")
        .unwrap();
    assert!(user.external);
    assert_eq!((user.revoke_requests, user.sessions_revoked), (1, 0));
    assert_eq!(graph.sim.stats().sessions_revoked, 0);
}

// ---- roles ----

async fn transitive_assignments(graph: &Graph, principal: &str) -> Value {
    let response = graph
        .get_eventual(&format!(
            "/beta/roleManagement/directory/transitiveRoleAssignments?$count=true&$filter=principalId%20eq%20'{principal}'"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn eligibilities(graph: &Graph, principal: &str) -> Value {
    let response = graph
        .get(&format!(
            "/v1.0/roleManagement/directory/roleEligibilityScheduleInstances?$filter=principalId%20eq%20'{principal}'"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn active_roles_direct_or_through_a_group_and_eligible_roles_are_listed_by_principal() {
    let graph = Graph::start(fixture_config()).await;

    let global = transitive_assignments(&graph, GLOBAL_ADMIN_ID).await;
    let through_group = transitive_assignments(&graph, GROUP_ADMIN_ID).await;
    let eligible_active = transitive_assignments(&graph, ELIGIBLE_ADMIN_ID).await;
    let eligible = eligibilities(&graph, ELIGIBLE_ADMIN_ID).await;
    let plain_active = transitive_assignments(&graph, ADELE_ID).await;
    let plain_eligible = eligibilities(&graph, ADELE_ID).await;
    let legacy: Value = graph
        .get_eventual(&format!(
            "/v1.0/users/{GROUP_ADMIN_ID}/transitiveMemberOf/microsoft.graph.directoryRole?$count=true"
        ))
        .await
        .json()
        .await
        .unwrap();
    let legacy_eligible: Value = graph
        .get_eventual(&format!(
            "/v1.0/users/{ELIGIBLE_ADMIN_ID}/transitiveMemberOf/microsoft.graph.directoryRole?$count=true"
        ))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(global["@odata.count"], 1);
    assert_eq!(global["value"][0]["principalId"], GLOBAL_ADMIN_ID);
    assert_eq!(
        global["value"][0]["roleDefinitionId"],
        "62e90394-69f5-4237-9190-012177145e10"
    );
    assert_eq!(
        through_group["value"][0]["principalId"], HELPDESK_GROUP_ID,
        "a role held through a group names the group"
    );
    assert_eq!(eligible_active["value"], json!([]));
    assert_eq!(eligible["value"][0]["principalId"], ELIGIBLE_ADMIN_ID);
    assert_eq!(
        eligible["value"][0]["roleDefinitionId"],
        "e8611ab8-c189-46e8-94e1-60213ab1f814"
    );
    assert_eq!(eligible["value"][0]["memberType"], "Direct");
    assert_eq!(plain_active["value"], json!([]));
    assert_eq!(plain_eligible["value"], json!([]));
    assert_eq!(legacy["value"][0]["displayName"], "Helpdesk Administrator");
    assert_eq!(
        legacy_eligible["value"],
        json!([]),
        "transitiveMemberOf misses an eligible admin"
    );
}

#[tokio::test]
async fn transitive_role_assignments_need_the_advanced_query_parameters_and_beta() {
    let graph = Graph::start(fixture_config()).await;
    let path = format!(
        "/beta/roleManagement/directory/transitiveRoleAssignments?$filter=principalId%20eq%20'{GLOBAL_ADMIN_ID}'"
    );

    let without_header = graph.get(&format!("{path}&$count=true")).await;
    let without_count = graph.get_eventual(&path).await;
    let without_filter = graph
        .get_eventual("/beta/roleManagement/directory/transitiveRoleAssignments?$count=true")
        .await;
    let v1 = graph
        .get_eventual(&format!(
            "/v1.0/roleManagement/directory/transitiveRoleAssignments?$count=true&$filter=principalId%20eq%20'{GLOBAL_ADMIN_ID}'"
        ))
        .await;

    assert_eq!(error_code(without_header).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        error_code(without_count).await,
        (
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery".to_string(),
            "Listing transitiveRoleAssignments is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information".to_string()
        )
    );
    assert_eq!(error_code(without_filter).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(v1).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_role_management_read_roles_are_refused_and_directory_roles_are_unreadable() {
    let graph = Graph::start(SimConfig {
        deny_role_management: true,
        ..fixture_config()
    })
    .await;

    let active = graph
        .get_eventual(&format!(
            "/beta/roleManagement/directory/transitiveRoleAssignments?$count=true&$filter=principalId%20eq%20'{GLOBAL_ADMIN_ID}'"
        ))
        .await;
    let eligible = graph
        .get("/v1.0/roleManagement/directory/roleEligibilityScheduleInstances")
        .await;
    let legacy: Value = graph
        .get_eventual("/v1.0/users/global.admin%40contoso.com/transitiveMemberOf/microsoft.graph.directoryRole?$count=true")
        .await
        .json()
        .await
        .unwrap();
    let legacy_without_headers = graph
        .get("/v1.0/users/global.admin%40contoso.com/transitiveMemberOf/microsoft.graph.directoryRole")
        .await;

    assert_eq!(error_code(active).await.0, StatusCode::FORBIDDEN);
    assert_eq!(error_code(eligible).await.0, StatusCode::FORBIDDEN);
    let role = &legacy["value"][0];
    assert_eq!(role["@odata.type"], "#microsoft.graph.directoryRole");
    assert!(role["id"].is_string());
    assert_eq!(
        role["displayName"],
        Value::Null,
        "limited information: only @odata.type and id"
    );
    assert_eq!(
        error_code(legacy_without_headers).await.1,
        "Request_UnsupportedQuery"
    );
}

// ---- group members of every kind ----

#[tokio::test]
async fn a_group_lists_users_groups_devices_service_principals_and_contacts_by_type() {
    let graph = Graph::start(fixture_config()).await;

    let transitive: Value = graph
        .get_eventual(&format!(
            "/v1.0/groups/{MIXED_GROUP_ID}/transitiveMembers?$select=id,userPrincipalName&$count=true"
        ))
        .await
        .json()
        .await
        .unwrap();
    let direct: Value = graph
        .get(&format!("/v1.0/groups/{MIXED_GROUP_ID}/members"))
        .await
        .json()
        .await
        .unwrap();

    let types = |page: &Value| -> Vec<String> {
        let mut t: Vec<String> = page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["@odata.type"].as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        types(&transitive),
        [
            "#microsoft.graph.device",
            "#microsoft.graph.device",
            "#microsoft.graph.group",
            "#microsoft.graph.orgContact",
            "#microsoft.graph.servicePrincipal",
            "#microsoft.graph.user",
            "#microsoft.graph.user",
            "#microsoft.graph.user",
        ]
    );
    assert_eq!(transitive["@odata.count"], 8);
    let device = transitive["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["@odata.type"] == "#microsoft.graph.device")
        .unwrap();
    assert!(device.get("userPrincipalName").is_none());
    assert_eq!(
        types(&direct).len(),
        7,
        "two users, four objects, one group"
    );
    assert!(
        direct.get("@odata.count").is_none(),
        "$count needs the header"
    );
}

#[tokio::test]
async fn a_cast_on_members_is_an_advanced_query() {
    let graph = Graph::start(fixture_config()).await;
    let cast = format!("/v1.0/groups/{MIXED_GROUP_ID}/transitiveMembers/microsoft.graph.user");

    let plain = graph.get(&cast).await;
    let count_only = graph.get(&format!("{cast}?$count=true")).await;
    let advanced: Value = graph
        .get_eventual(&format!("{cast}?$count=true"))
        .await
        .json()
        .await
        .unwrap();

    for refused in [plain, count_only] {
        let (status, code, message) = error_code(refused).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "Request_UnsupportedQuery")
        );
        assert!(message.contains("ConsistencyLevel:eventual"), "{message}");
    }
    assert_eq!(advanced["@odata.count"], 3);
    assert!(advanced["value"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["@odata.type"] == "#microsoft.graph.user"));
}

#[tokio::test]
async fn without_user_read_users_in_a_member_list_have_only_type_and_id() {
    let graph = Graph::start(SimConfig {
        deny_user_read: true,
        ..fixture_config()
    })
    .await;

    let page: Value = graph
        .get(&format!(
            "/v1.0/groups/{MIXED_GROUP_ID}/members?$select=id,userPrincipalName"
        ))
        .await
        .json()
        .await
        .unwrap();

    let users: Vec<&Value> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["@odata.type"] == "#microsoft.graph.user")
        .collect();
    assert_eq!(users.len(), 2);
    for user in users {
        assert!(user["id"].is_string());
        assert_eq!(user["userPrincipalName"], Value::Null);
    }
}

#[tokio::test]
async fn generated_tenants_have_active_eligible_and_group_admins() {
    let graph = Graph::start(SimConfig {
        users: 60,
        generation: GenOptions {
            admin_rate: 0.1,
            eligible_admin_rate: 0.1,
            group_admin_rate: 0.1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    })
    .await;
    let users = graph.sim.users_snapshot();

    let mut active = 0;
    let mut through_group = 0;
    for user in &users {
        for a in transitive_assignments(&graph, &user.id).await["value"]
            .as_array()
            .unwrap()
        {
            if a["principalId"] == user.id.as_str() {
                active += 1;
            } else {
                assert_eq!(a["principalId"], graph_sim::tenant::ROLE_GROUP_ID);
                through_group += 1;
            }
        }
    }
    let eligible: Value = graph
        .get("/v1.0/roleManagement/directory/roleEligibilityScheduleInstances")
        .await
        .json()
        .await
        .unwrap();

    assert!(active > 0 && through_group > 0, "{active} {through_group}");
    assert_eq!(
        active,
        users.iter().map(|u| u.directory_roles.len()).sum::<usize>()
    );
    assert_eq!(
        eligible["value"].as_array().unwrap().len(),
        users.iter().map(|u| u.eligible_roles.len()).sum::<usize>()
    );
    assert!(!eligible["value"].as_array().unwrap().is_empty());
}

// ---- inspection, stats, process ----

#[tokio::test]
async fn stats_count_requests_per_endpoint_and_reset_to_zero() {
    let graph = Graph::start(fixture_config()).await;
    graph
        .get(&format!("/v1.0/users/{ADELE}/authentication/methods"))
        .await;
    graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/emailMethods/{EMAIL}"
        ))
        .await;

    let stats: Value = graph
        .http
        .get(graph.url("/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    graph
        .http
        .post(graph.url("/_sim/stats/reset"))
        .send()
        .await
        .unwrap();

    assert_eq!(stats["requests_total"], 3, "token + list + delete");
    assert_eq!(stats["writes"], 1);
    assert_eq!(
        stats["requests_by_endpoint"]["GET /v1.0/users/{user}/authentication/methods"]["200"],
        1
    );
    assert_eq!(
        stats["requests_by_endpoint"]["DELETE /v1.0/users/{user}/authentication/emailMethods/{id}"]
            ["204"],
        1
    );
    assert!(stats["peak_requests_per_second"].as_u64().unwrap() >= 1);
    assert_eq!(graph.sim.stats().requests_total, 0);
}

#[tokio::test]
async fn tokens_expire_and_deletions_settle_on_request_over_http() {
    let graph = Graph::start(SimConfig {
        consistency_delay_ms: 3_600_000,
        ..fixture_config()
    })
    .await;
    let delete = format!("/v1.0/users/{ADELE}/authentication/emailMethods/{EMAIL}");
    assert_eq!(graph.delete(&delete).await.status(), StatusCode::NO_CONTENT);
    let listed_before = graph.method_ids("v1.0", ADELE).await;

    let settled = graph
        .http
        .post(graph.url("/_sim/deletions/settle"))
        .send()
        .await
        .unwrap();
    let listed_after = graph.method_ids("v1.0", ADELE).await;
    let expired = graph
        .http
        .post(graph.url("/_sim/tokens/expire"))
        .send()
        .await
        .unwrap();
    let refused = graph
        .get(&format!("/v1.0/users/{ADELE}/authentication/methods"))
        .await;

    assert!(listed_before.contains(&EMAIL.to_string()));
    assert_eq!(settled.status(), StatusCode::NO_CONTENT);
    assert!(!listed_after.contains(&EMAIL.to_string()));
    assert_eq!(expired.status(), StatusCode::NO_CONTENT);
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_inspection_endpoint_shows_a_users_state_and_deleted_methods() {
    let graph = Graph::start(fixture_config()).await;
    graph
        .delete(&format!(
            "/v1.0/users/{ADELE}/authentication/emailMethods/{EMAIL}"
        ))
        .await;

    let user: Value = graph
        .http
        .get(graph.url(&format!("/_sim/users/{ADELE}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Value = graph
        .http
        .get(graph.url("/_sim/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(user["defaultMethod"], "sms");
    assert_eq!(user["defaultMethodId"], MOBILE);
    assert_eq!(user["deletedMethods"][0]["id"], EMAIL);
    assert!(user["deletedMethods"][0]["deletedDateTime"].is_string());
    assert_eq!(all.as_array().unwrap().len(), 11);
}

#[tokio::test]
async fn the_graph_sim_binary_prints_its_address_first() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-sim"))
        .args(["--users", "5", "--seed", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("graph-sim starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();

    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line within 10 s")
        .unwrap()
        .unwrap();

    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );
    let url = first.trim_start_matches("listening on ");
    let stats = reqwest::get(format!("{url}/_sim/stats")).await.unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    child.kill().await.unwrap();
}
