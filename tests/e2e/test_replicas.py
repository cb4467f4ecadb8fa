"""Three ``dormant serve`` replicas on one PostgreSQL database behind nginx (round robin, no
sticky sessions, ``examples/nginx/dormant.conf``): any replica answers any call about any
session, whichever replica created it, and the replicas never hand out a port or a container
name twice. Sessions run on the process runtime (the default)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, marked_processes, port_answers, port_closed, wait_until
from .gateway_support import Probe
from .replicas import Cluster, replica_set, run_all, wait_session

pytestmark = pytest.mark.e2e

REPLICAS = 3
SESSIONS = 100
#: One create per thread, all at once; the later phases use fewer threads.
WORKERS = 20
ENV = {"DORMANT_RATE_LIMIT": "100000", "DORMANT_RATE_BURST": "100000"}
#: A session's transitions from creation to its second ``running`` (after sleep and wake).
LIFE = ["creating", "starting", "running", "stopping", "sleeping", "starting", "running"]


@pytest.fixture
def cluster(server_factory: Callable[..., Server], tmp_path: Path) -> Iterator[Cluster]:
    # Every replica has room for all the sessions, however nginx spreads them.
    with replica_set(server_factory, tmp_path, n=REPLICAS, ports=SESSIONS + 10, **ENV) as c:
        yield c


def transitions(http: httpx.Client, sid: str) -> list[str]:
    """The states the session's timeline records it entering, in order."""
    response = http.get(f"/v1/sessions/{sid}/events")
    assert response.status_code == 200, response.text
    return [e["to_state"] for e in response.json()["items"] if e["to_state"] is not None]


def serves(port: int) -> bool:
    answer = port_answers(port)
    return answer is not None and answer.status_code == 200


def call(cluster: Cluster, method: str, path: str, **kw: Any) -> httpx.Response:
    """One call through nginx on a client of its own (for worker threads)."""
    with cluster.client() as http:
        return http.request(method, path, **kw)


def expect_all(answers: list[httpx.Response], status: int) -> None:
    wrong = [
        (r.request.url.path, r.status_code, r.text) for r in answers if r.status_code != status
    ]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers were not {status}: {wrong[:5]}"


def test_sessions_created_through_nginx_spread_and_live_on_any_replica(cluster: Cluster) -> None:
    creates = [
        partial(call, cluster, "POST", "/v1/sessions", json={"user_id": f"user-{n}"})
        for n in range(SESSIONS)
    ]
    answers = run_all(creates, workers=SESSIONS)
    expect_all(answers, 201)
    created = {r.json()["id"]: r.json() for r in answers}
    assert len(created) == SESSIONS
    ports = {sid: s["port"] for sid, s in created.items()}
    assert len(set(ports.values())) == SESSIONS, Counter(ports.values()).most_common(3)
    # Round robin: 34, 33 and 33 creates, each answered by the replica nginx sent it to (its
    # port comes from that replica's block).
    upstreams = [
        u for u, _, line in cluster.nginx.requests() if line.startswith("POST /v1/sessions ")
    ]
    assert sorted(Counter(upstreams).values()) == [33, 33, 34], Counter(upstreams)
    assert set(upstreams) == {f"127.0.0.1:{r.port}" for r in cluster.replicas}
    per_replica = Counter(cluster.replica_of_port(p).port for p in ports.values())
    assert sorted(per_replica.values()) == [33, 33, 34], per_replica
    ids = set(created)

    http = cluster.client()
    instances = http.get("/v1/instances")
    assert instances.status_code == 200, instances.text
    assert sorted(i["id"] for i in instances.json()["items"]) == [
        f"replica-{n}" for n in range(1, REPLICAS + 1)
    ]
    running = cluster.wait_all(http, ids, lambda s: s["state"] == "running", "all running")
    assert {sid: s["port"] for sid, s in running.items()} == ports
    assert all(serves(p) for p in ports.values()), [p for p in ports.values() if not serves(p)]
    # One process per session, each with a container name and a port of its own.
    processes = marked_processes(cluster.replicas[0].runtime_root).values()
    containers = {env["DORMANT_SESSION"]: env["DORMANT_CONTAINER"] for env in processes}
    assert len(processes) == SESSIONS and containers.keys() == ids
    assert len(set(containers.values())) == SESSIONS
    assert {env["DORMANT_SESSION"]: int(env["PORT"]) for env in processes} == ports

    expect_all(
        run_all(
            [
                partial(
                    call, cluster, "POST", f"/v1/sessions/{sid}/activity", json={"kind": "command"}
                )
                for sid in ids
            ],
            WORKERS,
        ),
        202,
    )
    recorded = cluster.wait_all(
        http, ids, lambda s: s["last_activity"]["kind"] == "command", "activity recorded"
    )
    assert {s["last_activity"]["source"] for s in recorded.values()} == {"api"}

    expect_all(
        run_all(
            [partial(call, cluster, "POST", f"/v1/sessions/{sid}/sleep") for sid in ids], WORKERS
        ),
        202,
    )
    cluster.wait_all(http, ids, lambda s: s["state"] == "sleeping", "all sleeping")
    assert all(port_closed(p) for p in ports.values())
    assert not marked_processes(cluster.replicas[0].runtime_root)

    expect_all(
        run_all(
            [partial(call, cluster, "POST", f"/v1/sessions/{sid}/wake") for sid in ids], WORKERS
        ),
        202,
    )
    woken = cluster.wait_all(http, ids, lambda s: s["state"] == "running", "all running again")
    # Ports were released while they slept: each woke on a port of the block of the replica
    # that woke it, never one another session holds.
    ports = {sid: s["port"] for sid, s in woken.items()}
    assert len(set(ports.values())) == SESSIONS, Counter(ports.values()).most_common(3)
    assert all(cluster.replica_of_port(p) for p in ports.values())
    assert all(serves(p) for p in ports.values()), [p for p in ports.values() if not serves(p)]
    # Each step happened once, whichever replica was asked.
    lives = {sid: transitions(http, sid) for sid in ids}
    assert {sid: life for sid, life in lives.items() if life != LIFE} == {}

    expect_all(
        run_all([partial(call, cluster, "DELETE", f"/v1/sessions/{sid}") for sid in ids], WORKERS),
        202,
    )
    for sid in ids:
        wait_session(http, sid, lambda s: s is None, "deleted")
    assert not [s for s in cluster.all_sessions(http) if s["id"] in ids]
    assert all(port_closed(p) for p in ports.values())
    assert not marked_processes(cluster.replicas[0].runtime_root)
    assert cluster.nginx.problems() == []


