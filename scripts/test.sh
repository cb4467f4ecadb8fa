#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run runs exactly this).
# Installs dormant with its dev tools into .venv, then lints, type-checks, checks layers and
# runs unit, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
# Bytecode for dormant itself (pip compiles only what it installs, not an editable source tree):
# where PYTHONDONTWRITEBYTECODE is set, every `dormant` process the tests start would otherwise
# compile the whole package again.
.venv/bin/python -m compileall -q src

echo "== ruff"
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
echo "== mypy (strict)"
.venv/bin/mypy
echo "== import-linter"
.venv/bin/lint-imports --no-cache
echo "== services"
bash scripts/postgres-up.sh
bash scripts/nginx-up.sh
bash scripts/redis-up.sh
echo "== podman (the docker runtime's tests need it; they fail, never skip, without it)"
if podman_env=$(bash scripts/podman-up.sh); then
  eval "$podman_env"
  export DORMANT_DOCKER_HOST
else
  echo "scripts/podman-up.sh failed: the docker runtime's tests will fail" >&2
fi
echo "== Docker Engine as a single-node Swarm (the docker runtime's tests on Docker Engine, the swarm runtime's)"
if docker_env=$(bash scripts/docker-up.sh); then
  eval "$docker_env"
  export DORMANT_DOCKER_ENGINE_HOST
else
  echo "scripts/docker-up.sh failed: the Docker Engine and swarm tests will fail" >&2
fi
echo "== chromium and the JavaScript test tools (the gateway's tests fail, never skip, without them)"
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "could not install chromium: the browser tests will fail" >&2
fi
npm ci --prefix tests/e2e/js --no-audit --no-fund --loglevel=error \
  || echo "npm ci failed: the JavaScript tests will fail" >&2
echo "== pytest"
if [ "$#" -gt 0 ]; then
  # Arguments (paths, -k, ...): one pytest run, as asked.
  .venv/bin/pytest -q -p no:cacheprovider "$@"
  exit
fi
# Unit tests use only CPU, a fake clock and their own temporary files: one worker per core.
# Integration and end-to-end tests spend most of their time waiting (for containers, servers,
# timeouts), so they run in three workers on any machine. Each worker is a test run of its own:
# its containers, volumes and services carry its run id, its ports come from its own slice, and
# its session checks purge what it made; scripts/leak-check.sh then checks the engines after all.
status=0
snapshot=$(mktemp)
bash scripts/leak-check.sh snapshot "$snapshot"
.venv/bin/pytest -q -p no:cacheprovider -n auto --dist worksteal tests/unit || status=$?
# The long bursts (xdist_group "bursts-a" and "-b") go to two workers, each in turn; the storm
# (marker "alone") takes every core and runs last, by itself.
.venv/bin/pytest -q -p no:cacheprovider -n "${DORMANT_TEST_WORKERS:-3}" --dist loadgroup \
  -m "not alone" --ignore=tests/unit || status=$?
.venv/bin/pytest -q -p no:cacheprovider -m alone --ignore=tests/unit || status=$?
bash scripts/leak-check.sh check "$snapshot" || status=1
rm -f "$snapshot"
exit "$status"
