#!/usr/bin/env bash
# THE test command: everything CI checks, in order, from a bare Debian 12 machine with a
# Rust 1.95+ toolchain.
#
#   bash deploy/test.sh
#
#   deps      deploy/install-deps.sh all  (missing Debian packages, cargo-nextest)
#   services  deploy/services.sh          (PostgreSQL and Mosquitto on loopback)
#   fmt, clippy (-D warnings), build (the end-to-end tests spawn target/debug binaries),
#   doc (-D warnings), doctest, test (nextest, or cargo test without it), then one
#   "tests: N passed, N failed" line
#
# XUELIANG_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres) is the
# database the PostgreSQL tests use.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export XUELIANG_TEST_PG_URL="${XUELIANG_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if [[ ${CI:-} == true ]]; then
  export CARGO_TERM_COLOR=never
fi

# Microseconds since the epoch.
now_us() { echo "${EPOCHREALTIME/./}"; }
# Formats a microsecond duration as seconds with one decimal.
fmt_secs() { printf '%d.%01ds' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

total_start=$(now_us)

# step NAME COMMAND...: runs one step between a header line and its elapsed time.
step() {
  local name=$1 start rc=0
  shift
  echo "==> $name"
  start=$(now_us)
  "$@" || rc=$?
  if ((rc != 0)); then
    echo "==> $name FAILED (exit $rc) after $(fmt_secs $(($(now_us) - start)))" >&2
    echo "==> total $(fmt_secs $(($(now_us) - total_start)))" >&2
    exit "$rc"
  fi
  echo "==> $name ok in $(fmt_secs $(($(now_us) - start)))"
}

test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT

run_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$test_log"
  else
    echo "cargo-nextest not found; using cargo test"
    cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$test_log"
  fi
}

# Prints the suite's totals as one plain "N passed, N failed" line.
test_totals() {
  local passed failed
  if grep -q 'tests run:' "$test_log"; then
    # nextest's own summary line; a test's output printed after it has "passed" lines too.
    local summary
    summary=$(grep -E 'Summary \[.*tests run:' "$test_log" | tail -1)
    passed=$(grep -Eo '[0-9]+ passed' <<<"$summary" | grep -Eo '[0-9]+' || echo 0)
    failed=$(grep -Eo '[0-9]+ failed' <<<"$summary" | grep -Eo '[0-9]+' || echo 0)
  else
    passed=$(grep -Eo 'test result: .* [0-9]+ passed' "$test_log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
    failed=$(grep -Eo '[0-9]+ failed;' "$test_log" | awk '{s += $1} END {print s + 0}')
  fi
  echo "tests: ${passed:-0} passed, ${failed:-0} failed"
}

step deps bash deploy/install-deps.sh all
step services bash deploy/services.sh
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step build cargo build --workspace --bins --locked
step doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
step doctest cargo test --workspace --doc --locked
step test run_tests

echo "==> all steps passed in $(fmt_secs $(($(now_us) - total_start)))"
test_totals
