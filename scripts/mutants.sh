#!/usr/bin/env bash
# Mutation testing of the pure decision modules with their unit tests only (issue 8):
# every mutant cargo-mutants makes of these files must be caught by `cargo test --lib`.
#
#   cargo install --locked cargo-mutants
#   scripts/mutants.sh                       # the modules below
#   scripts/mutants.sh src/graph/attempt.rs  # or the files named
#
# Survivors are listed in $MUTANTS_OUT/mutants.out/missed.txt (default /tmp/mfa-mutants).
# Runs in place: run it in a clean checkout or worktree, not where you are editing (a
# mutant under test is written into the source tree).
set -euo pipefail
cd "$(dirname "$0")/.."
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(src/worker/disposition.rs src/reset/plan.rs src/graph/attempt.rs src/graph/error.rs)
fi
args=()
for f in "${files[@]}"; do args+=(-f "$f"); done
out=${MUTANTS_OUT:-/tmp/mfa-mutants}
mkdir -p "$out"
cargo mutants --in-place --profile mutants --cargo-arg=--lib --timeout 120 -o "$out" "${args[@]}"
