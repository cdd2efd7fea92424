#!/usr/bin/env bash
# Coverage-guided fuzzing of the cargo-fuzz targets in fuzz/ (entry points: fuzz/src/lib.rs),
# each for a bounded time:
#   scripts/fuzz.sh [seconds-per-target] [targets...]      (default: 30 s, every target)
# e.g. `scripts/fuzz.sh 20`, `scripts/fuzz.sh 300 sdp`.
#
# - Builds with the nightly toolchain (sanitizer coverage, AddressSanitizer, debug assertions
#   and overflow checks); installs cargo-fuzz with `cargo install --locked` when missing.
#   Without a nightly toolchain it falls back to the default one with RUSTC_BOOTSTRAP=1.
# - Starts from the committed seeds in fuzz/corpus/<target>/ and never writes there: the
#   inputs a run discovers go to a temporary corpus that is deleted at the end (set
#   FUZZ_KEEP=<dir> to keep it as <dir>/<target>/, e.g. to pick new seeds by hand).
# - A crash, a timeout (one input over FUZZ_TIMEOUT s, default 10) or an out-of-memory
#   (over 2 GiB) leaves its input in fuzz/artifacts/<target>/ and prints the end of the log;
#   the remaining targets still run, and the script exits 1.
#   Reproduce: `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`; minimise:
#   `cargo +nightly fuzz tmin <target> <file>`. Once fixed, add the minimised input as
#   fuzz/corpus/<target>/crash-<name>: tests/fuzz_corpus.rs replays it under `cargo test`.
# - Prints a summary: runs, executions per second, coverage and corpus size per target.
# The first build compiles the dependencies with sanitizers into fuzz/target (minutes); later
# runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
shift || true
case "$secs" in
  '' | *[!0-9]*)
    echo "usage: $0 [seconds-per-target] [targets...]" >&2
    exit 2
    ;;
esac
timeout="${FUZZ_TIMEOUT:-10}"

all=()
for f in fuzz/fuzz_targets/*.rs; do
  all+=("$(basename "$f" .rs)")
done
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "fuzz.sh: no target '$t' (targets: ${all[*]})" >&2
    exit 2
  fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

toolchain=(+nightly)
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain; using the default one with RUSTC_BOOTSTRAP=1" >&2
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== build (${toolchain[*]:-default toolchain})"
start=$(date +%s)
# `run` would build each target on its own; one build of every target is quicker and keeps
# the build's time out of the fuzzing time.
cargo "${toolchain[@]}" fuzz build
echo "build: $(($(date +%s) - start)) s"

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "fuzz/artifacts/$t"
  log="$work/$t.log"
  before="$(find "fuzz/artifacts/$t" -type f -printf "%f\n" | sort)"
  echo "== $t: ${secs} s"
  status=0
  began=$(date +%s)
  # The first corpus directory is where libFuzzer writes what it finds: the temporary one.
  # The seeds, second, are only read.
  cargo "${toolchain[@]}" fuzz run "$t" "$work/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout="$timeout" \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  took=$(($(date +%s) - began))
  after="$(find "fuzz/artifacts/$t" -type f -printf "%f\n" | sort)"
  new="$(comm -13 <(echo "$before") <(echo "$after") | sed "s|^|fuzz/artifacts/$t/|")"
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)"
  final_stat() { awk -v k="stat::$1:" '$1 == k {print $2}' "$log"; }
  runs="$(final_stat number_of_executed_units)"
  rate="$(final_stat average_exec_per_sec)"
  cov="$(echo "$done_line" | grep -oE 'cov: [0-9]+' | awk '{print $2}' || true)"
  corp="$(echo "$done_line" | grep -oE 'corp: [0-9]+' | awk '{print $2}' || true)"
  if [ "$status" -ne 0 ] || [ -n "$new" ]; then
    failed+=("$t")
    summary+=("$(printf '%-8s %-8s %6s %12s %10s %8s %8s' "$t" FAILED "$took" "${runs:--}" "${rate:--}" "${cov:--}" "${corp:--}")")
    echo "fuzz.sh: $t failed (exit $status); the end of its log:" >&2
    tail -n 80 "$log" >&2
    if [ -n "$new" ]; then
      echo "fuzz.sh: $t: new artifacts:" >&2
      echo "$new" >&2
    fi
  else
    summary+=("$(printf '%-8s %-8s %6s %12s %10s %8s %8s' "$t" ok "$took" "${runs:--}" "${rate:--}" "${cov:--}" "${corp:--}")")
  fi
  if [ -n "${FUZZ_KEEP:-}" ]; then
    mkdir -p "$FUZZ_KEEP/$t"
    cp -n "$work/corpus/$t"/* "$FUZZ_KEEP/$t"/ 2>/dev/null || true
  fi
done

echo
printf '%-8s %-8s %6s %12s %10s %8s %8s\n' target result wall-s runs exec/s cov corpus
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: no crash in ${#targets[@]} target(s), ${secs} s each"
