//! The console's report download over real HTTP: `mfa-reset serve` as a child, signed in
//! through graph-sim's OIDC form, a batch run by a real worker on the real broker.

use std::time::Duration;

use graph_sim::tenant::GenOptions;
use graph_sim::SimConfig;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use mfa_reset::broker::{self, Topology};
use mfa_reset::domain::{MethodRecord, Outcome, Record, ResetRequest, Status, UserRef};
use serde_json::Value;

use crate::common::console::{sign_in, Client, Serve};
use crate::common::env::TestEnv;
use crate::common::proc;

fn tenant(users: usize) -> SimConfig {
    SimConfig {
        users,
        generation: GenOptions {
            methods_min: 1,
            ..GenOptions::default()
        },
        ..SimConfig::default()
    }
}

/// An unsigned outcome claiming `user` of `batch` was reset, as someone holding only broker
/// credentials could publish it.
async fn publish_forged_outcome(env: &TestEnv, batch: &str, user: &str) {
    let user = UserRef::parse(user).expect("user");
    let forged = Record::Outcome(Box::new(Outcome {
        request_id: ResetRequest::id_for(batch, &user),
        batch: batch.into(),
        user,
        status: Status::Reset,
        methods_removed: vec![MethodRecord {
            kind: "phone".into(),
            id: "FORGED-phone".into(),
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
        reason: None,
        item: None,
        replayed_by: None,
        replay_key: None,
        notes: Vec::new(),
        tap: None,
    }));
    let conn = broker::connect(&env.settings.broker, "attacker")
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let topology = Topology::new(&env.settings.broker, &env.settings.retry);
    channel
        .basic_publish(
            topology.exchange().as_str().into(),
            mfa_reset::broker::topology::RK_OUTCOME.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&forged).expect("json"),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let _ = conn.close(200, "bye".into()).await;
}

/// GET the report until the console has every outcome of the batch (`x-report-pending: 0`):
/// the response.
async fn complete_report(client: &mut Client, url: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = client.get(url).await;
        let pending = response
            .headers()
            .get("x-report-pending")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if response.status().as_u16() == 200 && pending.as_deref() == Some("0") {
            return response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the console has not read the whole batch in 60 s: {} pending {pending:?}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_downloads_the_cli_report_of_verified_outcomes_as_csv_and_json_lines() {
    let mut env = TestEnv::new("console-report", tenant(5)).await;
    env.setup().await;
    let users: Vec<String> = (0..3).map(graph_sim::tenant::upn_for_index).collect();
    let tickets = format!(
        "{{\"ticket\":\"=HYPERLINK(\\\"http://evil\\\",\\\"x\\\")\",\"user\":\"{}\"}}\n\
         {{\"ticket\":\"+1-555\",\"user\":\"{}\"}}\n\
         {{\"ticket\":\"@SUM(A1)\",\"user\":\"{}\"}}\n",
        users[0], users[1], users[2]
    );
    let batch = env.enqueue_tickets(&tickets).await.expect("enqueue").batch;
    // Before any worker runs: an unsigned "already reset" for user 2.
    publish_forged_outcome(&env, &batch, &users[2]).await;
    env.start_worker(2);
    env.wait_batch(&batch, 90).await;
    let serve = Serve::start(&env, &[]).await;
    let sim = env.sim.url();
    let csv_url = format!("{}/api/v1/batches/{batch}/report?format=csv", serve.url);
    let jsonl_url = format!("{}/api/v1/batches/{batch}/report?format=jsonl", serve.url);

    // Nobody signed in: 401. Signed in without an app role: 403.
    assert_eq!(Client::default().get(&csv_url).await.status().as_u16(), 401);
    let mut nobody = Client::default();
    sign_in(
        &mut nobody,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(4),
        &[],
    )
    .await;
    assert_eq!(nobody.get(&csv_url).await.status().as_u16(), 403);

    let mut viewer = Client::default();
    sign_in(
        &mut viewer,
        &serve.url,
        &sim,
        &graph_sim::tenant::upn_for_index(3),
        &["viewer"],
    )
    .await;
    let csv = complete_report(&mut viewer, &csv_url).await;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("{name} header"))
            .to_str()
            .expect("ascii")
            .to_string()
    };
    assert_eq!(
        header(&csv, "content-type"),
        "text/csv; charset=utf-8; header=present"
    );
    assert_eq!(
        header(&csv, "content-disposition"),
        format!("attachment; filename=\"mfa-reset-{batch}.csv\"")
    );
    assert_eq!(header(&csv, "cache-control"), "no-store");
    let csv = csv.text().await.expect("csv");

    // Byte for byte what `mfa-reset report` writes.
    let (code, cli_csv, err) = proc::run(&env.settings, &["report", "--batch", &batch]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(csv, cli_csv);
    // One row per user, formula cells neutralised, the forged outcome nowhere.
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows.iter().all(|r| &r[1] == "reset"), "{csv}");
    let cells: Vec<&str> = rows.iter().flat_map(|r| r.iter()).collect();
    assert!(
        cells.contains(&"'=HYPERLINK(\"http://evil\",\"x\")"),
        "{csv}"
    );
    assert!(cells.contains(&"'+1-555"), "{csv}");
    assert!(cells.contains(&"'@SUM(A1)"), "{csv}");
    for cell in &cells {
        assert!(
            !cell.starts_with(['=', '+', '-', '@']),
            "{cell:?} would run as a formula"
        );
    }
    assert!(!csv.contains("FORGED"), "{csv}");

    let jsonl = viewer.get(&jsonl_url).await;
    assert_eq!(jsonl.status().as_u16(), 200);
    assert_eq!(header(&jsonl, "content-type"), "application/jsonl");
    assert_eq!(
        header(&jsonl, "content-disposition"),
        format!("attachment; filename=\"mfa-reset-{batch}.jsonl\"")
    );
    let jsonl = jsonl.text().await.expect("jsonl");
    let (code, cli_jsonl, err) = proc::run(
        &env.settings,
        &["report", "--batch", &batch, "--format", "jsonl"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(jsonl, cli_jsonl);
    let outcomes: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON outcome per line"))
        .collect();
    assert_eq!(outcomes.len(), 3);
    assert!(!jsonl.contains("FORGED"), "{jsonl}");

    // An unknown batch, an unknown format.
    let unknown = viewer
        .get(&format!(
            "{}/api/v1/batches/no-such-batch/report?format=csv",
            serve.url
        ))
        .await;
    assert_eq!(unknown.status().as_u16(), 404);
    let xlsx = viewer
        .get(&format!(
            "{}/api/v1/batches/{batch}/report?format=xlsx",
            serve.url
        ))
        .await;
    assert_eq!(xlsx.status().as_u16(), 400);
    let xlsx: Value = xlsx.json().await.expect("JSON error");
    assert_eq!(xlsx["field"], "format", "{xlsx}");

    // The batch page links both.
    let page = viewer
        .get(&format!("{}/batches/{batch}", serve.url))
        .await
        .text()
        .await
        .expect("page");
    for link in [
        format!("/api/v1/batches/{batch}/report?format=csv"),
        format!("/api/v1/batches/{batch}/report?format=jsonl"),
    ] {
        assert!(
            page.contains(&format!("href=\"{link}\"")),
            "{link} in {page}"
        );
    }
    serve.stop().await;
    env.cleanup().await;
}
