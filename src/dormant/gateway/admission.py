"""Who may connect: a Socket.IO connect carries ``auth: {token}`` (never the query string);
the token must verify, the API key it was minted with must stand, and the server and the
session must have room for one more. A refused connect gets ``connect_error {message, data:
{code, message}}`` and its socket is closed once the client has it.

A reconnect storm (thousands of connects at once) costs the store little, and waits for it
rather than being timed out: the key's state is looked up once per key id however many connect
meanwhile (:mod:`~dormant.gateway.keys`), the session once per room for a burst of joins
(:mod:`~dormant.gateway.rooms`, only for a client still there), and the counts are written by
one worker per room (:mod:`~dormant.gateway.sync`); all of it within the gateway's store slots,
of which count writes may hold only half. A connect waiting for that work has a timeout of its
own, from its arrival, that does not run while the gateway is behind
(:mod:`~dormant.gateway.sockets`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import socketio  # type: ignore[import-untyped]

from dormant.gateway.protocol import Refused, error
from dormant.gateway.rooms import Room
from dormant.gateway.tokens import Claims, TokenError

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")


def _trim(environ: dict[str, Any]) -> None:
    """Drop the handshake's request headers: Engine.IO keeps the environ for the connection's
    whole life and nothing reads them after the handshake (about 2 KB per connection)."""
    for key in [k for k in environ if k.startswith("HTTP_")]:
        del environ[key]
    environ.pop("wsgi.input", None)


class Admission:
    """The Socket.IO ``connect`` handler: checks, then the join (:mod:`dormant.gateway.rooms`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        eio_sid: str | None = self.gateway.sio.manager.eio_sid_from_sid(sid, "/")
        try:
            return await self._connect(sid, environ, auth, eio_sid)
        except socketio.exceptions.ConnectionRefusedError:
            # Refused: the socket goes once the client has the connect_error (socket.io clients
            # close it then too), so it holds no slot meanwhile.
            self.gateway.sockets.hang_up_after_delivery(eio_sid)
            raise

    async def _connect(
        self, sid: str, environ: dict[str, Any], auth: Any, eio_sid: str | None
    ) -> bool:
        gateway = self.gateway
        try:
            claims = self._verify(environ, auth)
            await gateway.keys.check(claims.key_id)
            if eio_sid is not None and eio_sid not in gateway.sockets.open:
                return False  # the socket closed while the key was looked at
            # Joining connections are in conns already (nothing awaits between here and there).
            if len(gateway.conns) >= gateway.settings.max_connections:
                raise Refused(
                    "server_full",
                    f"this server holds {gateway.settings.max_connections} connections (its "
                    "limit); try again later",
                )
        except Refused as exc:
            return self.refuse(exc)
        _trim(environ)
        room = gateway.rooms.get(claims.session_id)
        if room is None:
            room = gateway.rooms[claims.session_id] = Room(claims.session_id)
        if len(room.members) + room.joining >= gateway.settings.max_connections_per_session:
            gateway.members.drop_if_empty(room)
            return self.refuse(
                Refused(
                    "session_full",
                    f"session has {gateway.settings.max_connections_per_session} connections "
                    "already (the most allowed)",
                )
            )
        room.joining += 1
        try:
            return await gateway.members.join(sid, claims, room, eio_sid)
        except Refused as exc:  # the session is gone, or the store could not say
            return self.refuse(exc)
        finally:
            room.joining -= 1
            gateway.members.drop_if_empty(room)

    def _verify(self, environ: dict[str, Any], auth: Any) -> Claims:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if "token" in query or "auth" in query:
            raise Refused(
                "token_in_query",
                "tokens never travel in the query string; connect with auth: {token}",
            )
        if not isinstance(auth, dict) or "token" not in auth:
            raise Refused("unauthorized", "missing token: connect with auth: {token}")
        try:
            return self.gateway.tokens.verify(auth.get("token"))
        except TokenError as exc:
            raise Refused(exc.code, str(exc)) from None

    def refuse(self, exc: Refused) -> bool:
        """Count and log a refusal, and raise it for python-socketio to send (never returns)."""
        refused = self.gateway.stats.refused
        refused[exc.code] = refused.get(exc.code, 0) + 1
        log.info("connection refused: %s: %s", exc.code, exc.message)
        raise socketio.exceptions.ConnectionRefusedError(exc.message, error(exc.code, exc.message))
