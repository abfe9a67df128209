//! Unit tests of sealing records and of the audit: gaps, alterations and forgeries.

use super::*;
use crate::trust::test_keys::{allowed, ed25519, signer};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct Fixture {
    workers: [Signer; 2],
    operator: Signer,
    mallory: Signer,
    allowed: AllowedSigners,
}

fn fixture() -> Fixture {
    let workers = [signer(ed25519(11)), signer(ed25519(12))];
    let operator = signer(ed25519(1));
    let allowed = allowed(&[
        (
            "worker-a",
            "namespaces=\"mfa-reset-worker\"",
            workers[0].public_key(),
        ),
        (
            "worker-b",
            "namespaces=\"mfa-reset-worker\"",
            workers[1].public_key(),
        ),
        (
            "alice@contoso.com",
            "namespaces=\"mfa-reset-request\"",
            operator.public_key(),
        ),
    ]);
    Fixture {
        workers,
        operator,
        mallory: signer(ed25519(66)),
        allowed,
    }
}

/// Records of a 6-user batch: each user a plan then an outcome, users split between two
/// writers, interleaved as the stream would hold them. Returns `(record, concludes)`.
fn batch(fixture: &Fixture) -> Vec<(SealedRecord, Option<u64>)> {
    let mut writers = [
        ChainWriter::new(chain_id("b1", "w-a"), Namespace::Worker),
        ChainWriter::new(chain_id("b1", "w-b"), Namespace::Worker),
    ];
    let mut records = Vec::new();
    for user in 0..6u64 {
        let which = (user % 2) as usize;
        let plan = serde_json::json!({"kind": "plan", "index": user, "user": format!("u{user}@contoso.com")});
        let outcome = serde_json::json!({"kind": "outcome", "index": user, "status": "reset"});
        records.push((
            writers[which].seal(&plan, &fixture.workers[which]).unwrap(),
            None,
        ));
        records.push((
            writers[which]
                .seal(&outcome, &fixture.workers[which])
                .unwrap(),
            Some(user),
        ));
    }
    records
}

fn audit(
    fixture: &Fixture,
    records: &[(SealedRecord, Option<u64>)],
    expected: Option<u64>,
) -> AuditReport {
    let mut audit = ChainAudit::new(&fixture.allowed, Namespace::Worker);
    for (position, (record, concludes)) in records.iter().enumerate() {
        audit.push(position as u64, record, now(), *concludes);
    }
    audit.finish(expected)
}

/// A validly signed record claiming `seq` of `chain` (what a forger with some key can make).
fn seal_at(seq: u64, chain: &str, record: &serde_json::Value, signer: &Signer) -> SealedRecord {
    let mut writer = ChainWriter::new(chain, Namespace::Worker);
    for _ in 0..seq {
        writer.seal(&serde_json::json!({}), signer).unwrap();
    }
    writer.seal(record, signer).unwrap()
}

fn kinds(report: &AuditReport) -> Vec<FindingKind> {
    report.findings.iter().map(Finding::kind).collect()
}

#[test]
fn an_untouched_batch_is_intact_in_any_order_and_with_republished_duplicates() {
    let fixture = fixture();
    let records = batch(&fixture);
    let report = audit(&fixture, &records, Some(6));
    assert!(report.is_intact(), "{:?}", report.findings);
    assert_eq!(
        (report.records, report.verified, report.chains),
        (12, 12, 2)
    );

    let mut shuffled = records.clone();
    shuffled.reverse();
    shuffled.push(records[3].clone());
    shuffled.push(records[0].clone());
    let report = audit(&fixture, &shuffled, Some(6));
    assert!(report.is_intact(), "{:?}", report.findings);
}

