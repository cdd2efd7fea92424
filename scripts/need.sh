#!/usr/bin/env bash
# Installs Debian packages for the test suite when what they provide is missing:
#   scripts/need.sh <command-or-path> <debian-package>...
# e.g. `scripts/need.sh ffprobe ffmpeg`. Retries while apt's lock is held.
set -euo pipefail

what="$1"
shift
if command -v "$what" >/dev/null 2>&1 || [ -x "$what" ]; then
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_retry() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if as_root "$@"; then return 0; fi
    echo "need.sh: '$*' failed (attempt $i), retrying in 5 s (apt lock held?)" >&2
    sleep 5
  done
  return 1
}

echo "need.sh: $what is missing, installing $*" >&2
export DEBIAN_FRONTEND=noninteractive
apt_retry apt-get update
apt_retry apt-get install -y --no-install-recommends "$@"
