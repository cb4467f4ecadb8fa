"""The console's sign-in: an API key exchanged for a signed, HttpOnly, SameSite=Strict cookie.

The cookie names the key id, a random nonce and an expiry, signed with HMAC-SHA256 under a
server secret. It stands for the key only while the key does: each request looks the key up
(``app.state.key_lookup``), so a revoked key signs its cookies out at once. The CSRF token of a
cookie is an HMAC of its nonce: scripts of the console read it from ``/ui/api/me`` and send it
as ``X-CSRF-Token`` with every state-changing request; another site can neither read it nor
send the cookie (SameSite=Strict, and ``Sec-Fetch-Site``/``Origin`` are checked as well).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import Field

from dormant.api.auth import Forbidden, KeyLookup, Principal, Unauthorized, authenticate
from dormant.api.principal import Who
from dormant.api.schemas import Strict

COOKIE = "dormant_console"
CSRF_HEADER = "X-CSRF-Token"
#: Methods that change something: with a cookie they need the CSRF header.
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Fetch metadata values a cookie is accepted with (a navigation typed in, or our own pages).
SAME_SITE = frozenset({"same-origin", "none"})


class SignIn(Strict):
    key: str = Field(min_length=1, max_length=200)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a console cookie says: the key, a nonce of its own, when it stops being good."""

    key_id: str
    nonce: str
    expires: float


@dataclass(frozen=True, slots=True)
class Me:
    key_id: str
    tenant: str
    admin: bool
    csrf: str
    expires: float
    who: str


class CookieAuth:
    """``app.state.console``: the principal of a request's console cookie (see
    :class:`dormant.api.principal.ConsoleAuth`)."""

    def __init__(
        self,
        secret: str,
        lookup: KeyLookup,
        ttl: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A key of its own, so that no other signer's output is ever a valid console cookie.
        self._key = hmac.new(secret.encode(), b"dormant console cookie v1", "sha256").digest()
        self.lookup = lookup
        self.ttl = ttl
        self.clock = clock

    # the cookie ----------------------------------------------------------------------------

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, key_id: str) -> tuple[str, Ticket]:
        ticket = Ticket(key_id, secrets.token_urlsafe(16), self.clock() + self.ttl)
        raw = json.dumps({"k": ticket.key_id, "n": ticket.nonce, "e": ticket.expires}).encode()
        payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return f"{payload}.{self._mac(payload.encode())}", ticket

    def read(self, cookie: str) -> Ticket:
        """The ticket of a cookie this server signed and that has not expired."""
        payload, _, mac = cookie.partition(".")
        if (
            len(cookie) > 512
            or not mac
            or not hmac.compare_digest(mac, self._mac(payload.encode()))
        ):
            raise Unauthorized("the console sign-in is not valid; sign in again")
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            ticket = Ticket(str(data["k"]), str(data["n"]), float(data["e"]))
        except (ValueError, KeyError, TypeError):
            raise Unauthorized("the console sign-in is not valid; sign in again") from None
        if ticket.expires <= self.clock():
            raise Unauthorized("the console sign-in has expired; sign in again")
        return ticket

    def csrf(self, ticket: Ticket) -> str:
        return self._mac(f"csrf:{ticket.nonce}".encode())

    # requests ------------------------------------------------------------------------------

    async def ticket_of(self, request: Request) -> tuple[Ticket, Principal] | None:
        cookie = request.cookies.get(COOKIE)
        if cookie is None:
            return None
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in SAME_SITE:
            raise Forbidden("the console's sign-in is not accepted from another site")
        ticket = self.read(cookie)
        record = await self.lookup(ticket.key_id)
        if record is None or record.revoked_at is not None:
            raise Unauthorized("the API key of this console sign-in was revoked; sign in again")
        return ticket, Principal(record.id, record.tenant, record.admin)

    async def principal(self, request: Request) -> Principal | None:
        found = await self.ticket_of(request)
        if found is None:
            return None
        ticket, who = found
        if request.method in UNSAFE:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), self.csrf(ticket).encode()):
                raise Forbidden(f"a console request that changes something needs {CSRF_HEADER}")
        return who

    def me(self, ticket: Ticket, who: Principal) -> Me:
        return Me(
            who.key_id, who.tenant, who.admin, self.csrf(ticket), ticket.expires, who.describe()
        )


def _same_origin(request: Request) -> bool:
    """A sign-in comes from our own page: no ``Origin`` (old browsers, curl) or ours."""
    origin = request.headers.get("origin")
    if origin is None:
        return request.headers.get("sec-fetch-site", "same-origin") in SAME_SITE
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _secure(request: Request) -> bool:
    """Whether the browser reached us over https (directly, or through a trusted terminator
    that uvicorn's proxy headers support already folded into the scheme)."""
    return request.url.scheme == "https"


def signin_router(auth: CookieAuth) -> APIRouter:
    router = APIRouter(prefix="/ui/api")

    @router.post("/signin")
    async def signin(
        request: Request, response: Response, body: Annotated[SignIn, Body()]
    ) -> dict[str, Any]:
        """Exchange an API key for the console's cookie. Failed keys count against the
        client's address like the API's (429 past the limit)."""
        if not _same_origin(request):
            raise Forbidden("sign in from the console's own page")
        who = await authenticate(auth.lookup, body.key)
        cookie, ticket = auth.issue(who.key_id)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(auth.ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        response.headers["Cache-Control"] = "no-store"
        return _me_json(auth.me(ticket, who))

    @router.post("/signout")
    async def signout(request: Request, response: Response) -> dict[str, Any]:
        """Clear the cookie, whatever state it is in (an expired or revoked sign-in too)."""
        if not _same_origin(request):
            raise Forbidden("sign out from the console's own page")
        response.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
        )
        return {"signed_out": True}

    @router.get("/me")
    async def me(request: Request, response: Response, who: Who) -> dict[str, Any]:
        """Who this console is signed in as, and the CSRF token its scripts send."""
        response.headers["Cache-Control"] = "no-store"
        found = await auth.ticket_of(request)
        if found is None:  # an X-API-Key caller: there is no cookie, so no CSRF token
            return {
                "key_id": who.key_id,
                "tenant": who.tenant,
                "admin": who.admin,
                "csrf": None,
                "expires": None,
                "who": who.describe(),
            }
        return _me_json(auth.me(*found))

    return router


def _me_json(me: Me) -> dict[str, Any]:
    return {
        "key_id": me.key_id,
        "tenant": me.tenant,
        "admin": me.admin,
        "csrf": me.csrf,
        "expires": me.expires,
        "who": me.who,
    }
