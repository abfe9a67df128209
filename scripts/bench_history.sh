#!/usr/bin/env bash
# The "History" benchmark of BENCHMARKS.md (issue 11.3): how long `status` and `report` take
# for a new 1,000-user batch when the outcomes stream holds 0, 100k or 1M older records.
#
#   scripts/bench_history.sh            (BENCH_OLD="0 100000 1000000" by default)
#
# Each size gets its own prefix; the older records are seeded first (in parallel), then,
# BENCH_GAP seconds later (more than status's 2-minute clock margin plus the id's minute),
# the batch. Build first: cargo build [--release] --bin mfa-reset --example seed_history
# (BENCH_BIN: the directory of both [target/debug]). Prefixes' queues are deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BENCH_BIN:-target/debug}
OLD=${BENCH_OLD:-"0 100000 1000000"}
GAP=${BENCH_GAP:-185}
USERS=${BENCH_USERS:-1000}
OUT=${BENCH_OUT:-/tmp/mfa-bench/history}
mkdir -p "$OUT"
TAG=$(date +%s)

cleanup() {
  for n in $OLD; do
    p="mfa-bench-history-$n-$TAG"
    rabbitmqctl -q list_queues name 2>/dev/null | grep "^$p\." | while read -r q; do
      rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
  done
}
trap cleanup EXIT

# Throw-away keys: the seeder seals the batch's outcomes with the worker key, and status and
# report believe them through the allowed_signers naming it.
rm -rf "$OUT/keys"
"$BIN/mfa-reset" keys --dir "$OUT/keys" >/dev/null
export SEED_WORKER_KEY=$OUT/keys/worker
export MFA_RESET__SECURITY__ALLOWED_SIGNERS=$OUT/keys/allowed_signers

declare -A PIDS
for n in $OLD; do
  p="mfa-bench-history-$n-$TAG"
  MFA_RESET__BROKER__PREFIX=$p "$BIN/mfa-reset" setup >/dev/null
  "$BIN/examples/seed_history" "$p" "$n" "$USERS" "$GAP" >"$OUT/$n.out" 2>"$OUT/$n.err" &
  PIDS[$n]=$!
done
for n in $OLD; do wait "${PIDS[$n]}"; done

ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
printf '%-12s %-10s %-10s %s\n' "older" "status_ms" "report_ms" "seeding"
for n in $OLD; do
  p="mfa-bench-history-$n-$TAG"
  batch=$(sed -n 's/^batch: //p' "$OUT/$n.out")
  export MFA_RESET__BROKER__PREFIX=$p
  # Best of three (the first also warms the broker's segment cache).
  st=$( (for _ in 1 2 3; do ms "$BIN/mfa-reset" status --batch "$batch"; done) | sort -n | head -1)
  rp=$( (for i in 1 2 3; do rm -f "$OUT/$n-$i.csv"; ms "$BIN/mfa-reset" report --batch "$batch" --out "$OUT/$n-$i.csv"; done) | sort -n | head -1)
  # The report must hold the batch's users: a reader that believed nothing would be fast too.
  rows=$(($(wc -l <"$OUT/$n-1.csv") - 1))
  [[ $rows -eq $USERS ]] || { echo "report of $batch has $rows rows, not $USERS" >&2; exit 1; }
  printf '%-12s %-10s %-10s %s\n' "$n" "$st" "$rp" "$(cat "$OUT/$n.err")"
done
