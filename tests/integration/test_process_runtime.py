"""The process runtime against real local processes."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dormant.errors import InvalidInput, RuntimeFailure
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


def spec(
    name: str, port: int, command: list[str] | None = None, user: str | None = None
) -> ContainerSpec:
    labels = {"dormant.managed": "true", "dormant.session": name.removeprefix("dormant-")}
    return ContainerSpec(
        name,
        name.removeprefix("dormant-"),
        labels,
        port,
        command,
        start_timeout=10,
        stop_timeout=2,
        user=user,
    )


def proc_environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


def proc_ids(pid: int) -> dict[str, str]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {k: " ".join(fields[k].split()) for k in ("Uid", "Gid", "Groups")}


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


async def test_only_locale_path_and_home_come_from_dormants_environment(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("VIRTUAL_ENV", "/some/venv")
    monkeypatch.setenv("DORMANT_TEST_SECRET", "s3cret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    port = free_port()
    await runtime.create(spec("dormant-env", port))
    state = await runtime.start("dormant-env", {})
    env = proc_environ(state["pid"])
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "PORT",
        "DORMANT_SESSION",
        "DORMANT_CONTAINER",
        "DORMANT_RUNTIME_ROOT",
        "DORMANT_DEPLOYMENT",
    } | ({"LC_ALL"} & set(os.environ)) | ({"TZ"} & set(os.environ))
    assert (env["PATH"], env["HOME"], env["LANG"]) == (
        os.environ["PATH"],
        os.environ["HOME"],
        "C.UTF-8",
    )
    assert (env["PORT"], env["DORMANT_SESSION"]) == (str(port), "env")
    assert await asyncio.to_thread(answers, port)


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


# --- sessions as another host user (the tests run as root) ---------------------------------


NOBODY = pwd.getpwnam("nobody")


def python_for(user: str) -> str:
    """An interpreter ``user`` may run (this one may live under root's 0700 home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not Path(candidate).exists():
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import http.server"],
                user=user,
                extra_groups=[],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except PermissionError:  # cannot even be executed by that user
            continue
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no python interpreter on this host that {user} may run")


@pytest.fixture
async def open_root() -> AsyncIterator[Path]:
    """A directory other users may enter (pytest's tmp_path is 0700), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="dormant-user-test-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def user_runtime(open_root: Path) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(open_root / "processes")
    rt.root.chmod(0o711)
    try:
        yield rt
    finally:
        for info in await rt.list_managed():
            await rt.remove(info.name, {})
        assert await rt.list_managed() == []


async def test_session_runs_as_another_user_owns_its_directory_and_serves(
    user_runtime: ProcessRuntime,
) -> None:
    port = free_port()
    script = (
        "import os, http.server as h\n"
        "open('made-by.txt', 'w').write(str(os.getuid()) + ' ' + os.environ['HOME'])\n"
        "h.test(HandlerClass=h.SimpleHTTPRequestHandler, port=int(os.environ['PORT']),"
        " bind='127.0.0.1')\n"
    )
    s = spec("dormant-u1", port, [python_for("nobody"), "-c", script], user="nobody")
    await user_runtime.check(s)
    await user_runtime.create(s)
    directory = user_runtime.root / "dormant-u1"
    work = (directory / "work").stat()
    assert (work.st_uid, work.st_gid, stat.S_IMODE(work.st_mode)) == (
        NOBODY.pw_uid,
        NOBODY.pw_gid,
        0o700,
    )
    assert stat.S_IMODE((directory / "spec.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o711

    state = await user_runtime.start("dormant-u1", {})
    pid = state["pid"]
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert proc_ids(pid) == {
        "Uid": f"{uid} {uid} {uid} {uid}",
        "Gid": f"{gid} {gid} {gid} {gid}",
        "Groups": "",
    }
    env = proc_environ(pid)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (NOBODY.pw_dir, "nobody", "nobody")
    assert env["DORMANT_RUNTIME_ROOT"] == str(user_runtime.root)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/made-by.txt", timeout=5) as r:
        assert r.read().decode() == f"{uid} {NOBODY.pw_dir}"
    assert (await user_runtime.inspect("dormant-u1")) is not None

    # dormant (root) still stops and wakes it, and removes everything
    await user_runtime.stop("dormant-u1", state)
    assert not await asyncio.to_thread(answers, port)
    assert _gone(pid)
    state = await user_runtime.start("dormant-u1", {})
    assert proc_ids(state["pid"])["Uid"] == f"{uid} {uid} {uid} {uid}"
    assert await asyncio.to_thread(answers, port)
    await user_runtime.remove("dormant-u1", state)
    assert not directory.exists()
    assert _gone(state["pid"])


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


async def test_check_refuses_a_user_that_does_not_exist(user_runtime: ProcessRuntime) -> None:
    with pytest.raises(InvalidInput) as caught:
        await user_runtime.check(spec("dormant-x", free_port(), user="no-such-user-dormant"))
    assert str(caught.value) == "user 'no-such-user-dormant' does not exist on this host"


async def test_check_refuses_a_data_directory_the_user_cannot_enter(open_root: Path) -> None:
    private = open_root / "private"
    private.mkdir(mode=0o700)
    rt = ProcessRuntime(private / "processes")
    with pytest.raises(InvalidInput) as caught:
        await rt.check(spec("dormant-x", free_port(), [python_for("nobody")], user="nobody"))
    assert str(caught.value) == (
        f"user 'nobody' cannot enter {private}, on the way to the sessions' directories in "
        f"{rt.root}; allow it (chmod o+x) or move the data directory"
    )
    await rt.check(spec("dormant-x", free_port(), [python_for("nobody")]))  # dormant's own user


async def test_check_refuses_a_command_the_user_cannot_run(
    user_runtime: ProcessRuntime, open_root: Path
) -> None:
    hidden = open_root / "hidden"
    hidden.mkdir(mode=0o700)
    tool = hidden / "tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    with pytest.raises(InvalidInput) as caught:
        await user_runtime.check(spec("dormant-x", free_port(), [str(tool)], user="nobody"))
    assert str(caught.value) == (
        f"user 'nobody' cannot run {tool} (no access to {hidden}); "
        "give the template a command that it can run"
    )
    mine = open_root / "mine"
    mine.write_text("#!/bin/sh\nexit 0\n")
    mine.chmod(0o700)  # root's alone
    with pytest.raises(InvalidInput) as caught:
        await user_runtime.check(spec("dormant-x", free_port(), [str(mine)], user="nobody"))
    assert str(caught.value) == (
        f"user 'nobody' cannot run {mine} (no access to {mine}); "
        "give the template a command that it can run"
    )
    mine.chmod(0o755)
    await user_runtime.check(spec("dormant-x", free_port(), [str(mine)], user="nobody"))
