use super::*;
use reqwest::header::HeaderValue;

fn headers(retry_after: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn both_error_shapes_give_code_and_message() {
    let graph = br#"{"error":{"code":"badRequest","message":"Cannot delete default method","innerError":{}}}"#;
    let odata = br#"{"odata.error":{"code":"invalid_request","message":{"lang":"en","value":"WHfB says no"}}}"#;
    assert_eq!(
        error_body(graph),
        (
            Some("badRequest".into()),
            "Cannot delete default method".into()
        )
    );
    assert_eq!(
        error_body(odata),
        (Some("invalid_request".into()), "WHfB says no".into())
    );
    match classify(400, &headers(None), odata) {
        Error::BadRequest { status, code, .. } => {
            assert_eq!((status, code.as_str()), (400, "invalid_request"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn statuses_map_to_their_variants() {
    let h = headers(None);
    let body = br#"{"error":{"code":"X","message":"m"}}"#;
    assert!(matches!(
        classify(429, &h, body),
        Error::Throttled {
            status: 429,
            retry_after: None
        }
    ));
    assert!(matches!(
        classify(500, &h, body),
        Error::Transient { status: 500, .. }
    ));
    assert!(matches!(
        classify(502, &h, b""),
        Error::Transient { status: 502, .. }
    ));
    assert!(matches!(
        classify(503, &h, b""),
        Error::Transient { status: 503, .. }
    ));
    assert!(matches!(
        classify(504, &h, b"not json"),
        Error::Transient { status: 504, .. }
    ));
    assert!(matches!(classify(401, &h, body), Error::Auth { .. }));
    assert!(matches!(classify(403, &h, body), Error::Forbidden { .. }));
    assert!(
        matches!(classify(404, &h, b""), Error::NotFound { ref code, .. } if code == "Request_ResourceNotFound")
    );
    assert!(matches!(
        classify(409, &h, body),
        Error::BadRequest { status: 409, .. }
    ));
    assert!(matches!(classify(400, &h, body), Error::BadRequest { ref code, .. } if code == "X"));
    // Without a body, the code Graph sends for the status.
    for (status, code) in [
        (400, "badRequest"),
        (401, "InvalidAuthenticationToken"),
        (403, "Authorization_RequestDenied"),
        (404, "Request_ResourceNotFound"),
        (429, "TooManyRequests"),
        (503, "serviceUnavailable"),
        (418, "unexpectedStatus"),
    ] {
        assert_eq!(classify(status, &h, b"").code(), code, "{status}");
    }
}

#[test]
fn a_503_or_504_with_retry_after_is_throttling() {
    let h = headers(Some("7"));
    assert!(matches!(
        classify(503, &h, b""),
        Error::Throttled { status: 503, retry_after: Some(d) } if d == Duration::from_secs(7)
    ));
    assert!(matches!(
        classify(504, &h, b""),
        Error::Throttled { status: 504, .. }
    ));
    assert!(matches!(classify(500, &h, b""), Error::Transient { .. }));
}

#[test]
fn retry_after_reads_seconds_dates_and_past_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(30))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    // An empty value (`Retry-After: `) is no pause, not the longest one.
    assert_eq!(parse_retry_after("", now), None);
    // Untrusted: huge, negative or odd values never panic.
    assert_eq!(parse_retry_after("1e20", now), Some(Duration::MAX));
    assert_eq!(
        parse_retry_after("123456789012345678901234567890", now),
        Some(Duration::MAX)
    );
    assert_eq!(
        parse_retry_after("1.5", now),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_retry_after("-3", now), None);
    assert_eq!(parse_retry_after("NaN", now), None);
    assert_eq!(parse_retry_after("inf", now), None);
    assert_eq!(
        retry_after(&headers(Some(" 5 ")), now),
        Some(Duration::from_secs(5))
    );
}

fn token_body(error: &str, aadsts: u64, description: &str) -> Vec<u8> {
    serde_json::json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: {description}\r\nTrace ID: t\r\nCorrelation ID: c"),
        "error_codes": [aadsts],
    })
    .to_string()
    .into_bytes()
}

fn token_error(status: u16, error: &str, aadsts: u64) -> Error {
    classify_token_error(
        status,
        &HeaderMap::new(),
        &token_body(error, aadsts, "described"),
    )
}

#[test]
fn token_errors_carry_the_aadsts_code_and_the_first_line() {
    let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#;
    match classify_token_error(401, &HeaderMap::new(), body) {
        Error::App {
            fault,
            status,
            code,
            message,
        } => {
            assert_eq!(fault, AppFault::SecretRejected);
            assert_eq!(status, Some(401));
            assert_eq!(code, "AADSTS7000215");
            assert_eq!(message, "AADSTS7000215: Invalid client secret provided.");
        }
        other => panic!("{other:?}"),
    }
    let no_codes =
        br#"{"error":"invalid_client","error_description":"AADSTS700016: app not found"}"#;
    assert!(matches!(
        classify_token_error(400, &HeaderMap::new(), no_codes),
        Error::App { fault: AppFault::AppNotFound, code, .. } if code == "AADSTS700016"
    ));
    // Without an AADSTS code, the OAuth error alone says which fault it is.
    let bare = br#"{"error":"unauthorized_client"}"#;
    assert!(matches!(
        classify_token_error(400, &HeaderMap::new(), bare),
        Error::App { fault: AppFault::AppNotFound, code, .. } if code == "unauthorized_client"
    ));
}

#[test]
fn every_app_wide_token_error_halts_and_names_the_fix() {
    let cases = [
        (
            401,
            "invalid_client",
            7000215,
            AppFault::SecretRejected,
            "graph.client_secret",
        ),
        (
            401,
            "invalid_client",
            7000222,
            AppFault::SecretExpired,
            "new secret",
        ),
        (
            401,
            "invalid_client",
            700027,
            AppFault::CertificateRejected,
            "graph.client_certificate",
        ),
        (
            400,
            "unauthorized_client",
            700016,
            AppFault::AppNotFound,
            "graph.client_id",
        ),
        (
            400,
            "unauthorized_client",
            7000112,
            AppFault::AppDisabled,
            "enable",
        ),
        (
            400,
            "invalid_request",
            90002,
            AppFault::TenantNotFound,
            "graph.tenant_id",
        ),
        (
            400,
            "invalid_grant",
            65001,
            AppFault::ConsentMissing,
            "admin consent",
        ),
        (
            400,
            "invalid_scope",
            1002012,
            AppFault::TokenRequestRefused,
            "graph.scope",
        ),
    ];
    for (status, error, aadsts, fault, fix) in cases {
        let err = token_error(status, error, aadsts);
        assert_eq!(err.class(), Class::Halt, "{aadsts}");
        assert!(
            matches!(&err, Error::App { fault: f, .. } if *f == fault),
            "{aadsts}: {err:?}"
        );
        assert_eq!(err.code(), format!("AADSTS{aadsts}"));
        assert_eq!(err.status(), Some(status));
        let text = err.to_string();
        assert!(text.contains(fix), "{aadsts}: {text}");
        assert!(text.contains(&format!("AADSTS{aadsts}")), "{text}");
        assert!(!text.contains("Trace ID"), "{text}");
    }
    let unknown_client =
        classify_token_error(401, &HeaderMap::new(), br#"{"error":"invalid_client"}"#);
    assert!(matches!(
        unknown_client,
        Error::App {
            fault: AppFault::CredentialRejected,
            ..
        }
    ));
}

#[test]
fn a_temporarily_unavailable_or_failing_token_endpoint_is_an_outage() {
    let busy = token_error(503, "temporarily_unavailable", 90006);
    let failing = token_error(500, "server_error", 50000);
    // Even answered 400: the OAuth error says it is transient.
    let busy_400 = token_error(400, "temporarily_unavailable", 90006);
    let budget = token_error(400, "invalid_request", 90024);
    let bare_502 = classify_token_error(502, &HeaderMap::new(), b"<html>");
    for err in [busy, failing, busy_400, budget, bare_502] {
        assert!(matches!(err, Error::TokenUnavailable { .. }), "{err:?}");
        assert_eq!(err.class(), Class::Outage);
        assert!(err.is_retryable());
    }
    let throttled = classify_token_error(429, &headers(Some("3")), b"");
    assert!(matches!(
        throttled,
        Error::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(3)
    ));
}

#[test]
fn a_missing_permission_halts_and_names_it() {
    let err = Error::App {
        fault: AppFault::PermissionMissing("UserAuthenticationMethod.ReadWrite.All"),
        status: Some(403),
        code: "Authorization_RequestDenied".into(),
        message: "Insufficient privileges to complete the operation.".into(),
    };
    assert_eq!(err.class(), Class::Halt);
    assert_eq!(err.status(), Some(403));
    let text = err.to_string();
    assert!(
        text.contains("UserAuthenticationMethod.ReadWrite.All") && text.contains("admin consent"),
        "{text}"
    );
}

#[test]
fn every_cause_has_one_class() {
    let h = headers(None);
    let class = |status: u16| classify(status, &h, b"").class();
    assert_eq!(class(429), Class::Outage);
    for gateway in [502, 503, 504] {
        assert_eq!(class(gateway), Class::Outage, "{gateway}");
    }
    assert_eq!(class(500), Class::Retry);
    for permanent in [400, 403, 404, 409] {
        assert_eq!(class(permanent), Class::Permanent, "{permanent}");
    }
    // A 401 reaches the caller only after a renewed token was refused too: app-wide.
    assert_eq!(class(401), Class::Halt);
    let no_answer = Error::NoAnswer {
        cause: NoAnswer::Timeout,
        message: "timed out".into(),
    };
    assert_eq!(
        (
            no_answer.class(),
            no_answer.code().as_str(),
            no_answer.status()
        ),
        (Class::Outage, "timeout", None)
    );
    let unreadable = Error::InvalidResponse {
        status: 200,
        message: "not JSON".into(),
    };
    assert_eq!(unreadable.class(), Class::Retry);
    let not_deletable = Error::NotDeletable {
        stem: "password".into(),
    };
    assert_eq!(
        (not_deletable.class(), not_deletable.status()),
        (Class::Permanent, None)
    );
    // `halts` and `is_retryable` say what the class says, for every class.
    let one_of_each = [
        classify(401, &h, b""),
        classify(429, &h, b""),
        classify(500, &h, b""),
        classify(404, &h, b""),
    ];
    let classes: Vec<Class> = one_of_each.iter().map(Error::class).collect();
    assert_eq!(
        classes,
        [Class::Halt, Class::Outage, Class::Retry, Class::Permanent]
    );
    for error in &one_of_each {
        let class = error.class();
        assert_eq!(error.halts(), class == Class::Halt, "{error:?}");
        assert_eq!(
            error.is_retryable(),
            matches!(class, Class::Outage | Class::Retry),
            "{error:?}"
        );
    }
}
