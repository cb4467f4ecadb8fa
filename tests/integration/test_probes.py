"""Issue 11, health: the probes themselves (HTTP status, TCP, ``exec`` in a real container on
Podman) and how a template's ``ready`` is configured."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from dormant.config import load_settings
from dormant.engine.probes import Probe, ProbeKind, run_probe, wait_ready
from dormant.errors import InvalidInput
from dormant.runtimes import ContainerSpec, Endpoint
from dormant.runtimes.docker import DockerRuntime
from dormant.testing import FakeRuntime

from .engines import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL, free_port

pytestmark = pytest.mark.integration


async def _server(statuses: list[int]) -> tuple[asyncio.Server, Endpoint]:
    """Answers the statuses in turn (the last one for good)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])


async def test_http_probes_pass_on_2xx_and_3xx_only() -> None:
    server, endpoint = await _server([503, 302, 200, 404])
    probe = Probe(ProbeKind.HTTP, path="/healthz")
    rt = FakeRuntime()
    try:
        results = [await run_probe(probe, endpoint, rt, "x") for _ in range(4)]
    finally:
        server.close()
    assert [r.ok for r in results] == [False, True, True, False]
    assert [r.detail for r in results] == [
        "GET /healthz: HTTP 503",
        "GET /healthz: HTTP 302",
        "GET /healthz: HTTP 200",
        "GET /healthz: HTTP 404",
    ]


async def test_wait_ready_waits_for_the_probe_and_says_what_it_last_saw() -> None:
    server, endpoint = await _server([503, 503, 503, 200])
    rt = FakeRuntime()
    try:
        ready = await wait_ready(Probe(ProbeKind.HTTP), endpoint, rt, "x", 5, interval=0.05)
        assert ready.ok and ready.detail == "GET /: HTTP 200"
        never = await wait_ready(
            Probe(ProbeKind.TCP), Endpoint("127.0.0.1", free_port()), rt, "x", 0.3, interval=0.05
        )
        assert not never.ok and "failed" in never.detail
    finally:
        server.close()
    fake = await run_probe(Probe(ProbeKind.EXEC, command=("true",)), None, rt, "x")
    assert not fake.ok and "cannot run commands" in fake.detail


async def test_exec_probes_run_in_the_container(docker_runtime: DockerRuntime) -> None:
    docker = docker_runtime
    name = f"dormant-t{uuid.uuid4().hex[:12]}"
    spec = ContainerSpec(
        name=name,
        session_id=name[8:],
        labels={"dormant.managed": "true", "dormant.session": name[8:], RUN_LABEL: RUN_ID},
        port=free_port(),
        image=IMAGE,
        container_port=CONTAINER_PORT,
        start_timeout=20,
        stop_timeout=1,
    )
    state = await docker.start(name, await docker.create(spec))
    try:
        assert await docker.exec(name, ["sh", "-c", "echo hi; exit 3"], 10) == (3, "hi\n")
        passing = Probe(ProbeKind.EXEC, command=("sh", "-c", "test -d /"))
        assert (await run_probe(passing, None, docker, name)).ok
        failing = Probe(ProbeKind.EXEC, command=("sh", "-c", "echo not yet >&2; exit 1"))
        result = await run_probe(failing, None, docker, name)
        assert not result.ok and result.detail == "exit status 1: not yet"
    finally:
        await docker.remove(name, state)


def test_ready_is_one_kind_and_exec_needs_a_container(tmp_path: Path) -> None:
    def load(body: str) -> None:
        path = tmp_path / "dormant.toml"
        path.write_text(body)
        load_settings(path, environ={})

    with pytest.raises(InvalidInput, match="one of http, tcp or exec"):
        load('[templates.a]\nready = {http = "/h", tcp = true}\n')
    with pytest.raises(InvalidInput, match="needs a container runtime"):
        load('[templates.a]\nready = {exec = ["true"]}\n')
    with pytest.raises(InvalidInput, match=r"ready\.http"):
        load('[templates.a]\nready = {http = "no-slash"}\n')
    path = tmp_path / "ok.toml"
    path.write_text(
        '[templates.a]\nready = {http = "/healthz", timeout = 1}\nhealth_interval = 0\n'
    )
    template = load_settings(path, environ={}).catalog().templates["a"]
    assert template.ready == Probe(ProbeKind.HTTP, path="/healthz", timeout=1)
    assert template.health_interval == 0
