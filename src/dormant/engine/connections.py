"""Connection counts per instance: which instances are gone, and a session without them.

A session's ``connections`` is the sum of ``connections_by_instance``; each instance writes only
its own count. When an instance dies (SIGKILL, lost host) its clients are gone with it, so its
counts are dropped by the next instance that notices, and the session's grace period starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta

from dormant.store.records import InstanceRecord, SessionRecord


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def dead_instances(
    known: Iterable[InstanceRecord],
    *,
    now: datetime,
    ttl: timedelta,
    me: str | None = None,
    host: str | None = None,
) -> set[str]:
    """Ids of instances that are gone: no heartbeat within ``ttl``, or on this host with a pid
    that no longer runs (a SIGKILLed predecessor is known dead at once). ``me``, when given,
    counts as gone too (a restart under a fixed instance id: what it held before is stale)."""
    host = host or socket.gethostname()
    dead = set()
    for instance in known:
        expired = instance.heartbeat_at < now - ttl
        killed = instance.host == host and instance.pid != os.getpid()
        if instance.id == me or expired or (killed and not pid_alive(instance.pid)):
            dead.add(instance.id)
    if me is not None:
        dead.add(me)
    return dead


def drop_gone(record: SessionRecord, *, live: set[str], now: datetime) -> SessionRecord:
    """The session keeping only the counts of ``live`` instances (counts no instance claims,
    from before counts were kept per instance, go too). Left with none, its grace starts now."""
    by = {k: v for k, v in record.connections_by_instance.items() if k in live and v > 0}
    updated = record.replace(connections_by_instance=by, connections=sum(by.values()))
    if updated.connections == 0 and record.connections > 0:
        updated = updated.replace(last_disconnect_at=now)
    return updated
