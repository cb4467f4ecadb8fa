"""One-time links to a session through the proxy (``POST /v1/sessions/{id}/links``) and the
session's stable address (the API's ``url``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from dormant.clock import Clock
from dormant.errors import InvalidInput
from dormant.proxy.access import TOKEN_PARAM, new_link_token, token_hash
from dormant.store.base import Store

DEFAULT_LINK_TTL = 300.0
MAX_LINK_TTL = 86400.0
#: Expired links are removed at most this often (when links are made).
PURGE_EVERY = timedelta(minutes=10)


@dataclass
class Links:
    store: Store
    clock: Clock
    #: How clients reach the proxy: ``http://127.0.0.1:8081`` (or a public address).
    base_url: str
    #: With a domain, sessions are addressed by host: ``{id}.{domain}``.
    domain: str | None = None
    _purged_at: datetime | None = None

    def session_url(self, session_id: str) -> str:
        """The same across sleeps and wakes."""
        if self.domain:
            parts = urlsplit(self.base_url)
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{session_id}.{self.domain}{port}/"
        return f"{self.base_url.rstrip('/')}/s/{session_id}/"

    async def create(self, session_id: str, ttl: float | None) -> tuple[str, datetime]:
        """A link good for one use within ``ttl`` seconds: ``(url, expires_at)``."""
        seconds = DEFAULT_LINK_TTL if ttl is None else ttl
        if not 1 <= seconds <= MAX_LINK_TTL:
            raise InvalidInput(f"ttl must be between 1 and {MAX_LINK_TTL:g} seconds")
        now = self.clock.now()
        if self._purged_at is None or now - self._purged_at > PURGE_EVERY:
            self._purged_at = now
            await self.store.purge_links(now)
        token = new_link_token()
        expires_at = now + timedelta(seconds=seconds)
        await self.store.insert_link(token_hash(token), session_id, expires_at)
        return f"{self.session_url(session_id)}?{TOKEN_PARAM}={token}", expires_at
