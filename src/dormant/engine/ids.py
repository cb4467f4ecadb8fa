"""Session ids sort by creation time (so cursors are ids) and are unguessable."""

from __future__ import annotations

import secrets
from datetime import datetime


def new_session_id(now: datetime) -> str:
    return f"{int(now.timestamp() * 1000):011x}{secrets.token_hex(6)}"


def container_name(session_id: str) -> str:
    return f"dormant-{session_id}"
