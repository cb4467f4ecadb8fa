"""Crash recovery: SIGKILL ``dormant serve`` in the middle of creates and deletes, restart it on
the same database and data dir, and check that processes and sessions agree again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

TRANSITIONAL = ("creating", "starting", "stopping", "deleting")
CYCLES = 3
CREATES = 20
#: Set to False once test_unrecorded_process_is_found_after_a_crash passes.


@dataclass
class Churn:
    created: list[str] = field(default_factory=list)
    delete_sent: list[str] = field(default_factory=list)
    delete_acked: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


async def churn(server: Server, kill_after: int, delay: float) -> Churn:
    """``CREATES`` concurrent creates, a delete right after every second one, and a SIGKILL
    of the server ``delay`` seconds after the ``kill_after``-th create was answered."""
    seen = Churn()
    assert server.proc is not None
    proc = server.proc
    answered = asyncio.Event()

    async def create_then_maybe_delete(client: httpx.AsyncClient, i: int) -> None:
        try:
            response = await client.post("/v1/sessions", json={"user_id": f"user{i % 4}"})
            seen.statuses[response.status_code] += 1
            if response.status_code != 201:
                return
            sid = response.json()["id"]
            seen.created.append(sid)
            if len(seen.created) >= kill_after:
                answered.set()
            if i % 2:
                return
            seen.delete_sent.append(sid)
            response = await client.delete(f"/v1/sessions/{sid}")
            seen.statuses[response.status_code] += 1
            if response.status_code == 202:
                seen.delete_acked.append(sid)
        except httpx.TransportError:
            pass  # the server died under this request

    async def kill() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), 20)
        await asyncio.sleep(delay)
        proc.send_signal(signal.SIGKILL)

    async with server.async_client() as client:
        await asyncio.gather(kill(), *(create_then_maybe_delete(client, i) for i in range(CREATES)))
    await asyncio.to_thread(proc.wait, 15)
    server.kill()  # forget the dead process
    return seen


def settle(server: Server) -> dict[str, int]:
    """Wait until no session is in a transitional state; returns the counts by state."""

    def settled() -> dict[str, int] | None:
        stats = server.client().get("/v1/stats").json()["sessions_by_state"]
        return None if any(stats.get(s) for s in TRANSITIONAL) else stats or {"none": 0}

    def stuck() -> list[tuple[str, str]]:
        rows = server.all_sessions()  # (lists leave out sessions being deleted)
        return [(s["id"], s["state"]) for s in rows if s["state"] in TRANSITIONAL]

    return server.wait_until(settled, timeout=40, what="no transitional session", detail=stuck)


def disagreements(server: Server) -> dict[str, list[str]]:
    """Where the session processes and the sessions disagree (empty when converged)."""
    sessions = {s["id"]: s for s in server.all_sessions()}
    running = {sid for sid, s in sessions.items() if s["state"] == "running"}
    owners: dict[str, list[int]] = {}
    for pid, env in server.marked().items():
        owners.setdefault(env.get("DORMANT_SESSION", "?"), []).append(pid)
    found = {
        "not running or sleeping": [
            f"{sid} is {s['state']}: {s['error']}"
            for sid, s in sessions.items()
            if s["state"] not in ("running", "sleeping")
        ],
        "orphan processes": [
            f"pids {pids} of {sid} ({sessions[sid]['state'] if sid in sessions else 'no session'})"
            for sid, pids in owners.items()
            if sid not in running
        ],
        "running without a process": sorted(running - set(owners)),
        "running and not answering": [
            sid for sid in running if sid in owners and not port_answers(server, sessions[sid])
        ],
        "ports held twice": [
            str(port)
            for port, n in Counter(s["port"] for s in sessions.values()).items()
            if n > 1 and port is not None  # sleeping sessions hold none
        ],
        "directories without a session": sorted(
            p.name
            for p in server.runtime_root.iterdir()
            if p.name.removeprefix("dormant-") not in sessions
        ),
    }
    return {k: v for k, v in found.items() if v}


def port_answers(server: Server, session: dict[str, Any]) -> bool:
    response = server.port_answers(session["port"])
    return response is not None and response.status_code == 200


def check_converged(server: Server, seen: Churn) -> None:
    """After a restart: nothing transitional, processes == running sessions, ports answer,
    and what the API acknowledged before the crash holds."""
    by_state = settle(server)
    assert set(by_state) <= {"running", "sleeping", "deleted", "none"}, by_state
    server.wait_until(
        lambda: not disagreements(server),
        timeout=20,
        what="processes and sessions to agree",
        detail=lambda: disagreements(server),
    )
    live = {s["id"] for s in server.all_sessions()}
    lost = set(seen.created) - set(seen.delete_sent) - live
    assert not lost, f"sessions created (201) and lost in the crash: {sorted(lost)}"


def test_sigkill_during_creates_and_deletes(server_factory: Callable[..., Server]) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"random seed {seed}")
    rng = random.Random(seed)
    server = server_factory(ports=CYCLES * CREATES + 10, DORMANT_RECONCILE_INTERVAL="1")
    lost_deletes: list[str] = []
    for cycle in range(CYCLES):
        kill_after, delay = rng.randint(1, CREATES - 5), rng.uniform(0, 0.3)
        seen = asyncio.run(churn(server, kill_after, delay))
        print(f"cycle {cycle}: killed {delay:.3f}s after create {kill_after}: {seen}")
        assert set(seen.statuses) <= {201, 202}, seen.statuses
        server.start()
        check_converged(server, seen)
        lost_deletes += [sid for sid in seen.delete_acked if server.session(sid) is not None]

    # A 202 for a delete is a promise: the crash must not undo it.
    assert not lost_deletes, f"deletes acknowledged (202) but undone by the crash: {lost_deletes}"

    # in the normal path nothing leaks either: delete everything, every process goes
    for s in server.all_sessions():
        assert server.client().delete(f"/v1/sessions/{s['id']}").status_code == 202
    server.wait_until(lambda: not server.all_sessions(), what="every session deleted")
    server.wait_until(lambda: not server.marked(), what="every session process to exit")
    server.wait_until(
        lambda: not any(server.runtime_root.iterdir()), what="every session directory removed"
    )


def test_reconcile_cli_removes_a_hand_started_orphan(server: Server) -> None:
    keeper = server.create("keeper")
    server.wait_state(keeper["id"], "running")
    deployment = next(iter(server.marked().values()))["DORMANT_DEPLOYMENT"]
    server.stop()
    assert server.port_answers(keeper["port"]), "a session outlives a stopped server"

    sleep = shutil.which("sleep")
    assert sleep is not None
    ghost = subprocess.Popen(
        [sleep, "300"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DORMANT_RUNTIME_ROOT": str(server.runtime_root),
            "DORMANT_CONTAINER": "dormant-ghost",
            "DORMANT_SESSION": "ghost",
            "DORMANT_DEPLOYMENT": deployment,  # ours: a process of this deployment
        },
        start_new_session=True,
    )
    try:
        server.wait_until(lambda: ghost.pid in server.marked(), what="the ghost to be marked")

        young = server.cli("reconcile", "--dry-run")
        assert "reconcile would do 0 step(s)" in young.stdout, "judged before it settled"
        server.env["DORMANT_RECONCILE_SETTLE"] = "0"
        dry = server.cli("reconcile", "--dry-run")
        assert "reconcile would do 1 step(s)" in dry.stdout, dry.stdout
        plan = [line.split() for line in dry.stdout.splitlines()[1:]]
        assert plan[0][:2] == ["remove-orphan", "dormant-ghost"], dry.stdout
        assert "no session" in dry.stdout
        assert ghost.poll() is None, "--dry-run must not kill anything"

        done = server.cli("reconcile")
        assert "reconcile did 1 step(s)" in done.stdout, done.stdout
        assert "remove-orphan" in done.stdout and "dormant-ghost" in done.stdout
        assert ghost.wait(timeout=15) in (-signal.SIGTERM, -signal.SIGKILL)
        assert ghost.pid not in server.marked()

        again = server.cli("reconcile", "--dry-run")
        assert "reconcile would do 0 step(s)" in again.stdout, again.stdout
    finally:
        if ghost.poll() is None:
            ghost.kill()
        ghost.wait(15)

    # the real session was left alone and is still running after a restart
    answered = server.port_answers(keeper["port"])
    assert answered is not None and answered.status_code == 200
    server.start()
    session = server.session(keeper["id"])
    assert session is not None and session["state"] == "running"
    owners = {env["DORMANT_SESSION"] for env in server.marked().values()}
    assert owners == {keeper["id"]}


def test_unrecorded_process_is_found_after_a_crash(server_factory: Callable[..., Server]) -> None:
    server = server_factory(DORMANT_RECONCILE_INTERVAL="0.5")
    session = server.create("u")
    sid = session["id"]
    server.wait_state(sid, "running")
    server.kill()
    # What a crash between spawning the process and recording it leaves behind:
    (server.runtime_root / f"dormant-{sid}" / "pid.json").unlink()
    server.start()
    settle(server)
    server.wait_until(
        lambda: not disagreements(server),
        timeout=3,
        what="processes and sessions to agree",
        detail=lambda: (server.session(sid), disagreements(server)),
    )


def slow_server(server_factory: Callable[..., Server], seconds: int) -> Server:
    """A server with a template ``slow`` whose process listens only after ``seconds``."""
    server = server_factory(start=False)
    slow = f"sleep {seconds} && exec {sys.executable} -m http.server {{port}} --bind 127.0.0.1"
    (server.home / "dormant.toml").write_text(
        f"[templates.slow]\ncommand = {json.dumps(['/bin/sh', '-c', slow])}\n"
    )
    server.env["DORMANT_CONFIG"] = str(server.home / "dormant.toml")
    return server.start()


def test_acknowledged_delete_survives_a_crash(server_factory: Callable[..., Server]) -> None:
    server = slow_server(server_factory, 10)
    sid = server.create("u", template="slow")["id"]
    server.wait_state(sid, "starting")
    assert server.client().delete(f"/v1/sessions/{sid}").status_code == 202
    assert server.session(sid) is None
    server.kill()
    server.start()
    settle(server)
    session = server.session(sid)
    assert session is None, f"the acknowledged delete was undone: {session}"


def test_resumed_start_waits_until_ready(server_factory: Callable[..., Server]) -> None:
    server = slow_server(server_factory, 15)
    session = server.create("u", template="slow")
    server.wait_state(session["id"], "starting")
    server.kill()
    server.start()
    current = server.session(session["id"])
    assert current is not None
    if current["state"] == "running":
        assert server.port_answers(session["port"]) is not None, "running, but not listening"
