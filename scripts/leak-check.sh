#!/usr/bin/env bash
# What the test suite leaves behind on the container engines, checked after all of pytest's
# processes are done (each process's own session check sees only its run: pytest-xdist workers
# run beside each other).
#
#   leak-check.sh snapshot FILE   record the dangling volumes there are before the tests
#   leak-check.sh check FILE      after them: fail (exit 1) on any container, volume or service
#                                 a test run labelled (`testrun`), and on any dangling volume
#                                 that was not in FILE (an anonymous volume, such as the test
#                                 image's VOLUME /data, removed without its container's -v);
#                                 what it finds it removes, so that the next run starts clean.
#
# The engines are reached as the test suite reaches them: Podman through its CLI (root's
# storage), Docker Engine on $DORMANT_DOCKER_ENGINE_HOST. An engine that is not up is skipped
# (the tests that needed it have failed already).
set -uo pipefail

mode=${1:?snapshot or check}
file=${2:?a file}

engines() {
  if command -v podman >/dev/null && podman info >/dev/null 2>&1; then
    echo podman
  fi
  if [ -n "${DORMANT_DOCKER_ENGINE_HOST:-}" ] && command -v docker >/dev/null \
    && docker -H "$DORMANT_DOCKER_ENGINE_HOST" info >/dev/null 2>&1; then
    echo docker
  fi
}

cli() {
  local engine=$1
  shift
  if [ "$engine" = docker ]; then
    docker -H "$DORMANT_DOCKER_ENGINE_HOST" "$@"
  else
    podman "$@"
  fi
}

dangling() {
  cli "$1" volume ls -q --filter dangling=true | sed "s/^/$1 /" | sort
}

if [ "$mode" = snapshot ]; then
  for e in $(engines); do dangling "$e"; done | sort >"$file"
  exit 0
fi

status=0
for e in $(engines); do
  containers=$(cli "$e" ps -aq --filter label=testrun)
  volumes=$(cli "$e" volume ls -q --filter label=testrun)
  services=""
  if [ "$e" = docker ]; then
    services=$(cli "$e" service ls -q --filter label=testrun 2>/dev/null)
  fi
  new_dangling=$(dangling "$e" | comm -13 <(grep "^$e " "$file") - | cut -d' ' -f2)
  if [ -n "$services" ]; then
    echo "leak-check: $e: services left by tests: $(echo $services)" >&2
    cli "$e" service rm $services >/dev/null 2>&1
    status=1
  fi
  if [ -n "$containers" ]; then
    echo "leak-check: $e: containers left by tests: $(echo $containers)" >&2
    cli "$e" rm -f -v $containers >/dev/null 2>&1
    status=1
  fi
  volumes=$(printf '%s\n' $volumes $new_dangling | sort -u)
  if [ -n "$volumes" ]; then
    echo "leak-check: $e: volumes left by tests: $(echo $volumes)" >&2
    cli "$e" volume rm -f $volumes >/dev/null 2>&1
    status=1
  fi
done
[ "$status" = 0 ] && echo "leak-check: no container, volume or service left on $(engines | tr '\n' ' ')"
exit "$status"
