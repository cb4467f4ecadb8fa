#!/usr/bin/env bash
# Makes sure Debian's nginx is installed for the end-to-end tests of several replicas behind a
# load balancer (tests/e2e/test_replicas.py). The tests run their own nginx as a subprocess
# (`nginx -c CONF -p TMPDIR`), so the system service is never started: while the package is
# installed, a policy-rc.d that denies every service start is in place (one already there is
# left alone). Idempotent: does nothing when nginx is already installed.
set -euo pipefail

log() { echo "nginx-up: $*" >&2; }

if [ -x /usr/sbin/nginx ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to install nginx"; exit 1; }
  SUDO="sudo"
fi

POLICY=/usr/sbin/policy-rc.d
ours=""
cleanup() {
  if [ -n "$ours" ]; then
    $SUDO rm -f "$POLICY"
  fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
  # invoke-rc.d and deb-systemd-invoke ask this script; 101 means "action forbidden".
  printf '#!/bin/sh\n# written by dormant scripts/nginx-up.sh while it installs nginx\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 0755 "$POLICY"
  ours=1
fi

log "installing nginx (the system service is not started)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq nginx >/dev/null

if [ ! -x /usr/sbin/nginx ]; then
  log "apt-get install nginx did not provide /usr/sbin/nginx"
  exit 1
fi
