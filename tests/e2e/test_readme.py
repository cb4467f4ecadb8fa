"""Issue 12: the README works as written. Every command block (```bash) runs, in order, on a
fresh install: a copy of the repository in a temporary folder, where the README's own first
command makes ``.venv`` with ``pip install .`` (pip's cache makes it quick) and starts
``dormant serve``.

How the README marks its blocks: an HTML comment on the line before a block (invisible on
GitHub), ``<!-- test: WORD ... -->`` with these words:

- ``skip (why)``: not run (the test suite itself; commands for machines of your own);
- ``background``: started in the background and left running (a server); ``ready=URL`` (answers
  200) or ``ready-output=TEXT`` (in its output) says when the next block may run. Every
  background block's process group, and every session process it made, is killed at the end,
  also on failure;
- ``name=NAME``: the test checks that block's output for what the README says it shows;
- ``expect-next``: the block's output contains the next block (the output shown in the README).

Blocks without a comment must simply exit 0. They run in one shell's state, as pasted one after
another into one terminal: ``bash -e -o pipefail``, variables carried from block to block, and
``curl`` failing on an HTTP error status (``--fail-with-body``), which a human would see.

The one change made to the commands: the README's default ports (API 8080, proxy 8081) are
replaced by free ones, and ``DORMANT_PORT``, ``DORMANT_PROXY_PORT`` and ``DORMANT_PORT_RANGE``
give the same to the server and the CLI, so that the test runs beside other servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, claim_ports, kill_marked, marked_processes, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: A fresh install resolves every dependency; the first block gets this long to install and serve.
INSTALL_TIMEOUT = 300.0
BLOCK_TIMEOUT = 180.0

_MARK = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    flags: frozenset[str] = frozenset()
    options: dict[str, str] = field(default_factory=dict)
    following: str | None = None  # the next block's text (for expect-next)

    @property
    def name(self) -> str:
        return self.options.get("name", f"line {self.line}")


def parse_blocks(markdown: str) -> list[Block]:
    """Every fenced block with its language, its ``<!-- test: ... -->`` mark and the next
    block's text."""
    lines = markdown.splitlines()
    raw: list[tuple[str, str, int, str | None]] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        mark = _MARK.match(lines[i - 1]) if i > 0 else None
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"README.md line {i + 1}: unclosed block"
        body = "\n".join(lines[i + 1 : end]) + "\n"
        raw.append((fence.group(1), body, i + 1, mark.group(1) if mark else None))
        i = end + 1
    blocks = []
    for n, (lang, body, line, mark) in enumerate(raw):
        flags: set[str] = set()
        options: dict[str, str] = {}
        if mark is not None:
            words = shlex.split(mark)
            if words and words[0] == "skip":
                words = ["skip"]  # the rest says why
            for word in words:
                key, sep, value = word.partition("=")
                if sep:
                    options[key] = value
                else:
                    flags.add(key)
            unknown = (flags - {"skip", "background", "expect-next"}) | (
                set(options) - {"ready", "ready-output", "name"}
            )
            assert not unknown, f"README.md line {line}: unknown test marks {unknown}"
        following = raw[n + 1][1] if n + 1 < len(raw) else None
        blocks.append(Block(lang, body, line, frozenset(flags), options, following))
    return blocks


def test_the_readme_marks_parse_and_mark_what_they_should() -> None:
    blocks = parse_blocks(README.read_text())
    shell = [b for b in blocks if b.lang == "bash"]
    assert len(shell) >= 8
    skipped = [b for b in shell if "skip" in b.flags]
    assert any("scripts/test.sh" in b.text for b in skipped)
    first = shell[0]
    assert "background" in first.flags
    assert first.text.strip() == (
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/dormant serve"
    )
    # run blocks call the venv's programs by path: nothing relies on an activated venv
    for block in shell:
        if "skip" in block.flags:
            continue
        for line in block.text.splitlines():
            command = line.split("#", 1)[0]
            assert not re.search(r"(^|[;&|(]\s*)(dormant|python) ", command), (block.line, line)
    # no link leaves the repository (../shared/DESIGN.md once did)
    links = re.findall(r"\]\(([^)]+)\)", README.read_text())
    for link in links:
        if link.startswith("http://127.0.0.1"):
            continue  # the running server's own pages
        assert not link.startswith(("http:", "https:", "/", "..")), link
        assert (ROOT / link.split("#")[0]).exists(), link


# --- the walkthrough ---------------------------------------------------------------------------


def _copy_repository(target: Path) -> None:
    """The files a fresh clone would have (tracked, and new ones not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        shutil.copytree(
            ROOT, target, ignore=shutil.ignore_patterns(".venv", "node_modules", ".git", "*.db")
        )
        return
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if not name or not source.is_file():
            continue  # removed in the working tree, not yet in the index
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)


def _fresh_environment(ports: list[int]) -> dict[str, str]:
    """This machine's environment as a new terminal has it: no DORMANT_*, no active venv."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DORMANT_", "PYTEST_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin
    )
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        DORMANT_PORT=str(ports[0]),
        DORMANT_PROXY_PORT=str(ports[1]),
        DORMANT_PORT_RANGE=f"{ports[2]}-{ports[-1]}",
    )
    return env


