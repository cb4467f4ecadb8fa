"""Connection counts survive crashes: three clients are connected when ``dormant serve`` is
SIGKILLed; after the restart the session shows 0 connections (the dead instance's count is
dropped, with a timeline entry) and, no client coming back, sleeps after its grace period."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.gateway_support import Api, Probe, eventually

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e


async def test_counts_of_a_killed_server_are_dropped_and_grace_starts(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(DORMANT_POLICY_DISCONNECT_GRACE="3")
    api = Api(server.url, server.key)
    probes = [Probe(server.url) for _ in range(3)]
    try:
        session = await api.create("carol")
        sid = session["id"]
        for probe in probes:
            await probe.connect(await api.token(sid, name="carol"))

        async def three() -> dict[str, Any] | None:
            current = await api.session(sid)
            return current if current and current["connections"] == 3 else None

        await eventually(three, what="3 connections counted")
        server.kill()
        for probe in probes:  # their server is gone; they must not reconnect
            await probe.close()
        server.start()
        after = await api.session(sid)
        assert after is not None
        assert (after["state"], after["connections"]) == ("running", 0), after
        timeline = await api.timeline(sid)
        dropped = [e for e in timeline if e.get("code") == "connections-dropped"]
        assert len(dropped) == 1 and "dropped" in dropped[0]["reason"], timeline

        async def asleep() -> dict[str, Any] | None:
            current = await api.session(sid)
            return current if current and current["state"] == "sleeping" else None

        slept = await eventually(asleep, what="the session to sleep after its grace")
        assert slept["connections"] == 0
        events = await api.timeline(sid)
        sleep = next(e for e in events if e.get("to_state") == "stopping")
        assert sleep["code"] == "disconnect_grace", sleep
    finally:
        for probe in probes:
            await probe.close()
        await api.close()
