"""The gateway against hostile and careless clients, end to end: ``dormant serve`` in a
subprocess, raw Engine.IO packets over HTTP long-polling (httpx) and WebSocket (aiohttp), real
python-socketio clients, ``dormant keys revoke`` in another process. Plus one in-process uvicorn
server for what ``dormant serve`` cannot configure yet (a short handshake timeout).

No timed assertions: every wait is a bounded poll for an outcome."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import pytest
import socketio
import uvicorn

from dormant.config import Settings
from dormant.gateway import Gateway
from dormant.server import create_app
from tests.e2e.conftest import Server, claim_ports, kill_marked, marked_processes
from tests.e2e.gateway_support import WAIT, Api, Probe, Probes, eventually

pytestmark = pytest.mark.e2e

POLLING = "/socket.io/?EIO=4&transport=polling"
WEBSOCKET = "/socket.io/?EIO=4&transport=websocket"

#: Engine.IO packets python-engineio could not decode (it raised, logging a traceback).
BROKEN_ENGINEIO = ["9", "7", "x", "0", "4", "4[", "4{}", "47", "2ping", "b!!!", "\x00"]
#: Well-formed Socket.IO packets that only a connected client may send.
BEFORE_AUTH = ['42["activity",{"kind":"command"}]', "43[]", '45-["x"]', '421["pong",{"ts":1}]']


def _finish(srv: Server) -> None:
    try:
        logs = srv.logs()
    finally:
        left = srv.cleanup()
    print(f"--- {srv.home} log tail ---\n{srv.log_tail()}")
    assert not left, f"session processes survived: {left}"
    assert "Traceback" not in logs, logs[-5000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hostile"), ports=20).start()
    try:
        yield srv
    finally:
        _finish(srv)


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    client = Api(server.url, server.key)
    yield client
    await client.close()


@pytest.fixture
async def probes(server: Server) -> AsyncIterator[Probes]:
    made = Probes(server.url)
    yield made
    await made.close()


def _key_id(key: str) -> str:
    return key.split("_")[1]


def _new_key(srv: Server) -> str:
    """A non-admin key of the admin's tenant (so it can mint tokens for its sessions)."""
    return srv.cli("keys", "create", "--tenant", "default").stdout.strip().split()[-1]


def _log_lines(srv: Server, since: int) -> list[dict[str, Any]]:
    """Every log line after the first ``since`` characters; all of them must be JSON."""
    lines = []
    for raw in srv.log_path.read_text(errors="replace")[since:].splitlines():
        if raw.strip():
            lines.append(json.loads(raw))  # a plain-text line (a traceback) fails here
    return lines


def _log_mark(srv: Server) -> int:
    return len(srv.log_path.read_text(errors="replace"))


# --- raw Engine.IO over long-polling -------------------------------------------------------------


async def _handshake(http: httpx.AsyncClient) -> tuple[str, list[str]]:
    """Open an Engine.IO session; returns its id and the packets after OPEN."""
    response = await http.get(POLLING)
    assert response.status_code == 200, response.text
    opened, *rest = response.text.split("\x1e")
    assert opened.startswith("0{"), opened
    return str(json.loads(opened[1:])["sid"]), rest


async def _post(http: httpx.AsyncClient, sid: str, body: str) -> httpx.Response:
    return await http.post(f"{POLLING}&sid={sid}", content=body.encode())


async def _poll(http: httpx.AsyncClient, sid: str) -> httpx.Response:
    return await http.get(f"{POLLING}&sid={sid}", timeout=WAIT + 30)


def _connect_error(packet: str) -> dict[str, Any]:
    assert packet.startswith("44"), packet
    body = json.loads(packet[2:])
    assert body["data"]["message"] == body["message"]
    return dict(body["data"])


# --- malformed packets ---------------------------------------------------------------------------


