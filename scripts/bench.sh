#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, against graph-sim and the local RabbitMQ.
#
#   scripts/bench.sh worker|storm|baseline|producer|cost|all
#   scripts/bench.sh sweep     (achieved rate by worker.concurrency: the sizing rule, not in `all`)
#   scripts/bench.sh unknown   (a small budget the workers do not know, 1 s refill steps,
#                               Retry-After 1-5 s; not in `all`)
#   scripts/bench.sh comego    (the same budget, workers joining and dying mid-batch; not in `all`)
#
# Each sub-command prints a result block (pasted into BENCHMARKS.md) and keeps its logs,
# the simulator's /_sim/stats and a JSON summary under $BENCH_OUT/<name>/.
# Runs the release binaries as separate processes; build them first:
#   cargo build --release --bins --examples
#
# Environment (defaults in brackets):
#   BENCH_BIN        directory of mfa-reset, graph-sim, publish_ceiling [$CARGO_TARGET_DIR/release]
#   BENCH_OUT        logs and results [/tmp/mfa-bench]
#   BENCH_USERS      users of the worker, storm and cost runs [5000]
#   BENCH_BASELINE_USERS  users of the sequential baseline [300]
#   BENCH_TWO_PASS_USERS  users of the two-pass comparison in `cost` [1000]
#   BENCH_ROWS       CSV rows of the producer run [1000000]
#   BENCH_CONCURRENCY  worker.concurrency of the worker, storm and cost runs [32]
#   BENCH_SWEEP      concurrencies of `sweep` ["8 16 24 32 48"], BENCH_SWEEP_USERS users each [1000]
#   BENCH_UNKNOWN_USERS   users of the unknown and comego runs [600]
#   BENCH_UNKNOWN_BUDGET  the simulator's requests (and writes) per 1 s there [30]
#   BENCH_UNKNOWN_GRANULARITY_MS  its refill step [1000]
#   MFA_RESET__BROKER__URL  the broker [amqp://guest:guest@127.0.0.1:5672/%2f]
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
OUT=${BENCH_OUT:-/tmp/mfa-bench}
USERS=${BENCH_USERS:-5000}
BASELINE_USERS=${BENCH_BASELINE_USERS:-300}
TWO_PASS_USERS=${BENCH_TWO_PASS_USERS:-1000}
ROWS=${BENCH_ROWS:-1000000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
# The workload: Graph latency 100 ms ± 20 ms, 2–5 removable methods per user, tenant seed 1.
LATENCY_MS=100
JITTER_MS=20
TENANT=(--seed 1 --methods-min 2 --methods-max 5)
# The budget: 200 requests per 1 s bucket. Writes get a bucket of the same shape, which can
# never bind before the requests bucket does (every write is also a request).
BUDGET=200

for bin in mfa-reset graph-sim; do
    [[ -x $BIN/$bin ]] || { echo "no $BIN/$bin: cargo build --release --bins --examples" >&2; exit 1; }
done
CEILING_BIN=$BIN/examples/publish_ceiling
[[ -x $CEILING_BIN ]] || CEILING_BIN=$BIN/publish_ceiling

SIM_PID=""
PREFIXES=()

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

load() { cut -d' ' -f1-3 /proc/loadavg; }

# Delete every queue of the prefixes this run used (the stream and quorum queues hold data;
# the few exchanges left behind are empty and harmless).
cleanup_queues() {
    local prefix q
    for prefix in "${PREFIXES[@]}"; do
        rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." | while read -r q; do
            # rabbitmqctl reads standard input: keep it off the list being read.
            rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
        done
    done
    PREFIXES=()
}

stop_sim() {
    if [[ -n $SIM_PID ]]; then
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
        SIM_PID=""
    fi
}

on_exit() {
    stop_sim
    cleanup_queues
}
trap on_exit EXIT

# start_sim DIR ARGS...: graph-sim on a free port; sets SIM_URL and points the worker at it.
start_sim() {
    local dir=$1
    shift
    "$BIN/graph-sim" --listen 127.0.0.1:0 "$@" >"$dir/sim.out" 2>"$dir/sim.err" &
    SIM_PID=$!
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$dir/sim.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    SIM_URL=$(sed -n 's/^listening on //p' "$dir/sim.out")
    [[ -n $SIM_URL ]] || { echo "graph-sim did not start: $(cat "$dir/sim.err")" >&2; exit 1; }
    export MFA_RESET__GRAPH__BASE_URL=$SIM_URL/v1.0
    export MFA_RESET__GRAPH__BETA_URL=$SIM_URL/beta
    export MFA_RESET__GRAPH__AUTHORITY=$SIM_URL
    export MFA_RESET__GRAPH__TENANT_ID=00000000-0000-0000-0000-000000000001
    export MFA_RESET__GRAPH__CLIENT_ID=00000000-0000-0000-0000-000000000002
    export MFA_RESET__GRAPH__CLIENT_SECRET=sim-secret
}

# fresh_prefix NAME: a broker prefix no other run uses.
fresh_prefix() {
    local prefix
    prefix="mfa-bench-$1-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    PREFIXES+=("$prefix")
    export MFA_RESET__BROKER__PREFIX=$prefix
}

# Throw-away signing keys (`mfa-reset keys`): enqueue signs with the requester's, the worker
# verifies every request and seals its records with its own; no approval step (the
# threshold above any batch here). Verification is on in every Graph run.
signing_settings() {
    local keys=$OUT/keys
    [[ -f $keys/allowed_signers ]] || "$BIN/mfa-reset" keys --dir "$keys" >/dev/null
    export MFA_RESET__SECURITY__ALLOWED_SIGNERS=$keys/allowed_signers
    export MFA_RESET__SECURITY__APPROVAL_ABOVE=100000000
    export MFA_RESET__INTAKE__KEY=$keys/requester
    export MFA_RESET__WORKER__KEY=$keys/worker
}

# The worker's settings of every Graph run: the budget, signing keys, and no admin check (it
# would cost one more read per user; the workload has no admins).
worker_settings() {
    local concurrency=$1
    signing_settings
    export MFA_RESET__RATE__REQUESTS=$BUDGET
    export MFA_RESET__RATE__REQUESTS_PERIOD=1s
    export MFA_RESET__RATE__WRITES=$BUDGET
    export MFA_RESET__RATE__WRITES_PERIOD=1s
    export MFA_RESET__WORKER__CONCURRENCY=$concurrency
    export MFA_RESET__RESET__SKIP_ADMINS=false
    export MFA_RESET__LOG__FORMAT=json
}

# graph_run NAME USERS CONCURRENCY SIM_BUDGET [SIM ARGS...]: one tenant, one CSV of all its
# users, enqueue, one worker until idle; leaves stats.json, worker.time and worker.err.
graph_run() {
    local name=$1 users=$2 concurrency=$3 sim_budget=$4
    shift 4
    local dir=$OUT/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    local sim_args=(--users "$users" "${TENANT[@]}"
        --latency-ms "$LATENCY_MS" --latency-jitter-ms "$JITTER_MS"
        --requests-per-period "$sim_budget" --requests-period-secs 1
        --writes-per-period "$sim_budget" --writes-period-secs 1 "$@")
    "$BIN/graph-sim" "${sim_args[@]}" --print-users | cut -d, -f1 >"$dir/users.csv"
    start_sim "$dir" "${sim_args[@]}"
    fresh_prefix "$name"
    worker_settings "$concurrency"
    log "$name: enqueueing $users users (prefix $MFA_RESET__BROKER__PREFIX)"
    "$BIN/mfa-reset" enqueue --csv "$dir/users.csv" --yes >"$dir/enqueue.out" 2>"$dir/enqueue.err"
    log "$name: worker (concurrency $concurrency, budget $BUDGET/s; simulator $sim_budget/s)"
    local load_before
    load_before=$(load)
    /usr/bin/time -v -o "$dir/worker.time" \
        "$BIN/mfa-reset" work --exit-when-idle 3 >"$dir/worker.out" 2>"$dir/worker.err"
    curl -sf "$SIM_URL/_sim/stats" >"$dir/stats.json"
    stop_sim
    cleanup_queues
    printf '{"name":"%s","users":%s,"concurrency":%s,"budget":%s,"sim_budget":%s,"load_before":"%s","load_after":"%s","sim_args":"%s"}\n' \
        "$name" "$users" "$concurrency" "$BUDGET" "$sim_budget" "$load_before" "$(load)" "${sim_args[*]}" >"$dir/run.json"
}

report() { python3 scripts/bench_report.py "$OUT" "$@"; }

bench_worker() {
    graph_run worker "$USERS" "$CONCURRENCY" "$BUDGET"
    report worker
}

bench_storm() {
    graph_run storm "$USERS" "$CONCURRENCY" $((BUDGET / 2))
    report storm
}

bench_baseline() {
    graph_run baseline "$BASELINE_USERS" 1 "$BUDGET"
    report baseline
}

bench_cost() {
    [[ -f $OUT/worker/stats.json ]] || bench_worker
    graph_run two-pass "$TWO_PASS_USERS" "$CONCURRENCY" "$BUDGET" --deny-sign-in-preferences
    report cost
}

bench_sweep() {
    local c
    for c in ${BENCH_SWEEP:-8 16 24 32 48}; do
        graph_run "sweep-$c" "${BENCH_SWEEP_USERS:-1000}" "$c" "$BUDGET"
        report "sweep-$c"
    done
}

bench_producer() {
    local dir=$OUT/producer
    rm -rf "$dir"
    mkdir -p "$dir"
    local csv=$dir/users-$ROWS.csv
    log "producer: generating $ROWS rows into $csv"
    awk -v n="$ROWS" 'BEGIN { print "userPrincipalName"; for (i = 0; i < n; i++) printf "user%07d@contoso.com\n", i }' >"$csv"
    fresh_prefix producer
    # Every batch is signed: throw-away keys, and the allowed_signers naming them. The batch
    # goes to the requests queue (approval_above raised) so one request can be read back;
    # routing it to the awaiting stream instead costs the same.
    "$BIN/mfa-reset" keys --dir "$dir/keys" >/dev/null
    export MFA_RESET__SECURITY__ALLOWED_SIGNERS=$dir/keys/allowed_signers
    export MFA_RESET__SECURITY__APPROVAL_ABOVE=$((ROWS + 1))
    local load_before
    load_before=$(load)
    log "producer: mfa-reset enqueue (signed)"
    # Each stderr line gets a timestamp: the summary is printed when validation ends and
    # publishing starts, which splits the run into its two passes.
    date +%s.%N >"$dir/enqueue.start"
    /usr/bin/time -v -o "$dir/enqueue.time" \
        "$BIN/mfa-reset" enqueue --csv "$csv" --yes --key "$dir/keys/requester" >"$dir/enqueue.out" \
        2> >(while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$dir/enqueue.err")
    date +%s.%N >"$dir/enqueue.end"
    sleep 0.5
    # The size of one request unsigned (its body without the compact proof) and as enqueue
    # published it (body with the proof, and any signing headers), for the ceiling runs.
    local size total
    read -r size total < <("$CEILING_BIN" size-of "$MFA_RESET__BROKER__PREFIX.requests")
    cleanup_queues
    [[ -n $size ]] || { echo "could not read a request's size" >&2; exit 1; }
    log "producer: ceiling, $ROWS messages of $size bytes"
    /usr/bin/time -v -o "$dir/ceiling.time" "$CEILING_BIN" "$ROWS" "$size" 2000 >"$dir/ceiling.out" 2>"$dir/ceiling.err"
    if [[ -n ${BENCH_CEILING_TOTAL:-} ]]; then
        log "producer: ceiling, $ROWS messages of $total bytes (the signed request's size)"
        /usr/bin/time -v -o "$dir/ceiling-total.time" "$CEILING_BIN" "$ROWS" "$total" 2000 >"$dir/ceiling-total.out" 2>"$dir/ceiling-total.err"
    fi
    printf '{"rows":%s,"size":%s,"total":%s,"load_before":"%s","load_after":"%s"}\n' \
        "$ROWS" "$size" "${total:-0}" "$load_before" "$(load)" >"$dir/run.json"
    rm -f "$csv"
    report producer
}

# unknown_sim DIR: graph-sim with a budget far below the worker's defaults (3,500 requests per
# 10 s, 3,000 writes per 150 s), refilled in steps, Retry-After drawn from 1-5 s. The bucket
# holds one step's worth (a period as long as the step, at least 1 s), so the budget is
# $budget/s whatever the step: a 10 s step is 10 × $budget per 10 s, refilled at once.
unknown_sim() {
    local dir=$1 users=${BENCH_UNKNOWN_USERS:-600} budget=${BENCH_UNKNOWN_BUDGET:-30}
    local step_ms=${BENCH_UNKNOWN_GRANULARITY_MS:-1000}
    local period=$(((step_ms + 999) / 1000))
    local sim_args=(--users "$users" "${TENANT[@]}"
        --latency-ms "$LATENCY_MS" --latency-jitter-ms "$JITTER_MS"
        --requests-per-period $((budget * period)) --requests-period-secs "$period"
        --writes-per-period $((budget * period)) --writes-period-secs "$period"
        --refill-granularity-ms "$step_ms"
        --retry-after-min-secs 1 --retry-after-max-secs 5)
    "$BIN/graph-sim" "${sim_args[@]}" --print-users | cut -d, -f1 >"$dir/users.csv"
    start_sim "$dir" "${sim_args[@]}"
    printf '{"budget":%s,"users":%s,"sim_args":"%s"}\n' "$budget" "$users" "${sim_args[*]}" >"$dir/run.json"
}

# The workers' settings there: [rate] left at its defaults (they do not know the budget),
# rate.processes unset (counted through the broker); throw-away signing keys
# (`mfa-reset keys`), no approval step.
unknown_worker_settings() {
    signing_settings
    unset MFA_RESET__RATE__REQUESTS MFA_RESET__RATE__REQUESTS_PERIOD \
        MFA_RESET__RATE__WRITES MFA_RESET__RATE__WRITES_PERIOD MFA_RESET__RATE__PROCESSES
    export MFA_RESET__WORKER__CONCURRENCY=$CONCURRENCY
    export MFA_RESET__RESET__SKIP_ADMINS=false
    export MFA_RESET__LOG__FORMAT=json
}

bench_unknown() {
    local dir=$OUT/unknown
    rm -rf "$dir"
    mkdir -p "$dir"
    unknown_sim "$dir"
    fresh_prefix unknown
    unknown_worker_settings
    "$BIN/mfa-reset" enqueue --csv "$dir/users.csv" --yes >"$dir/enqueue.out" 2>"$dir/enqueue.err"
    log "unknown: one worker, concurrency $CONCURRENCY, default [rate]; simulator $(cat "$dir/run.json")"
    /usr/bin/time -v -o "$dir/worker.time" \
        "$BIN/mfa-reset" work --exit-when-idle 3 >"$dir/worker.out" 2>"$dir/worker.err"
    curl -sf "$SIM_URL/_sim/stats" >"$dir/stats.json"
    stop_sim
    cleanup_queues
    python3 scripts/bench_report.py "$OUT" unknown
}

# Two workers from the start, a third joins at 20 s, the first is killed (SIGKILL) at 45 s.
bench_comego() {
    local dir=$OUT/comego
    rm -rf "$dir"
    mkdir -p "$dir"
    unknown_sim "$dir"
    fresh_prefix comego
    unknown_worker_settings
    "$BIN/mfa-reset" enqueue --csv "$dir/users.csv" --yes >"$dir/enqueue.out" 2>"$dir/enqueue.err"
    log "comego: workers 1 and 2 start; 3 joins at 20 s; 1 is killed at 45 s"
    MFA_RESET__WORKER__NAME=w1 "$BIN/mfa-reset" work >"$dir/w1.out" 2>"$dir/w1.err" &
    local w1=$!
    MFA_RESET__WORKER__NAME=w2 "$BIN/mfa-reset" work --exit-when-idle 5 >"$dir/w2.out" 2>"$dir/w2.err" &
    local w2=$!
    sleep 20
    MFA_RESET__WORKER__NAME=w3 "$BIN/mfa-reset" work --exit-when-idle 5 >"$dir/w3.out" 2>"$dir/w3.err" &
    local w3=$!
    sleep 25
    kill -KILL "$w1" 2>/dev/null || true
    wait "$w1" 2>/dev/null || true
    wait "$w2" "$w3" || true
    curl -sf "$SIM_URL/_sim/stats" >"$dir/stats.json"
    stop_sim
    cleanup_queues
    python3 scripts/bench_report.py "$OUT" comego
}

mkdir -p "$OUT"
case ${1:-} in
worker) bench_worker ;;
storm) bench_storm ;;
baseline) bench_baseline ;;
producer) bench_producer ;;
cost) bench_cost ;;
sweep) bench_sweep ;;
unknown) bench_unknown ;;
comego) bench_comego ;;
all)
    bench_worker
    bench_storm
    bench_baseline
    bench_cost
    bench_producer
    ;;
*)
    echo "usage: $0 worker|storm|baseline|producer|cost|all|sweep|unknown|comego" >&2
    exit 2
    ;;
esac
