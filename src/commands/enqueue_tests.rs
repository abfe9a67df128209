use super::*;

#[test]
fn batch_ids_are_readable_and_unique() {
    let a = new_batch_id("csv:/tmp/Users Q4.csv");
    let b = new_batch_id("csv:/tmp/Users Q4.csv");
    assert_ne!(a, b);
    assert!(a.contains("-users-q4-"), "{a}");
    assert!(validate_batch_id(&a).is_ok());
    assert!(validate_batch_id("bad id").is_err());
}

fn row(line: u64) -> IntakeRow {
    IntakeRow {
        line,
        user: UserRef::parse(&format!("user{line}@contoso.com")).unwrap(),
        ticket: None,
        reason: None,
        requested_by: None,
        revoke_sessions: None,
        tap: None,
    }
}

/// Row `line`'s request in batch `b` (what [`requests_of_b`] makes of it).
fn request_of(row: IntakeRow) -> ResetRequest {
    requests_of_b().request(row)
}

#[test]
fn the_cap_hashed_on_two_threads_is_the_cap_of_every_row_in_input_order() {
    // Not a multiple of the chunk: the last, short chunk is hashed too.
    let count = 3 * LEAF_CHUNK as u64 + 17;
    let rows = Box::new((1..=count).map(|line| Ok(row(line))));
    let cap = batch_cap(rows, count, &requests_of_b()).unwrap();
    let tree = crate::trust::MerkleTree::from_leaf_hashes(
        (1..=count)
            .map(|line| leaf_hash(&leaf_bytes(&request_of(row(line))).unwrap()))
            .collect(),
    );
    assert_eq!(cap, tree.cap(CAP_NODES));
    // A row fewer than announced: no cap.
    let rows = Box::new((1..=count).map(|line| Ok(row(line))));
    let error = batch_cap(rows, count + 1, &requests_of_b())
        .unwrap_err()
        .to_string();
    assert!(error.contains("the input changed"), "{error}");
}

fn requests_of_b() -> Arc<RequestOf> {
    Arc::new(RequestOf {
        batch: "b".into(),
        reason: None,
        requested_by: None,
        dry_run: false,
        revoke_sessions: false,
        requested_at: chrono::DateTime::UNIX_EPOCH,
        tap: None,
        tap_all: false,
    })
}

/// Pass 2 over `rows` rows against a tree of `leaves` of them.
async fn built(rows: u64, leaves: u64) -> Vec<anyhow::Result<OutMessage>> {
    built_against(rows, (1..=leaves).collect()).await
}

/// Pass 2 over `rows` rows against a tree whose leaves are the requests of `lines`.
async fn built_against(rows: u64, lines: Vec<u64>) -> Vec<anyhow::Result<OutMessage>> {
    let plan = Arc::new(intake::plan_rows(
        "test".into(),
        (1..=rows).map(row).collect(),
    ));
    let tree = crate::trust::MerkleTree::from_leaf_hashes(
        lines
            .into_iter()
            .map(|line| leaf_hash(&leaf_bytes(&request_of(row(line))).unwrap()))
            .collect(),
    );
    let mut built = build_requests(
        plan,
        requests_of_b(),
        tree.cap(16),
        Digest::of(b"manifest"),
        RK_REQUEST,
        "t.intake".into(),
    );
    let mut all = Vec::new();
    while let Some(chunk) = built.recv().await {
        all.extend(chunk);
    }
    all
}

#[tokio::test]
async fn pass_two_builds_every_request_in_order_with_the_proof_of_its_own_leaf() {
    let count = 2 * BUILT_CHUNK as u64 + 3;
    let messages = built(count, count).await;
    assert_eq!(messages.len() as u64, count);
    let tree = crate::trust::MerkleTree::from_leaf_hashes(
        (1..=count)
            .map(|line| leaf_hash(&leaf_bytes(&request_of(row(line))).unwrap()))
            .collect(),
    );
    let cap = tree.cap(16);
    for (index, msg) in (0u64..).zip(messages) {
        let msg = msg.unwrap();
        assert_eq!(msg.exchange.as_deref(), Some("t.intake"));
        let request: ResetRequest = serde_json::from_slice(&msg.body).unwrap();
        assert_eq!(request.user, row(index + 1).user);
        let proof = CompactProof::from_text(request.proof.as_deref().unwrap()).unwrap();
        assert_eq!(proof.index, index);
        let leaf = leaf_hash(&leaf_bytes(&request).unwrap());
        assert!(crate::trust::merkle::verify_to_cap(
            &leaf,
            index,
            count,
            &proof.path,
            &cap
        ));
    }
}

#[tokio::test]
async fn a_row_changed_since_pass_one_stops_the_batch_before_its_group_is_published() {
    // 515 leaves under a cap of at most 16 nodes: groups of 64. Line 100 (group 1) was
    // another user when the batch was signed.
    let count = 2 * BUILT_CHUNK as u64 + 3;
    let signed: Vec<u64> = (1..=count)
        .map(|l| if l == 100 { 9_999 } else { l })
        .collect();
    let messages = built_against(count, signed).await;
    assert_eq!(messages.len(), 64 + 1, "group 0, then the error");
    assert!(messages[..64].iter().all(Result::is_ok));
    let error = messages[64].as_ref().unwrap_err().to_string();
    assert!(
        error.contains("the input changed while it was being enqueued"),
        "{error}"
    );
}

#[tokio::test]
async fn more_rows_in_pass_two_than_were_hashed_end_it_with_an_error() {
    let messages = built(BUILT_CHUNK as u64 + 10, BUILT_CHUNK as u64).await;
    // Every row the tree holds, then the error, then nothing.
    assert_eq!(messages.len(), BUILT_CHUNK + 1);
    let error = messages.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(
        error.contains("the input changed while it was being enqueued"),
        "{error}"
    );
    assert!(messages[..BUILT_CHUNK].iter().all(Result::is_ok));
}

#[test]
fn a_row_that_cannot_be_read_in_the_first_pass_is_the_error_returned() {
    let bad_line = LEAF_CHUNK as u64 + 5;
    let rows = Box::new((1..=2 * LEAF_CHUNK as u64).map(move |line| {
        if line == bad_line {
            Err(anyhow::anyhow!("users.csv changed since it was checked"))
        } else {
            Ok(row(line))
        }
    }));
    let error = batch_cap(rows, 2 * LEAF_CHUNK as u64, &requests_of_b()).unwrap_err();
    assert!(
        error.to_string().contains("changed since it was checked"),
        "{error}"
    );
}
