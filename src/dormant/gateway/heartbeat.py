"""Application-level heartbeats: ``ping {ts}`` every interval, ``pong {ts}`` echoes it.

The round-trip time classifies a connection (``stable``; ``unstable`` over 5 s; ``poor`` over
10 s); a ping still unanswered counts as a round trip at least as long as its age. When
``missed_pongs`` pings are outstanding at the next ping time, the connection is dropped.
"""

from __future__ import annotations

from enum import StrEnum

UNSTABLE_AFTER = 5.0
POOR_AFTER = 10.0
#: Pings remembered per connection; older unanswered ones only count as missed.
_REMEMBERED = 16


class Quality(StrEnum):
    STABLE = "stable"
    UNSTABLE = "unstable"
    POOR = "poor"


_RANK = {Quality.STABLE: 0, Quality.UNSTABLE: 1, Quality.POOR: 2}


def classify(rtt: float | None) -> Quality:
    if rtt is None or rtt <= UNSTABLE_AFTER:
        return Quality.STABLE
    if rtt <= POOR_AFTER:
        return Quality.UNSTABLE
    return Quality.POOR


def worst(qualities: list[Quality]) -> Quality | None:
    return max(qualities, key=_RANK.__getitem__, default=None)


class Heartbeat:
    """One connection's heartbeat state. All times are monotonic seconds."""

    __slots__ = ("interval", "missed_allowed", "next_at", "outstanding", "rtt")

    def __init__(self, interval: float, missed_allowed: int, now: float) -> None:
        self.interval = interval
        self.missed_allowed = missed_allowed
        self.next_at = now + interval
        #: ts sent -> monotonic time sent, oldest first.
        self.outstanding: dict[int, float] = {}
        self.rtt: float | None = None

    @property
    def missed(self) -> int:
        return len(self.outstanding)

    def expired(self) -> bool:
        """Too many pings went unanswered: drop the connection instead of pinging again."""
        return len(self.outstanding) >= self.missed_allowed

    def sent(self, ts: int, now: float) -> None:
        self.outstanding[ts] = now
        while len(self.outstanding) > _REMEMBERED:
            del self.outstanding[next(iter(self.outstanding))]
        self.next_at = now + self.interval

    def pong(self, ts: int, now: float) -> bool:
        """A pong for ping ``ts``; every older ping is answered too. False if unknown."""
        sent = self.outstanding.get(ts)
        if sent is None:
            return False
        for key in [k for k, at in self.outstanding.items() if at <= sent]:
            del self.outstanding[key]
        self.rtt = max(0.0, now - sent)
        return True

    def quality(self, now: float) -> Quality:
        waiting = max((now - at for at in self.outstanding.values()), default=None)
        rtt = self.rtt
        if waiting is not None and (rtt is None or waiting > rtt):
            # A ping not answered yet has a round trip at least this long, but a ping only just
            # sent says nothing yet.
            rtt = waiting if waiting > UNSTABLE_AFTER else rtt
        return classify(rtt)
