"""Who may reach a session through the proxy: one-time links and the cookies they become.

A backend asks the API for a link (``POST /v1/sessions/{id}/links``): a random token, kept in the
store only as its SHA-256 and good for one use before it expires. The proxy exchanges it for a
cookie bound to that one session: ``{session}.{expiry}.{signature}`` signed with HMAC-SHA256 under
a key derived from the deployment's secret, so every replica checks it from memory. A cookie for
session A shown on session B is recognised as valid but not for B (403); anything else is no
cookie (401). The API key never goes to a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

COOKIE = "dormant_access"
TOKEN_PARAM = "dormant_token"
_MAX_COOKIE = 256


class Verdict(StrEnum):
    ALLOWED = "allowed"
    #: No cookie, or none that dormant signed and that is still valid.
    MISSING = "missing"
    #: A valid cookie, for another session.
    OTHER_SESSION = "other_session"


def new_link_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CookieSigner:
    key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> CookieSigner:
        # A key of its own: a gateway token can never pass for a cookie, nor the reverse.
        return cls(hmac.new(secret.encode(), b"dormant-proxy-cookie-v1", hashlib.sha256).digest())

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self.key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def issue(self, session_id: str, expires_at: datetime) -> str:
        payload = f"{session_id}.{int(expires_at.timestamp())}"
        return f"{payload}.{self._sign(payload)}"

    def session_of(self, value: str, now: datetime) -> str | None:
        """The session a cookie value is valid for, or None (forged, expired, malformed)."""
        if len(value) > _MAX_COOKIE or value.count(".") != 2:
            return None
        session_id, expiry, signature = value.split(".")
        if not (expiry.isascii() and expiry.isdigit()) or int(expiry) <= now.timestamp():
            return None
        if not hmac.compare_digest(self._sign(f"{session_id}.{expiry}"), signature):
            return None
        return session_id

    def verdict(self, cookie_header: str | None, session_id: str, now: datetime) -> Verdict:
        """Whether the ``Cookie`` header carries access to ``session_id``."""
        found_other = False
        for value in cookie_values(cookie_header, COOKIE):
            owner = self.session_of(value, now)
            if owner == session_id:
                return Verdict.ALLOWED
            if owner is not None:
                found_other = True
        return Verdict.OTHER_SESSION if found_other else Verdict.MISSING


def cookie_values(header: str | None, name: str) -> list[str]:
    if not header:
        return []
    values = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            values.append(value.strip().strip('"'))
    return values


def set_cookie(value: str, *, path: str, max_age: int, secure: bool) -> str:
    """The ``Set-Cookie`` value: HttpOnly, SameSite=Lax, Secure over https, host-only."""
    parts = [f"{COOKIE}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
