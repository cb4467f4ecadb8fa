"""What a client may send before anything parses it: Engine.IO packets are checked before
python-engineio sees them (:class:`EngineGuard`, ASGI) and Socket.IO packets before
python-socketio handles them (:class:`GuardedServer`). Nothing malformed makes either raise;
what is dropped is counted, and logged once per connection."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import socketio  # type: ignore[import-untyped]
from socketio import packet as sio_packet

from dormant.gateway.protocol import error

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

#: A Socket.IO CONNECT (``auth: {token}``) larger than this is refused before it is parsed.
MAX_CONNECT_BYTES = 16 * 1024
#: Engine.IO packets one polling POST may carry (python-engineio's own limit).
MAX_PACKETS_PER_POST = 16

#: Engine.IO packet types a client sends: close, ping, pong, message, upgrade, noop.
_CONTROL_TYPES = frozenset("12356")
#: Socket.IO packet types (the first character of an Engine.IO message).
_SOCKETIO_TYPES = frozenset("0123456")


def engineio_packet_ok(text: str) -> bool:
    """Whether one text Engine.IO packet from a client is well formed, so python-engineio
    decodes and handles it without raising: a message (``4``) carries a Socket.IO packet (its
    type digit first, so the Engine.IO layer never parses JSON), control packets carry nothing
    but ``probe``, and ``b`` prefixes base64 (binary over polling)."""
    if not text:
        return False
    kind = text[0]
    if kind == "4":
        return len(text) > 1 and text[1] in _SOCKETIO_TYPES
    if kind in _CONTROL_TYPES:
        return text[1:] in ("", "probe")
    if kind == "b":
        try:
            base64.b64decode(text[1:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return len(text) > 1
    return False


def polling_payload_problem(body: bytes) -> str | None:
    """Why a polling POST body is not a payload of well-formed packets (None when it is)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if not text:
        return "empty payload"
    packets = text.split("\x1e")
    if len(packets) > MAX_PACKETS_PER_POST:
        return f"more than {MAX_PACKETS_PER_POST} packets in one payload"
    for packet in packets:
        if not engineio_packet_ok(packet):
            return f"not an Engine.IO packet: {packet[:16]!r}"
    return None


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class EngineGuard:
    """ASGI in front of python-engineio: Engine.IO packets that would make it raise (unknown
    types, empty frames, bad base64, a payload that is not UTF-8) never reach it. A polling POST
    with one is answered 400 ``malformed_packet`` and delivers nothing; a WebSocket frame is
    skipped. Both are counted, and logged once per connection."""

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http" and scope.get("method") == "POST":
            await self._post(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _post(self, scope: Any, receive: Any, send: Any) -> None:
        eio_sid = _query_sid(scope)
        if eio_sid is None or eio_sid not in self.gateway._sockets:
            await self.app(scope, receive, send)  # Engine.IO answers "invalid session" itself
            return
        limit = self.gateway.sio.eio.max_http_buffer_size
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self.gateway.note_malformed(eio_sid, f"a polling payload over {limit} bytes")
                await _send_json(
                    send,
                    413,
                    {"error": error("payload_too_large", f"payload over {limit} bytes")},
                )
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        problem = polling_payload_problem(body)
        if problem is not None:
            self.gateway.note_malformed(eio_sid, problem)
            await _send_json(
                send,
                400,
                {"error": error("malformed_packet", f"payload refused: {problem}")},
            )
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)

    async def _websocket(self, scope: Any, receive: Any, send: Any) -> None:
        # An upgrade names its Engine.IO session; a direct WebSocket learns it from the OPEN
        # packet the server sends first.
        state: dict[str, Any] = {"sid": _query_sid(scope), "logged": False}

        async def watched_send(message: Any) -> None:
            if state["sid"] is None and message.get("type") == "websocket.send":
                text = message.get("text")
                if isinstance(text, str) and text.startswith("0{"):
                    state["sid"] = _open_sid(text)
            await send(message)

        async def filtered_receive() -> Any:
            while True:
                message = await receive()
                if message.get("type") != "websocket.receive":
                    return message
                text = message.get("text")
                if text is None or engineio_packet_ok(text):
                    return message
                state["logged"] = self.gateway.note_malformed(
                    state["sid"], f"not an Engine.IO packet: {text[:16]!r}", state["logged"]
                )

        await self.app(scope, filtered_receive, watched_send)


