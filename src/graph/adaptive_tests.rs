use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// Serve `n` requests evenly over `d` starting at `from` (a share of `share` per second),
/// rolling the windows as it goes.
fn serve(law: &mut Law, share: f64, from: Instant, d: Duration, n: u64) {
    for i in 0..n {
        law.roll(from + d.mul_f64(i as f64 / n as f64));
        law.served(share);
    }
}

#[tokio::test(start_paused = true)]
async fn without_memory_a_warning_cuts_once_per_window_and_quiet_windows_recover() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.warned(t0);
    a.warned(t0 + ms(100));
    assert!(close(a.factor, 0.9), "one step per window: {}", a.factor);
    a.warned(t0 + ms(600));
    assert!(close(a.factor, 0.81));
    // The window holding the signal does not recover; each quiet one adds a step.
    a.roll(t0 + ms(1000));
    assert!(close(a.factor, 0.81), "{}", a.factor);
    a.roll(t0 + ms(2000));
    assert!(close(a.factor, 0.85), "{}", a.factor);
    a.roll(t0 + Duration::from_secs(60));
    assert_eq!(a.factor, 1.0);
}

#[tokio::test(start_paused = true)]
async fn the_first_episode_halves_and_later_ones_go_between_the_served_bounds() {
    // Our share is 350/s; Graph really serves 30/s.
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.throttled(t0, t0 + Duration::from_secs(3), false, false, true);
    assert!(close(a.factor, 0.5));
    assert_eq!(a.throttled_at, Some(1.0));
    // 429s of requests already on the wire: the same episode.
    a.throttled(t0 + ms(40), t0 + Duration::from_secs(3), false, false, true);
    assert!(close(a.factor, 0.5));
    // After the 3 s pause, 2 s at 30/s, then a 429: 60 served in 5 s (12/s, the lower
    // bound) or in the 2 s not paused (30/s, the upper one).
    serve(
        &mut a,
        350.0,
        t0 + Duration::from_secs(3),
        Duration::from_secs(2),
        60,
    );
    let t1 = t0 + Duration::from_secs(5);
    a.roll(t1);
    let before = a.factor;
    a.throttled(t1, t1 + Duration::from_secs(3), false, false, true);
    let (lower, upper) = (12.0 / 350.0, 30.0 / 350.0);
    // Halfway, but at most halved at once.
    assert!(close(a.factor, before * MAX_CUT), "{}", a.factor);
    // The rate that was throttled is remembered: no 2 s span starts late enough after
    // the pause to measure what Graph served (PEAK_AFTER_PAUSE), so the rate sent.
    assert!(close(a.throttled_at.unwrap(), before));
    assert!(close(a.served_at.unwrap(), lower));
    // Again 2 s at 30/s after the pause: from the latest anchor, 60 in 5 s (12/s)
    // and in 2 s not paused (30/s).

    serve(
        &mut a,
        350.0,
        t1 + Duration::from_secs(3),
        Duration::from_secs(2),
        60,
    );
    let t2 = t1 + Duration::from_secs(5);
    a.roll(t2);
    let before = a.factor;
    a.throttled(t2, t2 + Duration::from_secs(3), false, false, true);
    let expected = ((lower + upper) / 2.0).clamp(before * MAX_CUT, before * MIN_CUT);
    assert!(close(a.factor, expected), "{} != {expected}", a.factor);
}

#[tokio::test(start_paused = true)]
async fn after_an_episode_f_climbs_towards_the_throttled_rate_then_only_probes() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.factor = 0.2;
    a.served_at = Some(0.3);
    a.throttled_at = Some(0.4);
    a.hold_until = Some(t0 + ms(1000));
    // Held until the pause is over and settled.
    a.roll(t0 + ms(900));
    assert!(close(a.factor, 0.2));
    // Fast up to the served rate: 5 % of 0.3 per window.
    a.roll(t0 + ms(1400));
    assert!(close(a.factor, 0.215), "{}", a.factor);
    a.roll(t0 + Duration::from_secs(6));
    let target = 0.4 * SET_BELOW_SERVED;
    assert!(a.factor > 0.3 && a.factor < target, "{}", a.factor);
    // Then 10 % of the gap per window.
    let f = a.factor;
    a.roll(t0 + ms(6_500));
    assert!(
        close(a.factor, f + (target - f) * CLIMB_STEP),
        "{}",
        a.factor
    );
    // Past the target, only the probe: 0.0625 % per window.
    a.factor = target;
    a.roll(t0 + ms(7_000));
    assert!(close(a.factor, target * (1.0 + PROBE_STEP)), "{}", a.factor);
}

