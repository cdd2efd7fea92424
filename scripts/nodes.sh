# Shared by scripts/cluster.sh and scripts/cascade.sh (sourced, not run): the tools,
# a release build, a directory for logs ($out), the processes to kill on exit ($pids),
# wait_port and a Redis on $REDIS_PORT.
scripts/need.sh redis-server redis-server
scripts/need.sh jq jq
cargo build --release --quiet -p confab -p confab-load

out=$(mktemp -d -t "confab-$1.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits (up to 10 s) until a TCP port accepts connections.
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$0: nothing listens on port $1 (see $out)" >&2
  exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  >"$out/redis.log" 2>&1 &
pids+=($!)
wait_port "$REDIS_PORT"
