#!/usr/bin/env bash
# Churn soak: does the server give back what rooms and participants took? Not a CI test
# (minutes, and its numbers are the point); the results of a run are in docs/soak.md.
#   scripts/soak.sh [waves] [rooms-per-wave] [participants-per-room]
# Defaults: 10 waves x 10 rooms x 10 participants (2 publishers, 8 subscribers) = 1,000
# joins and 1,000 leaves over 100 rooms. Each wave is one run of the load generator
# (`confab-load`, real signaling and WebRTC over loopback) in rooms of its own
# (soak-w<N>-<room>): the rooms are created by their first join, carry media for
# SOAK_HOLD seconds, and are closed by their last leave.
#
# It starts a release `confab` on loopback (HTTP 127.0.0.1:SOAK_HTTP_PORT, media from UDP
# SOAK_MEDIA_PORT) in a temporary directory and samples it every second: RSS and threads
# (/proc/<pid>/status), open file descriptors (/proc/<pid>/fd; the server has no task-count
# gauge, and every WebSocket, socket and timer shows in threads or fds), and the gauges of
# its /metrics (rooms, participants, peer connections, signaling sessions). It prints one
# row per wave: the peak while it ran, then the values once the server reports it empty.
#
# It fails (exit 1) when, after any wave, the server does not report zero rooms,
# participants, peer connections and sessions within 30 s, when fds or threads end above
# where they were after the first wave, or when RSS ends more than SOAK_RSS_SLACK_MB above
# it (the first wave warms the allocator and the runtime, so it is the baseline).
#
# Settings (environment): SOAK_HOLD (s, default 5), SOAK_RAMP (joins/s, default 20),
# SOAK_PUBLISHERS (per room, default 2), SOAK_MEDIA (av | audio | video, default av),
# SOAK_VIDEO_KBPS (default 300), SOAK_HTTP_PORT (18080), SOAK_MEDIA_PORT (51000),
# SOAK_RSS_SLACK_MB (10), SOAK_OUT (directory to keep the samples, server log and reports).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

waves="${1:-10}"
rooms="${2:-10}"
per_room="${3:-10}"
hold="${SOAK_HOLD:-5}"
ramp="${SOAK_RAMP:-20}"
publishers="${SOAK_PUBLISHERS:-2}"
media="${SOAK_MEDIA:-av}"
video_kbps="${SOAK_VIDEO_KBPS:-300}"
http_port="${SOAK_HTTP_PORT:-18080}"
media_port="${SOAK_MEDIA_PORT:-51000}"
slack_mb="${SOAK_RSS_SLACK_MB:-10}"
subscribers=$((per_room - publishers))
if [ "$subscribers" -lt 0 ]; then
  echo "soak.sh: $per_room participants per room, fewer than $publishers publishers" >&2
  exit 2
fi

scripts/need.sh curl curl

echo "== build (release)"
cargo build --release -p confab -p confab-load --quiet
server_bin="$root/target/release/confab"
load_bin="$root/target/release/confab-load"

