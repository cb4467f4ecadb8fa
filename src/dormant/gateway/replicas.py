"""The gateway across replicas: with ``DORMANT_REDIS_URL``, python-socketio's
``AsyncRedisManager`` joins the replicas' Socket.IO servers, and this module adds what rooms alone
do not give.

- **Broadcasts** (``event {type, data}``) are emitted to the session's room through the manager:
  every replica delivers them to its own clients of that room.
- **Session events**: a replica's engine tells only the listeners of its own process about the
  changes it makes. The gateway passes each one on to the other replicas (``send``: the session
  record of a transition or a warning, the kind of an activity), in order, on the manager's
  channel; every replica then updates its room of that session and pushes ``session`` and
  ``sleep-warning`` to its own clients, as it does for its own engine's events. One engine event
  is one message, and each client hears it once, from the replica it is connected to.
- **Presence**: each replica keeps an :class:`Entry` per session it has clients of in a Redis
  hash (``{channel}:presence:{session}``, one field per replica: how many, the first
  ``presence_limit`` of them, and until when the entry holds). It rewrites the entry when its
  clients come and go and refreshes it every ``presence_ttl / 3`` seconds; an entry not
  refreshed for ``presence_ttl`` seconds (its replica died) is ignored and removed by the first
  replica that notices, which tells the others. Each replica announces ``presence`` to its own
  clients from its live connections plus the other replicas' entries.

Messages between replicas travel as emits to a room no client can join
(:data:`INTERNAL_ROOM`), which :class:`ReplicaManager` hands to the gateway instead of
delivering. Without Redis none of this exists: the gateway is one process, as before.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import socketio  # type: ignore[import-untyped]
from redis import asyncio as aioredis

from dormant.policy import State
from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.gateway")

#: Messages between replicas are emitted to this room; no client is ever in it (session rooms
#: are ``session:{id}``).
INTERNAL_ROOM = "dormant:replicas"
#: Messages waiting for the channel beyond this are dropped (and logged): Redis is down or slow.
OUTBOX_LIMIT = 10_000
#: How long a stopping gateway waits for its last messages to go out (seconds).
FLUSH_TIMEOUT = 2.0
#: How long start waits for the subscription to the channel (seconds); it goes on regardless.
SUBSCRIBE_TIMEOUT = 3.0

Listener = Callable[[str, dict[str, Any]], Awaitable[None]]


# --- session records on the wire -----------------------------------------------------------------

_FIELDS = {f.name: str(f.type) for f in dataclasses.fields(SessionRecord)}
_TIMES = frozenset(name for name, kind in _FIELDS.items() if "datetime" in kind)


def record_to_wire(record: SessionRecord) -> dict[str, Any]:
    """A session record as JSON-ready values (times as ISO 8601, the state by value)."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(record, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, State):
            value = value.value
        out[name] = value
    return out


def record_from_wire(data: Any) -> SessionRecord:
    """The record :func:`record_to_wire` made (fields another version does not know are
    ignored; ValueError, TypeError or KeyError if it is not one)."""
    if not isinstance(data, dict):
        raise TypeError("a session record is an object")
    values: dict[str, Any] = {k: v for k, v in data.items() if k in _FIELDS}
    for name in _TIMES & values.keys():
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    values["state"] = State(values["state"])
    return SessionRecord(**values)


# --- presence entries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One replica's clients of one session, as the others see them."""

    replica: str
    #: How many clients the replica has in the session's room.
    count: int
    #: The first ``presence_limit`` of them (``presence``'s participant objects).
    people: list[dict[str, Any]] = field(default_factory=list)
    #: Until when the entry holds (seconds since the epoch): its replica refreshes it before.
    expires: float = 0.0

    def dumps(self) -> str:
        return json.dumps({"count": self.count, "people": self.people, "expires": self.expires})

    @classmethod
    def loads(cls, replica: str, raw: str | bytes) -> Entry | None:
        """The entry, or None if ``raw`` is not one."""
        try:
            data = json.loads(raw)
            count, people, expires = data["count"], data["people"], float(data["expires"])
        except (ValueError, TypeError, KeyError):
            return None
        if (
            not isinstance(count, int)
            or not isinstance(people, list)
            or not all(isinstance(p, dict) for p in people)
            or not math.isfinite(expires)
        ):
            return None
        return cls(replica, max(0, count), people, expires)


