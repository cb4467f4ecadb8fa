"""Which session a request is for: by path (``/s/{id}/…``, the prefix cut off) or, with a
proxy domain, by host (``{id}.{domain}``). The upstream is always the session's own endpoint;
nothing in the request chooses a host."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from dormant.proxy.access import TOKEN_PARAM

_SESSION_ID = re.compile(r"^[0-9a-f]{8,40}$")
#: Paths under a session that the proxy answers itself (the waiting page's progress stream).
RESERVED = "/.dormant/"


@dataclass(frozen=True, slots=True)
class Target:
    session_id: str
    #: The path and query the session sees.
    path: str
    query: str
    #: ``/s/{id}`` in path mode (``X-Forwarded-Prefix``), "" by host.
    prefix: str

    @property
    def upstream_target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def public_path(self, query: str | None = None) -> str:
        """The path (and query) as the client addressed it; always one leading slash, so that
        it cannot be read as another host (``//evil.example/``) where it becomes a Location."""
        q = self.query if query is None else query
        path = "/" + f"{self.prefix}{self.path}".lstrip("/\\")
        return path + (f"?{q}" if q else "")

    def link_token(self) -> str | None:
        if TOKEN_PARAM not in self.query:
            return None
        for key, value in parse_qsl(self.query, keep_blank_values=True):
            if key == TOKEN_PARAM:
                return value
        return None

    def without_token(self) -> str:
        kept = [
            (k, v) for k, v in parse_qsl(self.query, keep_blank_values=True) if k != TOKEN_PARAM
        ]
        return self.public_path(urlencode(kept))


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str


def resolve(target: str, host: str | None, domain: str | None) -> Target | Redirect | None:
    """The session a request target is for; a redirect for ``/s/{id}`` without its slash."""
    path, _, query = target.partition("?")
    if domain and host:
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
        suffix = "." + domain.lower()
        if name.endswith(suffix):
            sid = name[: -len(suffix)]
            if _SESSION_ID.match(sid):
                return Target(sid, path, query, "")
            return None
    if not path.startswith("/s/"):
        return None
    sid, slash, rest = path[3:].partition("/")
    if not _SESSION_ID.match(sid):
        return None
    if not slash:
        return Redirect(f"/s/{sid}/" + (f"?{query}" if query else ""))
    return Target(sid, "/" + rest, query, f"/s/{sid}")


def session_url(base: str, domain: str | None, session_id: str, scheme: str = "http") -> str:
    """The session's address through the proxy: the same across sleeps and wakes."""
    if domain:
        return f"{scheme}://{session_id}.{domain}/"
    return f"{base.rstrip('/')}/s/{session_id}/"
