"""The Python client's session calls (``dormant.client``) against the API in process:
``ensure_session``, ``list_sessions`` (filters, every page), ``stats`` and idempotent creates."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.client import ApiError, AsyncClient
from dormant.reconciler import Reconciler
from tests.unit.conftest import Rig


@pytest.fixture
async def dormant(rig: Rig) -> AsyncIterator[AsyncClient]:
    key = await create_key(rig.store, "default", True, "test", rig.clock.now())
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_api(rig.engine, Reconciler(rig.engine))),
        base_url="http://dormant",
        headers={"X-API-Key": key},
    )
    async with AsyncClient("http://dormant", key, http=http) as client:
        yield client
    await rig.settle()


async def test_ensure_session_gets_or_creates(dormant: AsyncClient, rig: Rig) -> None:
    made = await dormant.ensure_session("gina@example.org", labels={"team": "ml"})
    assert (made["name"], made["user_id"]) == ("default", "gina@example.org")
    again = await dormant.ensure_session("gina@example.org")
    assert again["id"] == made["id"]
    other = await dormant.ensure_session("gina@example.org", "scratch")
    assert other["id"] != made["id"]
    await rig.settle()
    await dormant.sleep(made["id"])
    await rig.settle()
    woken = await dormant.ensure_session("gina@example.org", wake=True, wait=0)
    assert woken["id"] == made["id"]
    await rig.settle()
    assert (await dormant.get_session(made["id"]))["state"] == "running"
    with pytest.raises(ApiError) as refused:
        await dormant.ensure_session("gina", "Not A Name")
    assert refused.value.status == 422


async def test_list_sessions_filters_and_follows_cursors(dormant: AsyncClient) -> None:
    ids = set()
    for n in range(5):
        labels = {"team": "ml" if n < 3 else "web", "n": str(n)}
        ids.add((await dormant.create_session(f"u{n % 2}", labels=labels))["id"])
    every = await dormant.list_sessions(page_size=2)
    assert {s["id"] for s in every} == ids and len(every) == 5
    ml = await dormant.list_sessions(labels={"team": "ml"}, page_size=1)
    assert sorted(s["labels"]["n"] for s in ml) == ["0", "1", "2"]
    both = await dormant.list_sessions(labels={"team": "ml", "n": "1"})
    assert [s["labels"]["n"] for s in both] == ["1"]
    assert len(await dormant.list_sessions(user_id="u0", template="default")) == 3
    assert await dormant.list_sessions(name="nothing") == []


async def test_stats_and_idempotent_create(dormant: AsyncClient) -> None:
    first = await dormant.create_session("gina", idempotency_key="job-42")
    again = await dormant.create_session("gina", idempotency_key="job-42")
    assert again["id"] == first["id"]
    with pytest.raises(ApiError) as reused:
        await dormant.create_session("hugo", idempotency_key="job-42")
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")
    stats = await dormant.stats()
    assert sum(stats["sessions_by_state"].values()) == 1
    assert set(stats) >= {"sessions_by_state", "sessions_by_level", "transitions_by_reason"}
