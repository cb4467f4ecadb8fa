"""Awaitable operations: a caller waits for the outcome of a create, sleep, wake or delete;
concurrent callers share it; failures and timeouts are answered, not hung on."""

from __future__ import annotations

import asyncio
from typing import Any

from dormant.engine.outcome import OperationKind, OperationStatus, Outcome
from dormant.errors import RuntimeFailure
from dormant.policy import State

from .conftest import Rig


async def test_waiters_get_the_outcome_of_each_operation(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    created = await rig.engine.wait_for(record.id, State.RUNNING, 5)
    assert created == Outcome(record.id, State.RUNNING, State.RUNNING, None)
    assert created.ok
    await rig.engine.sleep(record.id)
    slept = await rig.engine.wait_for(record.id, State.SLEEPING, 5)
    assert slept is not None and (slept.state, slept.ok) == (State.SLEEPING, True)
    await rig.engine.wake(record.id)
    woken = await rig.engine.wait_for(record.id, State.RUNNING, 5)
    assert woken is not None and woken.ok
    await rig.engine.delete(record.id)
    gone = await rig.engine.wait_for(record.id, State.DELETED, 5)
    assert gone is not None and gone.ok
    await rig.engine.drain()


async def test_concurrent_waiters_share_one_outcome_and_see_a_failure(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.sleep(record.id)
    await rig.settle()
    rig.runtime.fail("start", RuntimeFailure("image vanished"))
    waits = [rig.engine.wait_for(record.id, State.RUNNING, 5) for _ in range(3)]
    await rig.engine.wake(record.id)
    outcomes = await asyncio.gather(*waits)
    assert {o.state if o else None for o in outcomes} == {State.FAILED}
    assert all(o is not None and not o.ok and "image vanished" in (o.error or "") for o in outcomes)
    await rig.engine.drain()


async def test_a_wait_that_runs_out_answers_none(rig: Rig) -> None:
    release = asyncio.Event()
    original = rig.runtime.start

    async def slow_start(name: str, state: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return await original(name, state)

    rig.runtime.start = slow_start  # type: ignore[method-assign]
    record = await rig.engine.create_session(tenant="t", user_id="u")
    assert await rig.engine.wait_for(record.id, State.RUNNING, 0.2) is None
    release.set()
    late = await rig.engine.wait_for(record.id, State.RUNNING, 5)
    assert late is not None and late.ok
    await rig.engine.drain()


def test_operation_kinds_and_statuses_are_the_stored_strings() -> None:
    assert [k.value for k in OperationKind] == ["create", "start", "stop", "remove"]
    assert OperationStatus.SUPERSEDED == "superseded"
