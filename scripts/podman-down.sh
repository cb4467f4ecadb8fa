#!/usr/bin/env bash
# Undoes scripts/podman-up.sh: stops the Podman API service it started (packages, the
# configuration and the test images stay; they are harmless and make the next start fast).
# With --purge also removes every container labelled dormant.managed=true.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

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

stop_pidfile "$PIDFILE" 50
rm -f "$SOCK"
echo "podman-down: stopped" >&2
