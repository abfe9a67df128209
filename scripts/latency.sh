#!/usr/bin/env bash
# Helpdesk latency (BENCHMARKS.md, "Latency"): single ticket events arriving at a quiet
# system, one at a time; for each, the time from handing the event to `mfa-reset enqueue`
# to the outcome (its `finished_at`), minus Graph's own time (the simulator answers every
# call in exactly LAT_GRAPH_MS: Graph time = graph_calls × LAT_GRAPH_MS).
#
#   cargo build --release --bins && scripts/latency.sh
#
# One worker runs (default concurrency), waiting on the broker; each ticket is a separate
# `mfa-reset enqueue --tickets FILE` run (process start, settings, connect, sign, publish,
# confirm: what a helpdesk hook pays), LAT_INTERVAL seconds apart, so the worker is idle
# when each arrives (a reset takes about graph_calls × LAT_GRAPH_MS, well under the interval).
#
# Environment (defaults in brackets): LAT_TICKETS [300], LAT_INTERVAL [1], LAT_GRAPH_MS [50],
# LAT_OUT [/tmp/mfa-latency], BENCH_BIN [target/release], MFA_RESET__BROKER__URL.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
OUT=${LAT_OUT:-/tmp/mfa-latency}
TICKETS=${LAT_TICKETS:-300}
INTERVAL=${LAT_INTERVAL:-1}
GRAPH_MS=${LAT_GRAPH_MS:-50}

for bin in mfa-reset graph-sim; do
    [[ -x $BIN/$bin ]] || { echo "no $BIN/$bin: cargo build --release --bins" >&2; exit 1; }
done
rm -rf "$OUT"
mkdir -p "$OUT/tickets"
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

SIM_PID="" WORKER_PID="" PREFIX=""
on_exit() {
    [[ -n $WORKER_PID ]] && kill "$WORKER_PID" 2>/dev/null
    [[ -n $SIM_PID ]] && kill "$SIM_PID" 2>/dev/null
    if [[ -n $PREFIX ]]; then
        rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." | while read -r q; do
            rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
        done
    fi
}
trap on_exit EXIT

"$BIN/mfa-reset" keys --dir "$OUT/keys" >/dev/null
"$BIN/graph-sim" --listen 127.0.0.1:0 --users "$TICKETS" --seed 1 --latency-ms "$GRAPH_MS" >"$OUT/sim.out" 2>"$OUT/sim.err" &
SIM_PID=$!
for _ in $(seq 100); do grep -q '^listening on ' "$OUT/sim.out" 2>/dev/null && break; sleep 0.1; done
SIM_URL=$(sed -n 's/^listening on //p' "$OUT/sim.out")
[[ -n $SIM_URL ]] || { echo "graph-sim did not start" >&2; exit 1; }
PREFIX="mfa-latency-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export MFA_RESET__BROKER__PREFIX=$PREFIX
export MFA_RESET__GRAPH__BASE_URL=$SIM_URL/v1.0 MFA_RESET__GRAPH__BETA_URL=$SIM_URL/beta
export MFA_RESET__GRAPH__AUTHORITY=$SIM_URL
export MFA_RESET__GRAPH__TENANT_ID=00000000-0000-0000-0000-000000000001
export MFA_RESET__GRAPH__CLIENT_ID=00000000-0000-0000-0000-000000000002
export MFA_RESET__GRAPH__CLIENT_SECRET=sim-secret
export MFA_RESET__SECURITY__ALLOWED_SIGNERS=$OUT/keys/allowed_signers
export MFA_RESET__RESET__SKIP_ADMINS=false
export MFA_RESET__LOG__FORMAT=json

"$BIN/mfa-reset" setup >/dev/null
MFA_RESET__WORKER__KEY=$OUT/keys/worker "$BIN/mfa-reset" work >"$OUT/worker.out" 2>"$OUT/worker.err" &
WORKER_PID=$!
for _ in $(seq 300); do grep -q 'caught up with the outcomes stream' "$OUT/worker.err" 2>/dev/null && break; sleep 0.1; done

"$BIN/graph-sim" --users "$TICKETS" --seed 1 --print-users | cut -d, -f1 | grep -v '^userPrincipalName' >"$OUT/users.txt"
log "$TICKETS tickets, one every $INTERVAL s (prefix $PREFIX)"
: >"$OUT/sent.txt"
i=0
while read -r user; do
    i=$((i + 1))
    file=$OUT/tickets/$i.jsonl
    printf '{"ticket":"HD-%05d","user":"%s","reason":"lost phone","requested_by":"helpdesk"}\n' "$i" "$user" >"$file"
    next=$(echo "$(date +%s.%N) + $INTERVAL" | bc)
    sent=$(date +%s.%N)
    batch=$("$BIN/mfa-reset" enqueue --tickets "$file" --key "$OUT/keys/requester" --yes 2>>"$OUT/enqueue.err" | sed -n 's/^batch: //p')
    printf '%s %s\n' "$batch" "$sent" >>"$OUT/sent.txt"
    now=$(date +%s.%N)
    wait_s=$(echo "$next - $now" | bc)
    [[ $wait_s == -* ]] || sleep "$wait_s"
done <"$OUT/users.txt"
sleep 3
log "collecting outcomes"
: >"$OUT/outcomes.jsonl"
while read -r batch _; do
    "$BIN/mfa-reset" report --batch "$batch" --format jsonl >>"$OUT/outcomes.jsonl" 2>/dev/null || true
done <"$OUT/sent.txt"
python3 - "$OUT" "$GRAPH_MS" "$INTERVAL" <<'EOF' | tee "$OUT/result.txt"
import json, sys, datetime
out, graph_ms, interval = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sent = {}
for line in open(f"{out}/sent.txt"):
    batch, t = line.split()
    sent[batch] = float(t)
ours, total, calls, statuses = [], [], [], {}
for line in open(f"{out}/outcomes.jsonl"):
    o = json.loads(line)
    if o["batch"] not in sent:
        continue
    done = datetime.datetime.fromisoformat(o["finished_at"].replace("Z", "+00:00")).timestamp()
    t = (done - sent[o["batch"]]) * 1000
    g = o.get("graph_calls", 0) * graph_ms
    total.append(t); ours.append(t - g); calls.append(o.get("graph_calls", 0))
    statuses[o["status"]] = statuses.get(o["status"], 0) + 1
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"tickets: {len(sent)} sent one every {interval} s, {len(total)} outcomes {statuses}")
print(f"graph calls per ticket: median {pct(calls, 50)}, Graph time = calls x {graph_ms:.0f} ms")
print(f"ticket to outcome: p50 {pct(total, 50):.0f} ms, p99 {pct(total, 99):.0f} ms")
print(f"ours (minus Graph time): p50 {pct(ours, 50):.0f} ms, p99 {pct(ours, 99):.0f} ms, max {max(ours):.0f} ms")
EOF
