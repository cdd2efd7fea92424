#!/usr/bin/env bash
# A/B comparison of two builds of the server under the same load, interleaved so that a
# noisy machine affects both alike; prints medians and the ratio B/A.
#
#   benches/ab.sh DIR_A DIR_B [ROUNDS] -- <confab-load arguments>
#   benches/ab.sh /tmp/before target/release 5 -- --publishers 1 --subscribers 200 --media video
#
# DIR_A and DIR_B each hold a `confab` binary; the load generator is target/release's.
# Server on core 0 (one media worker), generator on core 1, as in scenarios.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; ROUNDS=${3:-5}
shift 3 || true
[ "${1:-}" = "--" ] && shift
PORT="${PORT:-8096}"
OUT=$(mktemp -d)
cargo build --release -p confab-load --quiet

run() { # dir label round -- load arguments
  local dir=$1 label=$2 round=$3
  shift 3
  CONFAB_MEDIA__WORKERS=1 CONFAB_ROOM__MAX_PARTICIPANTS=1000 CONFAB_SIGNAL__JOINS_PER_SECOND_PER_IP=0 CONFAB_HTTP__DRAIN_TIMEOUT_MS=1000 taskset -c 0 "$dir/confab" \
    --http-bind "127.0.0.1:$PORT" --media-port 0 > /dev/null 2>&1 &
  local srv=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.05; done
  taskset -c 1 target/release/confab-load --url "ws://127.0.0.1:$PORT/ws" --server-pid "$srv" \
    --quiet --json "$OUT/$label-$round.json" "$@" > /dev/null 2>&1 || true
  kill "$srv" 2> /dev/null || true; wait "$srv" 2> /dev/null || true
}

for r in $(seq "$ROUNDS"); do
  run "$A" A "$r" "$@"
  run "$B" B "$r" "$@"
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys, statistics as st
out, rounds = sys.argv[1], int(sys.argv[2])
def load(label):
    rs = []
    for r in range(1, rounds + 1):
        try:
            rs.append(json.load(open(f"{out}/{label}-{r}.json")))
        except Exception:
            pass
    return rs
def med(rs, f):
    v = [f(r) for r in rs if r.get("server")]
    return st.median(v) if v else float("nan")
metrics = [
    ("egress packets / server CPU-s", lambda r: r["server"]["egress_packets_per_cpu_s"]),
    ("server CPU %", lambda r: r["server"]["cpu_pct"]),
    ("server-added latency p99 (us)", lambda r: r["server"]["added_latency_us"]["p99"]),
    ("end-to-end latency p99 (us)", lambda r: r["received"]["latency_us"]["p99"]),
    ("loss %", lambda r: r["received"]["loss_pct"]),
    ("first frame p50 (ms)", lambda r: r["received"]["ttff_ms"]["p50"]),
]
A, B = load("A"), load("B")
print(f"{len(A)} + {len(B)} runs; medians")
print(f"| metric | A | B | B/A |\n|---|---|---|---|")
for name, f in metrics:
    a, b = med(A, f), med(B, f)
    ratio = b / a if a else float("nan")
    print(f"| {name} | {a:.0f} | {b:.0f} | {ratio:.2f} |" if a > 10 else f"| {name} | {a:.3f} | {b:.3f} | {ratio:.2f} |")
PY
