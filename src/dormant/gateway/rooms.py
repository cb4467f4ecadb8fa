"""A session's connections in this process: each :class:`Connection`, and the :class:`Room`
they share (which also holds what the gateway knows and told about the session)."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

from dormant.gateway.heartbeat import Heartbeat, Quality
from dormant.gateway.limits import TokenBucket
from dormant.gateway.tokens import Claims
from dormant.store.records import SessionRecord


class Connection:
    __slots__ = (
        "bucket",
        "closed",
        "dropped",
        "eio_sid",
        "heartbeat",
        "joined_at",
        "key_id",
        "last_notice",
        "name",
        "quality",
        "registered",
        "session_id",
        "sid",
        "tenant",
        "user_id",
    )

    def __init__(
        self,
        sid: str,
        claims: Claims,
        heartbeat: Heartbeat,
        bucket: TokenBucket,
        eio_sid: str | None = None,
    ):
        self.sid = sid
        self.eio_sid = eio_sid
        self.key_id = claims.key_id
        self.session_id = claims.session_id
        self.user_id = claims.user_id
        self.tenant = claims.tenant
        self.name = claims.name
        self.heartbeat = heartbeat
        self.bucket = bucket
        self.joined_at = ""
        self.quality = Quality.STABLE
        self.dropped = 0
        self.last_notice = -math.inf
        self.registered = False
        self.closed = False


class Room:
    """The connections of one session in this process."""

    __slots__ = (
        "joining",
        "last_key",
        "last_kind",
        "left",
        "level",
        "level_check_at",
        "lock",
        "members",
        "newest",
        "presence_dirty",
        "presence_next",
        "record",
        "refresh_again",
        "refreshing",
        "session_id",
        "synced",
        "syncing",
    )

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.members: dict[str, Connection] = {}
        self.joining = 0
        self.lock = asyncio.Lock()
        self.last_key: tuple[Any, ...] | None = None
        self.last_kind: str | None = None
        self.newest: tuple[int, datetime, datetime] | None = None
        self.level: str | None = None
        self.level_check_at: float | None = None
        self.presence_dirty = False
        self.presence_next = 0.0
        self.refreshing = False
        self.refresh_again = False
        #: The freshest view of the session (first join, engine events, refreshes).
        self.record: SessionRecord | None = None
        #: The count the engine has; a worker brings it to ``len(members)``, coalescing storms.
        self.synced = 0
        self.syncing = False
        self.left = False

    @property
    def name(self) -> str:
        return f"session:{self.session_id}"

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining
