"""Operations as values: their kinds and statuses, and the ``Outcome`` a caller can wait for.

``Engine.wait_for(session, wanted, timeout)`` answers when the session reaches ``wanted``
(``running`` after a create or wake, ``sleeping`` after a sleep, ``deleted`` after a delete) or
ends another way (``failed``, ``deleted``): an :class:`Outcome`. Concurrent callers waiting for the
same session and state share one future; a transition made by another replica is seen by
re-reading the store, so waiting works whichever instance carries the operation out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum

from dormant.policy import State


class OperationKind(StrEnum):
    """What an intent row promises the runtime will be asked to do."""

    CREATE = "create"
    START = "start"
    STOP = "stop"
    REMOVE = "remove"


class OperationStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    #: The session was no longer in a state the operation applies to (another one won).
    SUPERSEDED = "superseded"
    #: Closed by the reconciler: the session converged without it.
    INTERRUPTED = "interrupted"


#: States an operation ends in; every other state is on the way somewhere.
SETTLED = frozenset({State.RUNNING, State.SLEEPING, State.DELETED, State.FAILED})


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a session ended up: ``state`` is ``wanted`` when the operation worked."""

    session_id: str
    wanted: State
    state: State
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is self.wanted


def ends_wait(wanted: State, reached: State) -> bool:
    """Whether reaching ``reached`` answers a wait for ``wanted``: the state itself, or an end
    no operation comes back from by itself (failed, deleted)."""
    return reached is wanted or reached in (State.FAILED, State.DELETED)


@dataclass(slots=True)
class Waiters:
    """Futures of callers waiting on sessions, shared per (session, wanted state)."""

    futures: dict[tuple[str, State], asyncio.Future[Outcome]] = field(default_factory=dict)

    def future(self, session_id: str, wanted: State) -> asyncio.Future[Outcome]:
        key = (session_id, wanted)
        existing = self.futures.get(key)
        if existing is None or existing.done():
            existing = self.futures[key] = asyncio.get_running_loop().create_future()
        return existing

    def settle(self, session_id: str, reached: State, error: str | None) -> None:
        for wanted in (State.RUNNING, State.SLEEPING, State.DELETED):
            key = (session_id, wanted)
            future = self.futures.get(key)
            if future is not None and ends_wait(wanted, reached):
                del self.futures[key]
                if not future.done():
                    future.set_result(Outcome(session_id, wanted, reached, error))

    def refuse(self, session_id: str, wanted: State, state: State, error: str) -> None:
        """The operation the waiters for ``wanted`` wait on will not happen (the session
        stays ``state``): they get an outcome that is not ok, with ``error``."""
        future = self.futures.pop((session_id, wanted), None)
        if future is not None and not future.done():
            future.set_result(Outcome(session_id, wanted, state, error))

    def forget(self, session_id: str, wanted: State, future: asyncio.Future[Outcome]) -> None:
        """Drop a future nobody waits on any more (its waiters timed out)."""
        if self.futures.get((session_id, wanted)) is future and not future.done():
            del self.futures[(session_id, wanted)]