def _query_sid(scope: Any) -> str | None:
    raw = scope.get("query_string", b"")
    try:
        query = parse_qs(raw.decode("latin-1"))
    except ValueError:
        return None
    found = query.get("sid")
    return found[0] if found else None


def _open_sid(text: str) -> str | None:
    try:
        opened = json.loads(text[1:])
    except ValueError:
        return None
    sid = opened.get("sid") if isinstance(opened, dict) else None
    return sid if isinstance(sid, str) else None


class GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio with the gateway's guards: every Engine.IO socket is admitted (or
    refused) at its handshake and forgotten when it closes; every message is checked for size,
    and before a connect is accepted only a CONNECT (or a DISCONNECT) gets through; a packet
    that does not parse is dropped (or, from a connected client, answered with an ``error``)."""

    gateway: Gateway

    async def _handle_eio_connect(self, eio_sid: str, environ: Any) -> None:
        refusal = self.gateway.admit_socket(eio_sid)
        if refusal is not None:
            # Turned away in band: the handshake's answer carries the OPEN packet, then
            # connect_error {code, message} and CLOSE, so every Socket.IO client reports the
            # code (an HTTP error status would reach them as a bare transport error).
            await self.gateway.sockets.hang_up(eio_sid, *refusal)
            return
        await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.gateway.forget_socket(eio_sid)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        gateway = self.gateway
        if eio_sid not in gateway._sockets:
            return  # closed by the gateway; what it still sends goes nowhere
        size = len(data) if isinstance(data, str | bytes) else 0
        if not gateway.authenticated(eio_sid):
            await self._before_auth(eio_sid, data, size)
            return
        limit = gateway.settings.max_payload_bytes
        if size > limit:
            await gateway.refuse_message(
                eio_sid, "payload_too_large", f"message of {size} bytes; limit is {limit}"
            )
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            gateway.note_malformed(eio_sid, f"not a Socket.IO packet ({type(exc).__name__})")
            await gateway.refuse_message(
                eio_sid, "malformed_packet", "the message is not a valid Socket.IO packet"
            )

    async def _before_auth(self, eio_sid: str, data: Any, size: int) -> None:
        gateway = self.gateway
        kind = data[:1] if isinstance(data, str) else ""
        if kind == "0":  # CONNECT, with auth: {token}
            limit = min(MAX_CONNECT_BYTES, gateway.settings.max_payload_bytes)
            if size > limit:
                await gateway.refuse_connect(
                    eio_sid,
                    "payload_too_large",
                    f"connect packet of {size} bytes; limit is {limit} (auth carries a token)",
                )
                return
        elif kind != "1":  # anything but CONNECT or DISCONNECT needs a connection first
            gateway.note_malformed(eio_sid, "a packet before a successful connect")
            return
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception as exc:
            gateway.note_malformed(eio_sid, f"not a Socket.IO packet ({type(exc).__name__})")
            if kind == "0":
                await gateway.refuse_connect(
                    eio_sid, "malformed_packet", "the connect packet is not valid Socket.IO"
                )
            return
        if pkt.packet_type == sio_packet.CONNECT:
            # The client did its part: the wait for admission is the gateway's (sockets.py).
            gateway.sockets.connect_arrived(eio_sid)
            try:
                await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
            finally:
                gateway.sockets.connect_handled(eio_sid)
        elif pkt.packet_type == sio_packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