def live_others(raw: dict[str, str], me: str, now: float) -> tuple[list[Entry], list[str]]:
    """The other replicas' entries that hold at ``now`` (by replica id), and the fields that
    are stale (expired or unreadable)."""
    live: list[Entry] = []
    stale: list[str] = []
    for replica in sorted(raw):
        if replica == me:
            continue
        entry = Entry.loads(replica, raw[replica])
        if entry is None or entry.expires <= now:
            stale.append(replica)
        else:
            live.append(entry)
    return live, stale


# --- the link between replicas -------------------------------------------------------------------


class Replicas(abc.ABC):
    """How a gateway reaches the others: messages in order, and the presence entries."""

    #: This replica's id (the engine's instance id).
    replica: str
    #: python-socketio's client manager joining the replicas' servers (None: the default).
    manager: Any = None
    #: Where messages from the other replicas go (see :meth:`bind`).
    listener: Listener | None = None

    def bind(self, listener: Listener) -> None:
        """Where messages from the other replicas go (the gateway, once)."""
        self.listener = listener

    async def start(self) -> None:
        """Start listening and sending."""

    async def stop(self) -> None:
        """Send what is waiting (briefly), then stop and close connections."""

    @abc.abstractmethod
    def send(self, kind: str, body: dict[str, Any]) -> None:
        """Queue a message for the other replicas; they get this replica's in order."""

    @abc.abstractmethod
    async def put(self, session_id: str, entry: Entry, now: float) -> tuple[list[Entry], bool]:
        """Write this replica's entry; the others' live entries, and whether a stale one was
        removed (its replica is gone: the others should hear of it)."""

    @abc.abstractmethod
    async def drop(self, session_id: str) -> None:
        """Remove this replica's entry (no clients of the session here any more)."""

    @abc.abstractmethod
    async def others(self, session_id: str, now: float) -> tuple[list[Entry], bool]:
        """The other replicas' live entries, and whether a stale one was removed."""

    @abc.abstractmethod
    async def refresh(self, entries: dict[str, Entry], now: float) -> set[str]:
        """Rewrite these entries of this replica (session id -> entry) in one go; the sessions
        the others should hear about again (another replica's stale entry was removed, or this
        one's had been)."""


class ReplicaManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """``AsyncRedisManager`` whose emits to :data:`INTERNAL_ROOM` are messages between
    replicas: handed to the listener on the receiving replicas, delivered to no client."""

    listener: Listener | None = None

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("room") != INTERNAL_ROOM:
            await super()._handle_emit(message)
            return
        if message.get("host_id") == self.host_id or self.listener is None:
            return  # our own message (handled before it was sent), or nobody to tell yet
        data = message.get("data")
        body = data[0] if isinstance(data, list) and data else None
        kind = message.get("event")
        if isinstance(kind, str) and isinstance(body, dict):
            await self.listener(kind, body)


