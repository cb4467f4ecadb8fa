#!/usr/bin/env bash
# Starts Docker Engine for dormant's tests, beside Podman and without touching a system Docker:
# Debian's dockerd on its own socket, data root and exec root, as a single-node Swarm.
# Idempotent: run it as often as you like.
#
#   1. installs Debian's docker.io (dockerd, containerd, runc) and busybox-static if missing
#      (needs root and apt);
#   2. starts `dockerd -H unix:///run/dormant/docker.sock --data-root /var/lib/dormant-docker`
#      and waits until it answers /_ping;
#   3. makes it a single-node Swarm (`docker swarm init --advertise-addr 127.0.0.1`) for the
#      swarm runtime (plain containers run on a Swarm node as on any engine);
#   4. loads the test image with `docker import` (no registry is reachable).
#
# Prints `export DORMANT_DOCKER_ENGINE_HOST=unix:///run/dormant/docker.sock` on its last line.
# scripts/docker-down.sh undoes what this started (dockerd; the data root and image stay).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

RUN_DIR=${DORMANT_DOCKER_RUN_DIR:-/run/dormant}
SOCK="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/docker.pid"
LOG="$RUN_DIR/docker.log"
DATA_ROOT=${DORMANT_DOCKER_DATA_ROOT:-/var/lib/dormant-docker}
EXEC_ROOT="$RUN_DIR/docker-exec"
IMAGE=${DORMANT_TEST_IMAGE:-localhost/dormant-httpd:2}

log() { echo "docker-up: $*" >&2; }

# 1. packages -------------------------------------------------------------------------------
missing=()
[ -x /usr/sbin/dockerd ] || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "need root to install ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d: the package must not start the system's own dockerd (it would take
  # /var/run/docker.sock and /var/lib/docker); only ours runs.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi
# The docker.io package's client; a newer one elsewhere on PATH also works (it negotiates).
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
d() { "$DOCKER" -H "unix://$SOCK" "$@"; }

# 2. dockerd ---------------------------------------------------------------------------------
mkdir -p "$RUN_DIR" "$DATA_ROOT" "$EXEC_ROOT"
if ping_ok "$SOCK"; then
  log "dockerd already answers on $SOCK"
else
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$SOCK"
  # setsid: the daemon outlives this script and the test run that started it; in / (see
  # podman-up.sh: nothing it starts may inherit a directory that is removed later).
  (cd / && exec setsid /usr/sbin/dockerd \
    --host "unix://$SOCK" \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    >>"$LOG" 2>&1 </dev/null) &
  # (dockerd writes its pid file itself, a while after it starts: no early exit on it)
  if ! wait_for_ping "$SOCK" 300; then
    log "dockerd did not answer on $SOCK within 60s; its log:"
    tail -30 "$LOG" >&2
    exit 1
  fi
  log "dockerd started (pid $(cat "$PIDFILE" 2>/dev/null || echo '?')) on $SOCK"
fi

# 3. single-node Swarm -----------------------------------------------------------------------
if [ "$(d info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  d swarm init --advertise-addr 127.0.0.1 >/dev/null
  log "swarm initialised (single node, 127.0.0.1)"
fi

# 4. test image ------------------------------------------------------------------------------
if ! d image inspect "$IMAGE" >/dev/null 2>&1; then
  log "loading $IMAGE"
  tarball=$(mktemp --suffix=.tar)
  trap 'rm -f "$tarball"' EXIT
  bash "$(dirname "$0")/test-image-rootfs.sh" "$tarball"
  d import \
    --change 'CMD ["/bin/serve"]' \
    --change 'EXPOSE 8080' \
    --change 'VOLUME /data' \
    --change 'ENV PATH=/bin' \
    "$tarball" "$IMAGE" >/dev/null
  rm -f "$tarball"
  trap - EXIT
fi
echo "export DORMANT_DOCKER_ENGINE_HOST=unix://$SOCK"
