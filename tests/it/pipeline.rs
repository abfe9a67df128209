//! The whole path: input → RabbitMQ → workers → Graph simulator → outcomes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use graph_sim::{GenOptions, SimConfig};
use mfa_reset::broker::stream::{read_until_now, Offset};
use mfa_reset::commands::{dlq, enqueue::Refused};
use mfa_reset::domain::{Record, Status};

use crate::common::env::{csv_of_generated, TestEnv};

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

fn is_removable(method: &serde_json::Value) -> bool {
    method["@odata.type"] != "#microsoft.graph.passwordAuthenticationMethod"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_users_all_end_reset_and_keep_only_their_password() {
    let mut env = TestEnv::new("pipeline-300", tenant(300)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(300))
        .await
        .expect("enqueue");
    assert_eq!(enqueued.count, 300);

    env.start_worker(32);
    let view = env.wait_batch(&enqueued.batch, 120).await;

    assert_eq!(view.finished(), 300);
    assert_eq!(
        view.counts().get(&Status::Reset).copied(),
        Some(300),
        "{:?}",
        view.counts()
    );
    for user in env.sim.users_snapshot() {
        let removable: Vec<_> = user.methods.iter().filter(|m| is_removable(m)).collect();
        assert!(
            removable.is_empty(),
            "{} still has {removable:?}",
            user.user_principal_name
        );
        assert!(
            user.methods.iter().any(|m| !is_removable(m)),
            "{} lost its password",
            user.user_principal_name
        );
    }
    for o in view.outcomes() {
        assert!(!o.methods_removed.is_empty(), "{} removed nothing", o.user);
        assert!(o.methods_remaining.is_empty());
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_csv_enqueues_nothing_and_names_each_bad_line() {
    let env = TestEnv::new("pipeline-invalid", tenant(10)).await;
    env.setup().await;
    let csv = format!(
        "userPrincipalName\n{}\nbob@\n{}\nnot a user\n",
        graph_sim::tenant::upn_for_index(0),
        graph_sim::tenant::upn_for_index(1)
    );

    let err = env.enqueue_csv(&csv).await.expect_err("refused");

    let refused = err
        .downcast_ref::<Refused>()
        .expect("a refusal for a person");
    assert!(refused.message.contains("line 3"), "{}", refused.message);
    assert!(refused.message.contains("line 5"), "{}", refused.message);
    assert!(!refused.message.contains("line 2"), "{}", refused.message);
    assert_eq!(env.queue_len(&env.topology().requests()).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_events_are_processed_with_their_ticket_and_session_choice() {
    let mut env = TestEnv::new("pipeline-tickets", tenant(10)).await;
    let a = graph_sim::tenant::upn_for_index(2);
    let b = graph_sim::tenant::upn_for_index(3);
    let tickets = format!(
        "{{\"ticket\":\"INC0012345\",\"user\":\"{a}\",\"reason\":\"lost phone\",\"revoke_sessions\":true}}\n\
         {{\"ticket\":\"INC0012346\",\"user\":\"{b}\",\"requested_by\":\"helpdesk\"}}\n"
    );
    let enqueued = env.enqueue_tickets(&tickets).await.expect("enqueue");
    env.start_worker(4);
    let view = env.wait_batch(&enqueued.batch, 60).await;

    let by_user: HashMap<String, _> = view.outcomes().map(|o| (o.user.key(), o.clone())).collect();
    let oa = &by_user[&a.to_lowercase()];
    let ob = &by_user[&b.to_lowercase()];
    assert_eq!(oa.status, Status::Reset);
    assert_eq!(oa.ticket.as_deref(), Some("INC0012345"));
    assert!(oa.sessions_revoked);
    assert!(!ob.sessions_revoked);
    assert_eq!(env.sim.user(&a).expect("user").sessions_revoked, 1);
    assert_eq!(env.sim.user(&b).expect("user").sessions_revoked, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_fails_and_sits_in_the_dead_letter_queue_with_its_reason() {
    let mut env = TestEnv::new("pipeline-unknown", tenant(10)).await;
    let csv = format!(
        "user\n{}\nnobody.here@contoso.com\n",
        graph_sim::tenant::upn_for_index(0)
    );
    let enqueued = env.enqueue_csv(&csv).await.expect("enqueue");
    env.start_worker(4);
    let view = env.wait_batch(&enqueued.batch, 60).await;

    let failed: Vec<_> = view
        .outcomes()
        .filter(|o| o.status == Status::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].user.to_string(), "nobody.here@contoso.com");
    assert_eq!(
        failed[0].error_code.as_deref(),
        Some("Request_ResourceNotFound")
    );
    let letters = dlq::list(&env.settings, Some(&enqueued.batch))
        .await
        .expect("dlq list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].user.as_deref(), Some("nobody.here@contoso.com"));
    assert_eq!(letters[0].error_code, "Request_ResourceNotFound");
    assert!(letters[0].attempts >= 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_message_is_dead_lettered_without_stopping_the_worker() {
    let mut env = TestEnv::new("pipeline-garbage", tenant(10)).await;
    env.setup().await;
    env.publish_raw(b"\x00\xffthis is not json").await;
    env.publish_raw(br#"{"version": 7, "user": "a@contoso.com"}"#)
        .await;
    env.start_worker(2);
    let enqueued = env
        .enqueue_csv(&csv_of_generated(3))
        .await
        .expect("enqueue");

    let view = env.wait_batch(&enqueued.batch, 60).await;

    assert_eq!(
        view.finished(),
        3,
        "the worker kept going after the garbage"
    );
    let letters = dlq::list(&env.settings, None).await.expect("dlq list");
    let codes: Vec<&str> = letters.iter().map(|l| l.error_code.as_str()).collect();
    assert!(codes.contains(&"invalid_message"), "{codes:?}");
    assert!(codes.contains(&"unknown_version"), "{codes:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_queue_process_a_batch_once() {
    let mut env = TestEnv::new("pipeline-two", tenant(200)).await;
    let enqueued = env
        .enqueue_csv(&csv_of_generated(200))
        .await
        .expect("enqueue");
    env.start_worker(8);
    env.start_worker(8);
    let view = env.wait_batch(&enqueued.batch, 120).await;
    env.stop_workers().await;

    // Every request has exactly one outcome record on the stream, not just in the view.
    let seen: Arc<Mutex<HashMap<uuid::Uuid, u32>>> = Arc::default();
    let sink = seen.clone();
    let conn = mfa_reset::broker::connect(&env.settings.broker, "test")
        .await
        .expect("broker");
    let reader = mfa_reset::records::RecordReader::from_settings(&env.settings.security)
        .expect("allowed signers");
    read_until_now(&conn, &env.topology(), Offset::First, move |message| {
        if let mfa_reset::records::Read::Verified {
            record: Record::Outcome(o),
            ..
        } = reader.read(&message.body)
        {
            *sink.lock().unwrap().entry(o.request_id).or_default() += 1;
        }
    })
    .await
    .expect("read stream");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 200);
    assert!(
        seen.values().all(|n| *n == 1),
        "some request has two outcomes"
    );
    let workers: std::collections::HashSet<_> = view.outcomes().map(|o| o.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "both workers took part: {workers:?}");
    // No method was deleted twice: the simulator applied exactly what the outcomes say.
    let removed: usize = view.outcomes().map(|o| o.methods_removed.len()).sum();
    assert_eq!(env.sim.stats().methods_deleted as usize, removed);
    env.cleanup().await;
}
