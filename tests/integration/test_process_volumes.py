"""The process runtime's home directories (a template's ``home``) with real local processes."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dormant.errors import RuntimeFailure
from dormant.runtimes import ContainerSpec, VolumeMount
from dormant.runtimes.process import ProcessRuntime

from .test_process_runtime import free_port

pytestmark = pytest.mark.integration

#: Serves the session's home directory; writes $HOME into it at start.
SERVE_HOME = [
    sys.executable,
    "-c",
    "import os, sys, http.server, functools\n"
    "open(os.path.join(sys.argv[2], 'home.txt'), 'w').write(os.environ['HOME'])\n"
    "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), h).serve_forever()\n",
    "{port}",
    "{home}",
]


def labels(user: str, retain: str, session: str | None = None) -> dict[str, str]:
    found = {
        "dormant.managed": "true",
        "dormant.deployment": "d1",
        "dormant.tenant": "acme",
        "dormant.user": user,
        "dormant.template": "nb",
        "dormant.retain": retain,
    }
    if session:
        found["dormant.session"] = session
    return found


def spec(session: str, volume: VolumeMount) -> ContainerSpec:
    return ContainerSpec(
        f"dormant-{session}",
        session,
        {"dormant.managed": "true", "dormant.session": session},
        free_port(),
        SERVE_HOME,
        start_timeout=10,
        stop_timeout=2,
        volumes=(volume,),
    )


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=3) as response:
        return str(response.read().decode())


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path / "processes", users_root=tmp_path / "users")
    try:
        yield rt
    finally:
        for info in await rt.list_managed():
            await rt.remove(info.name, {})


async def test_a_user_home_is_kept_across_sessions_and_a_session_home_goes_with_it(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    home = VolumeMount("home-acme-gina", "", "user", labels("gina", "user"))
    s1 = spec("s1", home)
    state = await runtime.create(s1)
    assert state["made"] is True and "session_volumes" not in state
    state = await runtime.start(s1.name, {**state, "port": s1.port})
    where = tmp_path / "users" / "home-acme-gina" / "home"
    assert await asyncio.to_thread(fetch, s1.port, "home.txt") == str(where)
    (where / "notes.txt").write_text("kept")
    assert await runtime.remove_volume("home-acme-gina") is False  # its process runs
    await runtime.stop(s1.name, state)
    assert "made" not in await runtime.create(s1)  # a wake finds it there
    await runtime.remove(s1.name, state)

    listed = await runtime.list_volumes()
    assert [(v.name, v.labels, v.retain) for v in listed] == [
        ("home-acme-gina", labels("gina", "user"), "user")
    ]
    assert listed[0].created_at is not None
    s2 = spec("s2", home)
    state2 = await runtime.start(s2.name, {**await runtime.create(s2), "port": s2.port})
    assert await asyncio.to_thread(fetch, s2.port, "notes.txt") == "kept"
    await runtime.remove(s2.name, state2)
    assert where.is_dir()

    scratch = VolumeMount("home-s3", "", "session", labels("gina", "session", "s3"))
    s3 = spec("s3", scratch)
    state3 = await runtime.create(s3)
    assert state3["session_volumes"] == ["home-s3"]
    state3 = await runtime.start(s3.name, {**state3, "port": s3.port})
    await runtime.remove(s3.name, state3)
    assert not (tmp_path / "users" / "home-s3").exists()

    # another owner's directory is refused; the retention job's removal takes it all
    other = VolumeMount("home-acme-gina", "", "user", labels("not-gina", "user"))
    with pytest.raises(RuntimeFailure, match="belongs to acme/gina"):
        await runtime.create(spec("s4", other))
    assert not (tmp_path / "processes" / "dormant-s4").exists()  # nothing made
    assert await runtime.remove_volume("home-acme-gina") is True
    assert not (tmp_path / "users" / "home-acme-gina").exists()
    assert await runtime.list_volumes() == []
