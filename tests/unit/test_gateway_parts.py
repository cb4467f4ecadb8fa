"""The gateway's pure parts: tokens, heartbeats, the rate limit, the wire protocol."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from dormant.errors import InvalidInput
from dormant.gateway.guard import EngineGuard, engineio_packet_ok, polling_payload_problem
from dormant.gateway.heartbeat import Heartbeat, Quality, classify, worst
from dormant.gateway.limits import TokenBucket
from dormant.gateway.protocol import ProtocolError, parse_activity, parse_pong, session_view
from dormant.gateway.tokens import TokenError, TokenIssuer, new_secret
from dormant.policy import Action, ActivityKind, Decision, Level
from dormant.testing import FakeClock

SECRET = "s" * 64


def issuer(clock: FakeClock | None = None, ttl: float = 600) -> TokenIssuer:
    return TokenIssuer(SECRET, clock or FakeClock(), ttl=ttl)


def mint(tokens: TokenIssuer, **kw: object) -> str:
    args: dict[str, object] = {
        "session_id": "s1",
        "user_id": "alice",
        "tenant": "acme",
        "key_id": "k1",
        **kw,
    }
    return tokens.mint(**args)[0]  # type: ignore[arg-type]


# --- tokens --------------------------------------------------------------------------------------


def test_a_minted_token_verifies_with_its_claims() -> None:
    clock = FakeClock()
    tokens = issuer(clock)
    token, expires = tokens.mint(
        session_id="s1", user_id="alice", tenant="acme", key_id="k7", name="Alice"
    )
    claims = tokens.verify(token)
    assert (claims.session_id, claims.user_id, claims.tenant, claims.name, claims.key_id) == (
        "s1",
        "alice",
        "acme",
        "Alice",
        "k7",
    )
    assert jwt.decode(token, options={"verify_signature": False})["kid"] == "k7"
    assert claims.expires_at == expires == clock.now() + timedelta(seconds=600)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert tokens.verify(mint(tokens)).name == "alice"  # the name defaults to the user


def test_tokens_expire_on_the_clock() -> None:
    clock = FakeClock()
    tokens = issuer(clock, ttl=30)
    token = mint(tokens)
    clock.advance(29)
    assert tokens.verify(token).session_id == "s1"
    clock.advance(1)
    with pytest.raises(TokenError) as caught:
        tokens.verify(token)
    assert caught.value.code == "token_expired"


def _forge(claims: dict[str, object], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def _claims(clock: FakeClock, **over: object) -> dict[str, object]:
    now = int(clock.now().timestamp())
    base: dict[str, object] = {
        "iss": "dormant",
        "aud": "dormant-gateway",
        "sub": "alice",
        "sid": "s1",
        "tenant": "acme",
        "name": "Alice",
        "kid": "k1",
        "iat": now,
        "exp": now + 60,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("forge", "code"),
    [
        (lambda c: None, "unauthorized"),
        (lambda c: "", "unauthorized"),
        (lambda c: 42, "unauthorized"),
        (lambda c: "x" * 5000, "invalid_token"),
        (lambda c: "a.b.c", "invalid_token"),
        (lambda c: _forge(_claims(c), secret="t" * 40), "invalid_token"),
        (lambda c: _forge(_claims(c), alg="HS512"), "invalid_token"),
        (lambda c: _forge(_claims(c, aud="other")), "invalid_token"),
        (lambda c: _forge(_claims(c, iss="someone")), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=None)), "invalid_token"),
        (lambda c: _forge(_claims(c, sid=None)), "invalid_token"),
        (lambda c: _forge(_claims(c, tenant=None)), "invalid_token"),
        (lambda c: _forge(_claims(c, name=7)), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=int(c.now().timestamp()))), "token_expired"),
        # Absurd expiries are refused, not raised: beyond datetime's range, NaN, infinity.
        (lambda c: _forge(_claims(c, exp=1e20)), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=10**30)), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=-1e20)), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=float("nan"))), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=float("inf"))), "invalid_token"),
        (lambda c: _forge(_claims(c, exp=True)), "invalid_token"),
        # A token that names no API key (minted before tokens did) cannot be checked.
        (lambda c: _forge(_claims(c, kid=None)), "invalid_token"),
        (lambda c: _forge(_claims(c, kid="")), "invalid_token"),
        (lambda c: _forge(_claims(c, kid=7)), "invalid_token"),
        (lambda c: _forge(_claims(c, kid="k" * 65)), "invalid_token"),
    ],
)
def test_bad_tokens_are_refused_with_a_code(forge: object, code: str) -> None:
    clock = FakeClock()
    with pytest.raises(TokenError) as caught:
        issuer(clock).verify(forge(clock))  # type: ignore[operator]
    assert caught.value.code == code
    assert str(caught.value)


def test_alg_none_is_refused() -> None:
    clock = FakeClock()
    encode = base64.urlsafe_b64encode
    header = encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = encode(json.dumps(_claims(clock)).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError) as caught:
        issuer(clock).verify(f"{header}.{body}.")
    assert caught.value.code == "invalid_token"


def test_mint_and_issuer_validate_their_inputs() -> None:
    tokens = issuer()
    for bad in (
        {"ttl": 0},
        {"ttl": 86401},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "a\nb"},
        {"key_id": ""},
        {"key_id": "k" * 65},
    ):
        with pytest.raises(InvalidInput):
            mint(tokens, **bad)
    with pytest.raises(InvalidInput):
        TokenIssuer("short", FakeClock())
    with pytest.raises(InvalidInput):
        TokenIssuer(SECRET, FakeClock(), ttl=0)
    assert len(new_secret()) >= 32 and new_secret() != new_secret()


# --- heartbeats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtt", "quality"),
    [
        (None, Quality.STABLE),
        (0.0, Quality.STABLE),
        (5.0, Quality.STABLE),
        (5.01, Quality.UNSTABLE),
        (10.0, Quality.UNSTABLE),
        (10.01, Quality.POOR),
    ],
)
def test_round_trip_thresholds(rtt: float | None, quality: Quality) -> None:
    assert classify(rtt) is quality


def test_worst_quality_wins() -> None:
    assert worst([Quality.STABLE, Quality.POOR, Quality.UNSTABLE]) is Quality.POOR
    assert worst([]) is None


def test_pongs_measure_round_trips_and_missed_pings_expire() -> None:
    beat = Heartbeat(interval=25, missed_allowed=3, now=0.0)
    assert beat.next_at == 25.0
    beat.sent(1, 25.0)
    assert beat.next_at == 50.0 and not beat.expired()
    assert beat.pong(1, 25.2)
    assert beat.rtt == pytest.approx(0.2) and beat.missed == 0
    assert not beat.pong(1, 26.0), "a pong is only accepted once"
    assert not beat.pong(999, 26.0), "a ts never sent is refused"

    for i, at in enumerate((50.0, 75.0, 100.0), start=2):
        assert not beat.expired()
        beat.sent(i, at)
    assert beat.missed == 3 and beat.expired()
    # A late pong for the newest ping answers the older ones too.
    assert beat.pong(4, 106.0)
    assert beat.missed == 0 and beat.rtt == pytest.approx(6.0)
    assert beat.quality(106.0) is Quality.UNSTABLE


def test_an_unanswered_ping_degrades_quality_as_it_ages() -> None:
    beat = Heartbeat(interval=1, missed_allowed=100, now=0.0)
    beat.sent(1, 0.0)
    assert beat.quality(0.5) is Quality.STABLE
    assert beat.quality(7.0) is Quality.UNSTABLE
    assert beat.quality(11.0) is Quality.POOR
    assert beat.pong(1, 11.0) and beat.quality(11.0) is Quality.POOR
    beat.sent(2, 12.0)
    assert beat.pong(2, 12.1) and beat.quality(12.1) is Quality.STABLE


def test_remembered_pings_are_bounded() -> None:
    beat = Heartbeat(interval=1, missed_allowed=100, now=0.0)
    for i in range(100):
        beat.sent(i, float(i))
    assert beat.missed == 16


# --- rate limit ----------------------------------------------------------------------------------


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.49) is False
    assert bucket.take(0.5) is True
    assert bucket.take(10.0) and bucket.take(10.0) and bucket.take(10.0)
    assert not bucket.take(10.0), "never more than the burst"
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


# --- protocol ------------------------------------------------------------------------------------


def test_activity_payloads() -> None:
    assert parse_activity(({"kind": "build"},)) is ActivityKind.BUILD
    assert parse_activity(({"kind": "focus", "detail": {"x": [1]}},)) is ActivityKind.FOCUS
    cases = [
        ((), "invalid_activity"),
        (("build",), "invalid_activity"),
        (({"kind": "build"}, 2), "invalid_activity"),
        (({"kind": "build", "at": 1},), "invalid_activity"),
        (({},), "invalid_activity"),
        (({"kind": ""},), "invalid_activity"),
        (({"kind": "x" * 41},), "invalid_activity"),
        (({"kind": "teleport"},), "unknown_kind"),
    ]
    for args, code in cases:
        with pytest.raises(ProtocolError) as caught:
            parse_activity(args)
        assert caught.value.code == code, args
        assert caught.value.payload()["message"]


def test_pong_payloads() -> None:
    assert parse_pong(({"ts": 12},)) == 12
    for args in ((), ({"ts": "1"},), ({"ts": True},), ({"ts": 1.5},), ([1],)):
        with pytest.raises(ProtocolError):
            parse_pong(args)  # type: ignore[arg-type]


def test_session_view_shows_a_warning_only_before_a_sleep() -> None:
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    common = {
        "session_id": "s1",
        "user_id": "alice",
        "state": "running",
        "level": Level.IDLE,
        "connections": 1,
        "quality": "stable",
        "last_activity_at": None,
        "last_activity_kind": None,
        "error_text": None,
    }
    sleep = Decision(Action.SLEEP, at, "no meaningful activity for 15m", "inactivity")
    warned = session_view(decision=sleep, warning_at=at, **common)  # type: ignore[arg-type]
    assert warned.payload["warning"] == {"at": at.isoformat(), "reason": sleep.reason}
    plain = session_view(decision=sleep, warning_at=None, **common)  # type: ignore[arg-type]
    assert plain.payload["warning"] is None and plain.key != warned.key
    warn = Decision(Action.WARN, at, "will sleep", "sleep_warning")
    later = session_view(decision=warn, warning_at=at, **common)  # type: ignore[arg-type]
    assert later.payload["warning"] is None
    assert later.payload["next_action"] == {
        "action": "warn",
        "at": at.isoformat(),
        "reason": "will sleep",
    }


# --- what a client may send: Engine.IO packets, checked before python-engineio parses them -------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("40", True),
        ('40{"token":"x"}', True),
        ('42["activity",{"kind":"command"}]', True),
        ("451-[]", True),
        ("2", True),
        ("3probe", True),
        ("5", True),
        ("6", True),
        ("1", True),
        ("b" + base64.b64encode(b"\x00\x01").decode(), True),
        ("", False),
        ("9", False),  # an unknown type: python-engineio raised IndexError logging it
        ("7", False),
        ("0", False),  # OPEN comes from the server only
        ("x", False),
        ("4", False),
        ("4[", False),  # JSON at the Engine.IO level: never parsed (deep nesting would raise)
        ("4{}", False),
        ("47", False),
        ("2ping", False),
        ("b!!!", False),
        ("b", False),
    ],
)
def test_engineio_packets_are_checked_before_parsing(text: str, ok: bool) -> None:
    assert engineio_packet_ok(text) is ok


def test_polling_payloads_are_checked_whole() -> None:
    assert polling_payload_problem(b'40{"token":"t"}\x1e2') is None
    assert polling_payload_problem(b"\xff\xfe") == "not UTF-8"
    assert polling_payload_problem(b"") == "empty payload"
    assert polling_payload_problem(b"40\x1e9") == "not an Engine.IO packet: '9'"
    assert "more than 16 packets" in str(polling_payload_problem(b"\x1e".join([b"6"] * 17)))


class _StubGateway:
    """What EngineGuard needs of the gateway."""

    def __init__(self) -> None:
        self._sockets = {"live": 0.0}
        self.noted: list[tuple[str | None, str]] = []

        class _Eio:
            max_http_buffer_size = 100

        class _Sio:
            eio = _Eio()

        self.sio = _Sio()

    def note_malformed(self, eio_sid: str | None, what: str, logged: bool = False) -> bool:
        self.noted.append((eio_sid, what))
        return True


class _Recorder:
    """Stands in for python-engineio's ASGI app: records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], list[Any]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        got = []
        while True:
            message = await receive()
            got.append(message)
            if message["type"] in ("http.request",) and not message.get("more_body"):
                break
            if message["type"] == "websocket.disconnect":
                break
        self.calls.append((scope, got))
        if scope["type"] == "websocket":
            await send({"type": "websocket.send", "text": '0{"sid":"direct"}'})


