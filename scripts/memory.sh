#!/usr/bin/env bash
# A worker's memory (BENCHMARKS.md, "Memory"): its peak RSS with a large backlog of requests
# waiting, users in flight, and the broker away for minutes (outcomes held), and the
# idempotency ledger's RSS when full.
#
#   cargo build --release --bins --examples && scripts/memory.sh
#
# 1. `examples/ledger_memory`: a ledger filled past `worker.ledger_capacity` (and plans up to
#    their limit), peak RSS of that process.
# 2. The worker: MEM_BACKLOG requests enqueued (signed, throw-away keys), a worker at
#    concurrency MEM_CONCURRENCY talking to the broker through a TCP relay (socat) against a
#    Graph simulator answering in MEM_LATENCY_MS. After MEM_RUN_SECS of work the relay is
#    stopped: the broker is gone for the worker (not for the other users of the shared
#    broker) for MEM_OUTAGE_SECS, its users in flight finish and their outcomes are held.
#    Then the relay comes back, the held outcomes are recorded, and the worker is stopped.
#    RSS is sampled every second from /proc; the peak is /usr/bin/time -v's.
#
# Environment (defaults in brackets): MEM_BACKLOG [1000000], MEM_CONCURRENCY [32],
# MEM_LATENCY_MS [2000], MEM_RUN_SECS [30], MEM_OUTAGE_SECS [120], MEM_OUT [/tmp/mfa-memory],
# MEM_BATCHES [64: the backlog's batch and 63 of 4,096 requests, so that the worker's store of
# verified batches (security.known_batches, 64) is full, every one with a 4,096-hash cap],
# BENCH_BIN [target/release], MEM_RELAY_PORT [5699], MFA_RESET__BROKER__URL (the broker).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
OUT=${MEM_OUT:-/tmp/mfa-memory}
BACKLOG=${MEM_BACKLOG:-1000000}
CONCURRENCY=${MEM_CONCURRENCY:-32}
LATENCY_MS=${MEM_LATENCY_MS:-2000}
RUN_SECS=${MEM_RUN_SECS:-30}
OUTAGE_SECS=${MEM_OUTAGE_SECS:-120}
RELAY_PORT=${MEM_RELAY_PORT:-5699}
BATCHES=${MEM_BATCHES:-64}
BROKER=${MFA_RESET__BROKER__URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

for bin in mfa-reset graph-sim examples/ledger_memory; do
    [[ -x $BIN/$bin ]] || { echo "no $BIN/$bin: cargo build --release --bins --examples" >&2; exit 1; }
done
command -v socat >/dev/null || { echo "needs socat (the relay that plays the broker going away)" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

SIM_PID="" RELAY_PID="" WORKER_PID="" SAMPLER_PID="" PREFIX=""
stop_relay() {
    if [[ -n $RELAY_PID ]]; then
        # The relay's forked children carry the worker's connections: they go with it.
        pkill -P "$RELAY_PID" 2>/dev/null || true
        kill "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=""
    fi
}
start_relay() {
    socat "TCP-LISTEN:$RELAY_PORT,bind=127.0.0.1,fork,reuseaddr" TCP:127.0.0.1:5672 &
    RELAY_PID=$!
}
on_exit() {
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    [[ -n $WORKER_PID ]] && kill "$WORKER_PID" 2>/dev/null
    stop_relay
    [[ -n $SIM_PID ]] && kill "$SIM_PID" 2>/dev/null
    if [[ -n $PREFIX ]]; then
        rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." | while read -r q; do
            rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
        done
    fi
}
trap on_exit EXIT

log "ledger: filling a ledger of the default capacity"
"$BIN/examples/ledger_memory" | tee "$OUT/ledger.txt"

"$BIN/mfa-reset" keys --dir "$OUT/keys" >/dev/null
"$BIN/graph-sim" --listen 127.0.0.1:0 --users 1000 --seed 1 --latency-ms "$LATENCY_MS" >"$OUT/sim.out" 2>"$OUT/sim.err" &
SIM_PID=$!
for _ in $(seq 100); do grep -q '^listening on ' "$OUT/sim.out" 2>/dev/null && break; sleep 0.1; done
SIM_URL=$(sed -n 's/^listening on //p' "$OUT/sim.out")
[[ -n $SIM_URL ]] || { echo "graph-sim did not start" >&2; exit 1; }
PREFIX="mfa-memory-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export MFA_RESET__BROKER__PREFIX=$PREFIX
export MFA_RESET__GRAPH__BASE_URL=$SIM_URL/v1.0 MFA_RESET__GRAPH__BETA_URL=$SIM_URL/beta
export MFA_RESET__GRAPH__AUTHORITY=$SIM_URL
export MFA_RESET__GRAPH__TENANT_ID=00000000-0000-0000-0000-000000000001
export MFA_RESET__GRAPH__CLIENT_ID=00000000-0000-0000-0000-000000000002
export MFA_RESET__GRAPH__CLIENT_SECRET=sim-secret
export MFA_RESET__SECURITY__ALLOWED_SIGNERS=$OUT/keys/allowed_signers
export MFA_RESET__SECURITY__APPROVAL_ABOVE=$((BACKLOG + 1))
export MFA_RESET__SECURITY__MAX_RESETS_PER_HOUR=$((BACKLOG + 1))
export MFA_RESET__RESET__SKIP_ADMINS=false
export MFA_RESET__LOG__FORMAT=json

# The simulator's users first (so the users in flight are real resets), then the rest.
"$BIN/graph-sim" --users 1000 --seed 1 --print-users | cut -d, -f1 >"$OUT/users.csv"
awk -v n="$((BACKLOG - 1000))" 'BEGIN { for (i = 0; i < n; i++) printf "user%07d@contoso.com\n", i }' >>"$OUT/users.csv"
log "enqueueing $BACKLOG requests (prefix $PREFIX)"
"$BIN/mfa-reset" enqueue --csv "$OUT/users.csv" --key "$OUT/keys/requester" --yes >"$OUT/enqueue.out" 2>"$OUT/enqueue.err"
rm -f "$OUT/users.csv"
grep -E '^(batch|enqueued)' "$OUT/enqueue.out" >&2
# Then MEM_BATCHES - 1 batches of 4,096 users each: every one's manifest record carries a
# full Merkle cap (4,096 hashes, 128 KiB), and the worker, following the outcomes stream,
# keeps up to security.known_batches (64) of them: its store of verified batches is full.
if ((BATCHES > 1)); then
    log "enqueueing $((BATCHES - 1)) more batches of 4096 requests (a full cap each)"
    for b in $(seq 2 "$BATCHES"); do
        awk -v b="$b" 'BEGIN { print "userPrincipalName"; for (i = 0; i < 4096; i++) printf "batch%02d-user%04d@contoso.com\n", b, i }' >"$OUT/users.csv"
        "$BIN/mfa-reset" enqueue --csv "$OUT/users.csv" --key "$OUT/keys/requester" --yes >>"$OUT/enqueue.out" 2>>"$OUT/enqueue.err"
    done
    rm -f "$OUT/users.csv"
fi

start_relay
sleep 0.5
log "worker: concurrency $CONCURRENCY through the relay on $RELAY_PORT"
MFA_RESET__BROKER__URL="amqp://guest:guest@127.0.0.1:$RELAY_PORT/%2f" \
MFA_RESET__BROKER__CONNECT_TIMEOUT=$((OUTAGE_SECS * 3))s \
MFA_RESET__WORKER__CONCURRENCY=$CONCURRENCY \
MFA_RESET__WORKER__KEY=$OUT/keys/worker \
    /usr/bin/time -v -o "$OUT/worker.time" "$BIN/mfa-reset" work >"$OUT/worker.out" 2>"$OUT/worker.err" &
WORKER_PID=$!
sleep 1
# The worker is `time`'s child.
WPID=$(pgrep -P "$WORKER_PID" | head -1)
(while kill -0 "$WPID" 2>/dev/null; do printf '%s %s\n' "$(date +%s)" "$(rss_kb "$WPID")"; sleep 1; done) >"$OUT/rss.txt" &
SAMPLER_PID=$!
sleep "$RUN_SECS"
log "broker away for the worker: relay stopped for $OUTAGE_SECS s"
stop_relay
OUTAGE_START=$(date +%s)
sleep "$OUTAGE_SECS"
OUTAGE_END=$(date +%s)
log "relay back"
start_relay
sleep 20
kill -TERM "$WPID"
wait "$WORKER_PID" || true
WORKER_PID=""
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

held=$(grep -c 'recorded a record held through a broker outage' "$OUT/worker.err" || true)
outcomes=$(grep -c '"outcome recorded"' "$OUT/worker.err" || true)
peak=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$OUT/worker.time")
outage_max=$(awk -v a="$OUTAGE_START" -v b="$OUTAGE_END" '$1 >= a && $1 <= b && $2 > m { m = $2 } END { print m + 0 }' "$OUT/rss.txt")
cat <<EOF | tee "$OUT/result.txt"
backlog: $BACKLOG requests enqueued, and $((BATCHES - 1)) more batches of 4096; worker concurrency $CONCURRENCY, Graph latency $LATENCY_MS ms
worker: $outcomes outcomes recorded, $held records (plans and outcomes) held through the outage and recorded after it
worker peak RSS: $peak kB (whole run); max RSS during the $OUTAGE_SECS s outage: $outage_max kB
$(cat "$OUT/ledger.txt")
EOF
