use super::stand_in::StandIn;
use super::*;
use governor::clock::FakeRelativeClock;

fn rate(
    requests: u32,
    period: u64,
    writes: u32,
    writes_period: u64,
    processes: u32,
    burst: f64,
) -> RateSettings {
    RateSettings {
        requests,
        requests_period: Duration::from_secs(period),
        writes,
        writes_period: Duration::from_secs(writes_period),
        processes,
        burst_fraction: burst,
        slow_down_at_percent: 80.0,
    }
}

fn key(processes: u32, requests: f64, writes: f64, full_burst: bool) -> Key {
    Key {
        processes,
        requests,
        writes,
        full_burst,
    }
}

fn current(budget: &Budget) -> Arc<Limiters> {
    budget.limiters.read().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn the_clock_follows_tokios_paused_time() {
    let clock = TokioClock::new();
    assert_eq!(clock.now(), Duration::ZERO);
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(clock.now(), Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn a_full_budget_bursts_a_fraction_of_the_bucket_and_a_slowed_one_bursts_little() {
    let rate = RateSettings {
        writes: 3000,
        writes_period: Duration::from_secs(150),
        burst_fraction: 0.5,
        ..RateSettings::default()
    };
    let full = Budget::limiters(&rate, key(1, 1.0, 1.0, true), TokioClock::new());
    let burst = (0..5000)
        .take_while(|_| full.writes.check().is_ok())
        .count();
    assert_eq!(burst, 1500);
    // Slowed to half: 10 writes/s, a burst of 0.05 s of that (one cell), raised to the
    // SLOWED_BURST_CELLS that let a late request's successor catch up.
    let slowed = Budget::limiters(&rate, key(1, 1.0, 0.5, false), TokioClock::new());
    let burst = (0..5000)
        .take_while(|_| slowed.writes.check().is_ok())
        .count();
    assert_eq!(burst, SLOWED_BURST_CELLS as usize);
}

#[tokio::test(start_paused = true)]
async fn a_worker_joining_an_unthrottled_fleet_carries_the_burst_left_not_an_empty_one() {
    let rate = RateSettings {
        writes: 3000,
        writes_period: Duration::from_secs(150),
        burst_fraction: 0.5,
        processes: 0,
        ..RateSettings::default()
    };
    let writes_now = |budget: &Budget| {
        let limiters = budget.limiters.read().unwrap().clone();
        (0..5000)
            .take_while(|_| limiters.writes.check().is_ok())
            .count()
    };
    // Alone: half of Graph's 3,000-write bucket. A second worker appears: this one's
    // share of the burst (750) is left, not nothing.
    let budget = Budget::new(&rate).unwrap();
    budget.set_processes(2);
    assert_eq!(writes_now(&budget), 750);
    // What was used stays used: 700 of the 750 gone, then a third worker: 50 left.
    let budget = Budget::new(&rate).unwrap();
    budget.set_processes(2);
    {
        let limiters = budget.limiters.read().unwrap().clone();
        for _ in 0..700 {
            limiters.writes.check().unwrap();
        }
    }
    budget.set_processes(3);
    assert_eq!(writes_now(&budget), 50);
    // A throttled budget's limiters still start empty when the share moves.
    let budget = Budget::new(&rate).unwrap();
    budget.on_throttled(Instant::now() + Duration::from_secs(1), Limit::Writes);
    tokio::time::advance(Duration::from_secs(2)).await;
    budget.set_processes(2);
    assert_eq!(writes_now(&budget), 0);
}

#[test]
fn quotas_divide_the_budget_among_processes() {
    // 3,500 per 10 s over 1 process: 350/s, burst 1 s = 350 cells.
    let q = process_quota(3500, Duration::from_secs(10), 1, 1.0, 1.0);
    assert_eq!(
        q.replenish_interval(),
        Duration::from_secs_f64(10.0 / 3500.0)
    );
    assert_eq!(q.burst_size().get(), 350);
    // 3,000 writes per 150 s over 4 processes: 5/s each, burst 0.5 s = 3 cells (rounded up).
    let q = process_quota(3000, Duration::from_secs(150), 4, 0.5, 1.0);
    assert_eq!(q.replenish_interval(), Duration::from_millis(200));
    assert_eq!(q.burst_size().get(), 3);
    // At least one cell, at most the process's share of the bucket.
    assert_eq!(
        process_quota(10, Duration::from_secs(1), 1, 0.0, 1.0)
            .burst_size()
            .get(),
        1
    );
    assert_eq!(
        process_quota(10, Duration::from_secs(1), 1, 60.0, 1.0)
            .burst_size()
            .get(),
        10
    );
    // A factor scales the rate.
    let q = process_quota(200, Duration::from_secs(1), 1, 0.1, 0.5);
    assert_eq!(q.replenish_interval(), Duration::from_millis(10));
    assert_eq!(q.burst_size().get(), 10);
}

#[test]
fn a_quota_allows_its_burst_then_its_rate() {
    let clock = FakeRelativeClock::default();
    let quota = process_quota(200, Duration::from_secs(1), 2, 0.1, 1.0); // 100/s, burst 10
    let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
    let burst = (0..50).take_while(|_| limiter.check().is_ok()).count();
    assert_eq!(burst, 10);
    // Over the next second exactly 100 more pass.
    let mut passed = 0;
    for _ in 0..1000 {
        clock.advance(Duration::from_millis(1));
        while limiter.check().is_ok() {
            passed += 1;
        }
    }
    assert_eq!(passed, 100);
}

#[tokio::test(start_paused = true)]
async fn acquire_lets_the_burst_through_at_once_then_waits_one_interval_per_request() {
    // 10/s, a burst of half the bucket: 5 at once, then one every 100 ms.
    let budget = Budget::new(&rate(10, 1, 10, 1, 1, 0.5)).unwrap();
    let gate = PauseGate::default();
    for _ in 0..5 {
        assert_eq!(budget.acquire(true, &gate).await, Duration::ZERO);
    }
    let start = Instant::now();
    for _ in 0..10 {
        budget.acquire(false, &gate).await;
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(1010),
        "{elapsed:?}"
    );
    let waited = budget.stats().snapshot().budget_wait_secs;
    assert!((0.99..1.01).contains(&waited), "{waited}");
}

#[tokio::test(start_paused = true)]
async fn a_warning_rebuilds_the_limiters_empty_and_a_recovered_budget_gets_its_burst_back() {
    // 100 per 10 s: at f = 0.9 one cell per 111 ms.
    let budget = Budget::new(&rate(100, 10, 100, 10, 1, 0.5)).unwrap();
    assert!(current(&budget).all.check().is_ok(), "a full budget bursts");
    budget.observe_limit_percentage(50.0);
    assert_eq!(budget.factor(), 1.0);
    budget.observe_limit_percentage(85.0);
    assert!((budget.factor() - 0.9).abs() < 1e-9);
    assert!((budget.stats().snapshot().factor - 0.9).abs() < 1e-9);
    let slowed = current(&budget);
    assert!(slowed.all.check().is_err(), "rebuilt empty");
    assert!(slowed.writes.check().is_err());
    budget.update(|s| s.requests.roll(Instant::now() + Duration::from_secs(60)));
    assert_eq!(budget.factor(), 1.0);
    assert!(current(&budget).key.full_burst);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_task_follows_the_limiters_that_replaced_the_ones_it_waited_on() {
    let budget = Arc::new(Budget::new(&rate(10, 1, 10, 1, 1, 0.5)).unwrap());
    let gate = Arc::new(PauseGate::default());
    budget.observe_limit_percentage(85.0); // f = 0.9: 9/s, the next cell in 111 ms
    let waiter = {
        let (budget, gate) = (budget.clone(), gate.clone());
        tokio::spawn(async move { budget.acquire(false, &gate).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    budget.update(|s| s.requests.factor = 0.1); // 1/s, rebuilt empty: the next cell in 1 s
    let rebuilt = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiter.is_finished(),
        "let through at the replaced limiter's rate"
    );
    waiter.await.unwrap();
    assert!(
        rebuilt.elapsed() >= Duration::from_secs(1),
        "{:?}",
        rebuilt.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_budget_is_idle_until_asked_and_again_after_idle_after_and_its_waking_is_signalled() {
    let budget = Budget::new(&rate(100, 1, 100, 1, 0, 0.0)).unwrap();
    let gate = PauseGate::default();
    assert!(
        budget.idle(),
        "a new worker is counted from its first request"
    );
    budget.acquire(false, &gate).await;
    // The first request after idling signals (a permit is kept for the fleet's task).
    tokio::time::timeout(Duration::from_millis(1), budget.woke().notified())
        .await
        .expect("woke");
    assert!(!budget.idle());
    tokio::time::advance(IDLE_AFTER - Duration::from_millis(1)).await;
    budget.acquire(false, &gate).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1), budget.woke().notified());
    assert!(quiet.await.is_err(), "not idle in between: no signal");
    tokio::time::advance(IDLE_AFTER).await;
    assert!(budget.idle());
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_wakes_beside_busy_ones_sends_once_they_counted_it() {
    let gate = PauseGate::default();
    // Counted through the broker, two others busy: the wake's heartbeat goes first.
    let joiner = Budget::new(&rate(100, 1, 100, 1, 0, 0.0)).unwrap();
    joiner.set_processes(3);
    let start = Instant::now();
    joiner.acquire(false, &gate).await;
    assert_eq!(start.elapsed(), JOIN_SETTLE);
    // Once: the next request goes at the rate.
    let start = Instant::now();
    joiner.acquire(false, &gate).await;
    assert!(start.elapsed() < JOIN_SETTLE, "{:?}", start.elapsed());
    // Again after idling.
    tokio::time::advance(IDLE_AFTER).await;
    let start = Instant::now();
    joiner.acquire(false, &gate).await;
    assert_eq!(start.elapsed(), JOIN_SETTLE);
    // Alone (a ticket at a quiet system), or with a fixed count nobody learns from a
    // heartbeat: at once.
    let alone = Budget::new(&rate(100, 1, 100, 1, 0, 0.0)).unwrap();
    let fixed = Budget::new(&rate(100, 1, 100, 1, 3, 0.0)).unwrap();
    for budget in [alone, fixed] {
        let start = Instant::now();
        budget.acquire(false, &gate).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn the_share_follows_the_live_number_of_processes() {
    let budget = Budget::new(&rate(100, 1, 100, 1, 0, 0.0)).unwrap();
    assert_eq!(budget.processes(), 1, "counted processes start as one");
    let gate = PauseGate::default();
    budget.set_processes(4);
    assert_eq!(budget.stats().snapshot().workers, 4);
    // 25/s: 10 requests take 360 ms (the one cell of burst left carries over: the first
    // goes at once, each next 40 ms later), after the others counted this one.
    let start = Instant::now();
    for _ in 0..10 {
        budget.acquire(false, &gate).await;
    }
    assert_eq!(start.elapsed(), JOIN_SETTLE + Duration::from_millis(360));
    // Back to one: nothing was left to carry, 100/s from an empty limiter.
    budget.set_processes(1);
    let start = Instant::now();
    for _ in 0..10 {
        budget.acquire(false, &gate).await;
    }
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_pause_releases_the_tasks_it_held_through_the_budget_not_all_at_once() {
    // 20/s; 16 tasks waiting when a 2 s pause starts.
    let budget = Arc::new(Budget::new(&rate(20, 1, 20, 1, 1, 0.5)).unwrap());
    let gate = Arc::new(PauseGate::default());
    // Spend the opening burst.
    for _ in 0..10 {
        budget.acquire(false, &gate).await;
    }
    let pause_end = Instant::now() + Duration::from_secs(2);
    gate.pause_until(pause_end);
    budget.on_throttled(pause_end, Limit::Requests);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (budget, gate) = (budget.clone(), gate.clone());
            tokio::spawn(async move {
                budget.acquire(false, &gate).await;
                Instant::now()
            })
        })
        .collect();
    let mut left = Vec::new();
    for task in tasks {
        left.push(task.await.unwrap());
    }
    left.sort();
    assert!(left[0] >= pause_end, "nobody leaves inside the pause");
    // Halved to 10/s, the limiter emptied at the pause's end: one per 100 ms after it,
    // 16 tasks over 1.5 s.
    let last = left[15] - pause_end;
    assert!(last >= Duration::from_millis(1500), "{last:?}");
    let in_first_100ms = left
        .iter()
        .filter(|t| **t - pause_end < Duration::from_millis(100))
        .count();
    assert!(in_first_100ms <= 1, "{in_first_100ms} left at once");
}

#[tokio::test(start_paused = true)]
async fn a_task_holding_a_cell_when_a_pause_starts_waits_for_the_pause() {
    // 1/s, no burst: a task waits ~1 s for its cell; a pause starts meanwhile.
    let budget = Arc::new(Budget::new(&rate(1, 1, 1, 1, 1, 0.0)).unwrap());
    let gate = Arc::new(PauseGate::default());
    budget.acquire(false, &gate).await;
    let waiter = {
        let (budget, gate) = (budget.clone(), gate.clone());
        tokio::spawn(async move {
            budget.acquire(false, &gate).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pause_end = Instant::now() + Duration::from_secs(5);
    gate.pause_until(pause_end);
    assert!(waiter.await.unwrap() >= pause_end);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_small_budget_is_reached_after_a_few_throttlings_and_held() {
    // Configured for 350/s; Graph serves 30/s in 1 s steps, Retry-After 1-5 s; 32 tasks,
    // 100 ms per request, for 150 s (the `unknown` benchmark).
    let graph = StandIn::new(30, Duration::from_secs(1));
    let budget = Arc::new(Budget::new(&rate(3500, 10, 3500, 10, 1, 0.5)).unwrap());
    let gate = Arc::new(PauseGate::default());
    let tasks = graph.spawn_tasks(32, &budget, &gate, |_| {});
    for second in 0..150 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trace(&budget, second);
    }
    for task in tasks {
        task.abort();
    }
    let run = graph.summary(20, 150);
    eprintln!("{run}");
    // After the 20 s warm-up (the benchmark's): at least 95 % of 30/s (measured: 98.1 %,
    // no 429 after the warm-up: the second 429 bounds the rate by what was sent since the
    // first pause, then the rate held is 97.5 % of what Graph served in its best two
    // seconds), none sent inside a pause.
    assert_eq!(run.violations, 0, "{run}");
    assert!(run.efficiency >= 0.95, "{run}");
    assert!(run.throttled_after <= 1, "{run}");
}

/// With LAW_TRACE set: the rate in force each second (requests/s of a 350/s share).
fn trace(budget: &Budget, second: u64) {
    if std::env::var("LAW_TRACE").is_ok() {
        let (r, _) = budget.learned();
        eprintln!(
            "{second}: rate {:.2} at {:.2}",
            r.factor * 350.0,
            r.throttled_at.unwrap_or(0.0) * 350.0
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_budget_refilled_in_10_s_steps_is_held_at_90_percent_or_more() {
    // The same, but Graph refills 300 at once every 10 s (the `unknown` benchmark with
    // BENCH_UNKNOWN_GRANULARITY_MS=10000).
    let graph = StandIn::new(30, Duration::from_secs(10));
    let budget = Arc::new(Budget::new(&rate(3500, 10, 3500, 10, 1, 0.5)).unwrap());
    let gate = Arc::new(PauseGate::default());
    let tasks = graph.spawn_tasks(32, &budget, &gate, |_| {});
    for second in 0..180 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trace(&budget, second);
    }
    for task in tasks {
        task.abort();
    }
    let run = graph.summary(60, 180);
    eprintln!("{run}");
    // Measured: 92.6 %, five 429s in seconds 60-180 (as graph-sim, a Retry-After lasts
    // until the next step at least, so a pause never ends on an empty bucket; two 429s
    // in a row where Graph had served all that was sent over its best 2 s hold the rate
    // it served over the last 20-30 s, and the law comes down to it in a few windows).
    // The goal, 429s near zero after convergence, is not met.
    assert_eq!(run.violations, 0, "{run}");
    assert!(run.efficiency >= 0.90, "{run}");
    assert!(run.throttled_after <= 6, "{run}");
}
