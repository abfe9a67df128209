//! Signed, hash-chained worker records on the real broker: what someone holding only broker
//! credentials can publish to the outcomes stream changes nothing, and `audit verify` finds
//! every forged, missing and altered record.

use std::sync::{Arc, Mutex};

use graph_sim::tenant::GenOptions;
use graph_sim::SimConfig;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use mfa_reset::broker::stream::{read_until_now, Offset, StreamMessage};
use mfa_reset::broker::{self, Topology};
use mfa_reset::commands;
use mfa_reset::config::Settings;
use mfa_reset::domain::{MethodRecord, Outcome, PlanRecord, Record, ResetRequest, Status, UserRef};
use mfa_reset::trust::chain::chain_id;
use mfa_reset::trust::signer::generate_ed25519;
use mfa_reset::trust::{ChainWriter, Namespace, SealedRecord, Signer};

use crate::common::env::{csv_of_generated, unique_prefix, TestEnv};
use crate::common::graph_front::GraphFront;

fn tenant(users: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min: 2,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

fn user(i: usize) -> UserRef {
    UserRef::parse(&graph_sim::tenant::upn_for_index(i)).expect("user")
}

/// An outcome claiming `user` of `batch` was reset, as an attacker would write it.
fn forged_outcome(batch: &str, user: &UserRef) -> Record {
    Record::Outcome(Box::new(Outcome {
        request_id: ResetRequest::id_for(batch, user),
        batch: batch.into(),
        user: user.clone(),
        status: Status::Reset,
        methods_removed: vec![MethodRecord {
            kind: "phone".into(),
            id: "FORGED-phone".into(),
            backup_sealed: Some("forged".into()),
            ..MethodRecord::default()
        }],
        methods_remaining: Vec::new(),
        sessions_revoked: false,
        attempts: 1,
        error_code: None,
        error_message: None,
        ticket: Some("FORGED-TICKET".into()),
        finished_at: chrono::Utc::now(),
        worker: "mallory".into(),
        graph_calls: 0,
        replay: 0,
        dry_run: false,
        requested_by: None,
        approved_by: None,
        replayed_by: None,
        replay_key: None,
        reason: None,
        item: None,
        notes: Vec::new(),
    }))
}

fn forged_plan(batch: &str, user: &UserRef) -> Record {
    Record::Plan(PlanRecord {
        request_id: ResetRequest::id_for(batch, user),
        replay: 0,
        batch: batch.into(),
        methods: vec![MethodRecord {
            kind: "phone".into(),
            id: "FORGED-plan".into(),
            ..MethodRecord::default()
        }],
        at: chrono::Utc::now(),
    })
}

fn sealed_by(record: &Record, chain: &str, signer: &Signer) -> Vec<u8> {
    let mut writer = ChainWriter::new(chain, Namespace::Worker);
    serde_json::to_vec(&writer.seal(record, signer).expect("seal")).expect("json")
}

/// Publish `bodies` to the outcomes stream of `settings` with a plain AMQP client: all an
/// attacker with broker credentials has.
async fn publish_outcomes(settings: &Settings, bodies: &[Vec<u8>]) {
    let conn = broker::connect(&settings.broker, "attacker")
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let topology = Topology::new(&settings.broker, &settings.retry);
    topology.declare(&channel).await.expect("declare");
    for body in bodies {
        channel
            .basic_publish(
                topology.exchange().as_str().into(),
                "outcome".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Every message body on the outcomes stream of `settings`, oldest first.
async fn raw_stream(settings: &Settings) -> Vec<Vec<u8>> {
    let conn = broker::connect(&settings.broker, "test")
        .await
        .expect("broker");
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = bodies.clone();
    let topology = Topology::new(&settings.broker, &settings.retry);
    read_until_now(&conn, &topology, Offset::First, move |m: StreamMessage| {
        sink.lock().unwrap().push(m.body)
    })
    .await
    .expect("read");
    let _ = conn.close(200, "bye".into()).await;
    let out = bodies.lock().unwrap().clone();
    out
}

async fn delete_topology(settings: &Settings) {
    let conn = broker::connect(&settings.broker, "cleanup")
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    let topology = Topology::new(&settings.broker, &settings.retry);
    for q in topology.all_queues() {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
    let _ = channel
        .exchange_delete(topology.exchange().as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_outcomes_and_plans_neither_skip_a_request_nor_reach_the_report_and_audit_names_them(
) {
    let mut env = TestEnv::new("rec-forged", tenant(3)).await;
    env.setup().await;
    let batch = env
        .enqueue_csv(&csv_of_generated(3))
        .await
        .expect("enqueue")
        .batch;
    // Before any worker runs, someone with only broker credentials writes "already done"
    // for user 0 (unsigned) and user 1 (sealed with their own key), and plans naming a
    // method for user 2 (unsigned, and sealed by an operator: allowed, but not as a worker).
    let mallory =
        Signer::from_private_key(generate_ed25519("mallory").expect("key")).expect("signer");
    let operator = Signer::from_key_file(&env.keys.requester.path).expect("operator key");
    let forged = vec![
        serde_json::to_vec(&forged_outcome(&batch, &user(0))).unwrap(),
        sealed_by(
            &forged_outcome(&batch, &user(1)),
            &chain_id(&batch, "mallory"),
            &mallory,
        ),
        serde_json::to_vec(&forged_plan(&batch, &user(2))).unwrap(),
        sealed_by(
            &forged_plan(&batch, &user(2)),
            &chain_id(&batch, "operator"),
            &operator,
        ),
    ];
    publish_outcomes(&env.settings, &forged).await;

    env.start_worker(2);
    let view = env.wait_batch(&batch, 120).await;
    env.stop_workers().await;

    // Every user was executed by the real worker, none skipped, nothing forged believed.
    assert_eq!(view.finished(), 3);
    for outcome in view.outcomes() {
        assert_eq!(outcome.worker, "test-worker-1", "{outcome:?}");
        assert_eq!(outcome.status, Status::Reset, "{outcome:?}");
        assert!(!outcome.methods_removed.is_empty());
        assert!(outcome
            .methods_removed
            .iter()
            .all(|m| !m.id.starts_with("FORGED")));
    }
    let removed: usize = view.outcomes().map(|o| o.methods_removed.len()).sum();
    assert_eq!(env.sim.stats().methods_deleted as usize, removed);
    assert_eq!(
        view.ignored(),
        4,
        "the four forged records are counted as ignored"
    );
    let mut csv = Vec::new();
    commands::report::write_csv(&view, &mut csv).expect("report");
    let csv = String::from_utf8(csv).unwrap();
    assert!(!csv.contains("FORGED"), "{csv}");

    let verdict = commands::audit::check(&env.settings, &batch)
        .await
        .expect("audit");
    assert!(!verdict.is_intact());
    let forged_lines: Vec<&String> = verdict
        .problems
        .iter()
        .filter(|p| p.starts_with("forged:"))
        .collect();
    assert_eq!(forged_lines.len(), 4, "{:#?}", verdict.problems);
    assert_eq!(
        verdict.problems.len(),
        4,
        "nothing else: {:#?}",
        verdict.problems
    );
    assert!(
        forged_lines.iter().any(|p| p.contains("mallory")),
        "{forged_lines:#?}"
    );
    assert!(
        forged_lines.iter().any(|p| p.contains("operator")),
        "{forged_lines:#?}"
    );
    assert!(forged_lines.iter().any(|p| p.contains("unsigned outcome")));
    assert!(forged_lines.iter().any(|p| p.contains("unsigned plan")));

    // The SIEM export flags each record: the worker's six verified, the rest not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.jsonl");
    let written = commands::audit::export(&env.settings, None, Some(&path))
        .await
        .expect("export");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len() as u64, written);
    let verified: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["verified"] == true).collect();
    assert_eq!(verified.len(), 6, "a plan and an outcome per user");
    assert!(verified
        .iter()
        .all(|l| l["signer"] == env.keys.worker.principal.as_str()));
    let unverified = lines.iter().filter(|l| l["verified"] == false).count();
    assert_eq!(
        unverified, 5,
        "the four forged records and the batch manifest"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dropped_from_or_altered_in_a_chain_is_found_by_audit_verify() {
    let mut env = TestEnv::new("rec-chain", tenant(4)).await;
    env.setup().await;
    let batch = env
        .enqueue_csv(&csv_of_generated(4))
        .await
        .expect("enqueue")
        .batch;
    env.start_worker(1);
    env.wait_batch(&batch, 120).await;
    env.stop_workers().await;
    let intact = commands::audit::check(&env.settings, &batch)
        .await
        .expect("audit");
    assert!(intact.is_intact(), "{:#?}", intact.problems);
    assert_eq!(intact.chains, 1, "one worker: one chain");
    assert_eq!(intact.verified, 8, "a plan and an outcome per user");

    // The stream cannot lose a record, so build copies of it that did.
    let bodies = raw_stream(&env.settings).await;
    let sealed = |body: &Vec<u8>| serde_json::from_slice::<SealedRecord>(body).ok();
    let chain = bodies
        .iter()
        .find_map(sealed)
        .expect("a sealed record")
        .link
        .chain;
    let copy = |name: &str| {
        let mut settings = env.settings.clone();
        settings.broker.prefix = unique_prefix(name);
        settings
    };

    // 1. A plan in the middle of the chain never published.
    let middle = bodies
        .iter()
        .filter_map(sealed)
        .find(|s| s.link.seq > 0 && s.record["kind"] == "plan")
        .expect("a plan after the first record")
        .link
        .seq;
    let dropped = copy("rec-dropped");
    let without_middle: Vec<Vec<u8>> = bodies
        .iter()
        .filter(|b| sealed(b).is_none_or(|s| s.link.seq != middle))
        .cloned()
        .collect();
    publish_outcomes(&dropped, &without_middle).await;
    let verdict = commands::audit::check(&dropped, &batch)
        .await
        .expect("audit");
    assert_eq!(
        verdict.problems,
        [format!("missing: chain {chain} record {middle}")],
        "exactly the dropped record"
    );

    // 2. The last record (an outcome) never published: no gap, but a user without outcome.
    let last_record = bodies
        .iter()
        .filter_map(sealed)
        .max_by_key(|s| s.link.seq)
        .unwrap();
    let last = last_record.link.seq;
    assert_eq!(last_record.record["kind"], "outcome");
    let item = last_record.record["item"]
        .as_u64()
        .expect("the outcome names its item");
    let truncated = copy("rec-truncated");
    let without_last: Vec<Vec<u8>> = bodies
        .iter()
        .filter(|b| sealed(b).is_none_or(|s| s.link.seq != last))
        .cloned()
        .collect();
    publish_outcomes(&truncated, &without_last).await;
    let verdict = commands::audit::check(&truncated, &batch)
        .await
        .expect("audit");
    assert_eq!(
        verdict.problems,
        [format!("missing: no verified outcome for items {item}")]
    );

    // 3. An outcome republished altered (status changed) in place of the original.
    let altered = copy("rec-altered");
    let mut changed_seq = None;
    let edited: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| match sealed(b) {
            Some(mut s) if changed_seq.is_none() && s.record["kind"] == "outcome" => {
                changed_seq = Some(s.link.seq);
                s.record["status"] = "already_clean".into();
                serde_json::to_vec(&s).unwrap()
            }
            _ => b.clone(),
        })
        .collect();
    publish_outcomes(&altered, &edited).await;
    let verdict = commands::audit::check(&altered, &batch)
        .await
        .expect("audit");
    let seq = changed_seq.expect("an outcome");
    assert!(
        verdict.problems[0].starts_with(&format!("altered: chain {chain} record {seq} ")),
        "{:#?}",
        verdict.problems
    );
    assert!(
        verdict
            .problems
            .iter()
            .any(|p| p.contains("no verified outcome")),
        "the altered outcome does not count: {:#?}",
        verdict.problems
    );

    for settings in [dropped, truncated, altered] {
        delete_topology(&settings).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_graph_call_of_a_reset_carries_the_request_id_as_client_request_id_and_the_outcome_says_who_asked(
) {
    let mut env = TestEnv::new("rec-crid", tenant(3)).await;
    let front = GraphFront::start(&env.sim.url()).await;
    front.point(&mut env.settings);
    env.setup().await;
    let batch = env
        .enqueue_csv(&csv_of_generated(3))
        .await
        .expect("enqueue")
        .batch;
    env.start_worker(2);
    let view = env.wait_batch(&batch, 120).await;
    env.stop_workers().await;

    let ids: Vec<String> = (0..3)
        .map(|i| ResetRequest::id_for(&batch, &user(i)).to_string())
        .collect();
    let graph_calls: Vec<_> = front
        .calls()
        .into_iter()
        .filter(|call| call.path.starts_with("/v1.0/") || call.path.starts_with("/beta/"))
        .collect();
    assert!(!graph_calls.is_empty());
    for call in &graph_calls {
        let id = call.client_request_id.as_deref().unwrap_or("none");
        assert!(ids.iter().any(|known| known == id), "{call:?}");
    }
    for id in &ids {
        assert!(
            graph_calls
                .iter()
                .any(|call| call.method == axum::http::Method::DELETE
                    && call.client_request_id.as_deref() == Some(id.as_str())),
            "a DELETE of request {id} carries it"
        );
    }
    for outcome in view.outcomes() {
        assert_eq!(
            outcome.requested_by.as_deref(),
            Some(env.keys.requester.principal.as_str())
        );
        assert_eq!(outcome.approved_by, None, "a batch of 3 needs no approval");
        assert!(outcome.item.is_some_and(|item| item < 3));
    }
    env.cleanup().await;
}