#[tokio::test(start_paused = true)]
async fn with_memory_a_warning_stops_the_probe_above_the_throttled_rate_only() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.factor = 0.38;
    a.throttled_at = Some(0.4);
    // Below the throttled rate: a warning changes nothing (a small bucket warns anyway).
    a.warned(t0 + ms(100));
    a.roll(t0 + ms(500));
    assert!(a.factor > 0.38, "{}", a.factor);
    a.factor = 0.41;
    a.warned(t0 + ms(600));
    a.roll(t0 + ms(1000));
    assert!(close(a.factor, 0.41), "no probe in a warned window");
}

#[tokio::test(start_paused = true)]
async fn a_probe_far_enough_above_the_throttled_rate_forgets_it() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.factor = 0.5;
    a.throttled_at = Some(0.5);
    // 0.0625 % per window for 10 s, twice that for the next 10 s, and so on: 9.1 % above
    // after 30 s, 20 % (forgotten) before 40 s, where a steady probe took 146 s.
    a.roll(t0 + Duration::from_secs(10));
    assert!(
        close(a.factor, 0.5 * (1.0 + PROBE_STEP).powi(20)),
        "{}",
        a.factor
    );
    a.roll(t0 + Duration::from_secs(30));
    assert!((a.factor / 0.5 - 1.0914).abs() < 1e-3, "{}", a.factor);
    assert_eq!(a.throttled_at, Some(0.5));
    a.roll(t0 + Duration::from_secs(40));
    assert_eq!(a.throttled_at, None);
    // From then on, the quicker recovery without memory.
    let f = a.factor;
    a.roll(t0 + ms(40_500));
    assert!(close(a.factor, f + RECOVERY_STEP));
}

#[tokio::test(start_paused = true)]
async fn a_warning_or_a_throttling_starts_the_probe_again_at_its_first_step() {
    let t0 = Instant::now();
    let secs = Duration::from_secs;
    let mut a = Law::new(t0);
    a.factor = 0.5;
    a.throttled_at = Some(0.5);
    a.roll(t0 + secs(25));
    // Twice doubled by now: 4 × the first step per window.
    let f = a.factor;
    a.roll(t0 + ms(25_500));
    assert!(
        close(a.factor, f * (1.0 + 4.0 * PROBE_STEP)),
        "{}",
        a.factor
    );
    // A warning above the throttled rate: that window holds, the next probes from scratch.
    a.warned(t0 + ms(25_600));
    a.roll(t0 + secs(26));
    let f = a.factor;
    a.roll(t0 + ms(26_500));
    assert!(close(a.factor, f * (1.0 + PROBE_STEP)), "{}", a.factor);
    // So after a rest: a follower never probes, and leads from the first step.
    a.roll(t0 + secs(45));
    a.follower = true;
    a.roll(t0 + secs(46));
    a.follower = false;
    let f = a.factor;
    a.roll(t0 + ms(46_500));
    assert!(close(a.factor, f * (1.0 + PROBE_STEP)), "{}", a.factor);
}

