#!/usr/bin/env bash
# Undoes scripts/docker-up.sh: stops the dockerd it started (the package, the data root with the
# Swarm state and the test image stay; they make the next start fast). With --purge first
# removes every service and container labelled dormant.managed=true.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

RUN_DIR=${DORMANT_DOCKER_RUN_DIR:-/run/dormant}
SOCK="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/docker.pid"
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker || echo docker)

if [ "${1:-}" = "--purge" ] && [ -S "$SOCK" ]; then
  d() { "$DOCKER" -H "unix://$SOCK" "$@"; }
  services=$(d service ls -q --filter label=dormant.managed=true 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$services" ] || d service rm $services >/dev/null
  ids=$(d ps -aq --filter label=dormant.managed=true 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$ids" ] || d rm -f -v $ids >/dev/null
fi

stop_pidfile "$PIDFILE" 100
rm -f "$SOCK"
echo "docker-down: stopped" >&2
