"""The process runtime against real local processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dormant.errors import RuntimeFailure
from dormant.runtimes import ContainerSpec, ContainerStatus
from dormant.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def spec(name: str, port: int, command: list[str] | None = None) -> ContainerSpec:
    labels = {"dormant.managed": "true", "dormant.session": name.removeprefix("dormant-")}
    return ContainerSpec(
        name, name.removeprefix("dormant-"), labels, port, command, start_timeout=10, stop_timeout=2
    )


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path / "processes")
    try:
        yield rt
    finally:
        for info in await rt.list_managed():
            await rt.remove(info.name, {})
        assert await rt.list_managed() == []


async def test_lifecycle_serves_sleeps_wakes_with_files_and_removes(
    runtime: ProcessRuntime,
) -> None:
    port = free_port()
    await runtime.create(spec("dormant-s1", port))
    state = await runtime.start("dormant-s1", {})
    assert state["pid"] > 0
    assert await asyncio.to_thread(answers, port)
    (runtime.root / "dormant-s1" / "work" / "note.txt").write_text("kept")

    await runtime.stop("dormant-s1", state)
    assert not await asyncio.to_thread(answers, port)
    info = await runtime.inspect("dormant-s1")
    assert info is not None and info.status is ContainerStatus.STOPPED

    state = await runtime.start("dormant-s1", {})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/note.txt", timeout=2) as r:
        assert r.read() == b"kept"

    pid = state["pid"]
    await runtime.remove("dormant-s1", state)
    assert not (runtime.root / "dormant-s1").exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert await runtime.inspect("dormant-s1") is None


async def test_stop_and_remove_of_nothing_succeed(runtime: ProcessRuntime) -> None:
    assert await runtime.stop("dormant-nothing", {}) == {}
    await runtime.remove("dormant-nothing", {})


async def test_start_is_idempotent(runtime: ProcessRuntime) -> None:
    port = free_port()
    await runtime.create(spec("dormant-s2", port))
    first = await runtime.start("dormant-s2", {})
    second = await runtime.start("dormant-s2", first)
    assert first["pid"] == second["pid"]


async def test_process_exiting_at_start_fails_with_its_output(runtime: ProcessRuntime) -> None:
    command = [
        sys.executable,
        "-c",
        "import sys; print('config missing: /etc/app.yml'); sys.exit(3)",
    ]
    await runtime.create(spec("dormant-bad", free_port(), command))
    with pytest.raises(RuntimeFailure, match=r"code 3.*config missing"):
        await runtime.start("dormant-bad", {})


async def test_process_that_never_listens_times_out_and_is_stopped(runtime: ProcessRuntime) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    s = spec("dormant-mute", free_port(), command)
    s = ContainerSpec(s.name, s.session_id, s.labels, s.port, s.command, start_timeout=0.5)
    await runtime.create(s)
    with pytest.raises(RuntimeFailure, match="did not answer"):
        await runtime.start("dormant-mute", {})
    info = await runtime.inspect("dormant-mute")
    assert info is not None and info.status is ContainerStatus.STOPPED


async def test_command_not_found_is_a_permanent_failure(runtime: ProcessRuntime) -> None:
    await runtime.create(spec("dormant-nocmd", free_port(), ["/nonexistent/binary"]))
    with pytest.raises(RuntimeFailure, match="cannot run"):
        await runtime.start("dormant-nocmd", {})


async def test_marked_process_without_a_directory_is_found_and_removed(
    runtime: ProcessRuntime,
) -> None:
    env = {
        **os.environ,
        "DORMANT_RUNTIME_ROOT": str(runtime.root),
        "DORMANT_CONTAINER": "dormant-stray",
        "DORMANT_SESSION": "stray",
    }
    proc = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    try:
        # The child may still be between fork and exec (its environ is the parent's until
        # then): look again for a little while, as the next reconcile sweep would.
        infos = {}
        for _ in range(100):
            infos = {i.name: i for i in await runtime.list_managed()}
            if "dormant-stray" in infos:
                break
            await asyncio.sleep(0.05)
        assert "dormant-stray" in infos
        assert infos["dormant-stray"].session_id == "stray"
        await runtime.remove("dormant-stray", {})
        assert proc.wait(timeout=5) is not None
        assert "dormant-stray" not in {i.name for i in await runtime.list_managed()}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_children_of_a_session_die_with_it(runtime: ProcessRuntime) -> None:
    port = free_port()
    script = (
        "import subprocess, sys, http.server, socketserver\n"
        "subprocess.Popen(['sleep', '300'])\n"
        f"http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={port},"
        " bind='127.0.0.1')\n"
    )
    await runtime.create(spec("dormant-tree", port, [sys.executable, "-c", script]))
    await runtime.start("dormant-tree", {})
    assert len(runtime._marked_pids("dormant-tree")) >= 2
    await runtime.stop("dormant-tree", {})
    assert runtime._marked_pids("dormant-tree") == {}
