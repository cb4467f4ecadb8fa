"""Session storage: volume names from templates, the mounts of a session, and the retention job.

A template's volume is a name pattern with ``{tenant}``, ``{user}``, ``{session}`` and
``{template}`` placeholders. Values come from requests (a user id may hold anything), so each is
made safe for a volume name: kept as it is when it is short and only ``A-Z a-z 0-9 _ .``
(starting with a letter or digit), else reduced to those characters and followed by ``-`` and
16 hex digits of its SHA-256. A kept value holds no ``-`` and a reduced one always ends in its
hash, so two different values never give the same name, and nothing in a user id reaches the
engine as path or option syntax. A backend also refuses a volume that exists with another owner.

Retention (:class:`VolumeKeeper`, level-triggered like the reconciler): it lists the volumes
labelled ``dormant.managed=true`` of this deployment, then reads the store, and removes

- a ``retain="user"`` volume when its owner (tenant and user) has no live session and the last
  one ended (``deleted_at``) more than ``volume_retention`` ago (a user whose sessions were all
  purged counts from the volume's creation);
- a ``retain="session"`` volume whose session is deleted or gone (normally removed with the
  container; this catches what a crash left).

It never removes on a failed read: a runtime whose listing fails is skipped for that sweep, and
a store error ends the sweep. A volume younger than ``settle`` is never judged, and a volume in
use by a container is left (the backend refuses to remove it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from dormant.clock import Clock
from dormant.errors import DormantError, InvalidInput
from dormant.policy import State
from dormant.runtimes import Runtime
from dormant.runtimes.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    RETAIN_LABEL,
    RETAIN_RULES,
    RETAIN_SESSION,
    RETAIN_USER,
    SESSION_LABEL,
    TEMPLATE_LABEL,
    TENANT_LABEL,
    USER_LABEL,
    VolumeInfo,
    VolumeMount,
)
from dormant.store.base import Store

if TYPE_CHECKING:
    from dormant.engine.templates import Template
    from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.volumes")

PLACEHOLDERS = ("tenant", "user", "session", "template")
#: Placeholders a pattern must hold for each rule: a user volume belongs to one user of one
#: tenant, a session volume to one session.
REQUIRED = {RETAIN_USER: ("tenant", "user"), RETAIN_SESSION: ("session",)}
_KEPT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,47}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")
#: What a volume name may look like (Docker's rule, and short enough for any engine).
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_HASH_CHARS = 16


def safe_value(value: str) -> str:
    """``value`` made safe (and unambiguous) inside a volume name: see the module."""
    if _KEPT.match(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    reduced = _UNSAFE.sub("_", value).strip("_.")[:24] or "x"
    return f"{reduced}-{digest}"


def pattern_fields(pattern: str) -> list[str]:
    """The placeholders of ``pattern``; ``InvalidInput`` for an unknown one or a format spec."""
    names = []
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise InvalidInput(f"volume name {pattern!r}: {exc}") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            raise InvalidInput(
                f"volume name {pattern!r}: unknown placeholder {{{name}}} "
                f"(use {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
            )
        names.append(name)
    return names


def render_name(pattern: str, values: Mapping[str, str]) -> str:
    """The volume name of ``pattern`` for these placeholder values (each made safe)."""
    pattern_fields(pattern)
    name = pattern.format(**{key: safe_value(values.get(key, "")) for key in PLACEHOLDERS})
    if not VOLUME_NAME.match(name):
        raise InvalidInput(
            f"volume name {pattern!r} gives {name!r}, which is not a valid volume name "
            "(A-Z a-z 0-9 _ . -, starting with a letter or digit, at most 200)"
        )
    return name


def check_pattern(pattern: str, retain: str) -> None:
    """Refuse (``InvalidInput``) a pattern that is malformed or does not pin its owner."""
    if retain not in RETAIN_RULES:
        raise InvalidInput(f"retain must be one of {', '.join(RETAIN_RULES)}, not {retain!r}")
    fields = pattern_fields(pattern)
    missing = [p for p in REQUIRED[retain] if p not in fields]
    if missing:
        raise InvalidInput(
            f"volume name {pattern!r} with retain = {retain!r} must contain "
            + " and ".join("{" + p + "}" for p in missing)
            + (
                ": a user volume belongs to one user of one tenant"
                if retain == RETAIN_USER
                else ": a session volume belongs to one session"
            )
        )
    # a user id of the longest kept kind, and one that needs a hash: both must give a name
    for sample in ("u" * 48, "ü/../" * 20):
        render_name(pattern, {p: sample for p in PLACEHOLDERS})


@dataclass(frozen=True, slots=True)
class VolumeTemplate:
    """A template's named volume: a name ``pattern``, where it is mounted, its retain rule."""

    pattern: str
    target: str
    retain: str = RETAIN_USER
    read_only: bool = False


