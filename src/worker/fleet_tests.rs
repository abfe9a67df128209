use super::*;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::config::RateSettings;
use crate::graph::stand_in::{StandIn, Summary};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[tokio::test(start_paused = true)]
async fn the_live_count_is_this_worker_and_every_peer_heard_lately() {
    let mut peers = Peers::default();
    let t0 = Instant::now();
    assert_eq!(peers.live(t0), 1);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    peers.heard(a, false, (None, None), t0);
    peers.heard(b, false, (None, None), t0 + Duration::from_secs(2));
    assert_eq!(peers.live(t0 + Duration::from_secs(2)), 3);
    // a is silent for PEER_TTL: gone; b still counts.
    assert_eq!(peers.live(t0 + PEER_TTL), 2);
    assert_eq!(peers.live(t0 + Duration::from_secs(10)), 1);
}

#[tokio::test(start_paused = true)]
async fn forged_heartbeats_cannot_grow_the_peers_past_the_bound() {
    let mut peers = Peers::default();
    let now = Instant::now();
    for _ in 0..MAX_PEERS + 100 {
        peers.heard(Uuid::new_v4(), false, (None, None), now);
    }
    assert_eq!(peers.live(now), MAX_PEERS as u32 + 1);
}

#[test]
fn a_peers_pause_is_shortened_by_its_age_and_capped() {
    let now = Utc::now();
    let cap = Duration::from_secs(180);
    let secs = Duration::from_secs;
    assert_eq!(peer_pause(secs(5), now, now, cap), Some(secs(5)));
    assert_eq!(
        peer_pause(secs(5), now - chrono::Duration::seconds(2), now, cap),
        Some(secs(3))
    );
    assert_eq!(
        peer_pause(secs(5), now - chrono::Duration::seconds(9), now, cap),
        None
    );
    // A sender whose clock is ahead: never longer than announced.
    assert_eq!(
        peer_pause(secs(5), now + chrono::Duration::seconds(60), now, cap),
        Some(secs(5))
    );
    // A forged year-long pause holds for the cap only.
    assert_eq!(peer_pause(secs(365 * 86_400), now, now, cap), Some(cap));
    assert_eq!(peer_pause(Duration::ZERO, now, now, cap), None);
}

#[tokio::test(start_paused = true)]
async fn idle_peers_take_no_share_and_the_lowest_busy_id_leads() {
    let mut peers = Peers::default();
    let t0 = Instant::now();
    let ids = |n: u128| Uuid::from_u128(n);
    peers.heard(ids(1), true, (None, None), t0);
    peers.heard(ids(3), false, (None, None), t0);
    assert_eq!(peers.live(t0), 2, "this worker and the busy peer");
    // The idle peer has the lowest id, yet leads nothing; this one (2) does.
    assert_eq!(peers.leader(ids(2), false, t0), ids(2));
    // Idle itself, this worker follows the busy one.
    assert_eq!(peers.leader(ids(2), true, t0), ids(3));
    peers.heard(ids(1), false, (None, None), t0);
    assert_eq!(peers.live(t0), 3);
    assert_eq!(peers.leader(ids(2), false, t0), ids(1));
    // Nobody else busy: this worker, idle or not.
    assert_eq!(peers.leader(ids(9), true, t0 + PEER_TTL), ids(9));
}

#[tokio::test(start_paused = true)]
async fn the_peaks_are_the_busy_peers_latest_and_go_with_them() {
    let mut peers = Peers::default();
    let t0 = Instant::now();
    let ids = |n: u128| Uuid::from_u128(n);
    peers.heard(ids(1), false, (Some(0.1), None), t0);
    peers.heard(ids(2), false, (Some(0.3), Some(0.2)), t0);
    peers.heard(ids(3), true, (Some(0.9), Some(0.9)), t0);
    peers.heard(
        ids(1),
        false,
        (Some(0.2), Some(0.4)),
        t0 + Duration::from_secs(2),
    );
    let (mut requests, writes) = peers.peaks(t0 + Duration::from_secs(2));
    requests.sort_by(f64::total_cmp);
    assert_eq!(
        requests,
        vec![0.2, 0.3],
        "the latest of each busy peer, idle ones left out"
    );
    assert_eq!(writes.len(), 2);
    // Peer 2 is no longer heard: its peaks go when it stops counting.
    let (requests, writes) = peers.peaks(t0 + PEER_TTL + Duration::from_secs(1));
    assert_eq!((requests, writes), (vec![0.2], vec![0.4]));
}