#[tokio::test(start_paused = true)]
async fn an_episode_never_cuts_by_more_than_max_cut_nor_below_the_floor() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.throttled(t0, t0, false, false, true);
    // Nothing served in 2 s (e.g. a 10 s refill step not yet come): estimate 0.
    let t1 = t0 + Duration::from_secs(2);
    a.roll(t1);
    let before = a.factor;
    a.throttled(t1, t1, false, false, true);
    assert!(close(a.factor, before * MAX_CUT), "{}", a.factor);
    // …nor by less than MIN_CUT, whatever the estimate says.
    let mut b = Law::new(t0);
    b.factor = 0.1;
    b.throttled(t0, t0, false, false, true);
    serve(&mut b, 100.0, t0, Duration::from_secs(2), 1000);
    b.roll(t1);
    let before = b.factor;
    b.throttled(t1, t1, false, false, true);
    assert!(close(b.factor, before * MIN_CUT), "{}", b.factor);
    for i in 3..40 {
        let at = t0 + Duration::from_secs(i);
        a.throttled(at, at, false, false, true);
    }
    assert_eq!(a.factor, FACTOR_MIN);
}

#[tokio::test(start_paused = true)]
async fn anchors_older_than_the_lookback_are_dropped() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.throttled(t0, t0, false, false, true);
    // 60 s at 20/s then 40 s at 40/s, then a 429: the first anchor is gone, the served
    // rate is measured over the last 30 s only (from a window's checkpoint).
    a.factor = 1.0;
    serve(&mut a, 100.0, t0, Duration::from_secs(60), 1200);
    serve(
        &mut a,
        100.0,
        t0 + Duration::from_secs(60),
        Duration::from_secs(40),
        1600,
    );
    let t1 = t0 + Duration::from_secs(100);
    // (f set by hand: not the rate that held for the last minute.)
    a.factor = 0.6;
    a.held_at = None;
    a.throttled(t1, t1, false, false, true);
    assert!((a.factor - 0.4).abs() < 0.01, "{}", a.factor);
}

/// What a peer tells of one limit, without a proven rate.
fn learned(factor: f64, throttled_at: Option<f64>) -> Learned {
    Learned {
        factor,
        throttled_at,
        held_at: None,
        peak: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_learned_nothing_adopts_a_peers_rate_but_only_downwards() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.adopt(Learned {
        held_at: Some(0.29),
        ..learned(0.3, Some(0.31))
    });
    assert!(close(a.factor, 0.3));
    assert_eq!(a.throttled_at, Some(0.31));
    assert_eq!(a.held_at, Some(0.29), "the proven rate comes with it");
    // Learned now: a peer's view no longer replaces it.
    a.adopt(learned(0.1, Some(0.1)));
    assert!(close(a.factor, 0.3));
    let mut b = Law::new(t0);
    b.factor = 0.2;
    b.adopt(learned(0.5, Some(0.5)));
    assert!(close(b.factor, 0.2), "never raised");
    b.adopt(learned(f64::NAN, Some(0.1)));
    assert!(close(b.factor, 0.2));
}

#[tokio::test(start_paused = true)]
async fn a_429_after_graph_capped_the_steps_holds_just_below_what_it_served() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.throttled(t0, t0, false, false, true);
    // Sending 32/s (held there), Graph's 1 s steps let 30/s through; then a 429.
    a.factor = 32.0 / 350.0;
    a.throttled_at = Some(a.factor / SET_BELOW_SERVED);
    serve(&mut a, 350.0, t0, Duration::from_secs(5), 150);
    let t1 = t0 + Duration::from_secs(5);
    a.throttled(t1, t1 + Duration::from_secs(3), false, false, true);
    let served = 30.0 / 350.0;
    assert!(
        (a.throttled_at.unwrap() - served).abs() < 0.02 * served,
        "{:?}",
        a.throttled_at
    );
    assert!(close(a.factor, a.throttled_at.unwrap() * SET_BELOW_SERVED));
    // Graph served all that was sent: how far below the real rate is, nobody knows; the
    // cut goes between the served bounds as before, the rate sent is remembered.
    let mut b = Law::new(t0);
    b.throttled(t0, t0, false, false, true);
    b.factor = 30.0 / 350.0;
    b.throttled_at = Some(b.factor / SET_BELOW_SERVED);
    serve(&mut b, 350.0, t0, Duration::from_secs(5), 150);
    let before = b.factor;
    b.throttled(t1, t1 + Duration::from_secs(3), false, false, true);
    assert!((b.throttled_at.unwrap() - 30.0 / 350.0).abs() < 1e-3);
    assert!(b.factor < before, "{} >= {before}", b.factor);
}

