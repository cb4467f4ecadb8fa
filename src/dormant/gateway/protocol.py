"""What travels over the socket: validation of client events, shapes of server events.

Client -> server: ``activity {kind, detail?}``, ``pong {ts}``.
Server -> client: ``session``, ``ping {ts}``, ``sleep-warning {at, reason}``,
``presence {participants, occupancy}``, ``event {type, data}``, ``error {code, message}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dormant.policy import Action, ActivityKind, Decision, Level

MAX_KIND_LENGTH = 40


class ProtocolError(Exception):
    """A client event the gateway refuses; the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self) -> dict[str, Any]:
        return error(self.code, self.message)


class Refused(Exception):
    """A connect the gateway refuses: the client gets ``connect_error`` with ``{code, message}``
    and its socket is closed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


_FIELDS = frozenset(("kind", "detail"))
_KINDS = {k.value: k for k in ActivityKind}
_KNOWN = ", ".join(_KINDS)


def parse_activity(args: tuple[Any, ...]) -> ActivityKind:
    """``activity {kind, detail?}``: one object; ``detail`` is free-form and not stored."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise ProtocolError("invalid_activity", "activity takes one object: {kind, detail?}")
    body: dict[str, Any] = args[0]
    if len(body) > 1 and body.keys() - _FIELDS:
        extra = ", ".join(sorted(str(k) for k in body.keys() - _FIELDS))
        raise ProtocolError("invalid_activity", f"unknown field(s) {extra}; allowed: kind, detail")
    kind = body.get("kind")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LENGTH:
        raise ProtocolError("invalid_activity", "activity 'kind' must be a short string")
    found = _KINDS.get(kind)
    if found is None:
        raise ProtocolError(
            "unknown_kind", f"unknown activity kind {kind[:MAX_KIND_LENGTH]!r}; known: {_KNOWN}"
        )
    return found


def parse_pong(args: tuple[Any, ...]) -> int:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise ProtocolError("invalid_pong", "pong takes one object: {ts}")
    ts = args[0].get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ProtocolError("invalid_pong", "pong 'ts' must echo the ping's integer ts")
    return ts


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@dataclass(frozen=True, slots=True)
class SessionView:
    """The ``session`` event: what a client may show about its session right now."""

    payload: dict[str, Any]
    #: What a change is judged on (pushing every moved deadline would be noise).
    key: tuple[Any, ...]


def session_view(
    *,
    session_id: str,
    user_id: str,
    state: str,
    level: Level,
    decision: Decision,
    warning_at: datetime | None,
    connections: int,
    quality: str | None,
    last_activity_at: datetime | None,
    last_activity_kind: str | None,
    error_text: str | None,
) -> SessionView:
    warning = None
    if warning_at is not None and decision.action is Action.SLEEP:
        warning = {"at": iso(decision.at), "reason": decision.reason}
    payload = {
        "id": session_id,
        "user_id": user_id,
        "state": state,
        "level": level.value,
        "connections": connections,
        "quality": quality,
        "last_activity": {"at": iso(last_activity_at), "kind": last_activity_kind},
        "next_action": {
            "action": decision.action.value,
            "at": iso(decision.at),
            "reason": decision.reason,
        },
        "warning": warning,
        "error": error_text,
    }
    key = (
        state,
        level.value,
        quality,
        warning is not None and warning["at"],
        error_text,
        last_activity_kind,
    )
    return SessionView(payload, key)
