#!/usr/bin/env bash
# Starts the container engine dormant's docker runtime is tested against: Podman serving the
# Docker Engine API on a unix socket. Idempotent: run it as often as you like.
#
#   1. installs Debian's podman, runc and busybox-static if missing (needs root and apt);
#   2. writes /etc/containers/containers.conf (runc as the OCI runtime, no default ulimits);
#   3. builds the test images with `podman import` (no registry is reachable): a busybox root
#      filesystem with an HTTP server;
#   4. starts `podman system service --time=0 unix:///run/dormant/podman.sock` and waits until
#      it answers /_ping.
#
# Prints `export DORMANT_DOCKER_HOST=unix:///run/dormant/podman.sock` on its last line.
# scripts/podman-down.sh undoes what this started (the service; the images stay).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

RUN_DIR=${DORMANT_PODMAN_RUN_DIR:-/run/dormant}
SOCK="$RUN_DIR/podman.sock"
PIDFILE="$RUN_DIR/podman.pid"
LOG="$RUN_DIR/podman.log"
IMAGE=${DORMANT_TEST_IMAGE:-localhost/dormant-httpd:2}
CONF=/etc/containers/containers.conf

log() { echo "podman-up: $*" >&2; }

# 1. packages -------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "need root to install ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null; then
  log "/bin/busybox has no httpd applet (install busybox-static)"
  exit 1
fi

# 2. engine configuration -------------------------------------------------------------------
mkdir -p /etc/containers "$RUN_DIR"
want_conf='# written by dormant scripts/podman-up.sh
[containers]
default_ulimits = []

[engine]
runtime = "runc"
'
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$(printf '%s' "$want_conf")" ]; then
  if [ -f "$CONF" ] && ! grep -q 'written by dormant' "$CONF"; then
    cp "$CONF" "$CONF.before-dormant"
    log "kept the previous $CONF as $CONF.before-dormant"
  fi
  printf '%s' "$want_conf" >"$CONF"
  log "wrote $CONF"
fi

# 3. test image -----------------------------------------------------------------------------
# scripts/test-image-rootfs.sh: busybox with an HTTP server that exits on TERM.
if ! podman image exists "$IMAGE"; then
  log "building $IMAGE"
  tarball=$(mktemp --suffix=.tar)
  trap 'rm -f "$tarball"' EXIT
  bash "$(dirname "$0")/test-image-rootfs.sh" "$tarball"
  podman import \
    --change 'CMD ["/bin/serve"]' \
    --change 'EXPOSE 8080' \
    --change 'VOLUME /data' \
    --change 'ENV PATH=/bin' \
    "$tarball" "$IMAGE" >/dev/null
  rm -f "$tarball"
  trap - EXIT
fi

# 4. the Docker-compatible API service ------------------------------------------------------
if ping_ok "$SOCK"; then
  log "service already answers on $SOCK"
else
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$SOCK"
  # setsid: the service outlives this script and the test run that started it. In /: its
  # conmons inherit its working directory, and one removed later (a deleted checkout) makes
  # every container start fail with "write child: broken pipe".
  (cd / && exec setsid podman system service --time=0 "unix://$SOCK" >>"$LOG" 2>&1 </dev/null) &
  echo $! >"$PIDFILE"
  if ! wait_for_ping "$SOCK" 150 "$PIDFILE"; then
    log "podman system service exited or did not answer on $SOCK within 30s; its log:"
    tail -20 "$LOG" >&2
    exit 1
  fi
  log "service started (pid $(cat "$PIDFILE")) on $SOCK"
fi
echo "export DORMANT_DOCKER_HOST=unix://$SOCK"
