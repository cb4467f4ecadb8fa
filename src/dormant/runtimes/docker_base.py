"""The plumbing of the docker runtime (and of the swarm runtime, its subclass): the Engine API
client, one call with its deadline and its errors translated, inspect, ping, the image and
network checks, the container's log tail and the chaos tests' crash points."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from dormant.errors import (
    DormantError,
    InvalidInput,
    RuntimeFailure,
    RuntimeUnavailable,
)
from dormant.runtimes.base import (
    MANAGED_LABEL,
    ContainerStatus,
    Runtime,
)
from dormant.runtimes.docker_errors import (
    ContainerMissing,
    ImageMissing,
    refuses_api_version,
    translate,
)
from dormant.runtimes.docker_spec import _LABEL

log = logging.getLogger("dormant.runtimes.docker")

T = TypeVar("T")

DEFAULT_HOST = "unix:///var/run/docker.sock"
#: The Engine API version dormant's requests are written for (Docker Engine 20.10's newest).
API_VERSION = "1.41"
#: Seconds between the two stats reads when the engine gives no earlier CPU sample (Podman).
STATS_INTERVAL = 0.5
#: Lines of a container's output quoted in the error of a failed start.
LOG_TAIL_LINES = 30
_LOG_TAIL_CHARS = 2000


#: Crash points for chaos tests. A test arms one by creating the file named after it in
#: ``DORMANT_TEST_CRASH_DIR``; the next time dormant gets there it removes the file and SIGKILLs
#: itself: after the intent row is written and before the engine is asked (``after-intent``),
#: after the container is made (``after-create``), after the engine started it
#: (``after-start``), when it serves and the session's state is about to be written
#: (``before-state-update``), after a stop (``after-stop``) and after a removal
#: (``after-remove``), each before dormant records the result.
CRASH_POINTS = (
    "after-intent",
    "after-create",
    "after-start",
    "before-state-update",
    "after-stop",
    "after-remove",
)


def _version(value: object) -> tuple[int, int] | None:
    """``"1.44"`` -> ``(1, 44)``; None for anything else."""
    parts = str(value or "").split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


#: Sorts after every real time (a network whose creation time is unknown is nobody's keeper).
_NEVER = datetime.max.replace(tzinfo=UTC)


def _status(state: dict[str, Any] | str | None) -> ContainerStatus:
    value = state.get("Status") if isinstance(state, dict) else state
    return ContainerStatus.RUNNING if value == "running" else ContainerStatus.STOPPED


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str) and value and not value.startswith("0001-"):
        with contextlib.suppress(ValueError):
            # Engines give nanoseconds; Python takes microseconds.
            trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
            parsed = datetime.fromisoformat(trimmed)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class DockerBase(Runtime):
    """A runtime on a Docker Engine API at ``host`` (``unix://``, ``tcp://`` or ``http://``);
    :class:`dormant.runtimes.docker.DockerRuntime` is the one to use (see there).

    ``host`` defaults to ``DORMANT_DOCKER_HOST``, then ``DOCKER_HOST``, then the usual socket.
    ``scope`` (labels, ``DORMANT_DOCKER_SCOPE``) confines it to what carries them.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        api_timeout: float = 30.0,
        ping_timeout: float = 2.0,
        probe_host: str = "127.0.0.1",
        image_cache_seconds: float = 30.0,
        scope: dict[str, str] | None = None,
    ) -> None:
        self.host = (
            host
            or os.environ.get("DORMANT_DOCKER_HOST")
            or os.environ.get("DOCKER_HOST")
            or DEFAULT_HOST
        )
        self.api_timeout = api_timeout
        self.ping_timeout = ping_timeout
        self.probe_host = probe_host
        self.image_cache_seconds = image_cache_seconds
        self.scope = dict(scope or {})
        for key, value in self.scope.items():
            if not _LABEL.match(key) or key.startswith("dormant.") or not value or "," in value:
                raise InvalidInput(f"docker scope label {key}={value!r} is not valid")
        self._docker: aiodocker.Docker | None = None
        #: The Engine API version spoken (see :meth:`_client`).
        self.api_version = API_VERSION
        self._images: dict[str, float] = {}
        #: Networks seen or made by this process (sessions on a network: see the module).
        self._networks: set[str] = set()
        #: Their ids (containers join a network by id: see :meth:`_ensure_network`).
        self._network_ids: dict[str, str] = {}
        self._crash_dir = os.environ.get("DORMANT_TEST_CRASH_DIR") or None
        #: Containers this process made or adopted, by name: their session id.
        self._made: dict[str, str] = {}
        #: Set while the event stream of :meth:`watch` is connected.
        self.watching = asyncio.Event()

    def _crash_point(self, point: str) -> None:
        if self._crash_dir is None:
            return
        try:
            os.unlink(os.path.join(self._crash_dir, point))  # atomic: fires once
        except FileNotFoundError:
            return
        log.warning("crash point %s reached: SIGKILL (DORMANT_TEST_CRASH_DIR)", point)
        os.kill(os.getpid(), signal.SIGKILL)

    # plumbing ---------------------------------------------------------------------------------

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                # A fixed API version: no /version round trip (aiodocker's "auto" makes one per
                # client). Podman and Docker Engine 20.10-28 serve 1.41; Docker 29 refuses it
                # (its minimum is 1.44): then :meth:`_negotiate` picks one it serves.
                self._docker = aiodocker.Docker(url=self.host, api_version=f"v{self.api_version}")
            except ValueError as exc:
                raise InvalidInput(f"DORMANT_DOCKER_HOST {self.host!r}: {exc}") from exc
        return self._docker

    async def _call(
        self,
        what: str,
        fn: Callable[[aiodocker.Docker], Awaitable[T]],
        timeout: float | None = None,
    ) -> T:
        """Run one Engine API call with a deadline; every failure leaves as a DormantError. A
        call the engine refuses for its API version is made again once, in one it serves."""
        try:
            return await self._call_once(what, fn, timeout)
        except RuntimeFailure as exc:
            cause = exc.__cause__
            if not (isinstance(cause, DockerError) and refuses_api_version(cause)):
                raise
            if not await self._negotiate(what, cause):
                raise
        return await self._call_once(what, fn, timeout)

    async def _call_once(
        self,
        what: str,
        fn: Callable[[aiodocker.Docker], Awaitable[T]],
        timeout: float | None,
    ) -> T:
        docker = self._client()
        limit = self.api_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await fn(docker)
        except DockerError as exc:
            raise translate(exc, what) from exc
        except TimeoutError as exc:
            raise RuntimeUnavailable(
                f"{what}: the container engine did not answer within {limit:g}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable(f"{what}: container engine unreachable: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # a malformed answer
            raise RuntimeFailure(f"{what}: unexpected answer from the engine: {exc!r}") from exc

    async def _negotiate(self, what: str, refusal: DockerError) -> bool:
        """Speak the API version the engine serves nearest to 1.41 (the one dormant's requests
        are written for; later versions keep every field it sends and reads): its minimum when
        that is newer, its newest when older. True if the version changed."""

        async def ask(d: aiodocker.Docker) -> Any:
            return await d._query_json("version", versioned_api=False)

        offered = await self._call_once("version", ask, None)
        newest = _version(offered.get("ApiVersion"))
        oldest = _version(offered.get("MinAPIVersion")) or newest
        if newest is None or oldest is None:
            return False
        chosen = min(max(_version(API_VERSION) or oldest, oldest), newest)
        text = f"{chosen[0]}.{chosen[1]}"
        if text == self.api_version:
            return False
        log.warning(
            "%s: the engine refused API %s (%s); speaking %s (it serves %s to %s)",
            what,
            self.api_version,
            refusal.message,
            text,
            offered.get("MinAPIVersion"),
            offered.get("ApiVersion"),
        )
        self.api_version = text
        docker, self._docker = self._docker, None
        if docker is not None:
            with contextlib.suppress(Exception):
                await docker.close()
        return True

    async def _inspect_raw(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = await self._call(
                f"inspect {name}", lambda d: d.containers.container(name).show()
            )
        except ContainerMissing:
            return None
        return data

    # contract -------------------------------------------------------------------------------

    async def ping(self) -> None:
        async def _ping(d: aiodocker.Docker) -> None:
            async with d._query("_ping", versioned_api=False) as response:
                try:
                    await response.read()
                finally:
                    response.close()  # aiodocker's _query leaves the response to its caller

        try:
            await self._call("ping", _ping, timeout=self.ping_timeout)
        except RuntimeUnavailable:
            raise
        except DormantError as exc:
            raise RuntimeUnavailable(str(exc)) from exc

    async def _ensure_image(self, image: str) -> None:
        """InvalidInput if the engine lacks ``image`` (dormant never pulls). Found images are
        remembered for ``image_cache_seconds`` so that a burst of creates costs one look-up."""
        loop = asyncio.get_running_loop()
        seen = self._images.get(image)
        if seen is not None and loop.time() - seen < self.image_cache_seconds:
            return
        try:
            await self._call(f"image {image}", lambda d: d.images.inspect(image))
        except (ImageMissing, ContainerMissing) as exc:
            raise ImageMissing(
                f"image {image!r} is not on the container engine at {self.host}; "
                "pull or import it there first"
            ) from exc
        self._images[image] = loop.time()

    async def _ensure_network(self, network: str) -> str:
        """The id of ``network``, made (a plain bridge network, without dormant's labels: it is
        shared and never removed by dormant) unless it exists.

        Docker Engine 20.10 makes a second network of the same name when two creates race
        (``CheckDuplicate`` narrows the window but is not atomic; Docker 25 and Podman refuse
        duplicates), and every later use of the name is then "ambiguous". So the networks of
        that name are listed after the create, all but the oldest (ties: the lowest id, which
        every racer agrees on) are removed, and containers join the network by id."""
        known = self._network_ids.get(network)
        if known is not None:
            return known
        found = await self._networks_named(network)
        if not found:
            with contextlib.suppress(RuntimeFailure):  # made meanwhile: Docker 409, Podman 500
                await self._call(
                    f"create network {network}",
                    lambda d: d.networks.create(
                        {"Name": network, "Driver": "bridge", "CheckDuplicate": True}
                    ),
                )
                log.info("network %s created", network)
            found = await self._networks_named(network)
            if not found:
                raise RuntimeFailure(f"network {network} cannot be made")
        keeper, *duplicates = sorted(
            found, key=lambda n: (_parse_time(n.get("Created")) or _NEVER, str(n.get("Id")))
        )
        for duplicate in duplicates:
            log.warning("network %s exists twice: removing %s", network, duplicate.get("Id"))
            with contextlib.suppress(DormantError):  # in use: then someone else's choice
                await self._remove_network(str(duplicate.get("Id")))
        self._networks.add(network)
        self._network_ids[network] = str(keeper["Id"])
        return self._network_ids[network]

    async def _networks_named(self, network: str) -> list[dict[str, Any]]:
        """Networks named exactly ``network`` (the engine's name filter matches parts too)."""
        params = {"filters": json.dumps({"name": [network]})}
        rows: list[dict[str, Any]] = await self._call(
            f"networks {network}", lambda d: d._query_json("networks", params=params)
        )
        return [row for row in rows if row.get("Name") == network]

    async def _remove_network(self, network_id: str) -> None:
        async def delete(d: aiodocker.Docker) -> None:
            async with d._query(f"networks/{network_id}", method="DELETE") as response:
                try:
                    await response.read()
                finally:
                    response.close()

        await self._call(f"remove network {network_id}", delete)

    async def _log_tail(self, name: str) -> str:
        try:
            lines = await self._call(
                f"logs {name}",
                lambda d: d.containers.container(name).log(
                    stdout=True, stderr=True, tail=LOG_TAIL_LINES
                ),
                timeout=5.0,
            )
        except DormantError as exc:
            return f"(logs unavailable: {exc})"
        text = "".join(lines).strip()[-_LOG_TAIL_CHARS:]
        return text or "(no output)"

    def _label_filter(self) -> list[str]:
        return [f"{MANAGED_LABEL}=true", *(f"{k}={v}" for k, v in self.scope.items())]

    async def close(self) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            with contextlib.suppress(Exception):
                await docker.close()
