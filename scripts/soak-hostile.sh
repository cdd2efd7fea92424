#!/usr/bin/env bash
# Hostile soak: replays the probes of issue 12 against a release `confab` at its default
# configuration, one phase after another, and prints for each phase: the server's fds and
# RSS at the peak of the attack, whether an honest newcomer could join and `/healthz`
# answered during it, what the attack got (confab-hostile's report), and RSS 60 s after it.
# Not a CI test (minutes; its numbers are the point): results are in docs/soak.md.
#
#   scripts/soak-hostile.sh [phases...]     default: storm mids idle slowloris halfjoin
#
# The server runs with a file-descriptor soft limit of 1,024 (what a systemd service gets)
# to show that it raises it. Settings (environment): HOSTILE_SECONDS (attack length per
# phase, default 20), HOSTILE_SETTLE (seconds after each phase, 60), HOSTILE_HTTP_PORT
# (18090), HOSTILE_MEDIA_PORT (52000), HOSTILE_FEATURES (cargo features of the server
# build: "no-trim" leaves glibc's free memory unreturned, for a before/after), HOSTILE_OUT
# (keep the probes' reports and the server log there).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(storm mids idle slowloris halfjoin)
seconds="${HOSTILE_SECONDS:-20}"
settle="${HOSTILE_SETTLE:-60}"
http_port="${HOSTILE_HTTP_PORT:-18090}"
media_port="${HOSTILE_MEDIA_PORT:-52000}"

scripts/need.sh curl curl

echo "== build (release)"
features="${HOSTILE_FEATURES:-}"
cargo build --release -p confab --features "$features" --quiet
allocator="glibc malloc, features: '${features}'"
cargo build --release -p confab-load --bin confab-hostile --quiet
server_bin="$root/target/release/confab"
probe_bin="$root/target/release/confab-hostile"

work="$(mktemp -d)"
out="${HOSTILE_OUT:-$work}"
mkdir -p "$out"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

http="http://127.0.0.1:$http_port"
(
  cd "$work"
  ulimit -Sn 1024
  CONFAB_HTTP__BIND="127.0.0.1:$http_port" \
    CONFAB_MEDIA__PORT="$media_port" \
    CONFAB_LOG__FILTER="confab=info,webrtc=error" \
    exec "$server_bin"
) >"$out/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "$http/healthz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
curl -fsS "$http/healthz" >/dev/null

# rss_mb fds
snapshot() {
  local rss fds
  rss="$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$server_pid/status")"
  fds="$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  echo "$rss $fds"
}

echo "== server: $allocator; $(grep -m1 -o 'raised the file-descriptor limit.*' "$out/server.log" || echo 'fd limit not raised')"
read -r base_rss base_fds <<<"$(snapshot)"
echo "baseline: RSS $base_rss MB, $base_fds fds"
printf '%-10s | %9s %6s | %-8s %-7s | %9s %6s | %s\n' phase "peak MB" fds newcomer healthz "+60s MB" fds report
for phase in "${phases[@]}"; do
  peak_rss=0
  peak_fds=0
  "$probe_bin" "$phase" --http "127.0.0.1:$http_port" --seconds "$seconds" >"$out/$phase.json" 2>"$out/$phase.err" &
  probe=$!
  while kill -0 "$probe" 2>/dev/null; do
    read -r r f <<<"$(snapshot)"
    peak_rss="$(awk -v a="$peak_rss" -v b="$r" 'BEGIN {print (b > a ? b : a)}')"
    [ "$f" -gt "$peak_fds" ] && peak_fds="$f"
    sleep 1
  done
  wait "$probe" || { echo "$phase: the probe failed:"; cat "$out/$phase.err"; }
  report="$(cat "$out/$phase.json")"
  newcomer="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("newcomer_joined"))' "$report" 2>/dev/null || echo '?')"
  health="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("healthz"))' "$report" 2>/dev/null || echo '?')"
  sleep "$settle"
  read -r after_rss after_fds <<<"$(snapshot)"
  printf '%-10s | %9s %6s | %-8s %-7s | %9s %6s | %s\n' "$phase" "$peak_rss" "$peak_fds" "$newcomer" "$health" "$after_rss" "$after_fds" "$report"
done
echo
echo "refusals counted by the server:"
curl -fsS "$http/metrics" | grep -E '^confab_(join_timeouts|pending_refused|connections_refused|reserve_refusals|header_timeouts|oversized_frames|publish_rate_refusals|offers_refused|abusive_closed|signaling_over_budget|negotiation_timeouts)(_total)? ' || true
echo
echo "log lines about refusals: $(grep -c -E 'refused|closed|removed' "$out/server.log" || true) (server log: $out/server.log)"
