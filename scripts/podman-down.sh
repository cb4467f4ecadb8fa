#!/usr/bin/env bash
# Undoes scripts/podman-up.sh: stops the Podman API service it started (packages, the
# configuration and the test images stay; they are harmless and make the next start fast).
# With --purge also removes every container labelled dormant.managed=true.
set -euo pipefail

RUN_DIR=${DORMANT_PODMAN_RUN_DIR:-/run/dormant}
SOCK="$RUN_DIR/podman.sock"
PIDFILE="$RUN_DIR/podman.pid"

if [ "${1:-}" = "--purge" ] && command -v podman >/dev/null 2>&1; then
  ids=$(podman ps -aq --filter label=dormant.managed=true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    podman rm -f -v -t 0 $ids >/dev/null
  fi
fi

if [ -f "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
fi
rm -f "$SOCK"
echo "podman-down: stopped" >&2
