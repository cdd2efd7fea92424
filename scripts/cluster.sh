#!/usr/bin/env bash
# Three Confab nodes on one Redis, loaded through ONE of them by confab-load, and how the
# rooms spread over the nodes (from GET /api/cluster while the load runs):
#
#   scripts/cluster.sh                      # 12 rooms x (1 publisher + 3 subscribers), 10 s
#   ROOMS=30 SUBSCRIBERS=5 PLACEMENT=two_random_least scripts/cluster.sh
#
# Every participant connects to node 1 (as behind a load balancer sending everyone to one
# node); rooms placed elsewhere are redirected there, and media flows to the owner. Settings
# (environment): ROOMS, PUBLISHERS, SUBSCRIBERS, DURATION (s), PLACEMENT (least_loaded,
# two_random_least), REDIS_PORT (6390), HTTP_PORT (8181: nodes on 8181..8183), MEDIA_PORT
# (51000: node i uses 51000 + 10 i). The logs and the load report stay in the directory
# printed at the end. Installs redis-server and jq when missing; builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOMS=${ROOMS:-12}
PUBLISHERS=${PUBLISHERS:-1}
SUBSCRIBERS=${SUBSCRIBERS:-3}
DURATION=${DURATION:-10}
PLACEMENT=${PLACEMENT:-least_loaded}
REDIS_PORT=${REDIS_PORT:-6390}
HTTP_PORT=${HTTP_PORT:-8181}
MEDIA_PORT=${MEDIA_PORT:-51000}
KEY=cluster-script-key

# shellcheck source=scripts/nodes.sh
source scripts/nodes.sh cluster

for i in 1 2 3; do
  CONFAB_CLUSTER__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  CONFAB_CLUSTER__NODE_ID="node-$i" \
  CONFAB_CLUSTER__PLACEMENT="$PLACEMENT" \
  CONFAB_CLUSTER__MODE=redirect \
  CONFAB_HTTP__BIND="127.0.0.1:$((HTTP_PORT + i - 1))" \
  CONFAB_MEDIA__PORT="$((MEDIA_PORT + 10 * i))" \
  CONFAB_MEDIA__WORKERS=1 \
  CONFAB_ADMIN__API_KEY="$KEY" \
    target/release/confab >"$out/node-$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do wait_port "$((HTTP_PORT + i - 1))"; done

participants=$((ROOMS * (PUBLISHERS + SUBSCRIBERS)))
echo "== $participants participants in $ROOMS rooms, all through node-1 (placement: $PLACEMENT)"
target/release/confab-load --url "ws://127.0.0.1:$HTTP_PORT/ws" \
  --rooms "$ROOMS" --publishers "$PUBLISHERS" --subscribers "$SUBSCRIBERS" \
  --duration "$DURATION" --quiet --json "$out/load.json" >"$out/load.txt" 2>&1 &
load=$!

# The spread is read halfway through the measured window: after the ramp (20 joins/s), the
# 2 s warm-up and half the window. A script's pause, not a test's synchronisation.
sleep "$(( participants / 20 + 2 + DURATION / 2 + 1 ))"
curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$HTTP_PORT/api/cluster" \
  >"$out/cluster.json"
wait "$load" || { echo "confab-load failed:"; cat "$out/load.txt"; exit 1; }

echo "== per node (GET /api/cluster, mid-run)"
jq -r '
  ["node", "rooms", "participants", "egress_pps", "cpu_%"],
  (.nodes[] | [.id, (.rooms_owned | length), .load.participants, .load.egress_pps,
               ((.load.cpu_pct // 0) | floor)])
  | @tsv' "$out/cluster.json" | { if command -v column >/dev/null; then column -t; else cat; fi; }
jq -r '
  [.nodes[] | .rooms_owned | length] as $r
  | "rooms per node: min \($r | min), max \($r | max) (ideal \(($r | add) / ($r | length)))"
' "$out/cluster.json"
redirects=$(curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" \
  | awk '/^confab_cluster_redirects_total /{print $2}')
echo "joins redirected by node-1: ${redirects:-0}"
echo "== load report (participants joined, received media)"
jq -r '"joined \(.joined), failed \(.failed), join p50 \(.join_ms.p50) ms, p99 \(.join_ms.p99) ms"' \
  "$out/load.json"
echo "logs, cluster.json and load.json: $out"
