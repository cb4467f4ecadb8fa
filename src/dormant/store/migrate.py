"""Run Alembic migrations programmatically (``dormant migrate`` and at ``serve`` start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its folder."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str) -> None:
    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), "head")


async def upgrade_async(url: str) -> None:
    # Alembic's env.py runs its own event loop; give it a thread of its own.
    await asyncio.to_thread(upgrade, url)
