#!/usr/bin/env bash
# The whole Confab test suite, as CI runs it (.ci/run calls exactly this):
#   formatting and lints, Rust unit and integration tests (real WebRTC over loopback),
#   and the browser end-to-end tests in headless Chromium.
# It installs what it needs when missing (Debian's chromium, ffmpeg, redis-server, coturn
# and node, the node packages).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (at %d s)\n' "$*" "$SECONDS"; }

# A clean build (CI) gains nothing from incremental compilation and pays for it.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

step "format"
cargo fmt --all -- --check

step "tools"
scripts/need.sh ffprobe ffmpeg # the recording tests check real files with ffprobe
scripts/need.sh redis-server redis-server # the cluster tests start their own Redis
scripts/need.sh turnserver coturn # the TURN browser test starts its own coturn

step "build and lints"
# Clippy lints our own crates while they are built for the tests: clippy-driver wraps rustc
# for the workspace's crates only (what `cargo clippy` does, with `-D warnings` handed over
# the way it hands it over), so the dependencies compile once instead of twice (checked for
# clippy, then built for the tests): a clean-clone run went from 1,144 s to 944 s on 2
# cores (2026-12-02). The benches are
# linted in the same build, compiled in test mode. Locally, the same check is
# `cargo clippy --workspace --all-targets -- -D warnings`.
#
# One build for the test binaries and the server binary the browser tests run: built
# together, they share every dependency (built apart, dev-dependency features differ and
# half the dependencies compile twice, ~4 min on 2 cores). The server binary then carries
# confab-sfu's test-only `fault-injection` feature, which nothing on the network reaches.
if driver="$(command -v clippy-driver)"; then
  export RUSTC_WORKSPACE_WRAPPER="$driver"
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
else
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi
cargo build --workspace --tests --bins --quiet
cargo test --workspace --benches --no-run --quiet

step "rust tests"
cargo test --workspace

step "browser tests"
CONFAB_BIN="$PWD/target/debug/confab" bash tests/browser/run.sh

step "all tests passed"
