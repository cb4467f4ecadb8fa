"""The adaptive policy in the server as ``dormant serve`` wires it: configuration, REST API,
scheduler loops, real local processes; only the clock is fake (hours pass in an instant)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dormant.config import Settings
from dormant.policy import GapModel
from dormant.server import create_app
from dormant.testing import FakeClock

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 2, 8, 0, tzinfo=UTC)


async def wait_for(client: httpx.AsyncClient, sid: str, state: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(300):
        response = await client.get(f"/v1/sessions/{sid}")
        if response.status_code == 200:
            body = response.json()
            if body["state"] == state:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {sid} never became {state}: {body}")


async def test_serve_with_the_adaptive_policy_learns_and_persists(tmp_path: Path) -> None:
    low = random.randrange(41000, 44000, 20)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'dormant.db'}",
        port_range=f"{low}-{low + 19}",
        data_dir=str(tmp_path / "data"),
        policy="adaptive",  # DORMANT_POLICY=adaptive: the default template learns
        policy_overrides={"trust": "0.9", "break_even": "10m"},
        reconcile_interval=3600,
        proxy_port=0,
    )
    clock = FakeClock(T0)
    app = create_app(settings, clock)
    async with app.router.lifespan_context(app):
        key = settings.admin_key_file().read_text().strip()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://dormant",
            headers={"X-API-Key": key},
        ) as client:
            created = await client.post("/v1/sessions", json={"user_id": "ann"})
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            body = await wait_for(client, sid, "running")
            assert body["policy"] == "default"
            assert "no meaningful activity for 15m" in body["next_action"]["reason"]  # no data

            for _ in range(2):  # she works, leaves for hours, comes back: a long gap each time
                clock.advance(4 * 3600)
                await wait_for(client, sid, "sleeping")
                woke = await client.post(f"/v1/sessions/{sid}/activity", json={"kind": "command"})
                assert woke.status_code in (200, 202), woke.text
                await wait_for(client, sid, "running")

            body = (await client.get(f"/v1/sessions/{sid}")).json()
            assert "no meaningful activity for 1m" in body["next_action"]["reason"]
            services = app.state.services

            async def observations() -> int:
                stored = await services.store.load_adaptive()
                if "user:default/ann" not in stored:
                    return 0
                return GapModel.from_json(stored["user:default/ann"]).observations

            # The flush loop saves the models within a second; the first gap's model may already
            # be saved, so wait for the second observation rather than for the key.
            for _ in range(100):
                if await observations() >= 2:
                    break
                await asyncio.sleep(0.05)
            assert await observations() == 2

            clock.advance(61)
            await wait_for(client, sid, "sleeping")  # a minute, not fifteen
            gone = await client.delete(f"/v1/sessions/{sid}")
            assert gone.status_code == 202
            for _ in range(200):
                if (await client.get(f"/v1/sessions/{sid}")).status_code == 404:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the session was not deleted")
