"""Issue 12: a docker session's page in the console shows its live CPU and memory, read from
the container engine's stats (Podman's Docker API), refreshed while the page is visible; the
usage endpoint is scoped like the API (another tenant's session: 404) and answers 409 for a
session that is not running. Nothing but loopback is asked for.

Screenshots go to the test's directory (printed), kept in ``DORMANT_SCREENSHOT_DIR`` when set."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Browser
from tests.e2e.test_console_overview import shot, sign_in

from ..integration.podman import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


async def test_a_docker_sessions_page_shows_live_cpu_and_memory(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path, browser: Browser
) -> None:
    print(f"screenshots in {tmp_path}")
    config = tmp_path / "dormant.toml"
    config.write_text(
        f'default_template = "box"\n\n[templates.box]\nruntime = "docker"\n'
        f'image = "{IMAGE}"\nport = {CONTAINER_PORT}\nstop_timeout = 1\n'
        f'resources = {{ memory = "64m" }}\n'
    )
    server = server_factory(
        DORMANT_CONFIG=str(config),
        DORMANT_DOCKER_HOST=docker_host,
        DORMANT_DOCKER_SCOPE=f"{RUN_LABEL}={RUN_ID}",
    )
    api = server.client()
    made = api.post("/v1/sessions?wait=60", json={"user_id": "u", "labels": {RUN_LABEL: RUN_ID}})
    assert made.status_code == 201 and made.json()["state"] == "running", made.text
    sid = made.json()["id"]

    usage = api.get(f"/ui/api/sessions/{sid}/usage")
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert set(body) == {"cpu_percent", "memory_bytes", "memory_limit_bytes", "at"}
    assert body["memory_limit_bytes"] == 64 * MIB and 0 < body["memory_bytes"] < 64 * MIB
    assert body["cpu_percent"] >= 0
    acme = server.cli("keys", "create", "--tenant", "acme").stdout.strip().split()[-1]
    theirs = server.client(acme).get(f"/ui/api/sessions/{sid}/usage")
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    missing = api.get("/ui/api/sessions/nope/usage")
    assert missing.status_code == 404

    await browser.ready()
    await browser.do("onlyLoopback")
    await browser.do("viewport", width=1280, height=800)
    await sign_in(browser, server, f"{server.url}/ui/sessions/{sid}")
    # Two readings at least: the numbers are there and refreshed.
    await browser.do(
        "waitUntil", expr="Number(document.querySelector('#usage').dataset.readings) >= 2"
    )
    cpu = await browser.do("text", selector="#usage-cpu")
    memory = await browser.do("text", selector="#usage-mem")
    limit = await browser.do("text", selector="#usage-limit")
    shown = await browser.do("eval", expr="({...document.querySelector('#usage').dataset})")
    print(f"usage shown: cpu {cpu}, memory {memory}{limit}")
    assert cpu.endswith(" %") and float(cpu[:-2]) >= 0
    assert memory.endswith(" MiB") and float(memory[:-4]) > 0
    assert limit == " of 64.0 MiB"
    assert int(shown["memory"]) > 0 and float(shown["cpu"]) >= 0
    # Serving requests takes CPU: under load the page shows a reading above 0.
    stop = threading.Event()
    port = made.json()["port"]

    def load() -> None:
        while not stop.is_set():
            server.port_answers(port)

    loaders = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for thread in loaders:
        thread.start()
    try:
        busy = await browser.do(
            "waitUntil",
            expr="Number(document.querySelector('#usage').dataset.cpu) > 0 "
            "&& document.querySelector('#usage-cpu').textContent",
            timeout=30000,
        )
    finally:
        stop.set()
        for thread in loaders:
            thread.join(10)
    print(f"under load the page showed cpu {busy}")
    assert float(busy[:-2]) > 0
    await browser.do("eval", expr="document.querySelector('#usage').scrollIntoView()")
    await shot(browser, tmp_path / "console-usage.png")

    # Asleep: the endpoint says so (409), and so does the page at its next reading.
    assert api.post(f"/v1/sessions/{sid}/sleep?wait=60").status_code in (200, 202)
    server.wait_state(sid, "sleeping", timeout=60)
    asleep = api.get(f"/ui/api/sessions/{sid}/usage")
    assert asleep.status_code == 409 and asleep.json()["error"]["code"] == "conflict"
    await browser.do("waitText", selector="#usage-note", text="Not running")
    assert await browser.do("blocked") == []
    assert browser.page_errors() == []
    assert api.delete(f"/v1/sessions/{sid}").status_code == 202
    server.wait_gone(sid, timeout=60)