#: The process runtime's per-user (or per-session) directory, as a volume pattern.
HOME_PATTERNS = {RETAIN_USER: "home-{tenant}-{user}", RETAIN_SESSION: "home-{session}"}


def session_volumes(template: Template, record: SessionRecord) -> tuple[VolumeMount, ...]:
    """The volumes of a session of ``template``, with their names and labels."""
    values = {
        "tenant": record.tenant,
        "user": record.user_id,
        "session": record.id,
        "template": record.template,
    }
    wanted = list(template.volumes)
    if template.home is not None:
        wanted.append(VolumeTemplate(HOME_PATTERNS[template.home], "", template.home))
    mounts = []
    for volume in wanted:
        labels = {
            MANAGED_LABEL: "true",
            DEPLOYMENT_LABEL: record.labels.get(DEPLOYMENT_LABEL, ""),
            TENANT_LABEL: record.tenant,
            USER_LABEL: record.user_id,
            TEMPLATE_LABEL: record.template,
            RETAIN_LABEL: volume.retain,
        }
        if volume.retain == RETAIN_SESSION:
            labels[SESSION_LABEL] = record.id
        mounts.append(
            VolumeMount(
                name=render_name(volume.pattern, values),
                target=volume.target,
                retain=volume.retain,
                labels=labels,
                read_only=volume.read_only,
            )
        )
    return tuple(mounts)


# retention ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VolumeStatus:
    """One volume as the retention job sees it."""

    runtime: str
    name: str
    labels: dict[str, str]
    retain: str
    #: Live sessions that keep it (its owner's, or its session).
    in_use_by: tuple[str, ...] = ()
    #: When it may be removed (``None``: while in use, or not judged).
    expires_at: datetime | None = None
    expired: bool = False
    reason: str = ""
    #: Set by :meth:`VolumeKeeper.prune`: removed, or why not.
    outcome: str = ""

    @property
    def owner(self) -> str:
        return f"{self.labels.get(TENANT_LABEL, '?')}/{self.labels.get(USER_LABEL, '?')}"


