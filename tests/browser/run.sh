#!/usr/bin/env bash
# Runs the browser end-to-end tests from a clean checkout: installs Chromium, node and the node
# packages (playwright-core, axe-core) when missing, builds the server unless CONFAB_BIN
# names one, then runs `node --test tests/browser/`. Exits non-zero on any failure.
#
#   tests/browser/run.sh                       # build target/debug/confab and test it
#   CONFAB_BIN=path/to/confab tests/browser/run.sh   # confab-load is taken from beside it
#                                                   # (or CONFAB_LOAD_BIN)
#
# Artifacts (screenshots, server logs): target/browser-artifacts/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
chromium="${CHROMIUM_BIN:-/usr/lib/chromium/chromium}"

"$root/scripts/need.sh" "$chromium" chromium
"$root/scripts/need.sh" node nodejs
"$root/scripts/need.sh" npm npm
"$root/scripts/need.sh" ffprobe ffmpeg # recording.test.mjs reads the recorded files

if [ ! -d "$here/node_modules/playwright-core" ] || [ ! -d "$here/node_modules/axe-core" ]; then
  echo "run.sh: installing playwright-core and axe-core" >&2
  if [ -f "$here/package-lock.json" ]; then
    npm ci --prefix "$here" --no-audit --no-fund
  else
    npm install --prefix "$here" --no-audit --no-fund
  fi
fi

if [ -z "${CONFAB_BIN:-}" ]; then
  # confab-load too: ui.test.mjs simulates participants 5..16 with it (found beside CONFAB_BIN).
  echo "run.sh: building the server and the load generator (cargo build -p confab -p confab-load)" >&2
  (cd "$root" && cargo build -p confab -p confab-load)
  export CONFAB_BIN="$root/target/debug/confab"
fi

cd "$root"
exec node --test tests/browser/
