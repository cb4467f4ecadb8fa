"""The CLI's guards: no database created by accident, bulk deletes confirmed and previewable."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dormant import cli
from dormant.cli import common
from dormant.client import Client


@pytest.fixture
def empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("DORMANT_CONFIG", "DORMANT_DATABASE_URL", "DORMANT_URL", "DORMANT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "list"],
        ["keys", "create", "--admin"],
        ["keys", "revoke", "abc123"],
        ["reconcile", "--dry-run"],
    ],
    ids=["keys-list", "keys-create", "keys-revoke", "reconcile"],
)
def test_commands_on_the_database_do_not_create_one(empty_folder: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    assert f"no database at {empty_folder / 'dormant.db'}" in result.stderr
    assert "dormant migrate" in result.stderr
    assert list(empty_folder.iterdir()) == []


def test_a_database_elsewhere_is_named(empty_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DORMANT_DATABASE_URL", f"sqlite+aiosqlite:///{empty_folder}/x/state.db")
    result = CliRunner().invoke(cli.app, ["keys", "list"])
    assert result.exit_code == 1
    assert f"no database at {empty_folder}/x/state.db" in result.stderr
    assert list(empty_folder.iterdir()) == []


def test_migrate_creates_it_and_then_keys_work(empty_folder: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli.app, ["migrate"]).exit_code == 0
    assert (empty_folder / "dormant.db").exists()
    created = runner.invoke(cli.app, ["keys", "create", "--tenant", "acme", "--name", "ci"])
    assert created.exit_code == 0, created.output
    key_id = created.stdout.strip().split("_")[1]
    listing = runner.invoke(cli.app, ["keys", "list"])
    assert listing.exit_code == 0
    assert key_id in listing.stdout and "acme" in listing.stdout


# --- sessions rm --all-sleeping ------------------------------------------------------------------


class FakeServer:
    """The REST API as ``sessions rm`` uses it: a list of sleeping sessions, then deletes."""

    def __init__(self) -> None:
        since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
        self.sessions = [
            {"id": "s1", "tenant": "default", "user_id": "alice", "state_since": since},
            {"id": "s2", "tenant": "acme", "user_id": "bob", "state_since": since},
            {"id": "s3", "tenant": "default", "user_id": "carol", "state_since": since},
        ]
        self.deleted: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == "/v1/sessions":
            assert request.url.params["state"] == "sleeping"
            live = [s for s in self.sessions if s["id"] not in self.deleted]
            return httpx.Response(200, json={"items": live, "next_cursor": None})
        sid = path.rsplit("/", 1)[-1]
        if request.method == "DELETE":
            self.deleted.append(sid)
            return httpx.Response(202, json={"id": sid, "state": "deleting"})
        if request.method == "GET" and sid in self.deleted:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "gone"}})
        raise AssertionError(f"unexpected {request.method} {path}")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, empty_folder: Path) -> Iterator[FakeServer]:
    fake = FakeServer()

    def client(*_: Any) -> Client:
        http = httpx.Client(base_url="http://dormant", transport=httpx.MockTransport(fake.handle))
        return Client("http://dormant", "k", http=http)

    monkeypatch.setattr(common, "open_client", client)
    yield fake


SUMMARY = "3 sleeping session(s) across 2 tenant(s): acme (1), default (2)"


def test_dry_run_lists_and_deletes_nothing(server: FakeServer) -> None:
    result = CliRunner().invoke(cli.app, ["sessions", "rm", "--all-sleeping", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == SUMMARY
    assert lines[1].split() == ["ID", "TENANT", "USER", "ASLEEP", "SINCE"]
    assert [line.split() for line in lines[2:5]] == [
        ["s1", "default", "alice", "3h", "ago"],
        ["s2", "acme", "bob", "3h", "ago"],
        ["s3", "default", "carol", "3h", "ago"],
    ]
    assert lines[5] == "dry run: nothing deleted"
    assert server.deleted == []


@pytest.mark.parametrize("answer", ["n\n", "\n", ""], ids=["no", "default", "no-input"])
def test_without_yes_it_asks_and_a_no_deletes_nothing(server: FakeServer, answer: str) -> None:
    result = CliRunner().invoke(cli.app, ["sessions", "rm", "--all-sleeping"], input=answer)
    assert result.exit_code == 1
    assert SUMMARY in result.stdout
    assert "Delete them?" in result.stderr
    assert server.deleted == []


def test_a_yes_at_the_prompt_deletes(server: FakeServer) -> None:
    result = CliRunner().invoke(cli.app, ["sessions", "rm", "--all-sleeping"], input="y\n")
    assert result.exit_code == 0, result.output
    assert sorted(server.deleted) == ["s1", "s2", "s3"]
    assert "deleted 3 of 3 sleeping session(s)" in result.stdout


def test_yes_skips_the_question(server: FakeServer) -> None:
    result = CliRunner().invoke(
        cli.app, ["sessions", "rm", "--all-sleeping", "--yes", "--concurrency", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "Delete them?" not in result.stderr
    assert result.stdout.splitlines()[0] == SUMMARY
    assert "deleted 3 of 3 sleeping session(s) (2 at a time)" in result.stdout
    assert sorted(server.deleted) == ["s1", "s2", "s3"]


def test_nothing_sleeping_asks_nothing(server: FakeServer) -> None:
    server.sessions = []
    result = CliRunner().invoke(cli.app, ["sessions", "rm", "--all-sleeping"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "no sleeping sessions"


def test_dry_run_needs_all_sleeping(server: FakeServer) -> None:
    result = CliRunner().invoke(cli.app, ["sessions", "rm", "s1", "--dry-run"])
    assert result.exit_code == 1
    assert "--dry-run goes with --all-sleeping" in result.stderr
    assert server.deleted == []
