"""Chaos on the docker runtime: ``dormant serve`` killed with SIGKILL at chosen crash points and
at random moments while sessions are created, put to sleep, woken and deleted concurrently, and
the engine's API killed mid-burst. Afterwards the labelled containers must equal the live
sessions exactly, nothing may be left in a transitional state, and every session the API
acknowledged must exist or have a recorded reason for its end.

It runs on each engine (Podman and Docker Engine). The engine's API is one of this test's own,
so killing it disturbs nobody else: a private ``podman system service`` on a socket of this test
(same storage as the shared one), or a relay to the shared dockerd (see
``tests/integration/engines.py``). The burst is 100 sessions and 10 kills on Podman, 50 and 6
on Docker Engine (the same code of dormant's under a second engine: half the load, every crash
point and the outage still); ``DORMANT_CHAOS_SESSIONS`` and ``DORMANT_CHAOS_KILLS`` set both.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ..integration.engines import (
    CONTAINER_PORT,
    ENGINES,
    IMAGE,
    RUN_ID,
    RUN_LABEL,
    ContainerEngine,
    PrivateApi,
    container_names,
)

if TYPE_CHECKING:
    from .conftest import Server

# The long bursts share one pytest-xdist worker (one after another, beside the lighter tests).
pytestmark = pytest.mark.e2e

#: Sessions and SIGKILLs of the burst, by engine.
BURST = {"podman": (100, 10), "docker": (50, 6)}
#: Each engine's burst has a pytest-xdist worker of its own (scripts/test.sh): they are the
#: longest tests, and one after the other on a worker they would finish last.
GROUPS = {"podman": "bursts-a", "docker": "bursts-b"}


def burst(kind: str) -> tuple[int, int]:
    sessions, kills = BURST[kind]
    return (
        int(os.environ.get("DORMANT_CHAOS_SESSIONS", sessions)),
        int(os.environ.get("DORMANT_CHAOS_KILLS", kills)),
    )


TRANSITIONAL = {"creating", "starting", "stopping", "deleting"}
#: Bounds against hanging (never timing assertions).
OP_TIMEOUT = 240.0
CONVERGE_TIMEOUT = 180.0

CONFIG = f"""
default_template = "box"

[templates.box]
runtime = "docker"
image = "{IMAGE}"
port = {CONTAINER_PORT}
start_timeout = 60
stop_timeout = 1
"""


@pytest.fixture(
    params=[pytest.param(kind, marks=pytest.mark.xdist_group(GROUPS[kind])) for kind in ENGINES]
)
def container_engine(request: pytest.FixtureRequest) -> Iterator[ContainerEngine]:
    """Each engine; this run's containers and dormant's volumes are removed afterwards."""
    on = ENGINES[request.param]
    on.host()
    try:
        yield on
    finally:
        on.purge_run()
        on.remove_volumes(on.managed_volumes())
        assert on.managed_containers() == []


@pytest.fixture
def engine(tmp_path: Path, container_engine: ContainerEngine) -> Iterator[PrivateApi]:
    """The engine's API of this test's own (it kills it once mid-burst)."""
    service = container_engine.private_api(tmp_path)
    try:
        yield service.start()
    finally:
        service.kill()


def docker_server(
    server_factory: Callable[..., Server], service: PrivateApi, tmp_path: Path, sessions: int
) -> Server:
    config = tmp_path / "dormant.toml"
    config.write_text(CONFIG)
    return server_factory(  # type: ignore[no-any-return]
        ports=sessions + 40,
        start=False,
        DORMANT_CONFIG=str(config),
        DORMANT_DOCKER_HOST=service.url,
        DORMANT_DOCKER_SCOPE=f"{RUN_LABEL}={RUN_ID}",
        DORMANT_RECONCILE_INTERVAL="3",
        DORMANT_RUNTIME_OUTAGE_PATIENCE="300",
        DORMANT_RATE_LIMIT="100000",
        DORMANT_RATE_BURST="100000",
    )


class Api:
    """A client that rides out server crashes: connection errors and 5xx are retried."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30.0)

    def call(
        self, method: str, path: str, ok: tuple[int, ...], timeout: float = OP_TIMEOUT, **kw: Any
    ) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.http.request(
                    method, path, headers={"X-API-Key": self.server.key}, **kw
                )
                if response.status_code in ok:
                    return response
                assert b"Traceback" not in response.content, response.text
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path} never answered {ok}: {last}")
            time.sleep(0.3)

    def state(self, sid: str) -> str | None:
        response = self.call("GET", f"/v1/sessions/{sid}", (200, 404))
        return None if response.status_code == 404 else str(response.json()["state"])

    def wait_state(
        self, sid: str, wanted: set[str], timeout: float = OP_TIMEOUT, soft: bool = False
    ) -> str:
        """Until the session is in ``wanted`` (or failed, or gone); after ``timeout`` fail,
        or with ``soft`` return the state it is in."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(sid)
            if state in wanted or state in ("failed", None):
                return state or "gone"
            if time.monotonic() > deadline:
                if soft:
                    return str(state)
                raise AssertionError(f"{sid} stuck in {state}, wanted {wanted}")
            time.sleep(0.3)

    def drive(self, sid: str, action: str, target: str) -> str:
        """Ask for ``action`` until the session is ``target``: a crash can lose a request that
        was answered 202 before its operation was written, so a client asks again."""
        deadline = time.monotonic() + OP_TIMEOUT
        while True:
            state = self.wait_state(sid, {"running", "sleeping"})  # past any transition
            if state == target or state in ("failed", "gone"):
                return state
            assert time.monotonic() < deadline, f"{sid} never became {target}"
            self.call("POST", f"/v1/sessions/{sid}/{action}", (202, 409))
            self.wait_state(sid, {target}, timeout=20, soft=True)

    def close(self) -> None:
        self.http.close()


def life(
    server: Server, index: int, acked: set[str], deleted: set[str], lock: threading.Lock
) -> str:
    """One user's session: create, sleep, wake, and (every other one) delete."""
    api = Api(server)
    try:
        response = api.call(
            "POST",
            "/v1/sessions",
            (201,),
            json={"user_id": f"u{index}", "labels": {RUN_LABEL: RUN_ID}},
        )
        sid = str(response.json()["id"])
        with lock:
            acked.add(sid)
        if api.wait_state(sid, {"running"}) != "running":
            return sid
        if api.drive(sid, "sleep", "sleeping") != "sleeping":
            return sid
        state = api.drive(sid, "wake", "running")
        if index % 2 == 0:
            api.call("DELETE", f"/v1/sessions/{sid}", (202, 404))
            deadline = time.monotonic() + OP_TIMEOUT
            while api.state(sid) is not None:  # a crash may drop the request: ask again
                assert time.monotonic() < deadline, f"{sid} never went away"
                time.sleep(0.3)
                api.call("DELETE", f"/v1/sessions/{sid}", (202, 404))
            with lock:
                deleted.add(sid)
        return f"{sid} {state}"
    finally:
        api.close()