#[test]
fn links_chain_each_record_to_the_previous_one() {
    let fixture = fixture();
    let records = batch(&fixture);
    let chain_a: Vec<&SealedRecord> = records
        .iter()
        .map(|(record, _)| record)
        .filter(|record| record.link.chain == "b1/w-a")
        .collect();
    assert_eq!(chain_a[0].link.prev, Digest::ZERO);
    assert_eq!(chain_a[0].link.batch(), "b1");
    for pair in chain_a.windows(2) {
        assert_eq!(pair[1].link.seq, pair[0].link.seq + 1);
        assert_eq!(pair[1].link.prev, pair[0].digest().unwrap());
    }
}

#[test]
fn a_deleted_record_in_the_middle_or_at_the_start_is_missing() {
    let fixture = fixture();
    let mut records = batch(&fixture);
    records.remove(4); // chain w-a seq 2: user 2's plan
    let report = audit(&fixture, &records, Some(6));
    assert_eq!(
        report.findings,
        [Finding::Missing {
            chain: "b1/w-a".to_string(),
            first: 2,
            last: 2
        }]
    );
    assert_eq!(
        report.findings[0].to_string(),
        "missing: chain b1/w-a record 2"
    );

    let mut records = batch(&fixture);
    records.remove(0);
    let report = audit(&fixture, &records, Some(6));
    assert_eq!(kinds(&report), [FindingKind::Missing]);
    assert!(matches!(
        &report.findings[0],
        Finding::Missing {
            first: 0,
            last: 0,
            ..
        }
    ));
}

#[test]
fn a_deleted_last_record_is_caught_by_the_manifest_count() {
    let fixture = fixture();
    let mut records = batch(&fixture);
    let last = records.pop().unwrap(); // user 5's outcome, the tail of chain w-b
    assert_eq!(last.1, Some(5));
    let report = audit(&fixture, &records, Some(6));
    assert_eq!(
        report.findings,
        [Finding::Incomplete { items: vec![5..=5] }]
    );
    assert_eq!(
        report.findings[0].to_string(),
        "missing: no verified outcome for items 5"
    );
    assert!(
        audit(&fixture, &records, None).is_intact(),
        "without the count, the tail is invisible"
    );
}

#[test]
fn an_altered_record_is_altered_and_nothing_else() {
    let fixture = fixture();
    let mut records = batch(&fixture);
    records[5].0.record["status"] = serde_json::json!("failed");
    let report = audit(&fixture, &records, Some(6));
    // The altered outcome no longer concludes user 2, so the batch is incomplete as well.
    assert_eq!(kinds(&report), [FindingKind::Altered, FindingKind::Missing]);
    assert!(matches!(
        &report.findings[0],
        Finding::Altered {
            seq: 3,
            position: 5,
            ..
        }
    ));
    assert_eq!(
        report.findings[1],
        Finding::Incomplete { items: vec![2..=2] }
    );
}

#[test]
fn an_altered_link_is_altered() {
    let fixture = fixture();
    let mut records = batch(&fixture);
    records[2].0.link.prev = Digest::of(b"other");
    let report = audit(&fixture, &records, Some(6));
    assert_eq!(kinds(&report), [FindingKind::Altered]);
    records[2].0.signature = records[4].0.signature.clone();
    assert_eq!(
        kinds(&audit(&fixture, &records, Some(6))),
        [FindingKind::Altered]
    );
}

#[test]
fn records_by_unlisted_or_unauthorised_keys_or_unsigned_are_forged() {
    let fixture = fixture();
    for forger in [&fixture.mallory, &fixture.operator] {
        let mut records = batch(&fixture);
        // A fake "already done" outcome for user 0 in a chain of its own…
        let mut fake = ChainWriter::new(chain_id("b1", "w-x"), Namespace::Worker);
        let outcome = serde_json::json!({"kind": "outcome", "index": 0, "status": "reset"});
        records.insert(0, (fake.seal(&outcome, forger).unwrap(), Some(0)));
        // …and one posing as seq 6 of worker a's chain.
        records.push((seal_at(6, "b1/w-a", &outcome, forger), None));
        let report = audit(&fixture, &records, Some(6));
        assert_eq!(
            kinds(&report),
            [FindingKind::Forged, FindingKind::Forged],
            "{:?}",
            report.findings
        );
        assert!(report.findings[0]
            .to_string()
            .starts_with("forged: chain b1/w-x record 0 (offset 0): signer not allowed"));
    }
    let mut records = batch(&fixture);
    records[1].0.signature = String::new();
    let report = audit(&fixture, &records, Some(6));
    assert_eq!(kinds(&report), [FindingKind::Forged, FindingKind::Missing]);
}

