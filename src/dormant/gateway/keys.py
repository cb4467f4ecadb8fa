"""The API keys behind tokens: a token is only as good as the key it was minted with. A token
whose key is revoked or unknown is refused at connect, and live connections whose key is
revoked (by this process or another, e.g. ``dormant keys revoke``) are closed within
``key_check_interval`` with ``error {code: "key_revoked"}``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dormant.gateway.protocol import Refused, error

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")


class KeyChecks:
    """What the gateway knows of API keys, and the periodic look at those of live connections."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: API key id -> (when looked at, monotonic; "ok" | "revoked" | "unknown").
        self.known: dict[str, tuple[float, str]] = {}
        self._lookups: dict[str, asyncio.Future[str]] = {}
        self._next_check = 0.0
        self._checking = False

    async def check(self, key_id: str) -> None:
        """Raise :class:`Refused` unless the API key stands."""
        state = await self.state(key_id)
        if state == "revoked":
            raise Refused("key_revoked", "the API key this token was minted with is revoked")
        if state == "unknown":
            raise Refused("invalid_token", "the API key this token was minted with is unknown")
        if state != "ok":
            raise Refused("unavailable", "cannot check the token's API key now; retry")

    async def state(self, key_id: str) -> str:
        """``ok``, ``revoked``, ``unknown`` or ``unavailable`` (the store failed); looked up at
        most once per ``key_check_interval`` however many connect meanwhile (a revocation is
        final and never looked up again)."""
        cached = self.known.get(key_id)
        if cached is not None:
            at, state = cached
            fresh = self.gateway.clock.monotonic() - at < self.gateway.settings.key_check_interval
            if state == "revoked" or fresh:
                return state
        lookup = self._lookups.get(key_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(key_id))
            self._lookups[key_id] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key_id, None))
        return await asyncio.shield(lookup)

    async def _look_up(self, key_id: str) -> str:
        try:
            async with self.gateway.store_slots:
                record = await self.gateway.engine.api_key(key_id)
        except Exception as exc:
            log.warning("looking up API key %s: %s", key_id, exc)
            return "unavailable"
        state = "unknown" if record is None else "ok" if record.revoked_at is None else "revoked"
        self.known[key_id] = (self.gateway.clock.monotonic(), state)
        return state

    def tick(self, now: float) -> None:
        """Start a look at the keys of live connections every ``key_check_interval``."""
        if now >= self._next_check and not self._checking:
            self._next_check = now + self.gateway.settings.key_check_interval
            self._checking = True
            self.gateway.spawn(self._check_live())

    async def _check_live(self) -> None:
        """One look at the store for the keys of every live connection; close the connections
        whose key is revoked (or gone), each told ``error {code: "key_revoked"}`` first."""
        try:
            wanted = {c.key_id for c in self.gateway.conns.values() if c.registered}
            if not wanted:
                return
            try:
                async with self.gateway.store_slots:
                    keys = await self.gateway.engine.api_keys()
            except Exception as exc:
                log.warning("checking the API keys of live connections: %s", exc)
                return
            now = self.gateway.clock.monotonic()
            standing = {}
            for key in keys:
                standing[key.id] = "ok" if key.revoked_at is None else "revoked"
                self.known[key.id] = (now, standing[key.id])
            bad = {k for k in wanted if standing.get(k) != "ok"}
            for key_id in bad - standing.keys():
                self.known[key_id] = (now, "unknown")
            if bad:
                await self._drop(bad)
        finally:
            self._checking = False

    async def _drop(self, key_ids: set[str]) -> None:
        gateway = self.gateway
        dropped = [c for c in gateway.conns.values() if c.registered and c.key_id in key_ids]
        for conn in dropped:
            if conn.closed:
                continue
            gateway.stats.revoked_drops += 1
            await gateway.emit_local(
                "error",
                error(
                    "key_revoked", "the API key this connection's token was minted with was revoked"
                ),
                to=conn.sid,
            )
            gateway.spawn(gateway.members.close(conn.sid))
        if dropped:
            log.info(
                "closing %d connection(s): API key(s) %s revoked",
                len(dropped),
                ", ".join(sorted(key_ids)),
            )
