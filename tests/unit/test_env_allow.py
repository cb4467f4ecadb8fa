"""What a create request may put in a session's environment (issue 8: an allow-list), and the
template settings behind it (``env_allow``, ``user``) as the configuration file gives them."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from dormant.config import load_settings
from dormant.engine.templates import Template, is_host_controlled
from dormant.errors import InvalidInput

#: Each of these, set by a request, runs code on the host or changes what runs.
HOST_CONTROLLED = [
    "PYTHONWARNINGS",
    "BROWSER",
    "LD_PRELOAD",
    "PYTHONPATH",
    "NODE_OPTIONS",
    "BASH_ENV",
    "PATH",
    "HOME",
    "GIT_SSH_COMMAND",
    "GIT_EXTERNAL_DIFF",
    "GIT_CONFIG_COUNT",
    "PERL5OPT",
    "RUBYOPT",
    "JAVA_TOOL_OPTIONS",
    "XDG_CONFIG_HOME",
    "LESSOPEN",
    "OPENSSL_CONF",
    "ld_preload",  # case does not matter
]


@pytest.mark.parametrize("name", HOST_CONTROLLED)
def test_host_controlled_names_are_refused_even_when_everything_is_allowed(name: str) -> None:
    tpl = Template(name="open", env_allow=("*",))
    with pytest.raises(InvalidInput) as caught:
        tpl.check_request_env({name: "x"})
    message = str(caught.value)
    assert message == (
        f"env {name!r} is never taken from a request: it controls how the host loads, "
        "finds or runs programs"
    )
    assert is_host_controlled(name) is True
    assert tpl.session_env({name: "x", "MODE": "fast"}) == {"MODE": "fast"}


@pytest.mark.parametrize("name", ["PORT", "DORMANT_SESSION", "DORMANT_RUNTIME_ROOT"])
def test_names_dormant_sets_are_reserved(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Template(name="open", env_allow=("*",)).check_request_env({name: "1"})
    assert str(caught.value) == f"env {name!r} is reserved: dormant sets it for every session"


def test_listed_name_passes_and_unlisted_one_is_refused() -> None:
    tpl = Template(name="app", env_allow=("MODE",))
    tpl.check_request_env({"MODE": "fast"})
    with pytest.raises(InvalidInput) as caught:
        tpl.check_request_env({"MODE": "fast", "COLOUR": "red"})
    assert str(caught.value) == "env 'COLOUR' is not allowed by template 'app' (env_allow: MODE)"
    # names are case-sensitive, like the variables themselves
    with pytest.raises(InvalidInput):
        tpl.check_request_env({"mode": "fast"})


def test_patterns_allow_a_family_of_names() -> None:
    tpl = Template(name="git", env_allow=("GIT_*", "LOG_LEVEL?"))
    tpl.check_request_env({"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org"})
    tpl.check_request_env({"LOG_LEVEL2": "debug"})
    for refused in ("GIT_SSH_COMMAND", "GIT_CONFIG_KEY_0", "GIT_PROXY_COMMAND", "GITHUB_TOKEN"):
        with pytest.raises(InvalidInput) as caught:
            tpl.check_request_env({refused: "x"})
        assert repr(refused) in str(caught.value)


def test_nothing_is_allowed_by_default() -> None:
    tpl = Template(name="default")
    assert tpl.env_allow == ()
    tpl.check_request_env({})
    with pytest.raises(InvalidInput) as caught:
        tpl.check_request_env({"MODE": "fast"})
    assert str(caught.value) == (
        "env 'MODE' is not allowed by template 'default' (env_allow: none)"
    )


def test_the_operators_template_env_is_trusted_and_request_env_filtered() -> None:
    tpl = Template(name="app", env={"PYTHONUNBUFFERED": "1", "MODE": "slow"}, env_allow=("MODE",))
    # a session stored before the rule existed: what is refused now does not reach the spec
    stored = {"MODE": "fast", "PYTHONWARNINGS": "ignore::antigravity.x", "OTHER": "1"}
    assert tpl.session_env(stored) == {"PYTHONUNBUFFERED": "1", "MODE": "fast"}


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "dormant.toml"
    path.write_text(body)
    return path


def test_config_gives_templates_env_allow_and_user(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[templates.app]\nenv_allow = ["MODE", "GIT_*"]\nuser = "nobody"\n'
        'env = {PYTHONUNBUFFERED = "1"}\n',
    )
    tpl = load_settings(path, environ={}).catalog().template("app")
    assert tpl.env_allow == ("MODE", "GIT_*")
    assert tpl.user == "nobody"
    assert tpl.env == {"PYTHONUNBUFFERED": "1"}
    default = load_settings(path, environ={}).catalog().template(None)
    assert (default.env_allow, default.user) == ((), None)


def test_user_may_be_a_uid(tmp_path: Path) -> None:
    uid = pwd.getpwnam("nobody").pw_uid
    path = write_config(tmp_path, f'[templates.app]\nuser = "{uid}"\n')
    assert load_settings(path, environ={}).catalog().template("app").user == str(uid)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('env_allow = ["GIT_[A-Z]*"]', "env_allow entry 'GIT_[A-Z]*' must be a variable name"),
        ('env_allow = ["A B"]', "env_allow entry 'A B'"),
        ('env_allow = [""]', "env_allow entry ''"),
        ('user = "no-such-user-dormant"', "user 'no-such-user-dormant' does not exist"),
        ('user = "4000000000"', "user '4000000000' does not exist"),
        (
            'runtime = "docker"\nimage = "alpine"\nport = 80\nuser = "a b"',
            "user 'a b' must be a user name or uid",
        ),
    ],
)
def test_config_refuses_bad_env_allow_and_user(tmp_path: Path, body: str, words: str) -> None:
    path = write_config(tmp_path, f"[templates.app]\n{body}\n")
    with pytest.raises(InvalidInput) as caught:
        load_settings(path, environ={})
    assert str(caught.value).startswith("invalid configuration: templates.app")
    assert words in str(caught.value)


def test_config_refuses_another_user_when_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = 1234
    monkeypatch.setattr(os, "geteuid", lambda: me)
    path = write_config(tmp_path, '[templates.app]\nuser = "nobody"\n')
    with pytest.raises(InvalidInput) as caught:
        load_settings(path, environ={})
    assert "user 'nobody' needs dormant to run as root (it runs as uid 1234)" in str(caught.value)
    # its own user is fine (nothing changes)
    monkeypatch.setattr(os, "geteuid", lambda: pwd.getpwnam("nobody").pw_uid)
    assert load_settings(path, environ={}).catalog().template("app").user == "nobody"