def _ports_replaced(text: str, ports: list[int]) -> str:
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{ports[0]}").replace(
        "127.0.0.1:8081", f"127.0.0.1:{ports[1]}"
    )


class Walkthrough:
    """Runs blocks in ``home`` with one shell state; owns the background processes."""

    def __init__(self, home: Path, env: dict[str, str], ports: list[int]) -> None:
        self.home = home
        self.env = env
        self.ports = ports
        self.state = home / ".readme-test-state.sh"
        self.background: list[tuple[Block, subprocess.Popen[bytes], Path]] = []

    def script(self, block: Block, *, keep_state: bool) -> str:
        prelude = (
            "set -eo pipefail\n"
            "set -a\n"  # every variable carries over to the next block
            f"[ -f {shlex.quote(str(self.state))} ] && source {shlex.quote(str(self.state))}\n"
            'curl() { command curl --fail-with-body "$@"; }\n'
        )
        body = _ports_replaced(block.text, self.ports)
        tail = f"export -p > {shlex.quote(str(self.state))}\n" if keep_state else ""
        return prelude + body + tail

    def run(self, block: Block) -> str:
        result = subprocess.run(
            ["bash", "-c", self.script(block, keep_state=True)],
            cwd=self.home,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, (
            f"README.md block at line {block.line} exited {result.returncode}:\n"
            f"{block.text}\n--- output ---\n{output}\n{self.logs()}"
        )
        return result.stdout

    def start(self, block: Block, timeout: float) -> str:
        log = self.home / f".readme-test-{block.line}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", self.script(block, keep_state=False)],
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one at the end
            )
        self.background.append((block, proc, log))
        url = block.options.get("ready")
        text = block.options.get("ready-output")
        assert url or text, f"README.md line {block.line}: background without ready="

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(
                    f"README.md block at line {block.line} exited {proc.returncode}:\n"
                    f"{log.read_text(errors='replace')[-4000:]}"
                )
            if text is not None:
                return text in log.read_text(errors="replace")
            try:
                status = httpx.get(_ports_replaced(url or "", self.ports), timeout=2).status_code
            except httpx.HTTPError:
                return False
            return status == 200

        wait_until(
            ready,
            timeout=timeout,
            interval=0.2,
            what=f"README.md block at line {block.line} to be ready",
            detail=lambda: log.read_text(errors="replace")[-3000:],
        )
        return log.read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(
            f"--- background block at line {b.line} ---\n{log.read_text(errors='replace')[-3000:]}"
            for b, _, log in self.background
        )

    def stop(self) -> None:
        for _, proc, _ in reversed(self.background):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        # the process runtime's sessions run in process groups of their own
        kill_marked(self.home / "dormant-data" / "processes")


@pytest.fixture
def walkthrough(tmp_path: Path) -> Iterator[Walkthrough]:
    home = tmp_path / "dormant"
    home.mkdir()
    _copy_repository(home)
    ports = claim_ports(22)
    runner = Walkthrough(home, _fresh_environment(ports), ports)
    try:
        yield runner
    finally:
        runner.stop()
        root = home / "dormant-data" / "processes"
        deadline = time.monotonic() + 10
        while marked_processes(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked_processes(root) == {}, "session processes survived the walkthrough"


def _json_state(text: str, state: str) -> bool:
    return re.search(rf'"state":\s*"{state}"', text) is not None


def _check(name: str, output: str, home: Path) -> None:
    """What the README says each named block shows."""
    if name == "curl":
        session = json.loads((home / "session.json").read_text())
        assert session["state"] == "running", session
        assert session["user_id"] == "alice"
        assert "Directory listing" in output  # the session's own server (python -m http.server)
        assert _json_state(output, "sleeping"), output  # the sleep's outcome
        assert output.count(session["id"]) >= 3
        assert "sleep requested" in output or '"sleep"' in output, output  # the timeline
    elif name == "cli":
        created = json.loads((home / "created.json").read_text())
        assert created["state"] == "running", created
        assert f"{created['id']} sleeping" in output, output
        assert f"{created['id']} running" in output, output
    elif name == "proxy":
        assert output.count("<title>Directory listing") == 2, output  # the link, then a wake
        assert _json_state(output, "sleeping"), output
    elif name == "operations":
        assert re.search(r"\bdk_[0-9a-f]{12}_", output), output  # the new key, printed once
        assert "acme" in output, output
    elif name == "demo":
        pass  # checked with its URL, in the test
    else:
        pytest.fail(f"README.md names a block {name!r} that this test does not check")


def _check_installed_docs(port: int) -> None:
    """The wheel that ``pip install .`` built ships /docs's assets (package data)."""
    docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10)
    assert docs.status_code == 200
    scripts = re.findall(r'src="(/docs/assets/[^"]+)"', docs.text)
    assert len(scripts) == 1, docs.text
    bundle = httpx.get(f"http://127.0.0.1:{port}{scripts[0]}", timeout=10)
    assert bundle.status_code == 200
    assert len(bundle.content) > 500_000  # the whole Swagger UI bundle


