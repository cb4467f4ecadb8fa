#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379 for the tests (the gateway across
# replicas: DORMANT_REDIS_URL). Installs Debian's redis-server if it is missing. Idempotent.
set -euo pipefail
if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
SUDO=""
[ -w /var/lib/redis ] && [ -w /var/log/redis ] || { [ "$(id -u)" -eq 0 ] || SUDO="sudo"; }
$SUDO mkdir -p /var/lib/redis /var/log/redis
$SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log
for _ in $(seq 1 30); do
  redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && exit 0
  sleep 1
done
echo "Redis did not come up on 127.0.0.1:6379" >&2
exit 1