def once(api: Api, method: str, path: str, ok: int, **kw: Any) -> str | None:
    """One request; the session id (or path) if it answered ``ok``, None if the server died."""
    try:
        response = api.http.request(method, path, headers={"X-API-Key": api.server.key}, **kw)
    except httpx.HTTPError:
        return None
    assert response.status_code == ok, response.text
    return str(response.json().get("id", path)) if response.content else path


def labelled_containers(on: ContainerEngine) -> set[str]:
    return container_names(on.managed_containers())


def live_sessions(api: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = api.call("GET", "/v1/sessions", (200,), params=params).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def converged(api: Api, on: ContainerEngine) -> tuple[bool, str]:
    sessions = live_sessions(api)
    stuck = [(s["id"], s["state"]) for s in sessions if s["state"] in TRANSITIONAL]
    expected = {f"dormant-{s['id']}" for s in sessions}
    actual = labelled_containers(on)
    ok = not stuck and expected == actual
    return ok, (
        f"stuck={stuck} sessions-without-container={sorted(expected - actual)} "
        f"containers-without-session={sorted(actual - expected)}"
    )


def wait_converged(api: Api, on: ContainerEngine) -> None:
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while True:
        ok, why = converged(api, on)
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"did not converge: {why}")
        time.sleep(0.5)


def assert_acknowledged_accounted_for(api: Api, acked: set[str], deleted: set[str]) -> None:
    for sid in sorted(acked):
        response = api.call("GET", f"/v1/sessions/{sid}", (200, 404))
        if sid not in deleted:
            assert response.status_code == 200, f"{sid} was acknowledged and never deleted: lost"
            assert response.json()["state"] not in TRANSITIONAL
            continue
        assert response.status_code == 404, f"{sid} was deleted but answers {response.text}"
        events = api.call("GET", f"/v1/sessions/{sid}/events", (200,)).json()["items"]
        ends = [e for e in events if e["to_state"] == "deleted"]
        assert ends and ends[-1]["reason"], f"{sid} ended without a recorded reason: {events}"


