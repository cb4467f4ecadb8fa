"""API keys: random, stored as SHA-256 hashes, compared in constant time, scoped to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from dormant.errors import DormantError, InvalidInput
from dormant.store.base import Store
from dormant.store.records import ApiKeyRecord

PREFIX = "dk_"


class Unauthorized(DormantError):
    code = "unauthorized"
    status = 401


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


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(store: Store, tenant: str, admin: bool, name: str, now: datetime) -> str:
    if not tenant or len(tenant) > 100 or not tenant.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput("tenant must be 1-100 letters, digits, '-' or '_'")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    await store.insert_key(ApiKeyRecord(key_id, _hash(key), tenant, admin, name, now, None))
    return key


async def authenticate(store: Store, key: str | None) -> Principal:
    if not key:
        raise Unauthorized("missing X-API-Key header")
    parts = key.split("_", 2)
    if len(parts) != 3 or f"{parts[0]}_" != PREFIX or len(key) > 200:
        raise Unauthorized("invalid API key")
    record = await store.get_key(parts[1])
    # Compare even when the id is unknown, so timing does not reveal which ids exist.
    expected = record.hash if record is not None else _hash("")
    if not hmac.compare_digest(expected, _hash(key)) or record is None:
        raise Unauthorized("invalid API key")
    if record.revoked_at is not None:
        raise Unauthorized("API key revoked")
    return Principal(record.id, record.tenant, record.admin)


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
