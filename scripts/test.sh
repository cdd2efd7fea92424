#!/usr/bin/env bash
# The whole Confab test suite, as CI runs it (.ci/run calls exactly this):
#   formatting and lints, Rust unit and integration tests (real WebRTC over loopback),
#   and the browser end-to-end tests in headless Chromium.
# It installs what it needs when missing (Debian's chromium, ffmpeg, redis-server and
# node, the node packages).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (at %d s)\n' "$*" "$SECONDS"; }

# A clean build (CI) gains nothing from incremental compilation and pays for it.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tools"
scripts/need.sh ffprobe ffmpeg # the recording tests check real files with ffprobe
scripts/need.sh redis-server redis-server # the cluster tests start their own Redis

step "rust tests"
# One build for the test binaries and the server binary the browser tests run: built
# together, they share every dependency (built apart, dev-dependency features differ and
# half the dependencies compile twice, ~4 min on 2 cores). The server binary then carries
# confab-sfu's test-only `fault-injection` feature, which nothing on the network reaches.
cargo build --workspace --tests --bins --quiet
cargo test --workspace

step "browser tests"
CONFAB_BIN="$PWD/target/debug/confab" bash tests/browser/run.sh

step "all tests passed"
