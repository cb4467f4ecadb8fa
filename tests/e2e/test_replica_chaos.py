"""Replicas under chaos: three ``dormant serve`` on one PostgreSQL database behind nginx; sessions
whose deadlines are spread over 20 s; one replica is SIGKILLed and another SIGSTOPped past its
lease (15 s), then resumed. Every session is slept exactly once (one ``stopping`` and one
``sleeping`` transition in its timeline), no deadline is lost, no stale write of the paused
replica lands, and at the end no session process runs (all sleep).

Sessions are busybox ``httpd`` processes (cheap enough for hundreds);
``DORMANT_CHAOS_REPLICA_SESSIONS`` (default 300) sizes the run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .replicas import Cluster, replica_set, run_all

if TYPE_CHECKING:
    from .conftest import Server

# A long burst: it shares a pytest-xdist worker with one engine's chaos test (test_docker_chaos.py),
# so that the longest tests are spread over two workers, each running its share in turn.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("bursts-a")]

SESSIONS = int(os.environ.get("DORMANT_CHAOS_REPLICA_SESSIONS", "300"))
SPREAD = 20  # seconds over which the deadlines fall
LEASE = 15  # an instance's lease (three heartbeats of 5 s)


@pytest.fixture
def cluster(server_factory: Callable[..., Server], tmp_path: Path) -> Iterator[Cluster]:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing (scripts/podman-up.sh installs busybox-static)")
    config = tmp_path / "dormant.toml"
    config.write_text(
        "[templates.default]\n"
        f'command = ["{busybox}", "httpd", "-f", "-p", "127.0.0.1:{{port}}", "-h", "{{workdir}}"]\n'
        "stop_timeout = 2\n"
    )
    per_replica = SESSIONS // 3 + 20
    with replica_set(
        server_factory,
        tmp_path,
        n=3,
        ports=per_replica,
        DORMANT_CONFIG=str(config),
        DORMANT_RECONCILE_INTERVAL="2",
        DORMANT_RATE_LIMIT="100000",
        DORMANT_RATE_BURST="100000",
    ) as replicas:
        yield replicas


@contextlib.contextmanager
def paused(replica: Server) -> Iterator[None]:
    """SIGSTOP the replica; SIGCONT it on the way out, whatever happens."""
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)


def test_each_session_is_slept_once_while_replicas_die_and_pause(cluster: Cluster) -> None:
    http = cluster.client()

    def create(i: int) -> Callable[[], str]:
        def job() -> str:
            body: dict[str, Any] = {
                "user_id": f"u{i}",
                "policy": {"sleep_after": 20 + i % SPREAD, "warn_before": 1},
            }
            response = cluster.client().post("/v1/sessions", json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        return job

    ids = set(run_all([create(i) for i in range(SESSIONS)], workers=16))
    assert len(ids) == SESSIONS
    # No waiting for every session to run first: with hundreds, the first ones are due before
    # the last ones start; each timeline below must show one start and one sleep all the same.
    killed, stopped = cluster.replicas[2], cluster.replicas[1]
    killed.kill()
    with paused(stopped):
        time.sleep(LEASE + 6)  # past the paused replica's lease: the survivor takes over
    asleep = cluster.wait_all(
        http, ids, lambda s: s["state"] == "sleeping", "every session to sleep", timeout=180
    )
    assert len(asleep) == SESSIONS
    time.sleep(4)  # the resumed replica's stale work, if any, would land now

    twice: dict[str, list[str]] = {}
    for sid in sorted(ids):
        response = http.get(f"/v1/sessions/{sid}/events")
        assert response.status_code == 200, response.text
        states = [e["to_state"] for e in response.json()["items"] if e["to_state"]]
        once = all(states.count(state) == 1 for state in ("running", "stopping", "sleeping"))
        if not once or "failed" in states:
            twice[sid] = states
    assert not twice, f"{len(twice)} session(s) not slept exactly once: {list(twice.items())[:5]}"
    final = {s["id"]: s["state"] for s in cluster.all_sessions(http) if s["id"] in ids}
    assert set(final.values()) == {"sleeping"}, final
    survivor = cluster.replicas[0]
    running = {env.get("DORMANT_SESSION") for env in survivor.marked().values()}
    assert not running & ids, f"session processes still run: {sorted(running & ids)[:5]}"
    instances = http.get("/v1/instances").json()["items"]
    assert {i["id"] for i in instances} >= {"replica-1", "replica-2"}
    assert "replica-3" not in {i["id"] for i in instances}
