use super::*;

#[tokio::test(start_paused = true)]
async fn idleness_is_due_after_its_time_without_activity_and_never_when_not_asked() {
    let mut idle = Idle::new(Some(Duration::from_secs(2)));
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert!(!idle.due());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(idle.due());
    idle.touch();
    assert!(!idle.due(), "activity starts the idle time again");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(idle.due());

    let never = Idle::new(None);
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert!(!never.due());
}

#[test]
fn work_waits_in_the_requests_queue_and_every_delay_tier() {
    let retry = crate::config::RetrySettings {
        tiers: vec![Duration::from_secs(1), Duration::from_secs(2)],
        ..Default::default()
    };
    let broker = crate::config::BrokerSettings {
        prefix: "p".into(),
        ..Default::default()
    };
    assert_eq!(
        waiting_queues(&Topology::new(&broker, &retry)),
        ["p.requests", "p.retry.1s", "p.retry.2s"]
    );
}
