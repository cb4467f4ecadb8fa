"""One root exception; temporary errors apart from permanent ones.

Backends translate their own failures into these at the boundary (``raise ... from exc``) so that
the engine can decide between retrying and giving up without knowing which backend it talks to.
"""

from __future__ import annotations


class DormantError(Exception):
    """Root of every error dormant raises on purpose."""

    code = "error"
    status = 500


class TemporaryError(DormantError):
    """Worth retrying: the condition is expected to clear (engine busy, connection reset)."""

    code = "temporarily_unavailable"
    status = 503


class PermanentError(DormantError):
    """Retrying cannot help (bad image, command not found, invalid value)."""

    code = "failed"
    status = 500


class InvalidInput(PermanentError, ValueError):
    """A value given by a user or a configuration file is not acceptable."""

    code = "invalid"
    status = 422


class NotFound(PermanentError):
    code = "not_found"
    status = 404


class Conflict(PermanentError):
    """The request contradicts the current state (e.g. waking a deleted session)."""

    code = "conflict"
    status = 409


class CapacityExhausted(TemporaryError):
    """A bounded resource (ports, connections) has nothing left to hand out."""

    code = "capacity_exhausted"
    status = 503


class QueueTimedOut(CapacityExhausted):
    """A create or wake waited ``queue_timeout`` in an admission queue and gave up."""

    code = "queue_timeout"


class RuntimeUnavailable(TemporaryError):
    """The runtime backend cannot be reached right now."""

    code = "runtime_unavailable"
    status = 503


class RuntimeFailure(PermanentError):
    """The runtime refused or failed an operation in a way retrying will not fix."""

    code = "runtime_failure"
    status = 500