#: HDEL each field (ARGV: field, value, field, value, ...) whose value is still the one given.
_DELETE_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
"""


class RedisReplicas(Replicas):
    """The replicas joined by Redis: python-socketio's manager on ``channel`` (rooms,
    broadcasts, messages) and a client of ours for the presence hashes."""

    def __init__(self, url: str, channel: str, replica: str, ttl: float = 15.0) -> None:
        self.replica = replica
        self.channel = channel
        self.ttl = ttl
        # socket_connect_timeout only: the manager's subscription waits on its socket for good.
        self.manager = ReplicaManager(
            url, channel=channel, redis_options={"socket_connect_timeout": 5.0}
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        self._delete_unchanged = self.redis.register_script(_DELETE_UNCHANGED)
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(OUTBOX_LIMIT)
        self._sender: asyncio.Task[None] | None = None
        self._dropped = 0

    def bind(self, listener: Listener) -> None:
        super().bind(listener)
        self.manager.listener = listener

    def key(self, session_id: str) -> str:
        return f"{self.channel}:presence:{session_id}"

    @property
    def key_ttl(self) -> int:
        """Redis's own expiry of a whole hash (every replica gone): a few entry lifetimes."""
        return max(1, math.ceil(self.ttl * 3))

    # life ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="dormant-replicas")
        # The manager subscribes in its own task (started with the server's manager); wait a
        # little for it, so that a replica that answers is one that hears the others.
        for _ in range(round(SUBSCRIBE_TIMEOUT / 0.02)):
            if self.subscribed():
                return
            await asyncio.sleep(0.02)
        if not self.subscribed():
            log.warning("not subscribed to Redis channel %s yet; going on", self.channel)

    def subscribed(self) -> bool:
        pubsub = getattr(self.manager, "pubsub", None)
        return bool(pubsub is not None and pubsub.subscribed)

    async def stop(self) -> None:
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), FLUSH_TIMEOUT)
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        thread = getattr(self.manager, "thread", None)
        if isinstance(thread, asyncio.Future):
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        for name in ("pubsub", "redis"):
            closable = getattr(self.manager, name, None)
            if closable is not None:
                with contextlib.suppress(Exception):
                    await closable.aclose()
        await self.redis.aclose()

    # messages -----------------------------------------------------------------------------------

    def send(self, kind: str, body: dict[str, Any]) -> None:
        try:
            self._outbox.put_nowait((kind, body))
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "%d message(s) to the other replicas dropped: Redis is not taking them",
                    self._dropped,
                )

    async def _send_loop(self) -> None:
        """One sender: the other replicas get this one's messages in the order they were sent.
        (python-socketio's manager logs and drops what Redis refuses.)"""
        while True:
            kind, body = await self._outbox.get()
            try:
                await self.manager.emit(kind, body, namespace="/", room=INTERNAL_ROOM)
            except Exception:
                log.exception("sending %s to the other replicas failed", kind)
            finally:
                self._outbox.task_done()

    # presence -----------------------------------------------------------------------------------

    async def put(self, session_id: str, entry: Entry, now: float) -> tuple[list[Entry], bool]:
        key = self.key(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, self.replica, entry.dumps())
            pipe.expire(key, self.key_ttl)
            pipe.hgetall(key)
            results = await pipe.execute()
        return await self._sift(key, results[2], now)

    async def drop(self, session_id: str) -> None:
        await self.redis.hdel(self.key(session_id), self.replica)

    async def others(self, session_id: str, now: float) -> tuple[list[Entry], bool]:
        key = self.key(session_id)
        return await self._sift(key, await self.redis.hgetall(key), now)

    async def refresh(self, entries: dict[str, Entry], now: float) -> set[str]:
        tell: set[str] = set()
        items = list(entries.items())
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for session_id, entry in chunk:
                    key = self.key(session_id)
                    pipe.hset(key, self.replica, entry.dumps())
                    pipe.expire(key, self.key_ttl)
                    pipe.hgetall(key)
                results = await pipe.execute()
            for n, (session_id, _) in enumerate(chunk):
                created, raw = results[3 * n], results[3 * n + 2]
                _, pruned = await self._sift(self.key(session_id), raw, now)
                # This replica's entry was gone (taken for stale while it was slow): it is back.
                if pruned or created:
                    tell.add(session_id)
        return tell

    async def _sift(self, key: str, raw: Any, now: float) -> tuple[list[Entry], bool]:
        """The live entries of ``raw``; stale ones are removed if they are still what was read
        (a replica that refreshed its entry meanwhile keeps it). Only the replica whose delete
        removed one reports it, so the others hear of it once."""
        fields = {str(k): str(v) for k, v in raw.items()}  # decode_responses: str already
        live, stale = live_others(fields, self.replica, now)
        removed = 0
        if stale:
            pairs = [item for replica in stale for item in (replica, fields[replica])]
            removed = int(await self._delete_unchanged(keys=[key], args=pairs))
        return live, removed > 0


def people_of(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """The participants of several entries, in order."""
    return [person for entry in entries for person in entry.people]