#[test]
fn another_workers_record_in_a_chain_is_forged() {
    let fixture = fixture();
    let mut records = batch(&fixture);
    // Worker b, whose key is allowed, writes seq 6 into worker a's chain.
    let note = serde_json::json!({"kind": "note"});
    records.push((seal_at(6, "b1/w-a", &note, &fixture.workers[1]), None));
    let report = audit(&fixture, &records, Some(6));
    assert_eq!(kinds(&report), [FindingKind::Forged]);
    assert!(
        report.findings[0]
            .to_string()
            .contains("chain belongs to key"),
        "{}",
        report.findings[0]
    );
}

#[test]
fn a_replaced_record_breaks_the_link_after_it_and_a_fork_is_a_conflict() {
    let fixture = fixture();
    let records = batch(&fixture);
    // The writer's own key re-signs a different record 2 (a stolen worker key, or a bug).
    let mut rewriter = ChainWriter::new(chain_id("b1", "w-a"), Namespace::Worker);
    let chain_a: Vec<SealedRecord> = records
        .iter()
        .map(|(record, _)| record.clone())
        .filter(|record| record.link.chain == "b1/w-a")
        .collect();
    let mut replacement = None;
    for (seq, original) in chain_a.iter().enumerate().take(3) {
        let record = if seq == 2 {
            serde_json::json!({"kind": "plan", "index": 2, "user": "x"})
        } else {
            original.record.clone()
        };
        replacement = Some(rewriter.seal(&record, &fixture.workers[0]).unwrap());
    }
    let replacement = replacement.unwrap();

    let mut replaced = records.clone();
    replaced[4].0 = replacement.clone();
    let report = audit(&fixture, &replaced, Some(6));
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert!(matches!(
        &report.findings[0],
        Finding::BrokenLink { seq: 3, .. }
    ));
    assert_eq!(report.findings[0].kind(), FindingKind::Missing);

    let mut forked = records.clone();
    forked.push((replacement, None));
    let report = audit(&fixture, &forked, Some(6));
    assert!(
        matches!(&report.findings[0], Finding::Conflict { seq: 2, positions, .. } if positions == &vec![4, 12])
    );
    assert_eq!(report.findings[0].kind(), FindingKind::Altered);
}

#[test]
fn sealed_records_verify_after_a_trip_through_json() {
    let fixture = fixture();
    let records = batch(&fixture);
    let wire = serde_json::to_string_pretty(&records[3].0).unwrap();
    let back: SealedRecord = serde_json::from_str(&wire).unwrap();
    let verified = back
        .verify(Namespace::Worker, &fixture.allowed, now())
        .unwrap();
    assert_eq!(verified.principal.as_str(), "worker-b");
    assert!(serde_json::from_str::<SealedRecord>(&wire.replacen("{", "{\"x\":1,", 1)).is_err());
}

#[test]
fn missing_items_are_grouped_into_ranges() {
    let concluded: BTreeSet<u64> = [0, 1, 4, 7, 8, 20].into_iter().collect();
    assert_eq!(missing_ranges(&concluded, 10), vec![2..=3, 5..=6, 9..=9]);
    assert_eq!(missing_ranges(&BTreeSet::new(), 3), vec![0..=2]);
    assert!(missing_ranges(&concluded, 2).is_empty());
    assert!(missing_ranges(&BTreeSet::new(), 0).is_empty());
    let text = Finding::Incomplete {
        items: vec![2..=3, 9..=9],
    }
    .to_string();
    assert_eq!(text, "missing: no verified outcome for items 2-3, 9");
}
