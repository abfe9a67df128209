use super::*;

#[test]
fn crlf_is_read_as_lf_at_any_buffer_boundary_and_a_lone_cr_is_kept() {
    let input = b"a\r\nb\r\r\n\rc\r";
    for capacity in 1..input.len() + 1 {
        let mut output = Vec::new();
        CrlfAsLf::new(BufReader::with_capacity(capacity, &input[..]))
            .read_to_end(&mut output)
            .unwrap();
        assert_eq!(output, b"a\nb\r\n\rc\r", "buffer of {capacity}");
    }
}

#[test]
fn the_delimiter_is_whichever_occurs_more_outside_quotes() {
    assert_eq!(detect_delimiter(b"user;ticket;reason\n"), b';');
    assert_eq!(detect_delimiter(b"user,ticket\na;b;c;d\n"), b',');
    assert_eq!(detect_delimiter(b"\"a;b;c\",user\n"), b',');
    assert_eq!(detect_delimiter(b"user\n"), b',');
}

#[test]
fn the_user_column_follows_the_priority_of_names_not_the_order_of_columns() {
    let headers: Vec<String> = ["id", "displayName", " UserPrincipalName ", "Ticket"]
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let (user, ticket, reason) = find_columns("u.csv", &headers).unwrap();
    assert_eq!((user, ticket, reason), (2, Some(3), None));
}

#[test]
fn a_missing_user_column_lists_the_headers_found_and_the_accepted_names() {
    let headers = vec!["mail".to_string(), "name".to_string()];
    let message = find_columns("u.csv", &headers).unwrap_err().to_string();
    assert!(message.contains("\"mail\", \"name\""), "{message}");
    assert!(
        message.contains("user, userPrincipalName, upn, id, objectId"),
        "{message}"
    );
}

#[test]
fn key_hashes_agree_for_equal_keys_and_differ_for_others() {
    let hasher = KeyHasher::new();
    assert_eq!(hasher.hash("a@x.com"), hasher.hash("a@x.com"));
    assert_ne!(hasher.hash("a@x.com"), hasher.hash("b@x.com"));
    assert_ne!(
        hasher.hash("a@x.com") >> 64,
        hasher.hash("a@x.com") & u128::from(u64::MAX)
    );
}