work="$(mktemp -d)"
out="${SOAK_OUT:-$work}"
mkdir -p "$out"
server_pid=""
sampler_pid=""
cleanup() {
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

http="http://127.0.0.1:$http_port"
# Its own working directory: nothing (recordings) lands in the repository.
(
  cd "$work"
  CONFAB_HTTP__BIND="127.0.0.1:$http_port" \
    CONFAB_MEDIA__BIND_IP=127.0.0.1 \
    CONFAB_MEDIA__PORT="$media_port" \
    CONFAB_LOG__FILTER="confab=warn,webrtc=error" \
    exec "$server_bin"
) >"$out/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "$http/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "soak.sh: the server exited; its log:" >&2
    cat "$out/server.log" >&2
    exit 1
  fi
  sleep 0.2
done
curl -fsS "$http/healthz" >/dev/null

# One line: rss_mb threads fds rooms participants peer_connections sessions
snapshot() {
  local status rss threads fds metrics
  status="$(cat "/proc/$server_pid/status")"
  rss="$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' <<<"$status")"
  threads="$(awk '/^Threads:/ {print $2}' <<<"$status")"
  fds="$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  metrics="$(curl -fsS --max-time 5 "$http/metrics" || true)"
  gauge() { awk -v m="$1" '$1 == m {print $2; found = 1} END {if (!found) print "?"}' <<<"$metrics"; }
  echo "$rss $threads $fds $(gauge confab_rooms) $(gauge confab_participants)" \
    "$(gauge confab_peer_connections) $(gauge confab_sessions)"
}

samples="$out/samples.tsv"
printf 't_s\twave\trss_mb\tthreads\tfds\trooms\tparticipants\tpeer_connections\tsessions\n' >"$samples"
echo idle >"$work/phase"
t0=$(date +%s)
(
  while kill -0 "$server_pid" 2>/dev/null; do
    line="$(snapshot 2>/dev/null || true)"
    if [ -n "$line" ]; then
      printf '%s\t%s\t%s\n' "$(($(date +%s) - t0))" "$(cat "$work/phase")" "${line// /$'\t'}" >>"$samples"
    fi
    sleep 1
  done
) &
sampler_pid=$!

# Waits until the server reports itself empty (30 s at most); prints the seconds it took.
drain() {
  local i s
  for i in $(seq 0 60); do
    s="$(snapshot)"
    if [ "$(cut -d' ' -f4- <<<"$s")" = "0 0 0 0" ]; then
      echo "$((i / 2))"
      return 0
    fi
    sleep 0.5
  done
  echo "timeout"
  return 1
}

echo "== soak: $waves waves x $rooms rooms x $per_room participants ($publishers publishers, $media), ${hold} s in each room"
read -r base_rss base_threads base_fds _ <<<"$(snapshot)"
rows=()
fail=0
total_joins=0
total_failed=0
for w in $(seq 1 "$waves"); do
  echo "wave-$w" >"$work/phase"
  from=$(($(date +%s) - t0))
  "$load_bin" --url "ws://127.0.0.1:$http_port/ws" --rooms "$rooms" \
    --publishers "$publishers" --subscribers "$subscribers" --media "$media" \
    --video-bitrate "$video_kbps" --duration "$hold" --ramp "$ramp" \
    --room-prefix "soak-w$w" --server-pid "$server_pid" --quiet \
    --json "$out/wave-$w.json" >"$out/wave-$w.txt" 2>&1 || {
    echo "soak.sh: wave $w: the load generator failed:" >&2
    cat "$out/wave-$w.txt" >&2
    fail=1
  }
  echo "drain" >"$work/phase"
  took="$(drain)" || fail=1
  read -r joined failed < <(python3 -c '
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    print(r["joined"], r["failed"])
except Exception:
    print("? ?")' "$out/wave-$w.json")
  total_joins=$((total_joins + ${joined/\?/0}))
  total_failed=$((total_failed + ${failed/\?/0}))
  to=$(($(date +%s) - t0))
  # The peak while the wave ran (columns: rss threads fds rooms participants).
  peak="$(awk -F'\t' -v a="$from" -v b="$to" 'NR > 1 && $1 >= a && $1 <= b {
      for (i = 3; i <= 7; i++) if ($i + 0 > m[i]) m[i] = $i + 0 }
    END {printf "%.1f %d %d %d %d", m[3], m[4], m[5], m[6], m[7]}' "$samples")"
  read -r rss threads fds r p _ s <<<"$(snapshot)"
  read -r prss pthreads pfds prooms pparts <<<"$peak"
  rows+=("$(printf '%-5s %6s %7s | %7s %5s %5s %6s %6s | %6s %7s %5s %5s %5s %5s %5s' \
    "$w" "$joined" "$failed" "$prss" "$pthreads" "$pfds" "$prooms" "$pparts" \
    "$took" "$rss" "$threads" "$fds" "$r" "$p" "$s")")
  if [ "$w" -eq 1 ]; then
    first_rss="$rss"
    first_threads="$threads"
    first_fds="$fds"
  fi
  last_rss="$rss"
  last_threads="$threads"
  last_fds="$fds"
  echo "wave $w: joined $joined (failed $failed), peak $prooms rooms / $pparts participants / $prss MB; empty after ${took} s: $rss MB, $threads threads, $fds fds"
done
echo "idle" >"$work/phase"

echo
echo "server before the first wave: RSS $base_rss MB, $base_threads threads, $base_fds fds"
echo
printf '%-5s %6s %7s | %-34s | %s\n' "" "" "" "peak during the wave" "after the wave, once empty"
printf '%-5s %6s %7s | %7s %5s %5s %6s %6s | %6s %7s %5s %5s %5s %5s %5s\n' \
  wave joined failed "RSS MB" thr fds rooms parts "drain" "RSS MB" thr fds rooms parts sess
printf '%s\n' "${rows[@]}"
echo
echo "joins: $total_joins ($total_failed failed); samples: $samples"

growth="$(awk -v a="$first_rss" -v b="$last_rss" 'BEGIN {printf "%.1f", b - a}')"
echo "after wave 1 -> after wave $waves: RSS $first_rss -> $last_rss MB ($growth MB)," \
  "threads $first_threads -> $last_threads, fds $first_fds -> $last_fds"
if awk -v g="$growth" -v s="$slack_mb" 'BEGIN {exit !(g > s)}'; then
  echo "soak.sh: RSS grew by $growth MB (more than $slack_mb MB)" >&2
  fail=1
fi
if [ "$last_threads" -gt "$first_threads" ] || [ "$last_fds" -gt "$first_fds" ]; then
  echo "soak.sh: threads or fds grew" >&2
  fail=1
fi
if [ "$total_failed" -gt 0 ]; then
  echo "soak.sh: $total_failed joins failed" >&2
fi
if [ "$fail" -ne 0 ]; then
  echo "soak.sh: NOT flat (logs and samples in $out)" >&2
  if [ -z "${SOAK_OUT:-}" ]; then
    # Keep the evidence.
    keep="$(mktemp -d /tmp/confab-soak.XXXXXX)"
    cp -r "$out"/. "$keep"/
    echo "soak.sh: kept in $keep" >&2
  fi
  exit 1
fi
echo "soak.sh: flat"
