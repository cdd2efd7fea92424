#!/usr/bin/env bash
# Network profiles (issue 17): a publisher's three simulcast layers to subscribers behind
# the impairment relay (for `keyframes`: one layer of large keyframes to 50), for each
# profile with the loss-only estimate (receiver reports) and with the delay-based one
# (transport-wide feedback). See confab-network's doc.
#
#   benches/network.sh                      # every profile, both estimates
#   benches/network.sh halving lte          # some profiles
#   DURATION=60 benches/network.sh          # longer runs (default 40 s)
#   ESTIMATES=delay benches/network.sh      # one estimate only (default: loss delay)
#
# Results: target/bench/network/<profile>-<estimate>.{json,svg,txt} and summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-40}"
PORT="${PORT:-8098}"
MEDIA_PORT="${MEDIA_PORT:-50700}"
OUT="${OUT:-target/bench/network}"
BIN_DIR="${BIN_DIR:-target/release}"
mkdir -p "$OUT"
if [ "$BIN_DIR" = target/release ]; then
  cargo build --release -p confab -p confab-load --quiet
fi
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(steady halving loss2 loss5 bursty jitter lte keyframes)

for profile in "${profiles[@]}"; do
  for estimate in ${ESTIMATES:-loss delay}; do
    name="$profile-$estimate"
    CONFAB_MEDIA__WORKERS=1 CONFAB_MEDIA__ANNOUNCE_IP=127.0.0.2 CONFAB_HTTP__DRAIN_TIMEOUT_MS=1000 \
      "$BIN_DIR/confab" --http-bind "127.0.0.1:$PORT" --media-port "$MEDIA_PORT" \
      > "$OUT/$name.server.log" 2>&1 &
    srv=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.05; done
    flags=()
    [ "$estimate" = delay ] && flags=(--twcc)
    "$BIN_DIR/confab-network" --url "ws://127.0.0.1:$PORT/ws" --media-port "$MEDIA_PORT" \
      --profile "$profile" --duration "$DURATION" "${flags[@]}" \
      --json "$OUT/$name.json" --chart "$OUT/$name.svg" | tee "$OUT/$name.txt" || true
    kill "$srv" 2> /dev/null || true
    wait "$srv" 2> /dev/null || true
  done
done

python3 - "$OUT" "${profiles[@]}" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
out, profiles = sys.argv[1], sys.argv[2:]
def f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)
print("| profile | estimate | received kbit/s | available kbit/s | freezes/min | frozen ms/min | top layer % | adapt down s | adapt up s | most kB in 10 ms (median, worst subscriber) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for p in profiles:
    for e in ("loss", "delay"):
        path = os.path.join(out, f"{p}-{e}.json")
        if not os.path.exists(path):
            print(f"| {p} | {e} | (no result) | | | | | | | |"); continue
        r = json.load(open(path))
        print(f"| {p} | {'loss only' if e == 'loss' else 'delay + loss'} | {r['mean_received_kbps']:.0f} | {f(r['mean_available_kbps'], '{:.0f}')} | {r['freezes_per_min']:.1f} | {r['freeze_ms_per_min']:.0f} | {r['top_layer_pct']:.0f} | {f(r['adapt_down_s'])} | {f(r['adapt_up_s'])} | {r['peak_10ms_bytes_median'] / 1000:.1f}, {r['peak_10ms_bytes_max'] / 1000:.1f} |")
PY
