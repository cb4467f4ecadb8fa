"""Retry temporary errors with capped exponential backoff and full jitter."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dormant.errors import DormantError, RuntimeFailure, TemporaryError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.1
    cap: float = 5.0
    attempts: int = 8

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (1-based): uniform in (0, min(cap, base*2^n)]."""
        ceiling = min(self.cap, self.base * (2 ** (attempt - 1)))
        return (rng or random).uniform(ceiling / 2, ceiling)


async def call_with_retry(
    fn: Callable[[], Awaitable[T]],
    backoff: Backoff,
    on_retry: Callable[[int, TemporaryError], None] | None = None,
) -> tuple[T, int]:
    """Run ``fn`` until it succeeds, fails permanently, or runs out of attempts.

    Returns the result and the number of attempts. Anything that is not a DormantError is a bug
    or an untranslated backend error: it is wrapped so callers only ever see DormantError."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn(), attempt
        except TemporaryError as exc:
            if attempt >= backoff.attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            await asyncio.sleep(backoff.delay(attempt))
        except DormantError:
            raise
        except Exception as exc:
            raise RuntimeFailure(f"unexpected {type(exc).__name__}: {exc}") from exc
