"""``dormant.client`` against a real server: the REST calls a backend makes, and a real-time
connection of its own (python-socketio underneath)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dormant.client import ApiError, AsyncClient, Client, Realtime, RealtimeError
from tests.e2e.conftest import Server
from tests.e2e.gateway_support import eventually

pytestmark = pytest.mark.e2e


async def test_async_client_drives_a_session_and_a_realtime_connection(server: Server) -> None:
    async with AsyncClient(server.url, server.key) as dormant:
        created = await dormant.create_session(
            "erin", policy={"heartbeat_interval": 1}, labels={"team": "a"}
        )
        sid = created["id"]

        async def running() -> dict[str, Any] | None:
            current = await dormant.get_session(sid)
            return current if current["state"] == "running" else None

        await eventually(running, what="running")
        await dormant.activity(sid, "build")
        assert (await dormant.get_session(sid))["last_activity"]["kind"] == "build"
        until = datetime.now(UTC) + timedelta(minutes=30)
        assert (await dormant.keepalive(sid, until))["keepalive_until"] is not None

        token = await dormant.token(sid, name="Erin", ttl=120)
        assert token.session_id == sid and token.expires_at > datetime.now(UTC)

        got: dict[str, list[Any]] = {"event": [], "session": []}
        live = dormant.realtime(sid, name="ci-bot")
        live.on("event", got["event"].append)
        live.on("session", got["session"].append)
        await live.connect()
        try:
            assert live.connected

            async def greeted() -> bool:
                return bool(got["session"]) and live.presence is not None

            await eventually(greeted, what="session and presence")
            assert live.session is not None and live.session["state"] == "running"
            assert live.presence is not None
            assert live.presence["participants"][0]["name"] == "ci-bot"

            assert await live.activity("file-change", {"path": "a.py"}) == {
                "ok": True,
                "counted": True,
            }
            answer = await live.activity("nonsense")
            assert answer["error"]["code"] == "unknown_kind"
            assert await dormant.broadcast(sid, "hmr", {"file": "a.py"}) == 1

            async def relayed() -> bool:
                return got["event"] == [{"type": "hmr", "data": {"file": "a.py"}}]

            await eventually(relayed, what="the broadcast")

            async def quality() -> str | None:
                return (await dormant.get_session(sid))["connection_quality"]

            assert await eventually(quality, what="pongs answered") == "stable"
        finally:
            await live.close()

        async def closed() -> bool:
            return (await dormant.get_session(sid))["connections"] == 0

        await eventually(closed, what="the disconnect counted")
        events = await dormant.events(sid)
        # Activity reported over REST ("build") is sampled and written in batches, so it may land
        # on the timeline before or after the connection's own entries: compare those alone.
        codes = [e["code"] for e in events if e["type"] == "activity"]
        assert [c for c in codes if c in ("connect", "disconnect")] == ["connect", "disconnect"]
        assert (await dormant.sleep(sid))["accepted"] == "sleep"

        async def asleep() -> bool:
            return (await dormant.get_session(sid))["state"] == "sleeping"

        await eventually(asleep, what="sleeping")
        assert (await dormant.wake(sid))["accepted"] == "wake"
        await eventually(running, what="running again")
        assert await dormant.logout("erin") == [sid]
        with pytest.raises(ApiError) as caught:
            await dormant.get_session(sid)
        assert (caught.value.status, caught.value.code) == (404, "not_found")


async def test_realtime_refusals_raise_with_the_gateway_code(server: Server) -> None:
    async with AsyncClient(server.url, server.key) as dormant:
        sid = (await dormant.create_session("frank"))["id"]
        bad = Realtime(server.url, "not-a-token", reconnect=False)
        with pytest.raises(RealtimeError) as caught:
            await bad.connect()
        assert caught.value.code == "invalid_token"
        await dormant.delete(sid)

        async def gone() -> bool:
            try:
                await dormant.get_session(sid)
            except ApiError as exc:
                return exc.status == 404
            return False

        await eventually(gone, what="deleted")
        with pytest.raises(ApiError) as refused:
            await dormant.token(sid)
        assert refused.value.code == "not_found"


def test_sync_client_covers_the_same_calls(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    config = tmp_path / "dormant.toml"
    config.write_text('[templates.default]\nenv_allow = ["MODE"]\n')  # the env sent below
    server = server_factory(DORMANT_CONFIG=str(config))
    with Client(server.url, server.key) as dormant:
        sid = dormant.create_session("gina", env={"MODE": "x"})["id"]
        server.wait_state(sid, "running")
        dormant.activity(sid, "chat")
        assert dormant.get_session(sid)["last_activity"]["kind"] == "chat"
        token = dormant.token(sid)
        assert token.token.count(".") == 2
        assert dormant.broadcast(sid, "note", None) == 0
        with pytest.raises(ApiError) as caught:
            dormant.activity(sid, "teleport")
        assert caught.value.status == 422
        with pytest.raises(ValueError):
            dormant.busy(sid, datetime(2030, 1, 1))  # noqa: DTZ001 (naive on purpose: refused)
        dormant.delete(sid)
        server.wait_gone(sid)
    with Client(server.url, "dk_bad_key") as stranger, pytest.raises(ApiError) as denied:
        stranger.get_session(sid)
    assert denied.value.status == 401
