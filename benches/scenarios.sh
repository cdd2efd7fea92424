#!/usr/bin/env bash
# Load scenarios: what one machine holds. Modelled on LiveKit's published benchmark cases,
# sized for 2 cores: the server is pinned to core 0 (one media worker), the load generator
# to core 1. For each scenario, N grows until a run fails loss < 0.5 % and p99 < 20 ms; the
# largest passing N is reported, with server CPU and egress packets per CPU-second.
#
#   benches/scenarios.sh                 # all three scenarios
#   benches/scenarios.sh webinar         # one of: audio meeting webinar
#   DURATION=20 benches/scenarios.sh     # longer measured windows (default 10 s)
#
# Results: target/bench/<scenario>-<N>.json (confab-load reports, with timelines and
# charts beside them) and target/bench/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
SERVER_CORE="${SERVER_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"
PORT="${PORT:-8097}"
OUT="${OUT:-target/bench}"
mkdir -p "$OUT"

# BIN_DIR lets a run use saved binaries (for before/after comparisons).
BIN_DIR="${BIN_DIR:-target/release}"
if [ "$BIN_DIR" = target/release ]; then
  cargo build --release -p confab -p confab-load --quiet
fi

# scenario -> "confab-load arguments" and the N steps to try
declare -A ARGS STEPS
ARGS[audio]="--publishers 10 --media audio --subscribers"
STEPS[audio]="10 25 50 100 150 200 300 400"
ARGS[meeting]="--subscribers 0 --media av --video-bitrate 500 --publishers"
STEPS[meeting]="2 4 6 8 10 12 14 16 20"
ARGS[webinar]="--publishers 1 --media video --video-bitrate 800 --subscribers"
STEPS[webinar]="25 50 100 150 200 300 400"

run_one() { # scenario N -> prints "pass|fail" and leaves the JSON report
  local scenario=$1 n=$2 json="$OUT/$1-$2.json"
  CONFAB_MEDIA__WORKERS=1 CONFAB_ROOM__MAX_PARTICIPANTS=1000 CONFAB_SIGNAL__JOINS_PER_SECOND_PER_IP=0 CONFAB_HTTP__DRAIN_TIMEOUT_MS=1000 taskset -c "$SERVER_CORE" "$BIN_DIR/confab" \
    --http-bind "127.0.0.1:$PORT" --media-port 0 > "$OUT/$scenario-$n.server.log" 2>&1 &
  local srv=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.05; done
  # shellcheck disable=SC2086
  taskset -c "$LOAD_CORE" "$BIN_DIR/confab-load" --url "ws://127.0.0.1:$PORT/ws" \
    --server-pid "$srv" --duration "$DURATION" --ramp 25 --quiet \
    --json "$json" --chart "$OUT/$scenario-$n.svg" ${ARGS[$scenario]} "$n" \
    > "$OUT/$scenario-$n.txt" 2> "$OUT/$scenario-$n.load.log" || true
  kill "$srv" 2> /dev/null || true
  wait "$srv" 2> /dev/null || true
  python3 - "$json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print("fail"); sys.exit()
rx = r["received"]
ok = r["failed"] == 0 and rx["expected"] > 0 and rx["loss_pct"] < 0.5 and rx["latency_us"]["p99"] < 20000
print("pass" if ok else "fail")
PY
}

row() { # scenario N -> a markdown row from the JSON report
  python3 - "$OUT/$1-$2.json" "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rx = r["received"]; s = r.get("server") or {}
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['joined']}/{r['participants']} | {rx['loss_pct']:.3f} | "
      f"{rx['latency_us']['p50']/1000:.2f} | {rx['latency_us']['p99']/1000:.2f} | {rx['ttff_ms']['p50']} | "
      f"{s.get('cpu_pct', 0):.0f} | {s.get('egress_rtp_pps', 0):.0f} | {s.get('egress_packets_per_cpu_s', 0):.0f} | "
      f"{s.get('rss_mb_per_participant', 0):.2f} | {r['load_cpu_pct']:.0f} |")
PY
}

scenarios=("${@:-audio meeting webinar}")
# shellcheck disable=SC2206
scenarios=(${scenarios[*]})
{
  echo "| scenario | N | joined | loss % | p50 ms | p99 ms | first frame p50 ms | server CPU % | egress pps | egress pkts / CPU-s | server MB / participant | generator CPU % |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT/summary.md"
for scenario in "${scenarios[@]}"; do
  best=none
  for n in ${STEPS[$scenario]}; do
    verdict=$(run_one "$scenario" "$n")
    row "$scenario" "$n" | tee -a "$OUT/summary.md"
    if [ "$verdict" = pass ]; then best=$n; else break; fi
  done
  echo "$scenario: largest N with loss < 0.5 % and p99 < 20 ms: $best" | tee -a "$OUT/summary.md"
done