def test_every_command_block_of_the_readme_runs_on_a_fresh_install(
    walkthrough: Walkthrough,
) -> None:
    blocks = [b for b in parse_blocks(README.read_text()) if b.lang == "bash"]
    timings: list[tuple[str, float]] = []
    checked: set[str] = set()
    started = time.monotonic()
    for block in blocks:
        if "skip" in block.flags:
            continue
        began = time.monotonic()
        if "background" in block.flags:
            first = not walkthrough.background
            output = walkthrough.start(block, INSTALL_TIMEOUT if first else BLOCK_TIMEOUT)
        else:
            output = walkthrough.run(block)
        timings.append((f"line {block.line} ({block.name})", time.monotonic() - began))
        if "expect-next" in block.flags:
            assert block.following is not None
            assert block.following.strip() in output, (block.following, output)
        if "name" in block.options:
            _check(block.name, output, walkthrough.home)
            checked.add(block.name)
        if "background" in block.flags and "pip install" in block.text:
            _check_installed_docs(walkthrough.ports[0])
        if block.name == "demo":
            shown = json.loads(next(ln for ln in output.splitlines() if "session_id" in ln))
            page = httpx.get(shown["url"], timeout=10)
            assert page.status_code == 200
            assert "/static/dormant.js" in page.text
            config = httpx.get(shown["url"].rstrip("/") + "/config", timeout=10).json()
            assert config["session_id"] == shown["session_id"]
    assert checked == {"curl", "cli", "proxy", "operations", "demo"}
    total = time.monotonic() - started
    report = "\n".join(f"  {what:<28} {seconds:6.1f} s" for what, seconds in timings)
    print(f"\nREADME walkthrough on a fresh install: {total:.1f} s\n{report}")


# --- the configuration examples ----------------------------------------------------------------


def _toml_blocks() -> list[Block]:
    return [b for b in parse_blocks(README.read_text()) if b.lang == "toml"]


def test_every_toml_block_of_the_readme_loads(tmp_path: Path) -> None:
    from dormant.config import load_settings

    blocks = _toml_blocks()
    assert len(blocks) >= 6
    for n, block in enumerate(blocks):
        path = tmp_path / f"block-{n}.toml"
        path.write_text(block.text)
        settings = load_settings(path, environ={})  # also builds the catalog: every template
        named = re.findall(r"^\[templates\.([a-z]+)\]", block.text, re.M)
        assert sorted(settings.templates) == sorted(named), block.line
        catalog = settings.catalog()
        for name in named:
            assert catalog.templates[name].policy in catalog.policies, (block.line, name)


def test_the_configuration_example_makes_its_named_policy_the_default(tmp_path: Path) -> None:
    from dormant.config import load_settings

    (block,) = [b for b in _toml_blocks() if 'policy = "team"' in b.text]
    path = tmp_path / "dormant.toml"
    path.write_text(block.text)
    default = load_settings(path, environ={}).catalog().policies["default"]
    assert default.sleep_after == 45 * 60  # [policies.team]: conservative, sleep_after = "45m"
    assert default.warn_before == 120
    assert default.delete_after == 7 * 86400  # the rest from the conservative preset


def test_the_readme_docker_templates_serve_on_the_test_image(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path
) -> None:
    """Each docker template of the README runs a session on the image that
    scripts/podman-up.sh builds. The storage example binds below ``/srv/shared``: here that
    is a folder of the test's."""
    from tests.integration import podman

    blocks = [b for b in _toml_blocks() if 'runtime = "docker"' in b.text]
    assert len(blocks) == 2
    shared = tmp_path / "srv-shared"
    (shared / "datasets").mkdir(parents=True)
    scope = f"{podman.RUN_LABEL}={podman.RUN_ID}"
    try:
        for n, block in enumerate(blocks):
            config = tmp_path / f"docker-{n}.toml"
            config.write_text(block.text.replace("/srv/shared", str(shared)))
            server = server_factory(
                DORMANT_CONFIG=str(config),
                DORMANT_DOCKER_HOST=docker_host,
                DORMANT_DOCKER_SCOPE=scope,
            )
            admin = server.client()
            created = admin.post(
                "/v1/sessions", params={"wait": 60}, json={"user_id": "gina", "template": "ide"}
            )
            assert created.status_code == 201, created.text
            session = created.json()
            assert session["state"] == "running", (block.line, session)
            page = server.port_answers(session["port"])
            assert page is not None and page.status_code == 200, block.line
            assert page.text == "dormant test container\n"
            gone = admin.delete(f"/v1/sessions/{session['id']}", params={"wait": 60})
            assert gone.status_code == 202, gone.text
            assert gone.json()["outcome"]["ok"] is True
            server.stop()
    finally:
        listed = podman.podman(
            "volume", "ls", "--format", "{{.Name}}", "--filter", f"label={scope}", check=False
        )
        for name in listed.stdout.split():  # home-{tenant}-{user} outlives its session
            podman.podman("volume", "rm", "-f", name, check=False)
