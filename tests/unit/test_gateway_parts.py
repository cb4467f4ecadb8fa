"""The gateway's pure parts: tokens, heartbeats, the rate limit, the wire protocol."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from dormant.errors import InvalidInput
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
    args: dict[str, object] = {"session_id": "s1", "user_id": "alice", "tenant": "acme", **kw}
    return tokens.mint(**args)[0]  # type: ignore[arg-type]


# --- tokens --------------------------------------------------------------------------------------


def test_a_minted_token_verifies_with_its_claims() -> None:
    clock = FakeClock()
    tokens = issuer(clock)
    token, expires = tokens.mint(session_id="s1", user_id="alice", tenant="acme", name="Alice")
    claims = tokens.verify(token)
    assert (claims.session_id, claims.user_id, claims.tenant, claims.name) == (
        "s1",
        "alice",
        "acme",
        "Alice",
    )
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
    for bad in ({"ttl": 0}, {"ttl": 86401}, {"name": ""}, {"name": "x" * 101}, {"name": "a\nb"}):
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
