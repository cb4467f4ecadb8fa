"""The ``store`` fixture of the Store contract tests, with migrations run once per test run: the
SQLite store gets a copy of a migrated file and the PostgreSQL store a throw-away database made
``CREATE DATABASE ... TEMPLATE`` a migrated one (a copy takes milliseconds; migrating each of
~50 databases per backend took most of the contract suite's time). Each test still gets a store
of its own, in the state ``dormant migrate`` leaves.

A test module uses it by importing both fixtures (registered under the names ``migrated`` and
``store``): ``from .migrated import migrated_fixture, store_fixture``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from dormant.store import MemoryStore, SqlStore, Store
from dormant.store.migrate import upgrade
from tests.unit.conftest import migrated_copy

from .conftest import PG_ADMIN

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{}"


@dataclass(frozen=True)
class Templates:
    """Databases migrated to head, to be copied, never used directly."""

    sqlite: Path
    postgresql: str  # a database name


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(scope="session", name="migrated")
def migrated_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    path = tmp_path_factory.mktemp("migrated") / "store.db"
    upgrade(f"sqlite+aiosqlite:///{path}")  # its engine is disposed: no write-ahead log left
    name = f"dormant_template_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(PG_URL.format(name))
        yield Templates(path, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(name="store", params=["memory", "sqlite", "postgresql"])
async def store_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, migrated: Templates
) -> AsyncIterator[Store]:
    if request.param == "memory":
        m = MemoryStore()
        try:
            yield m
        finally:
            await m.close()
        return
    if request.param == "sqlite":
        s = SqlStore(migrated_copy(migrated.sqlite, tmp_path, "store.db"))
        try:
            yield s
        finally:
            await s.close()
        return
    name = f"dormant_test_{secrets.token_hex(4)}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{migrated.postgresql}"')
    try:
        s = SqlStore(PG_URL.format(name))
        try:
            yield s
        finally:
            await s.close()
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