def test_each_replica_drives_sessions_another_replica_created(cluster: Cluster) -> None:
    def flow(creator: Server, actor: Server) -> str:
        with (
            cluster.client(creator.url) as made,
            cluster.client(actor.url) as http,
        ):
            answer = made.post("/v1/sessions", json={"user_id": f"from-{creator.port}"})
            assert answer.status_code == 201, answer.text
            sid, port = answer.json()["id"], answer.json()["port"]
            assert cluster.replica_of_port(port) is creator
            wait_session(http, sid, lambda s: s is not None and s["state"] == "running", "running")
            assert serves(port)

            answer = http.post(f"/v1/sessions/{sid}/activity", json={"kind": "command"})
            assert answer.status_code == 202, answer.text
            for replica in cluster.replicas:
                with cluster.client(replica.url) as other:
                    seen = wait_session(
                        other,
                        sid,
                        lambda s: s is not None and s["last_activity"]["kind"] == "command",
                        f"activity seen by {replica.url}",
                    )
                    assert seen is not None and seen["last_activity"]["source"] == "api"

            answer = http.post(f"/v1/sessions/{sid}/sleep")
            assert answer.status_code == 202, answer.text
            wait_session(http, sid, lambda s: s is not None and s["state"] == "sleeping", "asleep")
            assert port_closed(port)

            answer = http.post(f"/v1/sessions/{sid}/wake")
            assert answer.status_code == 202, answer.text
            woken = wait_session(
                http, sid, lambda s: s is not None and s["state"] == "running", "awake"
            )
            # on a port the waking replica took (released while it slept)
            assert woken is not None and cluster.replica_of_port(woken["port"]) is actor
            port = woken["port"]
            assert serves(port)
            assert transitions(http, sid) == LIFE

            answer = http.delete(f"/v1/sessions/{sid}")
            assert answer.status_code == 202, answer.text
            wait_session(http, sid, lambda s: s is None, "deleted")
            assert made.get(f"/v1/sessions/{sid}").status_code == 404
            assert port_closed(port)
            return sid

    pairs = [(a, b) for a in cluster.replicas for b in cluster.replicas if a is not b]
    done = run_all([partial(flow, a, b) for a, b in pairs], workers=len(pairs))
    assert len(set(done)) == REPLICAS * (REPLICAS - 1)
    assert not marked_processes(cluster.replicas[0].runtime_root)


async def test_socketio_over_websocket_through_nginx(cluster: Cluster) -> None:
    """The example's /socket.io/ location upgrades, and WebSocket-only clients need no
    stickiness: three sockets in a row land on the three replicas (round robin), only one of
    which created the session, and each one's activity counts."""
    with cluster.client() as http:
        answer = http.post("/v1/sessions", json={"user_id": "socket"})
        assert answer.status_code == 201, answer.text
        sid = answer.json()["id"]
        wait_session(http, sid, lambda s: s is not None and s["state"] == "running", "running")
        tokens = []
        for n in range(REPLICAS):
            answer = http.post(f"/v1/sessions/{sid}/tokens", json={"name": f"tab-{n}"})
            assert answer.status_code == 201, answer.text
            tokens.append(answer.json()["token"])

    kinds = ["build", "file-change", "chat"]
    for token, kind in zip(tokens, kinds, strict=True):
        probe = Probe(cluster.url)
        try:
            await probe.connect(token, transports=["websocket"])
            assert probe.sio.transport() == "websocket"
            hello = await probe.wait("session")
            assert hello["state"] == "running"
            assert await probe.call("activity", {"kind": kind}) == {"ok": True, "counted": True}
        finally:
            await probe.close()

    def upgrades() -> list[tuple[str, int, str]]:
        found = [r for r in cluster.nginx.requests() if "transport=websocket" in r[2]]
        return found if len(found) == REPLICAS else []

    sockets = wait_until(upgrades, what="nginx to log the three WebSocket requests")
    assert [status for _, status, _ in sockets] == [101] * REPLICAS
    assert {u for u, _, _ in sockets} == {f"127.0.0.1:{r.port}" for r in cluster.replicas}

    for replica in cluster.replicas:
        with cluster.client(replica.url) as other:
            seen = wait_session(
                other,
                sid,
                lambda s: s is not None and s["last_activity"]["kind"] == kinds[-1],
                f"gateway activity seen by {replica.url}",
            )
            assert seen is not None and seen["last_activity"]["source"] == "gateway"
    assert cluster.nginx.problems() == []