async def test_malformed_packets_before_auth_are_dropped_without_a_traceback(
    server: Server, api: Api
) -> None:
    session = await api.create("hostile")
    tokens = [await api.token(session["id"]) for _ in range(6)]
    mark = _log_mark(server)
    bad = BROKEN_ENGINEIO + BEFORE_AUTH
    sent = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        polled = [(await _handshake(http))[0] for _ in range(4)]
        for sid in polled:
            for i in range(40):  # 160 over long-polling
                packet = bad[i % len(bad)]
                response = await _post(http, sid, packet)
                sent += 1
                if packet in BROKEN_ENGINEIO:
                    assert response.status_code == 400, (packet, response.text)
                    assert response.json()["error"]["code"] == "malformed_packet"
                else:  # well formed, dropped: Engine.IO accepted the POST
                    assert response.status_code == 200, (packet, response.text)
        ws_url = server.url.replace("http", "ws") + WEBSOCKET
        async with aiohttp.ClientSession() as ws_http:
            sockets = [await ws_http.ws_connect(ws_url) for _ in range(2)]
            for ws in sockets:
                assert (await ws.receive_str()).startswith("0{")
                for i in range(20):  # 40 over WebSocket
                    await ws.send_str(bad[i % len(bad)])
                    sent += 1
            assert sent == 200
            # Every socket survived: a valid connect on each is accepted.
            for ws, token in zip(sockets, tokens[:2], strict=True):
                await ws.send_str("40" + json.dumps({"token": token}))
                assert (await _frame(ws, "40")).startswith('40{"sid"')
                await ws.close()
        for sid, token in zip(polled, tokens[2:], strict=True):
            assert (await _post(http, sid, "40" + json.dumps({"token": token}))).text == "OK"
            answer = await _poll(http, sid)
            assert answer.status_code == 200 and answer.text.startswith('40{"sid"'), answer.text
            await _post(http, sid, "1")

    await api.wait_session(session["id"], lambda s: s["connections"] == 0, "all closed")
    lines = _log_lines(server, mark)
    assert not [x for x in lines if x["level"] in ("error", "warning", "critical")], lines
    noted = [x for x in lines if "malformed" in x["msg"]]
    assert len(noted) <= 6, noted  # at most one line per connection, not one per packet
    for sid in polled:
        assert len([x for x in noted if sid in x["msg"]]) == 1, noted
    assert len(lines) < 60, lines  # a few lines per connection at most (opened, closed)


async def test_a_connect_that_does_not_parse_is_answered_then_closed(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for broken in ("40{", "40" + "[" * 5000, '40{"token": "a"'):
            sid, _ = await _handshake(http)
            assert (await _post(http, sid, broken)).text == "OK"
            answer = await _poll(http, sid)
            first, *_ = answer.text.split("\x1e")
            assert _connect_error(first)["code"] == "malformed_packet"

            async def closed(sid: str = sid) -> bool:
                return (await _poll(http, sid)).status_code == 400

            await eventually(closed, what="the refused socket to be closed")


# --- tokens and keys -----------------------------------------------------------------------------


def _secret(srv: Server) -> str:
    return (srv.home / "dormant-gateway.secret").read_text().strip()


def _forge(srv: Server, session: dict[str, Any], **over: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "dormant",
        "aud": "dormant-gateway",
        "sub": session["user_id"],
        "sid": session["id"],
        "tenant": session["tenant"],
        "name": "forged",
        "kid": _key_id(srv.key),
        "iat": now,
        "exp": now + 600,
        **over,
    }
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, _secret(srv), "HS256")


async def test_absurd_expiry_and_old_tokens_are_invalid_tokens(
    server: Server, api: Api, probes: Probes
) -> None:
    session = await api.create("absurd")
    assert await probes().refused(_forge(server, session, exp=1e20)) == "invalid_token"
    assert await probes().refused(_forge(server, session, exp=-1e20)) == "invalid_token"
    assert await probes().refused(_forge(server, session, exp=10**30)) == "invalid_token"
    # Minted before tokens named their key: cannot be checked, so refused.
    probe = probes()
    assert await probe.refused(_forge(server, session, kid=None)) == "invalid_token"
    assert probe.refusal is not None and "older dormant" in probe.refusal["message"]
    # The same claims, properly signed and dated, connect (the forgery is not the problem).
    good = probes()
    await good.connect(_forge(server, session))
    assert good.connected