/// One simulated worker: its budget, pause and census, and its tasks.
struct Member {
    name: String,
    budget: Arc<Budget>,
    gate: Arc<PauseGate>,
    census: Mutex<Census>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    alive: std::sync::atomic::AtomicBool,
}

/// A fleet of simulated workers whose broker delivers at once.
#[derive(Clone, Default)]
struct Broker {
    members: Arc<Mutex<Vec<Arc<Member>>>>,
}

impl Broker {
    fn others(&self, me: &Member) -> Vec<Arc<Member>> {
        lock(&self.members)
            .iter()
            .filter(|m| m.name != me.name && m.alive.load(Ordering::SeqCst))
            .cloned()
            .collect()
    }

    /// A worker's heartbeat, to every other live one.
    fn beat(&self, me: &Member) {
        let beat = lock(&me.census).heartbeat(&me.name, &me.budget, &me.gate);
        let FleetMessage::Heartbeat {
            instance,
            requests,
            writes,
            pause_ms,
            idle,
            ..
        } = beat
        else {
            unreachable!("a heartbeat")
        };
        for other in self.others(me) {
            lock(&other.census).heard(instance, idle, requests, writes, &other.budget);
            if pause_ms > 0 {
                let until = Instant::now() + Duration::from_millis(pause_ms);
                peer_paused(&other.budget, &other.gate, until, Limit::Requests);
            }
        }
    }

