"""Issue 10: the session proxy. A sleeping session's URL wakes it on request; traffic counts as
activity (client WebSocket messages too, an idle open WebSocket not); only holders of a
session's cookie get through; bodies are streamed both ways."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.e2e.conftest import Server, wait_until
from tests.e2e.proxy_support import (
    access_cookie,
    cookies_for,
    create,
    proxy_config,
    short_lived,
    sleep,
    state,
    wakes,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(server_factory: Callable[..., Server], tmp_path: Path) -> Server:
    config = proxy_config(tmp_path / "dormant.toml")
    return server_factory(DORMANT_CONFIG=str(config))


def test_one_request_wakes_a_sleeping_session_and_gets_its_own_answer(server: Server) -> None:
    sid = create(server)
    url = server.client().get(f"/v1/sessions/{sid}").json()["url"]
    assert url == f"{server.proxy_url}/s/{sid}/"
    jar = cookies_for(server, sid)
    with httpx.Client(cookies=jar, timeout=60) as client:
        first = client.get(url)
        assert first.status_code == 200 and f"hello from {sid}" in first.text
        sleep(server, sid)
        asleep = server.client().get(f"/v1/sessions/{sid}").json()
        assert asleep["state"] == "sleeping" and asleep["url"] == url  # stable across sleeps
        assert asleep["port"] is None  # a sleeping session holds no host port
        woken = client.get(url + "headers?x=1")
        assert woken.status_code == 200, woken.text
        seen = woken.json()
        assert seen["session"] == sid and seen["path"] == "/headers" and seen["query"] == "x=1"
        assert seen["headers"]["x-forwarded-prefix"] == f"/s/{sid}"
        assert seen["headers"]["x-forwarded-proto"] == "http"
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert "dormant_access" not in seen["headers"].get("cookie", "")  # never passed on
    assert state(server, sid) == "running"
    assert wakes(server, sid) == 1
    events = server.client().get(f"/v1/sessions/{sid}/events").json()["items"]
    assert any(e["reason"] == "woken by a request through the proxy" for e in events)


def test_fifty_concurrent_requests_to_a_sleeping_session_make_one_wake(server: Server) -> None:
    sid = create(server)
    jar = cookies_for(server, sid)
    sleep(server, sid)

    async def hammer() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(cookies=jar, timeout=60) as client:
            answers = await asyncio.gather(
                *(client.get(f"{server.proxy_url}/s/{sid}/n{i}") for i in range(50))
            )
        return [(a.status_code, a.text) for a in answers]

    answers = asyncio.run(hammer())
    assert [code for code, _ in answers] == [200] * 50
    assert all(f"hello from {sid}" in text for _, text in answers)
    assert wakes(server, sid) == 1


def test_only_the_sessions_cookie_gets_through(server: Server) -> None:
    a = create(server, "alice")
    b = create(server, "bob")
    jar_a = cookies_for(server, a)
    with httpx.Client(timeout=30) as anonymous:
        refused = anonymous.get(f"{server.proxy_url}/s/{a}/")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        forged = anonymous.get(
            f"{server.proxy_url}/s/{a}/",
            headers={"cookie": f"dormant_access={a}.9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
        )
        assert forged.status_code == 401
        page = anonymous.get(f"{server.proxy_url}/s/{a}/", headers={"accept": "text/html"})
        assert page.status_code == 401 and page.text.startswith("<!doctype html>")
        # No cookie: 401 whether or not the session exists (nothing learnt).
        assert anonymous.get(f"{server.proxy_url}/s/{'f' * 23}/").status_code == 401
        assert anonymous.get(f"{server.proxy_url}/elsewhere").status_code == 404
    # A's cookie shown on B's path: valid, but not for B.
    value = access_cookie(jar_a)
    with httpx.Client(timeout=30, headers={"cookie": f"dormant_access={value}"}) as holder:
        assert holder.get(f"{server.proxy_url}/s/{a}/").status_code == 200
        other = holder.get(f"{server.proxy_url}/s/{b}/")
        assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    # A link works once.
    link = server.client().post(f"/v1/sessions/{a}/links").json()["url"]
    with httpx.Client(timeout=30) as browser:
        assert browser.get(link).status_code == 302
        assert browser.get(link).status_code == 401
    # A public template needs no cookie.
    public = create(server, "carol", template="open")
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.get(f"{server.proxy_url}/s/{public}/").status_code == 200
    # Another tenant cannot make links to A.
    key = server.cli("keys", "create", "--tenant", "acme").stdout.strip()
    assert server.client(key).post(f"/v1/sessions/{a}/links").status_code == 404


def test_bodies_are_streamed_both_ways_and_keep_alive_is_kept(server: Server) -> None:
    sid = create(server)
    jar = cookies_for(server, sid)
    payload = os.urandom(3 * 1024 * 1024)
    with httpx.Client(cookies=jar, timeout=60) as client:
        echoed = client.post(f"{server.proxy_url}/s/{sid}/echo", content=payload)
        assert echoed.status_code == 200 and echoed.content == payload

        def chunks() -> object:
            for i in range(0, len(payload), 100_000):
                yield payload[i : i + 100_000]

        chunked = client.post(f"{server.proxy_url}/s/{sid}/echo", content=chunks())
        assert chunked.status_code == 200 and chunked.content == payload
        streamed = client.get(f"{server.proxy_url}/s/{sid}/stream?seconds=1")
        assert streamed.text.splitlines() == ["tick 0", "tick 1"]
        for _ in range(20):  # one connection for all of these (keep-alive)
            assert client.get(f"{server.proxy_url}/s/{sid}/").status_code == 200


def test_smuggling_and_malformed_requests_are_refused(server: Server) -> None:
    sid = create(server)
    port = server.proxy_port

    def raw(data: bytes) -> bytes:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(data)
            return sock.recv(65536)

    both = raw(
        f"POST /s/{sid}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode()
    )
    assert both.startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in both
    assert raw(b"GET /s/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert state(server, sid) == "running"  # none of it reached or harmed the session


async def _ws_session(server: Server, sid: str, jar: httpx.Cookies) -> None:
    value = access_cookie(jar)
    headers = {"cookie": f"dormant_access={value}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.proxy_url}/s/{sid}/ws", headers=headers, autoping=False) as ws,
    ):
        # Messages every second for 8 s (twice sleep_after): the session stays awake.
        for i in range(8):
            await ws.send_str(f"hello {i}")
            reply = await ws.receive(timeout=10)
            assert reply.data == f"hello {i}"
            await asyncio.sleep(1)
        assert state(server, sid) == "running"
        # Open and silent: it sleeps (and the socket is closed with it).
        started = time.monotonic()
        while state(server, sid) != "sleeping":
            assert time.monotonic() - started < 30, "an idle open WebSocket kept it awake"
            await asyncio.sleep(0.5)


def test_websocket_messages_are_activity_an_idle_websocket_is_not(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server, sid, jar = short_lived(server_factory, tmp_path, "4s")
    asyncio.run(_ws_session(server, sid, jar))
    events = server.client().get(f"/v1/sessions/{sid}/events").json()["items"]
    slept = [e for e in events if e["to_state"] == "stopping"]
    assert len(slept) == 1 and "no meaningful activity" in slept[0]["reason"], slept


def test_polling_listed_in_ignore_does_not_keep_a_session_awake(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server, sid, jar = short_lived(server_factory, tmp_path, "3s")
    with httpx.Client(cookies=jar, timeout=30) as client:
        before = server.client().get(f"/v1/sessions/{sid}").json()["last_activity"]["at"]
        started = time.monotonic()
        while state(server, sid) == "running":
            assert time.monotonic() - started < 30
            client.get(f"{server.proxy_url}/s/{sid}/poll")  # ignored: not activity
            time.sleep(0.3)
    after = server.client().get(f"/v1/sessions/{sid}").json()["last_activity"]
    assert after["at"] == before  # no proxied request was recorded


def test_a_deleted_session_answers_404(server: Server) -> None:
    sid = create(server)
    jar = cookies_for(server, sid)
    assert server.client().delete(f"/v1/sessions/{sid}?wait=30").status_code == 202
    with httpx.Client(cookies=jar, timeout=30) as client:
        gone = client.get(f"{server.proxy_url}/s/{sid}/")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_forward_auth_answers_from_the_cookie_and_the_state(server: Server) -> None:
    sid = create(server)
    jar = cookies_for(server, sid)
    value = access_cookie(jar)
    ask = {"x-original-uri": f"/s/{sid}/page", "cookie": f"dormant_access={value}"}
    for base in (server.proxy_url, server.url):  # the proxy's port and the API's
        ok = httpx.get(f"{base}/v1/forward-auth", headers=ask)
        assert ok.status_code == 200, ok.text
        upstream = ok.headers["x-dormant-upstream"]
        assert httpx.get(f"http://{upstream}/").text.endswith(f"hello from {sid}</h1>")
        assert (
            httpx.get(f"{base}/v1/forward-auth", headers={**ask, "cookie": ""}).status_code == 401
        )
    sleep(server, sid)
    waiting = httpx.get(
        f"{server.proxy_url}/v1/forward-auth", headers={**ask, "accept": "text/html"}
    )
    assert waiting.status_code == 503 and "Waking your session" in waiting.text
    wait_until(lambda: state(server, sid) == "running", timeout=30, what="the wake it started")
    assert wakes(server, sid) == 1


def test_a_long_response_keeps_the_session_busy_while_it_streams(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server, sid, jar = short_lived(server_factory, tmp_path, "4s")
    ticks: list[str] = []
    with (
        httpx.Client(cookies=jar, timeout=30) as client,
        client.stream("GET", f"{server.proxy_url}/s/{sid}/stream?seconds=9") as streamed,
    ):
        for line in streamed.iter_lines():
            ticks.append(line)
            if len(ticks) == 14:  # 7 s in: past sleep_after, still streaming
                now = server.client().get(f"/v1/sessions/{sid}").json()
                assert now["state"] == "running", now
                assert now["busy_until"] is not None, now
    assert ticks == [f"tick {i}" for i in range(18)]  # not cut mid-stream
    events = server.client().get(f"/v1/sessions/{sid}/events").json()["items"]
    assert any(e["code"] == "busy" for e in events), events


def test_connection_cannot_strip_the_framing_of_a_smuggled_request(server: Server) -> None:
    import socket

    sid = create(server)
    value = access_cookie(cookies_for(server, sid))
    inner = f"GET /s/{sid}/headers HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    request = (
        f"POST /s/{sid}/echo HTTP/1.1\r\nHost: x\r\nCookie: dormant_access={value}\r\n"
        f"Connection: keep-alive, content-length\r\nContent-Length: {len(inner)}\r\n\r\n"
    ).encode() + inner
    with socket.create_connection(("127.0.0.1", server.proxy_port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while not answer.endswith(inner):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == inner  # the session saw one body


def test_a_wake_refused_for_want_of_a_port_answers_503_and_the_page_says_so(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    config = proxy_config(tmp_path / "dormant.toml")
    server = server_factory(ports=1, DORMANT_CONFIG=str(config))
    a = create(server, "alice")
    jar = cookies_for(server, a)
    sleep(server, a)
    create(server, "bob")  # takes the only port
    with httpx.Client(cookies=jar, timeout=30) as client:
        held = client.get(f"{server.proxy_url}/s/{a}/")
        assert held.status_code == 503 and "retry-after" in held.headers, held.text
        assert held.json()["error"]["code"] == "unavailable"
        started = time.monotonic()
        events = client.get(f"{server.proxy_url}/s/{a}/.dormant/wait").text
        assert time.monotonic() - started < 10
    assert "event: failed" in events, events
    assert state(server, a) == "sleeping"
    timeline = server.client().get(f"/v1/sessions/{a}/events").json()["items"]
    assert len(timeline) < 20, timeline  # refused a few times, not in a loop


def _proxy_metrics(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("dormant_proxy_requests_total", "dormant_proxy_wakes_started_total")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_count_what_the_proxy_did(server: Server) -> None:
    before = _proxy_metrics(server)
    assert before['dormant_proxy_requests_total{outcome="refused"}'] == 0  # pre-created
    sid = create(server)
    jar = cookies_for(server, sid)  # one redirect (the link swapped for the cookie)
    with httpx.Client(cookies=jar, timeout=30) as client:
        for _ in range(3):
            assert client.get(f"{server.proxy_url}/s/{sid}/").status_code == 200
        sleep(server, sid)
        assert client.get(f"{server.proxy_url}/s/{sid}/").status_code == 200  # held, woken
    assert httpx.get(f"{server.proxy_url}/s/{sid}/").status_code == 401
    assert httpx.get(f"{server.proxy_url}/nowhere").status_code == 404
    after = _proxy_metrics(server)
    assert after['dormant_proxy_requests_total{outcome="forwarded"}'] == 4
    assert after['dormant_proxy_requests_total{outcome="redirected"}'] == 1
    assert after['dormant_proxy_requests_total{outcome="refused"}'] == 1
    assert after['dormant_proxy_requests_total{outcome="not_found"}'] == 1
    assert after['dormant_proxy_requests_total{outcome="bad_gateway"}'] == 0
    assert after["dormant_proxy_wakes_started_total"] == 1
