#!/usr/bin/env bash
# Console upload (BENCHMARKS.md, "Console upload"): a 100,000-row CSV picked in the upload
# page of `mfa-reset serve` → the validation result on screen, timed in headless Chromium
# (the page's own progress is recorded on the way), UPLOAD_BENCH_RUNS times.
#
#   scripts/upload_bench.sh
#
# The console is the release binary (built here); the driver is the ignored test
# `browser::upload_bench_100000_rows_to_the_validation_result_on_screen` in tests/it/browser.rs
# (chromedriver and Chromium as for the browser test, RabbitMQ on 127.0.0.1:5672, graph-sim's
# OIDC provider in-process).
#
# Environment (defaults in brackets): UPLOAD_BENCH_ROWS [100000], UPLOAD_BENCH_RUNS [5],
# MFA_RESET_BIN [target/release/mfa-reset, built here].
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z ${MFA_RESET_BIN:-} ]]; then
    cargo build --release --bin mfa-reset
    MFA_RESET_BIN=$PWD/${CARGO_TARGET_DIR:-target}/release/mfa-reset
fi
export MFA_RESET_BIN UPLOAD_BENCH_ROWS=${UPLOAD_BENCH_ROWS:-100000} UPLOAD_BENCH_RUNS=${UPLOAD_BENCH_RUNS:-5}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
LOG=${UPLOAD_BENCH_LOG:-/tmp/mfa-upload-bench.log}
cargo test --test it browser::upload_bench -- --ignored --nocapture >"$LOG" 2>&1 \
    || { tail -40 "$LOG"; exit 1; }
grep '^upload-bench' "$LOG"
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