@dataclass(slots=True)
class VolumeKeeper:
    """The durable retention job of volumes: see the module."""

    store: Store
    runtimes: Mapping[str, Runtime]
    clock: Clock
    #: ``volume_retention``: seconds a user volume outlives its owner's last session.
    retention: float
    #: A volume younger than this (or a session deleted more recently) is not judged.
    settle: float
    #: This deployment's id (volumes of another deployment are never touched).
    deployment: Callable[[], Awaitable[str]]
    removed: int = 0
    skipped_reads: int = 0
    _sessions: dict[tuple[str, str], list[SessionRecord]] = field(default_factory=dict)

    async def survey(self) -> list[VolumeStatus]:
        """Every volume of this deployment with who uses it and when it expires. A runtime
        whose listing fails is left out (and counted in ``skipped_reads``)."""
        deployment = await self.deployment()
        listed: list[tuple[str, VolumeInfo]] = []
        for name, runtime in sorted(self.runtimes.items()):
            try:
                infos = await runtime.list_volumes()
            except DormantError as exc:
                self.skipped_reads += 1
                log.warning("volumes of runtime %s not judged: listing failed: %s", name, exc)
                continue
            listed.extend(
                (name, info)
                for info in infos
                if info.labels.get(MANAGED_LABEL) == "true"
                and info.labels.get(DEPLOYMENT_LABEL) == deployment
            )
        # The store is read after the listing: a volume is made after its session's row.
        now = self.clock.now()
        self._sessions = {}
        return [await self._judge(runtime, info, now) for runtime, info in listed]

    async def _owner_sessions(self, tenant: str, user: str) -> list[SessionRecord]:
        key = (tenant, user)
        if key not in self._sessions:
            rows: list[SessionRecord] = []
            after: str | None = None
            while True:
                page = await self.store.list_sessions(
                    tenant=tenant, user_id=user, include_deleted=True, after_id=after, limit=500
                )
                rows.extend(page)
                if len(page) < 500:
                    break
                after = page[-1].id
            self._sessions[key] = rows
        return self._sessions[key]

    async def _judge(self, runtime: str, info: VolumeInfo, now: datetime) -> VolumeStatus:
        labels = info.labels
        settle = timedelta(seconds=self.settle)
        young = info.created_at is not None and info.created_at > now - settle
        base = VolumeStatus(runtime, info.name, dict(labels), info.retain or "?")
        if info.retain == RETAIN_USER:
            tenant, user = labels.get(TENANT_LABEL), labels.get(USER_LABEL)
            if tenant is None or user is None:
                return replace(base, reason="no owner labels: left alone")
            sessions = await self._owner_sessions(tenant, user)
            live = tuple(s.id for s in sessions if s.state is not State.DELETED)
            if live:
                return replace(base, in_use_by=live, reason="its owner has live sessions")
            ends = [s.deleted_at for s in sessions if s.deleted_at is not None]
            if ends:
                since, why = max(ends), "last session ended"
            elif info.created_at is not None:
                since, why = info.created_at, "no sessions remembered; made"
            else:
                return replace(base, reason="no sessions and no creation time: left alone")
            expires = since + timedelta(seconds=self.retention)
            expired = expires <= now and not young and since <= now - settle
            return replace(
                base, expires_at=expires, expired=expired, reason=f"{why} {since.isoformat()}"
            )
        if info.retain == RETAIN_SESSION:
            sid = labels.get(SESSION_LABEL)
            if sid is None:
                return replace(base, reason="no session label: left alone")
            record = await self.store.get_session(sid)
            if record is not None and record.state is not State.DELETED:
                return replace(base, in_use_by=(sid,), reason="its session is live")
            ended = record.deleted_at if record is not None else None
            settled = not young and (ended is None or ended <= now - settle)
            return replace(
                base,
                expires_at=ended or info.created_at,
                expired=settled,
                reason="its session was deleted" if record is not None else "its session is gone",
            )
        return replace(base, reason=f"unknown retain rule {info.retain!r}: left alone")

    async def prune(self, *, dry_run: bool = False) -> list[VolumeStatus]:
        """Remove the expired volumes (``dry_run``: only say which); returns them, each with
        its outcome. Before each removal the owner's sessions are read again."""
        expired = [v for v in await self.survey() if v.expired]
        done = []
        for volume in expired:
            if dry_run:
                done.append(replace(volume, outcome="would remove"))
                continue
            if volume.retain == RETAIN_USER and await self._owner_came_back(volume):
                done.append(replace(volume, outcome="kept: its owner has a live session now"))
                continue
            runtime = self.runtimes[volume.runtime]
            try:
                gone = await runtime.remove_volume(volume.name)
            except DormantError as exc:
                log.warning("volume %s not removed: %s", volume.name, exc)
                done.append(replace(volume, outcome=f"not removed: {exc}"))
                continue
            if not gone:
                done.append(replace(volume, outcome="kept: in use by a container"))
                continue
            self.removed += 1
            log.info(
                "volume %s removed (retain=%s, owner %s): %s",
                volume.name,
                volume.retain,
                volume.owner,
                volume.reason,
            )
            done.append(replace(volume, outcome="removed"))
        return done

    async def _owner_came_back(self, volume: VolumeStatus) -> bool:
        tenant, user = volume.labels[TENANT_LABEL], volume.labels[USER_LABEL]
        self._sessions.pop((tenant, user), None)
        sessions = await self._owner_sessions(tenant, user)
        return any(s.state is not State.DELETED for s in sessions)

    async def loop(self, interval: float) -> None:
        """Prune every ``interval`` seconds until cancelled (errors are logged, never fatal)."""
        while True:
            try:
                await self.prune()
            except DormantError as exc:
                log.warning("volume retention sweep failed, next one in %gs: %s", interval, exc)
            except Exception:
                log.exception("volume retention sweep failed")
            await asyncio.sleep(interval)