async def test_an_auth_of_900_kb_is_payload_too_large(
    server: Server, api: Api, probes: Probes
) -> None:
    session = await api.create("huge-auth")
    token = await api.token(session["id"])
    huge = "40" + json.dumps({"token": token, "pad": "x" * 900_000})
    # Long-polling, raw: the CONNECT is answered (not parsed), then the socket closed.
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        sid, _ = await _handshake(http)
        assert (await _post(http, sid, huge)).text == "OK"
        answer = await _poll(http, sid)
        refusal = _connect_error(answer.text.split("\x1e")[0])
        assert refusal["code"] == "payload_too_large" and "900" in refusal["message"]
    # WebSocket, with python-socketio (a 900 KB token or a 900 KB auth object alike).
    for auth in ({"token": "x" * 900_000}, {"token": token, "pad": "x" * 900_000}):
        probe = probes()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await probe.sio.connect(
                server.url, auth=auth, transports=["websocket"], wait_timeout=WAIT
            )
        assert probe.refusal is not None
        assert probe.refusal["data"]["code"] == "payload_too_large", probe.refusal
    ok = probes()
    await ok.connect(token)  # the same token with a normal auth connects
    assert ok.connected


async def test_a_token_of_a_revoked_key_is_refused(
    server: Server, api: Api, probes: Probes
) -> None:
    session = await api.create("revoked-before")
    key = _new_key(server)
    response = await api.http.post(
        f"/v1/sessions/{session['id']}/tokens", headers={"X-API-Key": key}
    )
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert jwt.decode(token, options={"verify_signature": False})["kid"] == _key_id(key)
    server.cli("keys", "revoke", _key_id(key))
    assert await probes().refused(token) == "key_revoked"


async def test_revoking_a_key_in_another_process_closes_its_connections(
    server: Server, api: Api, probes: Probes
) -> None:
    session = await api.create("revoked-live")
    key = _new_key(server)
    response = await api.http.post(
        f"/v1/sessions/{session['id']}/tokens", headers={"X-API-Key": key}, json={"ttl": 86400}
    )
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    doomed, kept = probes(), probes()
    await doomed.connect(token)
    await kept.connect(await api.token(session["id"]))  # minted with the admin key
    await doomed.wait("session")

    server.cli("keys", "revoke", _key_id(key))  # another process: only the database knows
    await doomed.wait_disconnected()
    problem = await doomed.wait("error", lambda e: e["code"] == "key_revoked")
    assert "revoked" in problem["message"]
    assert kept.connected and not kept.seen("error")
    await api.wait_session(session["id"], lambda s: s["connections"] == 1, "one left")
    assert await probes().refused(token) == "key_revoked"


# --- unauthenticated sockets: the connection limit and the handshake timeout --------------------


async def test_unauthenticated_sockets_count_against_the_limit_and_time_out(
    server_factory: Callable[..., Server],
) -> None:
    srv = server_factory(DORMANT_GATEWAY_MAX_CONNECTIONS="50")
    api = Api(srv.url, srv.key)
    made = Probes(srv.url)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    try:
        session = await api.create("crowd")
        token = await api.token(session["id"])
        mark = _log_mark(srv)
        async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as http:
            opened = await asyncio.gather(*(_handshake(http) for _ in range(300)))
            held = [sid for sid, rest in opened if not rest]
            turned_away = [rest for _, rest in opened if rest]
            assert len(held) == 50 and len(turned_away) == 250
            for rest in turned_away:  # OPEN, then connect_error and CLOSE: nothing held
                assert _connect_error(rest[0])["code"] == "server_full"
                assert rest[-1] == "1"
            # A real client with a valid token is refused too while they are held.
            assert await made().refused(token) == "server_full"

            # Nobody connects on the held sockets: each is closed after the handshake
            # timeout (10 s by default), its waiting poll told why.
            answers = await asyncio.gather(*(_poll(http, sid) for sid in held[:10]))
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert _connect_error(answer.text.split("\x1e")[0])["code"] == ("handshake_timeout")
            probe = await made.connect_when_free(token)
            assert probe.connected
            for sid in held[10:20]:
                assert (await _poll(http, sid)).status_code == 400  # gone
            metrics = (await http.get("/metrics")).text
        refused = {
            line.split('"')[1]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("dormant_connections_refused_total{")
        }
        assert refused["server_full"] >= 251 and refused["handshake_timeout"] >= 50, refused
        lines = _log_lines(srv, mark)
        assert len([x for x in lines if "handshake refused" in x["msg"]]) <= 3, lines
        assert not [x for x in lines if x["level"] in ("error", "critical")], lines
    finally:
        await made.close()
        await api.close()


