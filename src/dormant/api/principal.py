"""Who is calling: the one FastAPI dependency every router uses (the REST API's, the console's).

A request authenticates with its ``X-API-Key`` header, or, from the operator's console, with
the console's session cookie (``app.state.console``). The key lookup and the per-key rate
limiter are the application's (``app.state.key_lookup``, ``app.state.rate_limiter``, set by
:func:`dormant.api.app.create_api`), so that every router counts against the same buckets.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Header, Request

from dormant.api.auth import KeyLookup, Principal, RateLimiter, authenticate


class ConsoleAuth(Protocol):
    """``app.state.console``: the operator's console's cookie sign-in (``dormant.api.console``).
    ``principal`` answers the principal of the request's console session cookie, None when it
    has none, and raises :class:`~dormant.api.auth.Unauthorized` for a bad or expired cookie,
    or :class:`~dormant.api.auth.Forbidden` for a state-changing request without the session's
    CSRF header."""

    async def principal(self, request: Request) -> Principal | None: ...


async def principal(
    request: Request,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> Principal:
    state = request.app.state
    lookup: KeyLookup = state.key_lookup
    limiter: RateLimiter = state.rate_limiter
    who: Principal | None = None
    console: ConsoleAuth | None = getattr(state, "console", None)
    if x_api_key is None and console is not None:
        who = await console.principal(request)  # None: the request has no console cookie
    if who is None:
        who = await authenticate(lookup, x_api_key)
    limiter.check(who.key_id)
    return who


#: The calling principal, as a route parameter: ``who: Who``.
Who = Annotated[Principal, Depends(principal)]
