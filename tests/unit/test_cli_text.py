"""What the CLI says without a server: help that renders at 80 columns (nothing swallowed,
no type tags, defaults in full), --version, shell completion, ``config show`` with the source
of each value, and the addresses DORMANT_URL accepts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import dormant
from dormant.cli import app
from dormant.client import base_url
from dormant.errors import InvalidInput

DORMANT = str(Path(sys.executable).parent / "dormant")
TYPE_TAG = re.compile(r"<(str|int|float|bool|path|list\[[^\]]*\]|[a-z]+ range)>")


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(typer.main.get_command(app))


def help_of(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


def flat(text: str) -> str:
    return " ".join(text.split())


def test_every_command_is_reached() -> None:
    names = {" ".join(p) for p in PATHS}
    for expected in (
        "sessions ls",
        "sessions activity",
        "sessions keepalive",
        "sessions busy",
        "sessions token",
        "sessions link",
        "sessions events",
        "sessions policy",
        "sessions logout",
        "templates",
        "policies",
        "stats",
        "config show",
        "simulate run",
    ):
        assert expected in names
    assert len(PATHS) > 30


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "dormant")
def test_help_renders_at_80_columns(path: tuple[str, ...]) -> None:
    text = help_of(*path)
    assert text.startswith("Usage: dormant")
    assert not TYPE_TAG.search(text), TYPE_TAG.search(text)
    assert "..." not in text.replace("[ARGS]...", "")  # no summary cut short
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\x1b[" not in text and "╭" not in text  # plain text, no rich boxes or colours


def test_help_texts_that_failed_before() -> None:
    run = flat(help_of("simulate", "run"))
    assert "a [policies.NAME] of --config, or 'all'" in run  # was "a  of --config"
    assert "--wake-latency WAKE_LATENCY" in run  # was "<str>"
    assert "[default: lognormal:3,12]" in run  # in full
    assert "-p, --policy POLICY" in run  # was "<list[str]>"
    serve = flat(help_of("serve"))
    assert "--host ADDRESS Listen address (default: DORMANT_HOST, 127.0.0.1)." in serve
    create = flat(help_of("sessions", "create"))
    assert "-p, --policy SETTING=VALUE Override a setting of the template's policy" in create
    assert "--wait SECONDS Wait up to SECONDS (0-120)" in create
    assert "-o, --output FORMAT table (for people) or json" in create
    assert "[default: table]" in create
    top = flat(help_of())
    assert "--version Print dormant's version and exit." in top
    assert "--install-completion" in top and "--show-completion" in top


def test_version() -> None:
    for args in (["--version"], ["version"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0
        assert result.stdout.strip().split()[-1] == dormant.__version__
    as_json = CliRunner().invoke(app, ["version", "--json"])
    assert json.loads(as_json.stdout) == {"version": dormant.__version__}


def complete(words: str, cword: int) -> list[str]:
    env = {"_DORMANT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = subprocess.run(
        [DORMANT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.split()


def test_shell_completion() -> None:
    assert complete("dormant sess", 1) == ["sessions"]
    assert complete("dormant sessions ke", 2) == ["keepalive"]
    assert complete("dormant sessions ls -o ", 4) == ["table", "json"]
    script = subprocess.run(
        [DORMANT, "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "_DORMANT_COMPLETE=complete_bash" in script
    assert "complete -o default -F _dormant_completion dormant" in script


def config_items(args: list[str], env: dict[str, str]) -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(app, ["config", "show", "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    return {item["name"]: item for item in json.loads(result.stdout)["items"]}


def test_config_show_names_each_source_and_hides_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DORMANT_CONFIG", "DORMANT_URL", "DORMANT_API_KEY", "DORMANT_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "dormant.toml"
    config.write_text(
        'host = "0.0.0.0"\nport = 9000\n[limits]\nrunning = 5\n'
        '[policy_overrides]\nsleep_after = "20m"\n'
        '[policies.night]\npreset = "aggressive"\n'
    )
    secret = "s3cr3t-" + "x" * 40
    env = {
        "DORMANT_PORT": "9100",
        "DORMANT_GATEWAY_SECRET": secret,
        "DORMANT_REDIS_URL": "redis://user:hunter2@redis:6379/0",
        "DORMANT_POLICY_WARN_BEFORE": "2m",
    }
    items = config_items(["--config", str(config)], env)
    where = f"file {config}"
    assert items["host"] == {
        "name": "host",
        "value": "0.0.0.0",
        "source": where,
        "env": "DORMANT_HOST",
    }
    assert (items["port"]["value"], items["port"]["source"]) == (9100, "env DORMANT_PORT")
    assert items["port_range"]["source"] == "default"
    assert (items["limits.running"]["value"], items["limits.running"]["source"]) == (5, where)
    assert items["policy.sleep_after"]["source"] == where
    assert items["policy.warn_before"]["source"] == "env DORMANT_POLICY_WARN_BEFORE"
    assert items["policies.night"]["value"] == {"preset": "aggressive"}
    assert items["gateway_secret"]["value"] == "(hidden: set, 47 characters)"
    assert items["redis_url"]["value"] == "redis://user:***@redis:6379/0"
    assert items["cli.url"]["value"] == "http://0.0.0.0:9100"
    assert items["cli.api_key"]["value"] is None

    text = CliRunner().invoke(app, ["config", "show", "-c", str(config)], env=env).stdout
    assert secret not in text and "hunter2" not in text
    assert text.splitlines()[0] == f"config file: {config}"
    port_line = next(line for line in text.splitlines() if line.startswith("port "))
    assert port_line.split() == ["port", "9100", "env", "DORMANT_PORT"]


def test_config_show_refuses_a_bad_file_as_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["config", "show", "--json", "-c", str(tmp_path / "missing.toml")]
    )
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"]["message"].endswith("missing.toml does not exist")


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
        ("https://example.org/dormant/v1", "https://example.org/dormant"),
        (" http://h:1 ", "http://h:1"),
    ],
)
def test_base_url(given: str, used: str) -> None:
    assert base_url(given) == used


@pytest.mark.parametrize("given", ["127.0.0.1:8080", "ftp://h", "http://h/v1?x=1", "", "/v1"])
def test_base_url_says_what_it_wants(given: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape("like http://127.0.0.1:8080")):
        base_url(given)
