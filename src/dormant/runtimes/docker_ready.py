"""Where a docker session serves and how dormant knows it does: the endpoint read from the
container's inspect document, and readiness (a connection accepted at it, while the container
runs). Docker Engine's userland proxy makes the second harder than on Podman: see
:meth:`DockerReadiness._answers`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from dormant.errors import DormantError, RuntimeFailure
from dormant.runtimes.base import Endpoint
from dormant.runtimes.docker_volumes import DockerVolumes


class DockerReadiness(DockerVolumes):
    """The readiness half of the docker runtime (a base of :class:`DockerRuntime`)."""

    async def _wait_ready(self, name: str, endpoint: Endpoint | None, timeout: float) -> None:
        """Until the endpoint accepts a connection; fail fast if the container exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_inspect = loop.time()
        delay = 0.005
        port = None if endpoint is None else endpoint.port
        while True:
            if endpoint is not None and await self._answers(name, endpoint):
                return
            now = loop.time()
            if now >= next_inspect or port is None:
                await self._fail_unless_running(name, await self._inspect_raw(name))
                if port is None:
                    return  # nothing published (network_mode none): running is all we can see
                next_inspect = now + 0.25
            if now > deadline:
                tail = await self._log_tail(name)
                with contextlib.suppress(DormantError):
                    await self.stop(name, {"stop_timeout": 1})
                raise RuntimeFailure(
                    f"container did not answer on port {port} within {timeout:g}s; "
                    f"last output: {tail}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _answers(self, name: str, endpoint: Endpoint) -> bool:
        """The container accepts a connection at ``endpoint`` (and still runs).

        Docker Engine publishes a port through its userland proxy (``docker-proxy``), which
        accepts for a container that does not listen yet, or has just exited, and hangs up once
        its own connection to the container fails; Podman publishes with netfilter rules, so
        there an accepted connection is the container's own. The connection is held open over an
        inspect of the container (whose round trip grows with the engine's load, as the proxy's
        delay does) and then checked for that hang-up: no fixed wait tells them apart on a busy
        machine, and a container that exited is reported with its exit code."""
        connection = await _connect(endpoint.host, endpoint.port)
        if connection is None:
            return False
        reader, writer = connection
        try:
            if await _hung_up(reader):
                return False
            await self._fail_unless_running(name, await self._inspect_raw(name))
            return not await _hung_up(reader)
        finally:
            await _reset(writer)

    async def _fail_unless_running(self, name: str, info: dict[str, Any] | None) -> None:
        if info is None:
            raise RuntimeFailure(f"{name} vanished while starting")
        state = info.get("State") or {}
        if state.get("Status") != "running":
            raise RuntimeFailure(
                f"container exited with code {state.get('ExitCode')} while starting"
                f"{'; ' + state['Error'] if state.get('Error') else ''}; "
                f"last output: {await self._log_tail(name)}"
            )

    async def _probe(self, host: str, port: int) -> bool:
        """Something accepts at ``host:port`` and does not hang up at once (see :meth:`_answers`
        for Docker's userland proxy, which does)."""
        connection = await _connect(host, port)
        if connection is None:
            return False
        reader, writer = connection
        try:
            return not await _hung_up(reader)
        finally:
            await _reset(writer)


def _exposed_port(info: dict[str, Any]) -> int | None:
    for key in (info.get("Config") or {}).get("ExposedPorts") or {}:
        return int(str(key).split("/")[0])
    return None


def _endpoint(info: dict[str, Any], probe_host: str) -> Endpoint | None:
    """Where a running container serves (and readiness is probed): the published port on
    ``probe_host``; with the host's network the container's own port there; on a network
    without a published port the container's address on it; with no network nothing
    (running is all that can be seen)."""
    mode = (info.get("HostConfig") or {}).get("NetworkMode")
    if mode == "none":
        return None
    if mode == "host":
        port = _exposed_port(info)
        return None if port is None else Endpoint(probe_host, port)
    if (published := _published_port(info)) is not None:
        return Endpoint(probe_host, published)
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    port = _exposed_port(info)
    ordered = [networks[mode]] if mode in networks else []
    for net in [*ordered, *networks.values()]:
        address = (net or {}).get("IPAddress")
        if address and port is not None:
            return Endpoint(str(address), port)
    return None


def _published_port(info: dict[str, Any]) -> int | None:
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = (info.get("HostConfig") or {}).get("PortBindings") or {}
    for source in (ports, bindings):
        for binds in source.values():
            for bind in binds or []:
                if bind.get("HostPort"):
                    return int(bind["HostPort"])
    return None


async def _connect(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        async with asyncio.timeout(1.0):
            return await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return None


async def _hung_up(reader: asyncio.StreamReader) -> bool:
    """The peer closed (or reset) the connection, or does within a few milliseconds."""
    try:
        async with asyncio.timeout(0.005):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset rather than a FIN: no TIME_WAIT left on an ephemeral port that a
    session's published port might need next."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