#[tokio::test(start_paused = true)]
async fn a_follower_takes_the_leaders_view_but_only_lower_while_held_and_never_probes() {
    let secs = Duration::from_secs;
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.follower = true;
    a.follow(t0, learned(0.3, Some(0.32)));
    assert!(close(a.factor, 0.3));
    assert_eq!(a.throttled_at, Some(0.32));
    // Held after an episode: the leader's heartbeat may predate it, so only lower.
    a.hold_until = Some(t0 + secs(2));
    a.follow(t0 + secs(1), learned(0.35, Some(0.4)));
    assert!(close(a.factor, 0.3), "{}", a.factor);
    a.follow(t0 + secs(1), learned(0.2, Some(0.25)));
    assert!(close(a.factor, 0.2));
    // Up again once the hold is over; the leader forgot (the budget grew): so does it.
    a.follow(t0 + secs(3), learned(0.5, None));
    assert!(close(a.factor, 0.5));
    assert_eq!(a.throttled_at, None);
    // At the target, a follower holds however long; a leader would probe.
    a.follow(t0 + secs(3), learned(SET_BELOW_SERVED, Some(1.0)));
    a.roll(t0 + secs(600));
    assert!(close(a.factor, SET_BELOW_SERVED), "{}", a.factor);
    // Nonsense is ignored.
    a.follow(t0 + secs(600), learned(f64::NAN, Some(0.5)));
    a.follow(t0 + secs(600), learned(0.5, Some(-1.0)));
    assert!(close(a.factor, SET_BELOW_SERVED));
}

