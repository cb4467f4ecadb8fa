"""Failed API key attempts are limited per client address, before any database lookup."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from dormant.api import create_api
from dormant.api.auth import FailedAuthLimiter, RateLimited, create_key
from dormant.reconciler import Reconciler
from tests.unit.conftest import Rig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_failures_lock_the_address_for_a_window() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=3, window=60, clock=clock)
    for _ in range(2):
        limiter.check("a", "h1")
        limiter.failed("a")
    limiter.check("a", "h1")  # two failures: still allowed
    limiter.failed("a")
    with pytest.raises(RateLimited) as refused:
        limiter.check("a", "h1")
    assert refused.value.retry_after == 60
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert "try again in 60s" in str(refused.value)
    limiter.check("b", "h1")  # another address is not affected
    clock.now += 59.5
    with pytest.raises(RateLimited) as later:
        limiter.check("a", "h1")
    assert later.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    limiter.check("a", "h1")  # the lockout is over
    assert limiter.locked_for("a") == 0


def test_failures_spread_over_more_than_a_window_do_not_lock() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=3, window=60, clock=clock)
    for _ in range(10):
        limiter.failed("a")
        limiter.failed("a")
        clock.now += 61
        limiter.check("a", "h")
    assert limiter.locked_for("a") == 0


def test_keys_that_authenticated_still_pass_a_locked_address() -> None:
    limiter = FailedAuthLimiter(limit=1, window=60, clock=Clock())
    limiter.succeeded("good")
    limiter.failed("nat")
    with pytest.raises(RateLimited):
        limiter.check("nat", "guess")
    limiter.check("nat", "good")


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(
        limit=1, window=60, clock=clock, max_addresses=100, max_known_keys=10
    )
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
        limiter.succeeded(f"key{i}")
        clock.now += 0.01
    assert len(limiter._addresses) <= 100
    assert len(limiter._known) == 10
    limiter.failed("nat")
    limiter.check("nat", "key999")  # the newest keys are remembered
    with pytest.raises(RateLimited):
        limiter.check("nat", "key0")  # the oldest were forgotten
    with pytest.raises(RateLimited):
        limiter.check("10.0.3.231", "key0")  # the newest addresses too


def test_a_key_in_use_stays_known() -> None:
    limiter = FailedAuthLimiter(limit=1, window=60, clock=Clock(), max_known_keys=3)
    for key in ("admin", "a", "b", "admin", "c", "d"):
        limiter.succeeded(key)
    limiter.failed("nat")
    limiter.check("nat", "admin")
    with pytest.raises(RateLimited):
        limiter.check("nat", "a")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="limit"):
        FailedAuthLimiter(limit=0)
    with pytest.raises(ValueError, match="window"):
        FailedAuthLimiter(window=0)


# --- through the API ----------------------------------------------------------------------------


class Lookups:
    """Counts the store's key lookups."""

    def __init__(self, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original: Callable[[str], Any] = rig.store.get_key

        async def counted(key_id: str) -> Any:
            self.count += 1
            return await original(key_id)

        monkeypatch.setattr(rig.store, "get_key", counted)


@pytest.fixture
async def world(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Callable[[str, str | None], httpx.AsyncClient], str, Lookups]]:
    key = await create_key(rig.store, "default", True, "test", rig.clock.now())
    app = create_api(rig.engine, Reconciler(rig.engine), auth_failure_limit=5)
    clients: list[httpx.AsyncClient] = []

    def client(address: str, api_key: str | None) -> httpx.AsyncClient:
        made = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(address, 5555)),
            base_url="http://dormant",
            headers={"X-API-Key": api_key} if api_key is not None else {},
        )
        clients.append(made)
        return made

    try:
        yield client, key, Lookups(rig, monkeypatch)
    finally:
        for made in clients:
            await made.aclose()


async def test_guessing_keys_gets_429_without_lookups(
    world: tuple[Callable[[str, str | None], httpx.AsyncClient], str, Lookups],
) -> None:
    client, key, lookups = world
    admin_id = key.split("_")[1]
    # the admin key authenticated once from the guesser's address (someone behind the same NAT)
    assert (await client("198.51.100.9", key).get("/v1/sessions")).status_code == 200
    guesses = [f"dk_{admin_id}_guess{i}" for i in range(5)]
    for guess in guesses:
        response = await client("198.51.100.9", guess).get("/v1/sessions")
        assert response.status_code == 401, response.text
    assert lookups.count == 6

    refused = await client("198.51.100.9", f"dk_{admin_id}_guess99").get("/v1/sessions")
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "failed API key attempts" in error["message"]
    assert refused.headers["retry-after"] == "60"
    # malformed or not, an unknown key from the locked address costs no lookup
    for other in ("garbage", "dk_000000000000_nope", key + "x"):
        assert (await client("198.51.100.9", other).get("/v1/stats")).status_code == 429
    assert lookups.count == 6

    # the key that worked before still works from there; other addresses are not locked out
    assert (await client("198.51.100.9", key).get("/v1/sessions")).status_code == 200
    assert (await client("203.0.113.1", "garbage").get("/v1/sessions")).status_code == 401
    assert (await client("203.0.113.1", key).get("/v1/sessions")).status_code == 200


async def test_a_missing_key_is_not_an_attempt(
    world: tuple[Callable[[str, str | None], httpx.AsyncClient], str, Lookups],
) -> None:
    client, key, lookups = world
    anonymous = client("198.51.100.10", None)
    for _ in range(10):
        response = await anonymous.get("/v1/sessions")
        assert response.status_code == 401
        assert "missing X-API-Key" in response.json()["error"]["message"]
    response = await client("198.51.100.10", f"dk_{key.split('_')[1]}_nope").get("/v1/sessions")
    assert response.status_code == 401
    assert lookups.count == 1
