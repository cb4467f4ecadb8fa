"""The session proxy's parts: HTTP/1.1 heads parsed strictly, WebSocket frames counted,
ignore rules, access cookies, routing."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime, timedelta

import pytest

from dormant.proxy.access import CookieSigner, Verdict, cookie_values
from dormant.proxy.http1 import BadMessage, copy_body, parse_request, parse_response
from dormant.proxy.routing import Redirect, Target, resolve
from dormant.proxy.traffic import FrameWatcher, IgnoreRule, counts_as_activity

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def req(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode() + b"\r\n"


def test_a_request_head_is_parsed() -> None:
    r = parse_request(req("POST /s/abc/x?y=1 HTTP/1.1\nHost: h\nContent-Length: 12\n"))
    assert (r.method, r.target, r.version) == ("POST", "/s/abc/x?y=1", "HTTP/1.1")
    assert r.head.length == 12 and not r.head.chunked and r.keep_alive and r.has_body
    closing = parse_request(req("GET / HTTP/1.1\nHost: h\nConnection: close\n"))
    assert not closing.keep_alive and not closing.has_body
    assert not parse_request(req("GET / HTTP/1.0\n")).keep_alive
    up = parse_request(
        req("GET /ws HTTP/1.1\nHost: h\nConnection: keep-alive, Upgrade\nUpgrade: websocket\n")
    )
    assert up.wants_upgrade


@pytest.mark.parametrize(
    "head",
    [
        "POST / HTTP/1.1\nHost: h\nContent-Length: 3\nTransfer-Encoding: chunked\n",  # smuggling
        "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: gzip, chunked\n",
        "POST / HTTP/1.1\nHost: h\nContent-Length: 3\nContent-Length: 4\n",
        "POST / HTTP/1.1\nHost: h\nContent-Length: -1\n",
        "GET / HTTP/1.1\nHost: a\nHost: b\n",
        "GET / HTTP/1.1\n",
        "GET http://elsewhere/ HTTP/1.1\nHost: h\n",
        "GET / HTTP/2.0\nHost: h\n",
        "GET /a b HTTP/1.1\nHost: h\n",
        "GET / HTTP/1.1\nHost: h\nBad Name: x\n",
        "GET / HTTP/1.1\nHost: h\nX: a\x00b\n",
        "get / HTTP/1.1\nHost: h\n",
    ],
)
def test_malformed_or_ambiguous_requests_are_refused(head: str) -> None:
    with pytest.raises(BadMessage):
        parse_request(req(head))


def test_a_response_head_is_parsed() -> None:
    r = parse_response(req("HTTP/1.1 204 No Content\nX-A: 1\n"))
    assert r.status == 204 and not r.has_body("GET") and r.head.get("x-a") == "1"
    assert parse_response(req("HTTP/1.1 200 OK\nContent-Length: 3\n")).has_body("GET")
    assert not parse_response(req("HTTP/1.1 200 OK\nContent-Length: 3\n")).has_body("HEAD")
    with pytest.raises(BadMessage):
        parse_response(req("HTTP/1.1 999 What\n"))


async def _copied(data: bytes, head_text: str) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out: list[bytes] = []

    async def write(chunk: bytes) -> None:
        out.append(chunk)

    await copy_body(reader, write, parse_request(req(head_text)).head)
    return b"".join(out)


async def test_chunked_bodies_are_checked_and_written_again() -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    head = "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n"
    # Extensions and trailers are dropped: what passes is dormant's own framing.
    expected = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert await _copied(body + b"NEXT REQUEST", head) == expected
    for bad in (
        b"zz\r\nhello\r\n0\r\n\r\n",  # not a size
        b"5\r\nhel",  # cut short
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"0\r\nX: y\n\nGET /smuggled HTTP/1.1\r\n\r\n",  # a bare LF in a trailer
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",  # a bare LF in an extension
    ):
        with pytest.raises(BadMessage):
            await _copied(bad, head)
    assert await _copied(b"abcdefXYZ", "POST / HTTP/1.1\nHost: h\nContent-Length: 6\n") == b"abcdef"


def frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    first = bytes([0x80 | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        size = bytes([mask_bit | n])
    elif n < 65536:
        size = bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        size = bytes([mask_bit | 127]) + struct.pack(">Q", n)
    return first + size + (b"abcd" if masked else b"") + payload


def test_frames_carrying_messages_are_counted_pings_are_not() -> None:
    stream = (
        frame(0x1, b"hi")
        + frame(0x9, b"")  # ping
        + frame(0x2, b"x" * 300)
        + frame(0xA, b"")  # pong
        + frame(0x1, b"y" * 70_000)
        + frame(0x8, b"")  # close
    )
    whole = FrameWatcher()
    assert whole.feed(stream) == 3
    # The same stream cut at every size of read (headers and payloads split anywhere).
    for step in (1, 2, 3, 7, 100, 4096):
        watcher = FrameWatcher()
        total = sum(watcher.feed(stream[i : i + step]) for i in range(0, len(stream), step))
        assert total == 3, step
    idle = FrameWatcher()
    assert idle.feed(frame(0x9, b"") * 10 + frame(0xA, b"p") * 3) == 0


def test_ignore_rules() -> None:
    rules = tuple(IgnoreRule.parse(t) for t in ["GET /api/status", "/metrics*", "POST /poll/*"])
    assert not counts_as_activity(rules, "GET", "/api/status")
    assert counts_as_activity(rules, "POST", "/api/status")
    assert not counts_as_activity(rules, "PUT", "/metrics/x")
    assert not counts_as_activity(rules, "POST", "/poll/1")
    assert counts_as_activity(rules, "GET", "/poll/1")
    assert counts_as_activity(rules, "GET", "/")


def test_cookies_open_one_session_until_they_expire() -> None:
    signer = CookieSigner.from_secret("s" * 40)
    value = signer.issue("aaaaaaaa1", T0 + timedelta(hours=1))
    assert signer.session_of(value, T0) == "aaaaaaaa1"
    assert signer.session_of(value, T0 + timedelta(hours=2)) is None  # expired
    assert CookieSigner.from_secret("t" * 40).session_of(value, T0) is None  # another secret
    sid, expiry, sig = value.split(".")
    assert signer.session_of(f"bbbbbbbb2.{expiry}.{sig}", T0) is None  # moved to another
    assert signer.session_of(f"{sid}.{int(expiry) + 1000}.{sig}", T0) is None  # extended
    header = f"theme=dark; dormant_access={value}; other=1"
    assert signer.verdict(header, "aaaaaaaa1", T0) is Verdict.ALLOWED
    assert signer.verdict(header, "cccccccc3", T0) is Verdict.OTHER_SESSION
    assert signer.verdict("dormant_access=junk", "aaaaaaaa1", T0) is Verdict.MISSING
    assert signer.verdict(None, "aaaaaaaa1", T0) is Verdict.MISSING
    assert cookie_values('a=1; dormant_access="x"; dormant_access=y', "dormant_access") == [
        "x",
        "y",
    ]


def test_routing_by_path_and_by_host() -> None:
    sid = "19cd5e7a0b1f00112233445"
    t = resolve(f"/s/{sid}/a/b?c=1&dormant_token=T", "h", None)
    assert isinstance(t, Target)
    assert (t.session_id, t.path, t.query, t.prefix) == (
        sid,
        "/a/b",
        "c=1&dormant_token=T",
        f"/s/{sid}",
    )
    assert t.upstream_target == "/a/b?c=1&dormant_token=T"
    assert t.link_token() == "T" and t.without_token() == f"/s/{sid}/a/b?c=1"
    assert resolve(f"/s/{sid}", "h", None) == Redirect(f"/s/{sid}/")
    assert resolve("/s/NOT-AN-ID/", "h", None) is None
    assert resolve("/other", "h", None) is None
    by_host = resolve("/x", f"{sid}.sessions.example:8081", "sessions.example")
    assert isinstance(by_host, Target) and by_host.session_id == sid and by_host.prefix == ""
    assert resolve("/x", "evil.sessions.example", "sessions.example") is None


def test_framing_is_written_from_what_was_parsed() -> None:
    from dormant.proxy.forwarding import Forwarded, upstream_head

    # The client names Content-Length as hop-by-hop: it still frames the body upstream.
    smuggler = parse_request(
        req(
            "POST /x HTTP/1.1\nHost: h\nConnection: keep-alive, content-length, host\n"
            "Content-Length: 40\n"
        )
    )
    fwd = Forwarded("10.0.0.9", "http", "h", None, trusted=False)
    head = upstream_head(smuggler, "/x", fwd).decode()
    assert "content-length: 40\r\n" in head and "host: h\r\n" in head
    # A client's own X-Forwarded-For is believed only from a trusted peer.
    spoof = parse_request(req("GET / HTTP/1.1\nHost: h\nX-Forwarded-For: 6.6.6.6\n"))
    assert "x-forwarded-for: 10.0.0.9\r\n" in upstream_head(spoof, "/", fwd).decode()
    trusted = Forwarded("127.0.0.1", "https", "h", None, trusted=True)
    assert "x-forwarded-for: 6.6.6.6, 127.0.0.1\r\n" in upstream_head(spoof, "/", trusted).decode()


def test_a_sessions_answer_is_confined_to_its_prefix_in_path_mode() -> None:
    from dormant.proxy.forwarding import client_head

    response = parse_response(
        req(
            "HTTP/1.1 200 Totally OK\nSet-Cookie: a=1; Path=/; HttpOnly\n"
            "Set-Cookie: dormant_access=stolen\nService-Worker-Allowed: /\nContent-Length: 2\n"
        )
    )
    head = client_head(response, keep_alive=True, upgrade=False, prefix="/s/abc", chunked=False)
    text = head.decode()
    assert text.startswith("HTTP/1.1 200 OK\r\n")  # dormant's own reason phrase
    assert "set-cookie: a=1; Path=/s/abc/; HttpOnly\r\n" in text
    assert "dormant_access" not in text and "service-worker-allowed" not in text
    assert "content-length: 2\r\n" in text
    by_host = client_head(response, keep_alive=True, upgrade=False, prefix=None, chunked=False)
    assert "set-cookie: a=1; Path=/; HttpOnly" in by_host.decode()
    assert "dormant_access" not in by_host.decode()


def test_odd_digits_and_redirect_targets_are_refused() -> None:
    with pytest.raises(BadMessage):
        parse_request(
            req(
                "POST / HTTP/1.1\nHost: h\nContent-Length: \u00b2\n".encode("utf-8").decode(
                    "latin-1"
                )
            )
        )
    signer = CookieSigner.from_secret("s" * 40)
    assert signer.session_of("aaaaaaaa1.\u00b2.x", T0) is None
    sid = "19cd5e7a0b1f00112233445"
    t = resolve("//evil.example/?dormant_token=T", f"{sid}.d.test", "d.test")
    assert isinstance(t, Target) and t.without_token() == "/evil.example/"
    t2 = resolve("/\\evil.example/?dormant_token=T", f"{sid}.d.test", "d.test")
    assert isinstance(t2, Target) and t2.without_token().startswith("/evil.example")