#[tokio::test(start_paused = true)]
async fn a_follower_keeps_the_leaders_proven_rate_and_returns_to_it_once_it_leads() {
    let secs = Duration::from_secs;
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.follower = true;
    let proven = |factor| Learned {
        factor,
        throttled_at: Some(0.1),
        held_at: Some(0.096),
        peak: None,
    };
    a.follow(t0, proven(0.0975));
    assert_eq!(a.held_at, Some(0.096));
    // A new leader that proved nothing yet leaves it; one that forgot (the budget grew)
    // takes it away.
    a.follow(t0 + secs(1), learned(0.0975, Some(0.1)));
    assert_eq!(a.held_at, Some(0.096));
    a.follow(t0 + secs(2), proven(0.0975));
    // The leader dies; this worker leads and meets a 429 at once, with nothing of its own
    // measured: back at the fleet's proven rate after the pause, not half of it.
    a.follower = false;
    let t1 = t0 + secs(3);
    a.throttled(t1, t1 + secs(2), false, true, true);
    a.roll(t1 + secs(5));
    assert!(close(a.factor, 0.096), "{}", a.factor);
    // Nonsense is ignored.
    a.follow(
        t1 + secs(6),
        Learned {
            held_at: Some(f64::NAN),
            ..proven(0.5)
        },
    );
    assert_eq!(a.held_at, Some(0.096));
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_ends_in_a_429_rests_before_the_next_and_the_rest_doubles() {
    let secs = Duration::from_secs;
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    // A first episode: f halves, the throttled rate (1.0) is remembered.
    a.throttled(t0, t0 + secs(3), false, false, true);
    // Recovered to just below the throttled rate and held there: the next 429 ends a probe
    // (one far enough below 1.0 that 17 s of probing do not forget the rate).
    a.throttled_at = Some(0.8);
    a.factor = 0.8 * SET_BELOW_SERVED;
    a.served_at = Some(0.5);
    serve(&mut a, 350.0, t0 + secs(3), secs(17), 17 * 300);
    let t1 = t0 + secs(20);
    a.throttled(t1, t1 + secs(3), false, false, true);
    let end1 = t1 + secs(3);
    assert_eq!(a.probe_after, Some(end1 + PROBE_REST_FIRST));
    let target = a.throttled_at.expect("remembered") * SET_BELOW_SERVED;
    // Until the rest is over, f climbs back to just below the throttled rate, no further.
    a.roll(end1 + PROBE_REST_FIRST - ms(500));
    assert!(close(a.factor, target), "{} vs {target}", a.factor);
    // Then it probes again.
    a.roll(end1 + PROBE_REST_FIRST + secs(10));
    assert!(a.factor > target, "{} vs {target}", a.factor);
    // That probe fails too: the rest doubles, and keeps doubling up to its cap.
    let t2 = end1 + PROBE_REST_FIRST + secs(10);
    a.throttled(t2, t2 + secs(2), false, false, true);
    assert_eq!(a.probe_after, Some(t2 + secs(2) + PROBE_REST_FIRST * 2));
    let mut t = t2 + secs(2);
    for _ in 0..6 {
        a.roll(a.probe_after.unwrap() + secs(10));
        t = a.probe_after.unwrap() + secs(10);
        a.throttled(t, t + secs(1), false, false, true);
    }
    assert_eq!(a.probe_after, Some(t + secs(1) + PROBE_REST_MAX));
    // An episode that is not a probe (the budget fell while holding below it) leaves the
    // rest as it is.
    let rest = a.probe_rest;
    a.throttled(t + secs(5), t + secs(6), false, false, true);
    assert_eq!(a.probe_rest, rest);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_joins_mid_pause_waits_it_out_at_the_fleets_rate() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.adopt(learned(0.0857, Some(0.088)));
    // The fleet's pause, heard before this worker sent anything: no cut, a hold.
    a.throttled(t0, t0 + Duration::from_secs(3), true, false, false);
    assert!(close(a.factor, 0.0857), "{}", a.factor);
    assert_eq!(a.throttled_at, Some(0.088));
    a.roll(t0 + Duration::from_secs(2));
    assert!(
        close(a.factor, 0.0857),
        "held until the pause is over: {}",
        a.factor
    );
    assert_eq!(a.pauses.len(), 1, "no peak is measured across the pause");
    // Its own 429, or a peer's once it has sent, is an episode as before.
    a.sent(350.0 / 3.0);
    let t1 = t0 + Duration::from_secs(10);
    a.throttled(t1, t1 + Duration::from_secs(1), false, false, false);
    assert!(a.factor < 0.0857, "{}", a.factor);
}

#[tokio::test(start_paused = true)]
async fn only_a_worker_alone_learns_long_steps_from_a_429_right_after_a_pause() {
    let secs = Duration::from_secs;
    for shared in [false, true] {
        let t0 = Instant::now();
        let mut a = Law::new(t0);
        a.shared = shared;
        a.sending(t0);
        a.throttled(t0, t0 + secs(2), false, true, true);
        // Sending again after the 2 s pause, throttled after two requests: alone, Graph's
        // bucket did not refill in 2 s; in a fleet, the others emptied it first.
        let t1 = t0 + secs(2);
        a.roll(t1);
        a.sending(t1);
        a.sent(350.0);
        a.sent(350.0);
        a.throttled(t1 + ms(50), t1 + secs(3), false, true, true);
        assert_eq!(a.stepped, !shared, "shared: {shared}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_comes_to_lead_holds_below_the_throttled_rate_and_rests() {
    let secs = Duration::from_secs;
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.follower = true;
    // The leader was probing 1.5 % above the rate Graph throttled.
    a.follow(
        t0,
        Learned {
            factor: 0.0870,
            throttled_at: Some(0.0857),
            held_at: Some(0.0830),
            peak: None,
        },
    );
    a.take_lead(t0 + secs(1));
    assert!(!a.follower);
    assert!(close(a.factor, 0.0857 * SET_BELOW_SERVED), "{}", a.factor);
    // No probe for the rest: still at the target a minute later.
    a.roll(t0 + secs(61));
    assert!(close(a.factor, 0.0857 * SET_BELOW_SERVED), "{}", a.factor);
    // After it, the probe goes on above it.
    a.roll(t0 + PROBE_REST_FIRST + secs(30));
    assert!(a.factor > 0.0857 * SET_BELOW_SERVED, "{}", a.factor);
}

#[tokio::test(start_paused = true)]
async fn a_429_while_the_rate_climbs_is_not_taken_for_graphs_rate() {
    let t0 = Instant::now();
    let mut a = Law::new(t0);
    a.throttled(t0, t0 + ms(1000), false, true, true);
    // Climbing back after the pause: 20/s, 24/s, 28/s, then 37/s (of a 350/s share), Graph
    // serving all of it; the 429 comes as the rate passes its budget.
    a.throttled_at = Some(0.12);
    let t1 = t0 + ms(2000);
    for (k, rate) in [20.0, 24.0, 28.0, 37.0].iter().enumerate() {
        a.factor = rate / 350.0;
        let from = t1 + ms(1000) * k as u32;
        serve(&mut a, 350.0, from, ms(1000), *rate as u64);
    }
    let t2 = t1 + ms(4000);
    a.roll(t2);
    a.throttled(t2, t2 + ms(2000), false, true, true);
    // Graph served what was sent: nothing says its rate is the 32.5/s served over the best
    // 2 s (a fleet once took 28.4/s of 30 so and rested there for two minutes).
    assert_eq!(a.probe_after, None, "factor {}", a.factor);
}

#[tokio::test(start_paused = true)]
async fn in_a_fleet_graphs_rate_is_the_average_of_the_workers_peaks_not_one_share() {
    // Three workers share 350/s configured (116.7/s each), sending 35/s together; Graph's
    // 1 s steps serve 30/s, and after each pause the workers race for a step: this one won
    // only 6/s of it, the two others 12/s each.
    let secs = Duration::from_secs;
    let share = 350.0 / 3.0;
    let episode = |peer_peaks: Vec<f64>| {
        let t0 = Instant::now();
        let mut a = Law::new(t0);
        a.shared = true;
        a.peer_peaks = peer_peaks;
        a.throttled(t0, t0, false, false, true);
        a.factor = 0.1;
        a.throttled_at = Some(0.1 / SET_BELOW_SERVED);
        serve(&mut a, share, t0, secs(5), 30);
        let t1 = t0 + secs(5);
        a.throttled(t1, t1 + secs(3), false, true, true);
        a
    };
    let peer = 12.0 / share;
    let fleet = episode(vec![peer, peer]);
    // Nothing from the others: its own share (18/s) is no measure of Graph's rate. The rate
    // sent (the probe took it a little past 0.1) is remembered, and no rest follows: the
    // law climbs back towards it at once, to meet Graph again with the fleet's data.
    let blind = episode(Vec::new());
    let at = blind.throttled_at.unwrap();
    assert!((0.1..0.101).contains(&at), "{at}");
    assert_eq!(blind.probe_after, None);
    let served = 30.0 / 350.0;
    let at = fleet.throttled_at.unwrap();
    assert!((at - served).abs() < 0.03 * served, "{at} vs {served}");
    assert!(
        close(fleet.factor, at * SET_BELOW_SERVED),
        "{}",
        fleet.factor
    );
    // What a peer reports that is no rate is left out; none counts above the full share,
    // and peers that served less than this worker never lower its own.
    let junk = episode(vec![peer, peer, f64::NAN, -1.0, f64::INFINITY]);
    assert_eq!(junk.throttled_at, fleet.throttled_at);
    let mut liar = Law::new(Instant::now());
    liar.shared = true;
    liar.peer_peaks = vec![1e9];
    assert_eq!(liar.fleet_peak(0.0), Some(0.5));
    liar.peer_peaks = vec![0.0, 0.0];
    assert_eq!(liar.fleet_peak(0.3), Some(0.3));
    liar.peer_peaks = vec![f64::NAN];
    assert_eq!(liar.fleet_peak(0.3), None);
    // Alone (not shared), peers are not consulted.
    liar.shared = false;
    assert_eq!(liar.fleet_peak(0.2), Some(0.2));
}
