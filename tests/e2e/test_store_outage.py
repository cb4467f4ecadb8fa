"""A store hiccup never fails acknowledged work: PostgreSQL backends are terminated
(``pg_terminate_backend``) again and again while sessions are created, put to sleep, woken and
deleted. Every acknowledged operation must reach its state, nothing may end ``failed``, no live
session's process may be removed, and no timeline may claim a crash that did not happen."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from .replicas import psql, throwaway_database

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e

USERS = 8
KILLS = 15
OP_TIMEOUT = 120.0


@pytest.fixture
def database() -> Iterator[str]:
    """A throwaway database's name (created and dropped by tests/e2e/replicas.py)."""
    with throwaway_database() as url:
        yield url.rsplit("/", 1)[1]


class Api:
    """Retries what was not acknowledged (connection errors, 5xx); returns the first answer
    in ``ok``."""

    def __init__(self, server: Server) -> None:
        self.http = httpx.Client(
            base_url=server.url, headers={"X-API-Key": server.key}, timeout=30.0
        )

    def call(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> httpx.Response:
        deadline = time.monotonic() + OP_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            try:
                response = self.http.request(method, path, **kw)
            except httpx.HTTPError as exc:
                last = repr(exc)
            else:
                assert b"Traceback" not in response.content, response.text
                if response.status_code in ok:
                    return response
                assert response.status_code >= 500, response.text  # only 5xx is retried
                last = response.text
            time.sleep(0.1)
        raise AssertionError(f"{method} {path} never answered {ok}: {last}")

    def wait(self, sid: str, state: str | None) -> dict[str, Any] | None:
        deadline = time.monotonic() + OP_TIMEOUT
        current: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            response = self.call("GET", f"/v1/sessions/{sid}", (200, 404))
            current = None if response.status_code == 404 else response.json()
            assert current is None or current["state"] != "failed", current
            if (current["state"] if current else None) == state:
                return current
            time.sleep(0.1)
        raise AssertionError(f"{sid} never reached {state}: {current}")


def test_terminated_backends_fail_no_acknowledged_operation(
    server_factory: Callable[..., Server], database: str
) -> None:
    server = server_factory(
        ports=USERS * 3 + 10,
        DORMANT_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        DORMANT_RECONCILE_INTERVAL="1",
        DORMANT_RATE_LIMIT="100000",
        DORMANT_RATE_BURST="100000",
    )
    api = Api(server)
    stop = threading.Event()
    kills: list[int] = []
    created: list[str] = []
    served: list[bool] = []

    def killer() -> None:
        while len(kills) < KILLS and not stop.is_set():
            time.sleep(0.4)
            out = psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            )
            kills.append(int(out.strip() or 0))

    def user(n: int) -> None:
        round_ = 0
        while round_ < 2 or len(kills) < KILLS:  # keep working until the last kill
            round_ += 1
            body = {"user_id": f"u{n}-{round_}"}
            sid = api.call("POST", "/v1/sessions", (201,), json=body).json()["id"]
            created.append(sid)
            running = api.wait(sid, "running")
            assert running is not None
            api.call("POST", f"/v1/sessions/{sid}/sleep", (202,))
            api.wait(sid, "sleeping")
            api.call("POST", f"/v1/sessions/{sid}/wake", (202,))
            woken = api.wait(sid, "running")
            assert woken is not None
            served.append(server.port_answers(woken["port"]) is not None)
            api.call("DELETE", f"/v1/sessions/{sid}", (202,))
            api.wait(sid, None)

    chaos = threading.Thread(target=killer)
    chaos.start()
    try:
        exercise(api, user, chaos, stop)
    finally:
        api.http.close()
    assert len(kills) == KILLS and sum(kills) > 0, kills
    assert len(created) >= USERS * 2 and all(served), served
    check_afterwards(server, created)


def exercise(
    api: Api, user: Callable[[int], None], chaos: threading.Thread, stop: threading.Event
) -> None:
    try:
        with ThreadPoolExecutor(USERS) as pool:
            for future in [pool.submit(user, n) for n in range(USERS)]:
                future.result()
    finally:
        stop.set()
        chaos.join()


def check_afterwards(server: Server, created: list[str]) -> None:
    time.sleep(3)  # a few reconcile sweeps after the storm
    api = Api(server)
    try:
        check_timelines(api, created)
    finally:
        api.http.close()


def check_timelines(api: Api, created: list[str]) -> None:
    stats = api.call("GET", "/v1/stats", (200,)).json()
    assert stats["orphans_removed"] == 0, stats
    for sid in created:
        timeline = api.call("GET", f"/v1/sessions/{sid}/events", (200,)).json()["items"]
        reasons = [e["reason"] for e in timeline]
        assert not [r for r in reasons if "interrupted by a crash" in r], reasons
        assert "failed" not in [e.get("to_state") for e in timeline], timeline
        assert timeline[-1]["to_state"] == "deleted", timeline[-1]