# --- in process: a short handshake timeout and key checks, read from the gateway's counters -----


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def _serve(tmp: Path) -> AsyncIterator[tuple[str, Gateway, str]]:
    """``create_app`` under a real uvicorn on loopback, with a 1 s handshake timeout, a limit
    of 5 sockets and a key check every half second; always shut down, and the session
    processes it started killed."""
    ports = claim_ports(10)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp / 'dormant.db'}",
        data_dir=str(tmp / "data"),
        port_range=f"{ports[0]}-{ports[-1]}",
        reconcile_interval=3600,
        proxy_port=0,
    )
    app = create_app(settings)
    gateway: Gateway = app.state.realtime
    gateway.settings = replace(
        gateway.settings, max_connections=5, handshake_timeout=1.0, key_check_interval=0.5
    )
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(_started(server, task), what="uvicorn to start")
        key = settings.admin_key_file().read_text().strip()
        yield f"http://127.0.0.1:{port}", gateway, key
    finally:
        try:
            server.should_exit = True
            await asyncio.wait_for(task, WAIT)
        finally:
            sock.close()
            root = settings.resolved_data_dir() / "processes"
            kill_marked(root)

            async def none_left() -> bool:
                return not marked_processes(root)

            await eventually(none_left, what="the session processes to be gone")


def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> Callable[[], Any]:
    async def check() -> bool:
        if task.done():
            task.result()  # raises what stopped it
        return bool(server.started)

    return check


async def test_in_process_handshake_timeout_frees_slots_and_counts(tmp_path: Path) -> None:
    async with _serve(tmp_path) as (url, gateway, key):
        api = Api(url, key)
        made = Probes(url)
        try:
            session = await api.create("in-process")
            token = await api.token(session["id"])
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                held = [(await _handshake(http))[0] for _ in range(4)]
                ws_url = url.replace("http", "ws") + WEBSOCKET
                async with aiohttp.ClientSession() as ws_http:
                    ws = await ws_http.ws_connect(ws_url)
                    assert (await ws.receive_str()).startswith("0{")
                    assert gateway.stats.sockets == 5 and gateway.stats.unauthenticated == 5
                    _, rest = await _handshake(http)
                    assert _connect_error(rest[0])["code"] == "server_full"
                    assert gateway.stats.sockets == 5
                    for packet in ("9", "x", "42[]"):
                        await ws.send_str(packet)
                    # The WebSocket hears why, then the server closes it.
                    frame = await _frame(ws, "44")
                    assert _connect_error(frame)["code"] == "handshake_timeout"
                    assert await ws.receive_str() == "1"  # Engine.IO CLOSE
                    closing = await ws.receive()
                    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

                async def all_closed() -> bool:
                    return gateway.stats.sockets == 0

                await eventually(all_closed, what="every unauthenticated socket closed")
                assert gateway.stats.handshake_timeouts == 5
                assert gateway.stats.unauthenticated == 0
                assert gateway.stats.malformed_packets == 3
                assert gateway.stats.refused["server_full"] == 1
                assert gateway.stats.refused["handshake_timeout"] == 5
                for sid in held:
                    assert (await _poll(http, sid)).status_code == 400

                # A client that connects, then leaves the namespace but keeps its socket, must
                # connect again within the timeout too.
                async with aiohttp.ClientSession() as ws_http:
                    ws = await ws_http.ws_connect(ws_url)
                    await ws.receive_str()
                    await ws.send_str("40" + json.dumps({"token": token}))
                    assert (await _frame(ws, "40")).startswith('40{"sid"')
                    assert gateway.stats.unauthenticated == 0
                    await ws.send_str("41")
                    frame = await _frame(ws, "44")
                    assert _connect_error(frame)["code"] == "handshake_timeout"
                assert gateway.stats.handshake_timeouts == 6

            # Key checks: a revocation in the store closes the live connection.
            probe: Probe = made()
            await probe.connect(token)
            await gateway.engine.store.revoke_key(_key_id(key), gateway.clock.now())
            await probe.wait_disconnected()
            assert probe.seen("error", lambda e: e["code"] == "key_revoked")
            assert gateway.stats.revoked_drops == 1
        finally:
            await made.close()
            await api.close()


async def _frame(ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
    """The next text frame starting with ``prefix`` (answering Engine.IO pings meanwhile)."""
    while True:
        message = await asyncio.wait_for(ws.receive(), WAIT)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        text = str(message.data)
        if text == "2":
            await ws.send_str("3")
        elif text.startswith(prefix):
            return text