def test_crash_points_and_random_kills_converge(
    server_factory: Callable[..., Server],
    container_engine: ContainerEngine,
    engine: PrivateApi,
    tmp_path: Path,
) -> None:
    sessions_wanted, kills_wanted = burst(container_engine.kind)
    server = docker_server(server_factory, engine, tmp_path, sessions_wanted)
    api = Api(server)
    acked: set[str] = set()
    deleted: set[str] = set()
    lock = threading.Lock()
    try:
        t0 = time.monotonic()
        # 1. each crash point once: armed, dormant SIGKILLs itself there; a restart finishes
        crash_dir = tmp_path / "crash"
        crash_dir.mkdir()
        server.env["DORMANT_TEST_CRASH_DIR"] = str(crash_dir)
        server.start()
        for point in (
            "after-intent",
            "after-create",
            "after-start",
            "before-state-update",
            "after-stop",
            "after-remove",
        ):
            proc = server.proc
            assert proc is not None
            body = {"user_id": f"crash-{point}", "labels": {RUN_LABEL: RUN_ID}}
            if point in ("after-stop", "after-remove"):
                sid = str(api.call("POST", "/v1/sessions", (201,), json=body).json()["id"])
                acked.add(sid)
                assert api.wait_state(sid, {"running"}) == "running"
                (crash_dir / point).touch()
                if point == "after-stop":
                    once(api, "POST", f"/v1/sessions/{sid}/sleep", 202)
                elif once(api, "DELETE", f"/v1/sessions/{sid}", 202) is not None:
                    deleted.add(sid)
            else:
                (crash_dir / point).touch()
                # One attempt: the crash may come before the answer (then nothing is acked).
                found = once(api, "POST", "/v1/sessions", 201, json=body)
                if found is not None:
                    acked.add(found)
                sid = found or ""
            server.wait_until(
                lambda p=proc: p.poll() is not None,  # type: ignore[misc]
                timeout=120,
                what=f"the crash at {point}",
            )
            assert proc.returncode == -9, f"expected SIGKILL at {point}, got {proc.returncode}"
            assert not (crash_dir / point).exists()
            server.proc = None
            server.start()
            wait_converged(api, container_engine)
            print(f"[{time.monotonic() - t0:6.1f}s] crash point {point} converged", flush=True)
            if sid and point == "after-remove":
                assert api.state(sid) is None
            elif sid:
                assert api.state(sid) in ("running", "sleeping"), (point, api.state(sid))

        # 2. a concurrent burst while the server is killed at random moments and the engine
        #    service once; every kill is followed by a restart
        failures: list[BaseException] = []
        done = threading.Event()
        kills = 0
        outage_seen: dict[str, Any] = {}

        def killer() -> None:
            nonlocal kills
            rng = random.Random()
            try:
                while kills < kills_wanted:
                    time.sleep(rng.uniform(1.0, 4.0))  # from when it serves again
                    server.kill()
                    kills += 1
                    server.start()
                    if kills == max(2, kills_wanted // 2) and not outage_seen:
                        engine.kill()
                        response = httpx.get(f"{server.url}/readyz", timeout=10)
                        outage_seen["readyz"] = response.status_code
                        outage_seen["body"] = response.text
                        time.sleep(rng.uniform(1.0, 3.0))
                        engine.start()
                        server.wait_until(
                            lambda: (
                                httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
                            ),
                            timeout=60,
                            what="/readyz after the engine came back",
                        )
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=killer, name="killer")
        thread.start()
        try:
            with ThreadPoolExecutor(max_workers=min(sessions_wanted, 50)) as pool:
                results = list(
                    pool.map(
                        lambda i: life(server, i, acked, deleted, lock), range(sessions_wanted)
                    )
                )
        finally:
            done.set()
            thread.join(timeout=300)
        assert not thread.is_alive()
        assert not failures, failures
        assert kills >= kills_wanted
        assert len(results) == sessions_wanted
        assert outage_seen.get("readyz") == 503, outage_seen
        assert "runtime.docker" in outage_seen.get("body", ""), outage_seen

        print(f"[{time.monotonic() - t0:6.1f}s] burst done, {kills} kills", flush=True)
        # 3. converge: containers == live sessions, nothing transitional, nothing lost
        if server.proc is None:
            server.start()
        wait_converged(api, container_engine)
        assert_acknowledged_accounted_for(api, acked, deleted)
        sessions = live_sessions(api)
        assert len(sessions) >= sessions_wanted // 2
        failed = [s for s in sessions if s["state"] == "failed"]
        assert all(s["error"] for s in failed), failed
        print(
            f"chaos on {container_engine.kind}: {sessions_wanted} sessions, {kills} kills, "
            f"{len(acked)} acknowledged, {len(deleted)} deleted, {len(sessions)} live "
            f"({len(failed)} failed)"
        )
    finally:
        api.close()
        with contextlib.suppress(Exception):
            server.stop()