    /// Start a worker of `concurrency` tasks against `graph`, heartbeating every second.
    /// Ids are `id`, so the test knows who leads (the lowest busy one).
    async fn join(&self, id: u128, concurrency: usize, graph: &StandIn) -> Arc<Member> {
        let rate = RateSettings::default();
        let member = Arc::new(Member {
            name: format!("w{id}"),
            budget: Arc::new(Budget::new(&rate).unwrap()),
            gate: Arc::new(PauseGate::default()),
            census: Mutex::new(Census::new(Uuid::from_u128(id), true)),
            tasks: Mutex::default(),
            alive: true.into(),
        });
        lock(&self.members).push(member.clone());
        let (broker, me) = (self.clone(), member.clone());
        let heartbeats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.beat(&me),
                    _ = me.budget.woke().notified() => {
                        broker.beat(&me);
                        tick.reset();
                    }
                }
            }
        });
        // As the worker does: every peer heard before the first request.
        tokio::time::sleep(HEARTBEAT_EVERY + Duration::from_millis(200)).await;
        let (broker, me) = (self.clone(), member.clone());
        let announce = move |until| {
            for other in broker.others(&me) {
                peer_paused(&other.budget, &other.gate, until, Limit::Requests);
            }
        };
        let mut tasks = graph.spawn_tasks(concurrency, &member.budget, &member.gate, announce);
        tasks.push(heartbeats);
        *lock(&member.tasks) = tasks;
        member
    }

    /// Kill -9: its tasks and heartbeats stop; the others notice the silence.
    fn kill(&self, member: &Member) {
        member.alive.store(false, Ordering::SeqCst);
        for task in lock(&member.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Each second, with FLEET_TRACE set: every live member's share and factor (as a rate).
fn trace(broker: &Broker, sec: u64) {
    if std::env::var("FLEET_TRACE").is_err() {
        return;
    }
    let line: Vec<String> = lock(&broker.members)
        .iter()
        .filter(|m| m.alive.load(Ordering::SeqCst))
        .map(|m| {
            let (r, _) = m.budget.learned();
            let share = 350.0 / f64::from(m.budget.processes());
            format!(
                "{} n={} rate={:.2} at={:.2}",
                m.name,
                m.budget.processes(),
                r.factor * share,
                r.throttled_at.unwrap_or(0.0) * share,
            )
        })
        .collect();
    eprintln!("{sec}: {}", line.join(" | "));
}

/// The `comego` benchmark against the stand-in: default [rate] (350/s), Graph serves 30/s
/// in 1 s steps; workers `first` and 2 start, 3 joins at 20 s, `first` is killed at
/// `kill_at`; 150 s in all, measured from 20 s. The lowest busy id leads: `first` = 1 is the
/// leader, 5 a follower.
async fn come_and_go(first: u128, kill_at: Duration) -> Summary {
    let graph = StandIn::new(30, Duration::from_secs(1));
    let broker = Broker::default();
    let start = Instant::now();
    let at = move |secs: u64| start + Duration::from_secs(secs);
    let (b1, b2) = (broker.clone(), broker.clone());
    let (g1, g2) = (graph.clone(), graph.clone());
    let (w1, _w2) = tokio::join!(b1.join(first, 32, &g1), b2.join(2, 32, &g2));
    let (b3, g3) = (broker.clone(), graph.clone());
    let joining = tokio::spawn(async move {
        tokio::time::sleep_until(at(20)).await;
        b3.join(3, 32, &g3).await
    });
    let b1 = broker.clone();
    let killing = tokio::spawn(async move {
        tokio::time::sleep_until(start + kill_at).await;
        b1.kill(&w1);
    });
    for sec in 2..150 {
        tokio::time::sleep_until(at(sec) + Duration::from_millis(500)).await;
        trace(&broker, sec);
    }
    let (_w3, ()) = (joining.await.unwrap(), killing.await.unwrap());
    let run = graph.summary(20, 148);
    for member in lock(&broker.members).iter() {
        broker.kill(member);
    }
    run
}

#[tokio::test(start_paused = true)]
async fn a_fleet_that_grows_and_shrinks_holds_an_unknown_budget() {
    let run = come_and_go(1, Duration::from_secs(45)).await;
    eprintln!("{run}");
    // Measured: 96.0 %, no 429 after the warm-up; the kill costs the dead worker's share
    // until PEER_TTL (the dip at 45-47 s). The benchmark's goal is 95 %.
    assert_eq!(run.violations, 0, "{run}");
    assert!(run.efficiency >= 0.95, "{run}");
    assert!(run.throttled_after <= 2, "{run}");
}

#[tokio::test(start_paused = true)]
async fn a_fleet_whose_leader_dies_early_holds_an_unknown_budget() {
    // The leader killed as the third worker joins (20.3 s), with no rate proven yet; and a
    // follower killed after the join's 429 (26.3 s, 28.3 s), which leaves the leader to
    // measure the fleet from its own share. Measured before the fix (the law took its
    // share's noise for Graph's window and held the rate served across the warm-up's
    // pauses, and counted a pause that a later 429 of its episode extended short): 55.0 %,
    // 85.1 % and 77.0 %, the new leader holding 17-24/s of 30 for minutes.
    // After: 95.8 %, 96.5 % and 96.5 %, no 429 after the warm-up.
    let ms = Duration::from_millis;
    for (first, kill_at) in [(1, ms(20_300)), (5, ms(26_300)), (5, ms(28_300))] {
        let run = come_and_go(first, kill_at).await;
        eprintln!("worker {first} killed at {kill_at:?}: {run}");
        assert_eq!(run.violations, 0, "{run}");
        assert!(run.efficiency >= 0.95, "{kill_at:?}: {run}");
        assert!(run.throttled_after <= 1, "{kill_at:?}: {run}");
    }
}
