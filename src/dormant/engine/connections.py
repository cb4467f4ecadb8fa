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


def host_identity() -> str:
    """This host as instances record it: the host name and the pid namespace, so that two
    containers sharing a host name (``--network host``) do not judge each other's pids."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}#pidns:{namespace}"


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
    host = host or host_identity()
    dead = set()
    for instance in known:
        expired = instance.heartbeat_at < now - ttl
        killed = instance.host == host and instance.pid != os.getpid()
        if instance.id == me or expired or (killed and not pid_alive(instance.pid)):
            dead.add(instance.id)
    if me is not None:
        dead.add(me)
    return dead


def drop_gone(
    record: SessionRecord, *, dead: set[str], unknown: set[str] | None, now: datetime
) -> SessionRecord:
    """The session without the counts of ``dead`` instances (and, at start, when ``unknown``
    holds the ids an instance row exists for, of instances with no row, and counts no instance
    claims, from before counts were kept per instance). Left with none, its grace starts now."""
    by = {
        k: v
        for k, v in record.connections_by_instance.items()
        if v > 0 and k not in dead and (unknown is None or k in unknown)
    }
    updated = record.replace(connections_by_instance=by, connections=sum(by.values()))
    if updated.connections == 0 and record.connections > 0:
        updated = updated.replace(last_disconnect_at=now)
    return updated
