"""The real-time gateway across replicas: three ``dormant serve`` on one PostgreSQL database
(a throwaway one) and one Redis (``DORMANT_REDIS_URL``, a channel of this test's own), each on
its own port, with the same gateway secret. python-socketio clients connect to different
replicas of one session and see the same room: a broadcast answered by a replica without a
client of the session, a sleep warning and transitions decided by whichever replica acts,
presence counting everyone and forgetting a replica that died. No timed assertions: every wait
is a bounded poll for an outcome."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Api, Probe, eventually

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/0"
#: Sessions warn 4 s before they sleep, 6 s after the last meaningful activity.
POLICY = {"sleep_after": 6, "warn_before": 4, "heartbeat_interval": 2}
#: A dead replica's presence entry holds 15 s and is looked at every 5 s: a generous bound.
DEATH_TIMEOUT = 60.0


def psql(sql: str) -> None:
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-At", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    subprocess.run(["bash", str(REPO / "scripts" / "postgres-up.sh")], check=True, timeout=600)
    name = f"dormant_e2e_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_channel() -> Iterator[str]:
    """A channel (and key prefix) no other run uses; its keys are removed afterwards."""
    subprocess.run(["bash", str(REPO / "scripts" / "redis-up.sh")], check=True, timeout=600)
    channel = f"dormant-test-{secrets.token_hex(6)}"
    try:
        yield channel
    finally:
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"{channel}:*"))
            if keys:
                client.delete(*keys)


@pytest.fixture
def replicas(server_factory: Callable[..., Server]) -> Iterator[list[Server]]:
    """Replicas A, B and C. The first creates the admin key; the others find keys in the
    database and write none, so they get its file. They share one data directory (the process
    runtime's sessions), as replicas on one host share a container engine."""
    servers: list[Server] = []
    with throwaway_database() as database_url, redis_channel() as channel:
        env = {
            "DORMANT_DATABASE_URL": database_url,
            "DORMANT_GATEWAY_SECRET": secrets.token_urlsafe(48),
            "DORMANT_REDIS_URL": REDIS_URL,
            "DORMANT_REDIS_CHANNEL": channel,
        }
        try:
            for name in "abc":
                env["DORMANT_INSTANCE_ID"] = f"replica-{name}"
                if not servers:
                    servers.append(server_factory(ports=10, **env))
                    continue
                first = servers[0]
                srv = server_factory(
                    ports=10, start=False, DORMANT_DATA_DIR=str(first.data_dir), **env
                )
                srv.data_dir, srv.runtime_root = first.data_dir, first.runtime_root
                key_file = srv.home / "dormant-admin.key"
                shutil.copyfile(first.home / "dormant-admin.key", key_file)
                key_file.chmod(0o600)
                servers.append(srv)
                srv.start()
            yield servers
        finally:
            # Down before the database goes (server_factory then kills what they left).
            for srv in servers:
                srv.stop()
    for srv in servers:
        assert "Traceback" not in srv.logs(), srv.logs()[-5000:]


def presence_of(probe: Probe, count: int) -> Callable[[], Any]:
    """A check: the probe's latest ``presence`` counts ``count`` (the event, or None)."""

    async def check() -> dict[str, Any] | None:
        seen = probe.seen("presence")
        return seen[-1] if seen and seen[-1]["occupancy"] == count else None

    return check


def names(presence: dict[str, Any]) -> list[str]:
    return sorted(p["name"] for p in presence["participants"])


async def test_rooms_events_and_presence_span_the_replicas(replicas: list[Server]) -> None:
    a, b, c = replicas
    apis = {srv.url: Api(srv.url, srv.key) for srv in replicas}
    probes: list[Probe] = []
    try:
        api_a, api_b, api_c = apis[a.url], apis[b.url], apis[c.url]
        session = await api_c.create(policy=POLICY)
        sid = session["id"]

        async def join(srv: Server, name: str) -> Probe:
            probe = Probe(srv.url)
            probes.append(probe)
            await probe.connect(await apis[srv.url].token(sid, name=name))
            await probe.wait("session", lambda s: s["id"] == sid)
            return probe

        ann, cid = await join(a, "ann"), await join(c, "cid")
        seen = await eventually(presence_of(ann, 2), what="ann to see two people")
        assert names(seen) == ["ann", "cid"]

        # A broadcast answered by B, which has no client of the session, reaches A and C.
        response = await api_b.http.post(
            f"/v1/sessions/{sid}/broadcast", json={"type": "build", "data": {"n": 1}}
        )
        assert response.status_code == 202, response.text
        assert response.json()["delivered"] == 2  # none on B; one on A and one on C
        for probe in (ann, cid):
            got = await probe.wait("event", lambda e: e["type"] == "build")
            assert got == {"type": "build", "data": {"n": 1}}

        bob = await join(b, "bob")
        for probe in (ann, bob, cid):
            seen = await eventually(presence_of(probe, 3), what="three people everywhere")
            assert names(seen) == ["ann", "bob", "cid"] and not seen["truncated"]

        # Activity posted to C; the warning before the sleep is decided by a replica's
        # scheduler (any of them, maybe more than one) and reaches every client: at least two
        # of the three get it from another replica than the one that decided.
        marks = {probe: len(probe.events) for probe in (ann, bob, cid)}
        posted_at = datetime.now(UTC)
        response = await api_c.http.post(f"/v1/sessions/{sid}/activity", json={"kind": "command"})
        assert response.status_code == 202, response.text
        sleeps_at = posted_at + timedelta(seconds=POLICY["sleep_after"] - 1)

        def after_the_activity(warning: dict[str, Any]) -> bool:
            return datetime.fromisoformat(warning["at"]) >= sleeps_at

        for probe in (ann, bob, cid):
            warning = await probe.wait("sleep-warning", after_the_activity, after=marks[probe])
            assert "no meaningful activity" in warning["reason"], warning
            asleep = await probe.wait(
                "session", lambda s: s["state"] == "sleeping", after=marks[probe]
            )
            assert asleep["id"] == sid and asleep["warning"] is None
        assert (await api_a.session(sid) or {}).get("state") == "sleeping"

        # C dies: its client's entry expires, and A and B stop counting it.
        c.kill()
        for probe in (ann, bob):
            seen = await eventually(
                presence_of(probe, 2), what="C's client to leave presence", timeout=DEATH_TIMEOUT
            )
            assert names(seen) == ["ann", "bob"]
    finally:
        for probe in probes:
            await probe.close()
        for api in apis.values():
            await api.close()
