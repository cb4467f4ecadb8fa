"""Engine answers translated into dormant's errors, at the boundary (the caller raises them
``from`` the aiodocker error). Docker Engine and Podman answer the same situations with different
statuses and words; each mark below says which engine says what."""

from __future__ import annotations

import json
import logging

from aiodocker.exceptions import DockerError

from dormant.errors import (
    DormantError,
    InvalidInput,
    RuntimeFailure,
    RuntimeUnavailable,
    TemporaryError,
)

log = logging.getLogger("dormant.runtimes.docker")

# Engine messages (lower-cased) by meaning. Docker and Podman word these differently.
# A container name taken: Docker 'The container name "/x" is already in use by container …'
# (409), Podman 'the container name "x" is already in use by …' (500). Not a bare "already in
# use": Podman's taken host port says "address already in use", which a retry can fix.
_CONFLICT_MARKS = ("is already in use by", "name is already in use")
_TEMPORARY_MARKS = (
    "removal of container",
    "already in progress",
    "is being removed",
    "try again",
    "temporarily",
    "timed out",
    "timeout",
    "connection reset",
    "resource temporarily unavailable",
    "address already in use",  # often a connection's TIME_WAIT on the port: it passes
    # The host port is another container's: Docker Engine says "Bind for 127.0.0.1:P failed:
    # port is already allocated", Podman "address already in use". Once that container is
    # gone (an orphan the reconciler removes) a retry works, as on Podman.
    "port is already allocated",
)
_IMAGE_MISSING_MARKS = ("no such image", "image not known", "failed to find image")


class ContainerMissing(RuntimeFailure):
    """The engine knows no container of that name (404)."""


class NameConflict(RuntimeFailure):
    """A container of that name exists already (Docker 409, Podman 500)."""


class ImageMissing(InvalidInput):
    """The template's image is not present on the engine (and dormant never pulls)."""


def _message(exc: DockerError) -> str:
    text = exc.message if isinstance(exc.message, str) else json.dumps(exc.message)
    return text.strip()


def translate(exc: DockerError, what: str) -> DormantError:
    """An aiodocker error as the dormant error it means (the caller raises it ``from exc``)."""
    message = _message(exc)
    low = message.lower()
    detail = f"{what}: {message} (HTTP {exc.status})"
    if exc.status == 900:  # aiodocker: could not connect
        return RuntimeUnavailable(f"{what}: container engine unreachable: {message}")
    if any(mark in low for mark in _CONFLICT_MARKS):
        return NameConflict(detail)
    if exc.status == 404:
        if any(mark in low for mark in _IMAGE_MISSING_MARKS):
            return ImageMissing(f"{what}: image not found on the engine ({message})")
        return ContainerMissing(detail)
    if exc.status in (502, 503, 504) or any(mark in low for mark in _TEMPORARY_MARKS):
        return TemporaryError(detail)
    return RuntimeFailure(detail)


def refuses_api_version(exc: DockerError) -> bool:
    """The engine refused the request's API version: Docker Engine answers 400 "client version
    1.41 is too old. Minimum supported API version is 1.44" (Docker 29) or "... is too new.
    Maximum supported API version is ..." (before 20.10). Podman serves 1.41."""
    low = _message(exc).lower()
    return exc.status == 400 and "supported api version" in low
