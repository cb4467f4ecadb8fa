"""Sleeping sessions release their host port (process runtime): a range of 101 ports carries 300
sessions, as long as at most 100 of them run at once, and every one of them wakes again on a
free port of the range and serves there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from .conftest import Server

# A long burst: it shares a pytest-xdist worker with one engine's chaos test (test_docker_chaos.py),
# so that the longest tests are spread over two workers, each running its share in turn.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("bursts-b")]

PORTS = 101
SESSIONS = 300
BATCH = 100  # at most this many run at once
WAIT = 60  # ?wait= seconds: the API answers with the outcome


async def gather(calls: list[Awaitable[httpx.Response]]) -> list[httpx.Response]:
    return list(await asyncio.gather(*calls))


async def serves(port: int) -> bool:
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            return (await http.get(f"http://127.0.0.1:{port}/")).status_code == 200
        except httpx.HTTPError:
            return False


async def running_count(api: httpx.AsyncClient) -> int:
    stats = await api.get("/v1/stats")
    assert stats.status_code == 200, stats.text
    return int(stats.json()["sessions_by_state"].get("running", 0))


def test_a_range_of_101_ports_carries_300_sessions_that_sleep_and_wake(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(
        ports=PORTS,
        DORMANT_RUNTIME_CONCURRENCY="32",
        DORMANT_RATE_LIMIT="100000",
        DORMANT_RATE_BURST="100000",
    )
    session_ports = set(server.session_ports)
    assert len(session_ports) == PORTS
    began = time.monotonic()

    async def check_running(
        api: httpx.AsyncClient, ids: list[str], most: list[int]
    ) -> list[dict[str, Any]]:
        """Each is running on a port of the range, its own, and serves HTTP there."""
        answers = await gather([api.get(f"/v1/sessions/{sid}") for sid in ids])
        sessions = [a.json() for a in answers]
        assert [s["state"] for s in sessions] == ["running"] * len(ids), sessions
        ports = [s["port"] for s in sessions]
        assert set(ports) <= session_ports and len(set(ports)) == len(ports)
        served = await asyncio.gather(*(serves(p) for p in ports))
        assert all(served), [s["id"] for s, ok in zip(sessions, served, strict=True) if not ok]
        now = await running_count(api)
        most.append(now)
        assert now <= BATCH
        return sessions

    async def sleep_all(api: httpx.AsyncClient, ids: list[str]) -> None:
        slept = await gather(
            [api.post(f"/v1/sessions/{sid}/sleep", params={"wait": WAIT}) for sid in ids]
        )
        outcomes = [r.json()["outcome"] for r in slept]
        assert outcomes == [{"state": "sleeping", "ok": True, "error": None}] * len(ids)
        after = await gather([api.get(f"/v1/sessions/{sid}") for sid in ids])
        assert {a.json()["port"] for a in after} == {None}  # released

    async def scenario() -> tuple[list[str], list[int], dict[str, set[int]]]:
        ids: list[str] = []
        most: list[int] = []
        ports_of: dict[str, set[int]] = {}
        async with server.async_client() as api:
            api.timeout = httpx.Timeout(WAIT + 30)
            # created in batches of 100, each batch put to sleep before the next
            for b in range(SESSIONS // BATCH):
                made = await gather(
                    [
                        api.post(
                            "/v1/sessions", params={"wait": WAIT}, json={"user_id": f"u{b}-{i}"}
                        )
                        for i in range(BATCH)
                    ]
                )
                assert [m.status_code for m in made] == [201] * BATCH, made[0].text
                batch = [m.json()["id"] for m in made]
                for s in await check_running(api, batch, most):
                    ports_of[s["id"]] = {s["port"]}
                await sleep_all(api, batch)
                ids += batch
            # every one woken again, 100 at a time, on a free port of the range
            for start in range(0, SESSIONS, BATCH):
                batch = ids[start : start + BATCH]
                woken = await gather(
                    [api.post(f"/v1/sessions/{sid}/wake", params={"wait": WAIT}) for sid in batch]
                )
                outcomes = [w.json()["outcome"] for w in woken]
                assert outcomes == [{"state": "running", "ok": True, "error": None}] * BATCH
                for s in await check_running(api, batch, most):
                    ports_of[s["id"]].add(s["port"])
                await sleep_all(api, batch)
            stats = (await api.get("/v1/stats")).json()["sessions_by_state"]
            assert stats.get("sleeping") == SESSIONS and not stats.get("running"), stats
        return ids, most, ports_of

    ids, most, ports_of = asyncio.run(scenario())
    elapsed = time.monotonic() - began
    assert len(set(ids)) == SESSIONS
    assert max(most) == BATCH
    used = set().union(*ports_of.values())
    assert used <= session_ports
    print(
        f"{SESSIONS} sessions on {PORTS} ports: {2 * SESSIONS} starts, {2 * SESSIONS} sleeps in "
        f"{elapsed:.1f}s; {len(used)} ports used; "
        f"{sum(len(p) > 1 for p in ports_of.values())} sessions woke on another port"
    )
