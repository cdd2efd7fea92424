#!/usr/bin/env bash
# One webinar across three Confab nodes in cascade mode (issue 15): the publisher and a
# third of the viewers join node 1, a third each join nodes 2 and 3 (no redirect), and
# each node's relay links carry the stream to the others. Three confab-load processes
# (one per node) measure what their viewers receive; the nodes' relay links are read from
# GET /api/stats at the end.
#
#   scripts/cascade.sh                          # 1 publisher -> 3 x 40 viewers, 15 s
#   VIEWERS=100 BITRATE=800 scripts/cascade.sh
#
# SPREAD=0 puts every viewer on node 1 (the same webinar without a relay, to compare).
# Settings (environment): VIEWERS (per node), BITRATE (kbit/s), DURATION (s), ENCRYPT
# (true: relay datagrams sealed, false: authenticated only), REDIS_PORT
# (6391), HTTP_PORT (8281: nodes on 8281..8283), MEDIA_PORT (52000: node i uses 52000 +
# 10 i). Logs and reports stay in the directory printed at the end. Installs redis-server
# and jq when missing; builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

VIEWERS=${VIEWERS:-40}
SPREAD=${SPREAD:-1}
BITRATE=${BITRATE:-800}
DURATION=${DURATION:-15}
REDIS_PORT=${REDIS_PORT:-6391}
HTTP_PORT=${HTTP_PORT:-8281}
MEDIA_PORT=${MEDIA_PORT:-52000}

# shellcheck source=scripts/nodes.sh
source scripts/nodes.sh cascade
nodes=()

for i in 1 2 3; do
  CONFAB_CLUSTER__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  CONFAB_CLUSTER__NODE_ID="node-$i" \
  CONFAB_CLUSTER__SECRET="cascade-script-secret-0123456789" \
  CONFAB_HTTP__BIND="127.0.0.1:$((HTTP_PORT + i - 1))" \
  CONFAB_MEDIA__PORT="$((MEDIA_PORT + 10 * i))" \
  CONFAB_MEDIA__WORKERS=1 \
  CONFAB_CLUSTER__RELAY_ENCRYPT="${ENCRYPT:-true}" \
    target/release/confab >"$out/node-$i.log" 2>&1 &
  pids+=($!)
  nodes+=($!)
done
for i in 1 2 3; do wait_port "$((HTTP_PORT + i - 1))"; done

echo "== 1 publisher (${BITRATE} kbit/s) on node-1; $VIEWERS viewers on each of the 3 nodes"
loads=()
for i in 1 2 3; do
  publishers=0
  if [ "$i" = 1 ]; then publishers=1; fi
  node=$i
  if [ "$SPREAD" = 0 ]; then node=1; fi
  target/release/confab-load --url "ws://127.0.0.1:$((HTTP_PORT + node - 1))/ws" \
    --rooms 1 --room-prefix cascade --publishers "$publishers" --subscribers "$VIEWERS" \
    --video-bitrate "$BITRATE" --duration "$DURATION" --quiet --json "$out/load-$i.json" \
    --server-pid "${nodes[$((node - 1))]}" \
    >"$out/load-$i.txt" 2>&1 &
  loads+=($!)
  # The publisher first: the others' ramps start once it is in.
  if [ "$i" = 1 ]; then sleep 1; fi
done
# The relay links are read near the end of the measured window (a script's pause).
sleep "$(( VIEWERS / 20 + 2 + DURATION - 2 ))"
for i in 1 2 3; do
  curl -sf "http://127.0.0.1:$((HTTP_PORT + i - 1))/api/stats" >"$out/stats-$i.json"
done
for i in 1 2 3; do
  wait "${loads[$((i - 1))]}" || { echo "confab-load $i failed:"; cat "$out/load-$i.txt"; exit 1; }
done

echo "== viewers per load process (one per node; SPREAD=$SPREAD)"
for i in 1 2 3; do
  jq -r --arg n "node-$i" '"\($n): joined \(.joined), failed \(.failed), packets \(.received.packets), loss \(.received.loss_pct)% (\(.received.lost) of \(.received.expected)), corrupt \(.received.corrupt), first frame p50 \(.received.ttff_ms.p50) ms, node CPU \(.server.cpu_s) s (\(.server.cpu_pct)%)"' \
    "$out/load-$i.json"
done
echo "== relay links (GET /api/stats relay_links)"
for i in 1 2 3; do
  jq -r --arg n "node-$i" '.relay_links[]? | "\($n) -> \(.node): alive \(.alive), sent \(.packets_sent), received \(.packets_received), missing \(.missing), recovered \(.recovered), retransmitted \(.retransmitted), rtt \(.rtt_us) us"' \
    "$out/stats-$i.json"
  jq -r --arg n "node-$i" '"\($n): relay hop p50/p99 \(.loop.relay_hop.p50_us // "?")/\(.loop.relay_hop.p99_us // "?") us"' "$out/stats-$i.json" 2>/dev/null || true
done
echo "logs, reports and stats: $out"
