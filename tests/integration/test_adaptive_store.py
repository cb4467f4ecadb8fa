"""The adaptive policy's state in real databases (SQLite and PostgreSQL), its migration, and the
adaptive policy configured the way ``dormant serve`` reads it (dormant.toml)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command

from dormant.config import load_settings
from dormant.engine import Engine, EngineSettings, PortAllocator
from dormant.engine.retry import Backoff
from dormant.policy import ActivityKind, AdaptivePolicy, GapModel, State
from dormant.store import SqlStore
from dormant.store.migrate import alembic_config, upgrade, upgrade_async
from dormant.testing import FakeClock, FakeRuntime

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def model(*gaps: float) -> GapModel:
    from dormant.policy import AdaptiveSettings
    from dormant.policy.adaptive import learn

    m = GapModel()
    for g in gaps:
        m = learn(m, g, AdaptiveSettings())
    return m


async def test_models_round_trip_and_are_replaced_by_key(store: SqlStore) -> None:
    assert await store.load_adaptive() == {}
    a, b = model(300, 4000), model(9000)
    await store.save_adaptive({"user:t/a": a.to_json(), "template:t/x": b.to_json()}, T0)
    loaded = await store.load_adaptive()
    assert {k: GapModel.from_json(v) for k, v in loaded.items()} == {
        "user:t/a": a,
        "template:t/x": b,
    }
    newer = model(300, 4000, 120)
    await store.save_adaptive({"user:t/a": newer.to_json()}, T0 + timedelta(seconds=5))
    assert GapModel.from_json((await store.load_adaptive(["user:t/a"]))["user:t/a"]) == newer
    assert set(await store.load_adaptive(["template:t/x", "missing"])) == {"template:t/x"}
    assert await store.load_adaptive([]) == {}
    await store.save_adaptive({}, T0)  # nothing to do is fine


def test_migration_0002_upgrades_and_downgrades(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)

    def tables() -> set[str]:
        with sqlite3.connect(path) as db:
            return {r[0] for r in db.execute("select name from sqlite_master where type='table'")}

    assert "adaptive_models" in tables()
    command.downgrade(alembic_config(url), "0001")
    assert "adaptive_models" not in tables() and "sessions" in tables()
    upgrade(url)
    assert "adaptive_models" in tables()


async def test_dormant_toml_adaptive_policy_learns_and_survives_a_restart(tmp_path: Path) -> None:
    """As ``dormant serve`` reads it: a template with ``policy = "adaptive"`` (and a named
    adaptive policy with overrides); the model is in the database after a restart."""
    config = tmp_path / "dormant.toml"
    config.write_text(
        """
[policies.smart]
preset = "adaptive"
trust = 0.8
break_even = "10m"

[templates.notebook]
runtime = "process"
command = ["true"]
policy = "adaptive"

[templates.lab]
runtime = "process"
command = ["true"]
policy = "smart"
"""
    )
    settings = load_settings(config, environ={})
    catalog = settings.catalog()
    assert isinstance(catalog.policies["adaptive"], AdaptivePolicy)
    assert catalog.policies["smart"].adaptive.trust == 0.8  # type: ignore[attr-defined]
    url = f"sqlite+aiosqlite:///{tmp_path / 'dormant.db'}"
    await upgrade_async(url)
    store = SqlStore(url)
    clock = FakeClock(T0)
    runtime = FakeRuntime()

    def engine(instance: str) -> Engine:
        return Engine(
            store,
            {"process": runtime},
            catalog,
            clock,
            PortAllocator(range(30200, 30250), store.used_ports),
            EngineSettings(instance_id=instance, backoff=Backoff(0.001, 0.005, 4)),
        )

    async def settle(e: Engine) -> None:
        for _ in range(10):
            await e.drain()
            if not await e.tick() and not e._tasks:
                return

    try:
        first = engine("one")
        record = await first.create_session(tenant="t", user_id="ann", template="notebook")
        await settle(first)
        for _ in range(3):  # three mornings: a little work, then hours away
            clock.advance(60)
            first.record_activity(record.id, ActivityKind.COMMAND)
            await settle(first)
            clock.advance(4 * 3600)
            await settle(first)
            first.record_activity(record.id, ActivityKind.COMMAND)  # wakes it
            await settle(first)
        await first.flush()
        await first.stop()

        second = engine("two")
        await second.load()
        assert second.models["user:t/ann"].observations == 3
        fresh = await second.create_session(tenant="t", user_id="ann", template="notebook")
        await settle(second)
        clock.advance(60)
        await settle(second)
        got = await store.get_session(fresh.id)
        assert got is not None and got.state is State.SLEEPING  # after a minute, not 15
        stranger = await second.create_session(tenant="t", user_id="bo", template="lab")
        await settle(second)
        clock.advance(120)
        await settle(second)
        got = await store.get_session(stranger.id)
        assert got is not None and got.state is State.RUNNING  # no data for bo: fallback
    finally:
        await store.close()
