"""The synchronous REST client (scripts, threaded web frameworks, the CLI)."""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from dormant.client.calls import (
    JSON,
    Token,
    _Api,
    _Call,
    _check,
    _drop_none,
    _filters,
    _token,
    _until,
    base_url,
)


class Client:
    """Synchronous REST client."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        self.url = base_url(url)
        self._http = http or httpx.Client(
            base_url=self.url, headers={"X-API-Key": api_key}, timeout=timeout
        )

    def _send(self, call: _Call) -> Any:
        return _check(
            self._http.request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            )
        )

    def create_session(
        self,
        user_id: str,
        *,
        template: str | None = None,
        policy: JSON | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JSON:
        """A new session. With ``idempotency_key``, retries of this call (within 24 h) answer
        the session the first one made, even if its answer was lost; ``wait`` (seconds)
        answers once it runs or failed."""
        result: JSON = self._send(
            _Api.create_session(user_id, template, policy, labels, env, idempotency_key, wait)
        )
        return result

    def ensure_session(
        self,
        user_id: str,
        name: str = "default",
        *,
        template: str | None = None,
        policy: JSON | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        wake: bool = False,
        wait: float | None = None,
    ) -> JSON:
        """The user's live session of this name (and template), created if there is none;
        ``wake`` wakes it if it sleeps; ``wait`` (seconds) answers once it runs."""
        call = _Api.ensure_session(user_id, name, template, policy, labels, env, wake, wait)
        result: JSON = self._send(call)
        return result

    def list_sessions(
        self,
        *,
        user_id: str | None = None,
        state: str | None = None,
        level: str | None = None,
        name: str | None = None,
        template: str | None = None,
        labels: dict[str, str] | None = None,
        page_size: int = 500,
    ) -> list[JSON]:
        """Every session matching the filters (``labels``: all must match), page after page."""
        filters = _filters(user_id, state, level, name, template, labels, page_size)
        items: list[JSON] = []
        cursor: str | None = None
        while True:
            page: JSON = self._send(_Api.list_sessions(filters, cursor))
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def stats(self) -> JSON:
        """Counts by state and level, transitions by reason, orphans removed."""
        result: JSON = self._send(_Call("GET", "/v1/stats"))
        return result

    def get_session(self, session_id: str) -> JSON:
        result: JSON = self._send(_Api.session(session_id))
        return result

    def activity(self, session_id: str, kind: str, at: datetime | None = None) -> JSON:
        body = {"kind": kind, **({"at": at.isoformat()} if at else {})}
        result: JSON = self._send(_Api.session(session_id, "activity", body))
        return result

    def sleep(self, session_id: str, wait: float | None = None) -> JSON:
        """Accepted; with ``wait`` (seconds) the answer's ``outcome`` says where it ended."""
        result: JSON = self._send(_Api.session(session_id, "sleep", wait=wait))
        return result

    def wake(self, session_id: str, wait: float | None = None) -> JSON:
        """Accepted; with ``wait`` (seconds) the answer's ``outcome`` says where it ended."""
        result: JSON = self._send(_Api.session(session_id, "wake", wait=wait))
        return result

    def keepalive(self, session_id: str, until: datetime) -> JSON:
        result: JSON = self._send(_Api.session(session_id, "keepalive", {"until": _until(until)}))
        return result

    def busy(self, session_id: str, until: datetime) -> JSON:
        result: JSON = self._send(_Api.session(session_id, "busy", {"until": _until(until)}))
        return result

    def delete(self, session_id: str, wait: float | None = None) -> JSON:
        result: JSON = self._send(_Api.delete(session_id, wait))
        return result

    def logout(self, user_id: str) -> list[str]:
        """Delete every live session of ``user_id`` now; the ids deleted."""
        result: JSON = self._send(_Api.logout(user_id))
        return list(result["deleted"])

    def token(self, session_id: str, name: str | None = None, ttl: float | None = None) -> Token:
        body = _drop_none({"name": name, "ttl": ttl})
        return _token(self._send(_Api.session(session_id, "tokens", body)))

    def broadcast(self, session_id: str, type: str, data: Any = None) -> int:
        result: JSON = self._send(
            _Api.session(session_id, "broadcast", {"type": type, "data": data})
        )
        return int(result["delivered"])

    def events(self, session_id: str) -> list[JSON]:
        """The timeline (also of a deleted session, until it is purged)."""
        result: JSON = self._send(_Api.read(session_id, "events"))
        return list(result["items"])

    def session_policy(self, session_id: str) -> JSON:
        """``{session_id, policy, values}``: the resolved policy values in effect."""
        result: JSON = self._send(_Api.read(session_id, "policy"))
        return result

    def link(self, session_id: str, ttl: float | None = None) -> JSON:
        """``{url, expires_at, session_id}``: a one-time link through dormant's proxy."""
        body = _drop_none({"ttl": ttl})
        result: JSON = self._send(_Api.session(session_id, "links", body))
        return result

    def templates(self) -> list[JSON]:
        """The templates this key may create sessions from."""
        result: JSON = self._send(_Call("GET", "/v1/templates"))
        return list(result["items"])

    def policies(self) -> list[JSON]:
        """The policies, resolved (durations in seconds)."""
        result: JSON = self._send(_Call("GET", "/v1/policies"))
        return list(result["items"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
