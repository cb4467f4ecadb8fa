"""Meaningful activity is sampled into the timeline (at most one a minute per session, with
kind and source), written with the activity flush; ``/v1/stats`` counts from the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import httpx
import pytest

from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.errors import TemporaryError
from dormant.policy import ActivityKind, ActivityTimes
from dormant.reconciler import Reconciler
from dormant.store import Store
from dormant.testing import FlakyStore
from tests.unit.conftest import Rig


@pytest.fixture
async def api(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    key = await create_key(rig.store, "acme", False, "test", rig.clock.now())
    app = create_api(rig.engine, Reconciler(rig.engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dormant",
        headers={"X-API-Key": key},
    ) as client:
        yield client


async def test_at_most_one_sample_a_minute_with_kind_and_source(
    rig: Rig, api: httpx.AsyncClient
) -> None:
    sid = (await api.post("/v1/sessions", json={"user_id": "ann"})).json()["id"]
    await rig.settle()
    first_at = rig.clock.now()
    rig.engine.record_activity(sid, ActivityKind.BUILD, source="gateway")
    for _ in range(5):  # within the same minute: not sampled again
        rig.clock.advance(10)
        rig.engine.record_activity(sid, ActivityKind.CHAT, source="gateway")
    rig.engine.record_activity(sid, ActivityKind.FOCUS, source="gateway")  # presence: never
    rig.clock.advance(15)  # 65 s after the first
    rig.engine.record_activity(sid, ActivityKind.REQUEST, source="proxy")
    assert await rig.engine.flush() == 1
    events = (await api.get(f"/v1/sessions/{sid}/events")).json()["items"]
    samples = [e for e in events if e["type"] == "activity"]
    assert [(e["kind"], e["source"], e["reason"]) for e in samples] == [
        ("build", "gateway", "build activity via gateway"),
        ("request", "proxy", "request activity via proxy"),
    ]
    assert samples[0]["at"] == first_at.isoformat().replace("+00:00", "Z")


async def test_samples_wait_for_a_store_that_is_down(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    rig.engine.record_activity(record.id, ActivityKind.COMMAND, source="api")
    flaky = FlakyStore(rig.store)
    rig.engine.store = cast(Store, flaky)
    flaky.fail("add_samples")
    with pytest.raises(TemporaryError):
        await rig.engine.flush_samples()
    assert await rig.engine.flush_samples() == 1  # kept, written by the next flush
    events = await rig.store.list_events(record.id)
    assert [(e.code, e.source) for e in events if e.type == "activity"] == [("command", "api")]


async def test_stats_count_states_levels_and_transitions(rig: Rig, api: httpx.AsyncClient) -> None:
    ids = [
        (await api.post("/v1/sessions", json={"user_id": f"u{i}"})).json()["id"] for i in range(3)
    ]
    await rig.settle()
    await api.post(f"/v1/sessions/{ids[0]}/sleep")
    await rig.settle()
    rig.clock.advance(300)  # the two running ones are idle now (5 min)
    rig.engine.record_activity(ids[1], ActivityKind.BUILD, source="api")
    await rig.engine.flush()
    stats = (await api.get("/v1/stats")).json()
    assert stats["sessions_by_state"] == {"running": 2, "sleeping": 1}
    assert stats["sessions_by_level"] == {
        "active": 1,
        "idle": 1,
        "background": 0,
        "disconnected": 0,
    }
    assert stats["transitions_by_reason"] == {"create": {"create": 3}, "sleep": {"manual": 1}}


async def test_activity_being_flushed_is_still_seen_by_reads_and_decisions(rig: Rig) -> None:
    """The flush takes the buffer before the store has the batch: in between, a read or a sleep
    decision must not fall back to the row's older activity."""
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    rig.clock.advance(3600)  # idle long enough to be due for sleep on the stored row
    rig.engine.record_activity(record.id, ActivityKind.CHAT, source="api")
    written = asyncio.Event()
    release = asyncio.Event()
    store_write = rig.store.flush_activity

    async def held(batch: dict[str, ActivityTimes]) -> None:
        written.set()
        await release.wait()
        await store_write(batch)

    rig.store.flush_activity = held  # type: ignore[method-assign]
    flushing = asyncio.create_task(rig.engine.flush())
    await written.wait()
    seen = await rig.engine.get(record.id)
    assert (seen.last_activity_kind, seen.last_activity_at) == ("chat", rig.clock.now())
    stored = await rig.store.get_session(record.id)
    assert stored is not None and stored.last_activity_kind != "chat"  # not written yet
    assert rig.engine._still_due(stored, "idle") is False
    release.set()
    assert await flushing == 1
    after = await rig.store.get_session(record.id)
    assert after is not None and after.last_activity_kind == "chat"
