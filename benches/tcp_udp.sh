#!/usr/bin/env bash
# Server CPU per forwarded packet over ICE-TCP against UDP (issue 16): the same load with
# the webrtc-rs client on UDP and with `--tcp` (no UDP socket, the worker's passive TCP
# candidate), interleaved ROUNDS times; prints medians and the ratio TCP/UDP.
#
#   benches/tcp_udp.sh [ROUNDS] [-- <confab-load arguments>]
#   default load: a 1 -> 60 webinar, 800 kbit/s video, 10 s windows
#
# Server on core 0 (one media worker), generator on core 1, as benches/ab.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
shift || true
[ "${1:-}" = "--" ] && shift
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--publishers 1 --subscribers 60 --media video --video-bitrate 800 --duration 10 --ramp 30)
PORT="${PORT:-8097}"
OUT=$(mktemp -d)
cargo build --release -p confab -p confab-load --quiet

run() { # label round -- extra arguments
  local label=$1 round=$2
  shift 2
  CONFAB_MEDIA__WORKERS=1 CONFAB_ROOM__MAX_PARTICIPANTS=1000 CONFAB_SIGNAL__JOINS_PER_SECOND_PER_IP=0 CONFAB_HTTP__DRAIN_TIMEOUT_MS=1000 taskset -c 0 target/release/confab \
    --http-bind "127.0.0.1:$PORT" --media-port 0 > /dev/null 2>&1 &
  local srv=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.05; done
  taskset -c 1 target/release/confab-load --url "ws://127.0.0.1:$PORT/ws" --server-pid "$srv" \
    --quiet --client async --json "$OUT/$label-$round.json" "$@" > /dev/null 2>&1 || true
  kill "$srv" 2> /dev/null || true; wait "$srv" 2> /dev/null || true
}

for r in $(seq "$ROUNDS"); do
  run udp "$r" "${ARGS[@]}"
  run tcp "$r" --tcp "${ARGS[@]}"
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys, statistics as st
out, rounds = sys.argv[1], int(sys.argv[2])
def col(label, f):
    v = []
    for r in range(1, rounds + 1):
        try:
            v.append(f(json.load(open(f"{out}/{label}-{r}.json"))))
        except Exception:
            pass
    return v
eg = {k: col(k, lambda j: j["server"]["egress_packets_per_cpu_s"]) for k in ("udp", "tcp")}
loss = {k: col(k, lambda j: j["received"]["loss_pct"]) for k in ("udp", "tcp")}
for k in ("udp", "tcp"):
    m = st.median(eg[k])
    print(f"{k}: egress packets / server CPU-s median {m:,.0f} ({1e6 / m:.2f} us per packet), "
          f"runs {sorted(round(x) for x in eg[k])}, loss max {max(loss[k]):.3f} %")
print(f"TCP / UDP: {st.median(eg['tcp']) / st.median(eg['udp']):.2f}")
PY
