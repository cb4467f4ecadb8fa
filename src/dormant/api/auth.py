"""API keys: random, stored as SHA-256 hashes, compared in constant time, scoped to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from dormant.errors import DormantError, InvalidInput
from dormant.store.base import Store
from dormant.store.records import ApiKeyRecord

PREFIX = "dk_"


class Unauthorized(DormantError):
    code = "unauthorized"
    status = 401


class Forbidden(DormantError):
    code = "forbidden"
    status = 403


class RateLimited(DormantError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The tenant filter to apply: ``None`` (everything) for admin keys."""
        return None if self.admin else self.tenant

    def describe(self) -> str:
        """Who acted, as logs and timelines name it: ``key 3f12ab9c0d1e (tenant acme)``."""
        admin = ", admin" if self.admin else ""
        return f"key {self.key_id} (tenant {self.tenant}{admin})"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(store: Store, tenant: str, admin: bool, name: str, now: datetime) -> str:
    if not tenant or len(tenant) > 100 or not tenant.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput("tenant must be 1-100 letters, digits, '-' or '_'")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    await store.insert_key(ApiKeyRecord(key_id, _hash(key), tenant, admin, name, now, None))
    return key


#: How a key id is looked up (``Engine.api_key``): the API does not reach into the store.
KeyLookup = Callable[[str], Awaitable[ApiKeyRecord | None]]


async def authenticate(lookup: KeyLookup, key: str | None) -> Principal:
    """The principal of ``key``. Within :func:`attempts_from`, failed keys count against the
    client's address, and an address over its limit is refused 429 before any lookup."""
    if not key:
        raise Unauthorized("missing X-API-Key header")
    attempt = _ATTEMPT.get()
    hashed = _hash(key)
    if attempt is not None:
        attempt[0].check(attempt[1], hashed)
    try:
        principal = await _lookup(lookup, key, hashed)
    except Unauthorized:
        if attempt is not None:
            attempt[0].failed(attempt[1])
        raise
    if attempt is not None:
        attempt[0].succeeded(hashed)
    return principal


async def _lookup(lookup: KeyLookup, key: str, hashed: str) -> Principal:
    parts = key.split("_", 2)
    if len(parts) != 3 or f"{parts[0]}_" != PREFIX or len(key) > 200:
        raise Unauthorized("invalid API key")
    record = await lookup(parts[1])
    # Compare even when the id is unknown, so timing does not reveal which ids exist.
    expected = record.hash if record is not None else _hash("")
    if not hmac.compare_digest(expected, hashed) or record is None:
        raise Unauthorized("invalid API key")
    if record.revoked_at is not None:
        raise Unauthorized("API key revoked")
    return Principal(record.id, record.tenant, record.admin)


class FailedAuthLimiter:
    """Failed API key attempts per client address.

    ``limit`` failures within ``window`` seconds lock the address out for ``window`` seconds:
    keys from it are refused 429 ``rate_limited`` without a database lookup, except keys that
    authenticated recently (so that people behind the guesser's NAT keep working). Memory is
    bounded: at most ``max_addresses`` addresses and ``max_known_keys`` key hashes.
    """

    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        *,
        max_addresses: int = 100_000,
        max_known_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self.max_known_keys = max_known_keys
        self.clock = clock
        #: address -> [failures in the current window, window start, locked out until]
        self._addresses: dict[str, list[float]] = {}
        self._known: dict[str, None] = {}  # key hashes that authenticated, oldest first

    def locked_for(self, address: str) -> float:
        """Seconds until ``address`` may try unknown keys again (0: it may now)."""
        entry = self._addresses.get(address)
        return max(0.0, entry[2] - self.clock()) if entry is not None else 0.0

    def check(self, address: str, key_hash: str) -> None:
        wait = self.locked_for(address)
        if wait > 0 and key_hash not in self._known:
            raise RateLimited(
                f"too many failed API key attempts from {address}; "
                f"try again in {max(1, math.ceil(wait))}s",
                retry_after=wait,
            )

    def failed(self, address: str) -> None:
        now = self.clock()
        entry = self._addresses.get(address)
        if entry is None or now - entry[1] > self.window:
            if entry is None and len(self._addresses) >= self.max_addresses:
                self._prune(now)
            entry = [0.0, now, entry[2] if entry is not None else 0.0]
            self._addresses[address] = entry
        entry[0] += 1
        if entry[0] >= self.limit:
            entry[0], entry[1], entry[2] = 0.0, now, now + self.window

    def succeeded(self, key_hash: str) -> None:
        if key_hash in self._known:
            del self._known[key_hash]  # put back below, as the most recent
        elif len(self._known) >= self.max_known_keys:
            del self._known[next(iter(self._known))]
        self._known[key_hash] = None

    def _prune(self, now: float) -> None:
        for address in [
            a
            for a, (_, start, until) in self._addresses.items()
            if now - start > self.window and until <= now
        ]:
            del self._addresses[address]
        while len(self._addresses) >= self.max_addresses:
            del self._addresses[next(iter(self._addresses))]


_ATTEMPT: ContextVar[tuple[FailedAuthLimiter, str] | None] = ContextVar(
    "dormant_auth_attempt", default=None
)


@contextmanager
def attempts_from(limiter: FailedAuthLimiter, address: str) -> Iterator[None]:
    """Count :func:`authenticate` failures in this context against ``address``."""
    token = _ATTEMPT.set((limiter, address))
    try:
        yield
    finally:
        _ATTEMPT.reset(token)


class RateLimiter:
    """A token bucket per API key: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key_id: str) -> None:
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            raise RateLimited(
                f"too many requests; limit is {self.rate:g}/s per key",
                retry_after=(1 - tokens) / self.rate,
            )
        self._buckets[key_id] = (tokens - 1, now)