def _post(sid: str, chunks: list[bytes]) -> tuple[dict[str, Any], Any, list[Any], Any]:
    scope = {
        "type": "http",
        "method": "POST",
        "query_string": f"EIO=4&transport=polling&sid={sid}".encode(),
        "headers": [(b"content-length", str(sum(map(len, chunks))).encode())],
    }
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    return scope, receive, sent, send


async def test_engine_guard_refuses_a_malformed_polling_payload_whole() -> None:
    app, gateway = _Recorder(), _StubGateway()
    guard = EngineGuard(app, gateway)  # type: ignore[arg-type]
    scope, receive, sent, send = _post("live", [b"40", b"\x1e9"])
    await guard(scope, receive, send)
    assert app.calls == []
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"]) == {
        "error": {
            "code": "malformed_packet",
            "message": "payload refused: not an Engine.IO packet: '9'",
        }
    }
    assert gateway.noted == [("live", "not an Engine.IO packet: '9'")]

    # Over the size limit: 413, nothing delivered.
    scope, receive, sent, send = _post("live", [b"4" * 60, b"2" * 60])
    await guard(scope, receive, send)
    assert app.calls == [] and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


async def test_engine_guard_replays_a_good_payload_in_one_piece() -> None:
    app, gateway = _Recorder(), _StubGateway()
    guard = EngineGuard(app, gateway)  # type: ignore[arg-type]
    scope, receive, _, send = _post("live", [b"40", b'{"token":"t"}'])
    await guard(scope, receive, send)
    [(seen_scope, messages)] = app.calls
    assert messages == [{"type": "http.request", "body": b'40{"token":"t"}', "more_body": False}]
    assert (b"content-length", b"15") in seen_scope["headers"]
    assert gateway.noted == []
    # Unknown sessions are Engine.IO's to answer (it says "invalid session").
    scope, receive, _, send = _post("gone", [b"9"])
    await guard(scope, receive, send)
    assert len(app.calls) == 2 and gateway.noted == []


async def test_engine_guard_skips_malformed_websocket_frames() -> None:
    app, gateway = _Recorder(), _StubGateway()
    guard = EngineGuard(app, gateway)  # type: ignore[arg-type]
    frames = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "9"},
        {"type": "websocket.receive", "text": ""},
        {"type": "websocket.receive", "bytes": b"\x00binary"},
        {"type": "websocket.receive", "text": "40"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return frames.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "query_string": b"EIO=4&transport=websocket", "headers": []}
    await guard(scope, receive, send)
    [(_, messages)] = app.calls
    assert [m.get("text", m.get("bytes")) for m in messages] == [None, b"\x00binary", "40", None]
    assert [what for _, what in gateway.noted] == [
        "not an Engine.IO packet: '9'",
        "not an Engine.IO packet: ''",
    ]
