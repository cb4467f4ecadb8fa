"""Session storage: volume names, template validation, the retention job, re-create notes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from dormant.config import load_settings
from dormant.engine import Engine, EngineSettings, PortAllocator, Template, default_catalog
from dormant.engine.retry import Backoff
from dormant.engine.volumes import (
    VOLUME_NAME,
    VolumeKeeper,
    VolumeTemplate,
    check_pattern,
    render_name,
    safe_value,
)
from dormant.errors import InvalidInput
from dormant.policy import State
from dormant.runtimes.base import RETAIN_SESSION, RETAIN_USER, VolumeInfo

from .conftest import Rig

# names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["alice", "Bob.Smith", "u_42", "A" * 48])
def test_plain_values_are_kept(value: str) -> None:
    assert safe_value(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a-b",
        "a/b",
        "../../etc",
        "x:/host,ro",
        "--rm",
        ".hidden",
        "ali ce",
        "ü",
        "a\0b",
        "a" * 49,
        "name\nwith newline",
    ],
)
def test_other_values_are_reduced_and_hashed(value: str) -> None:
    safe = safe_value(value)
    assert safe != value
    assert all(c.isalnum() or c in "_.-" for c in safe) and safe.isascii()
    reduced, _, digest = safe.rpartition("-")
    assert len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)
    assert "-" not in reduced and len(reduced) <= 24
    assert VOLUME_NAME.match(render_name("home-{tenant}-{user}", {"tenant": "t", "user": value}))


def test_different_values_never_share_a_name() -> None:
    values = ["a-b", "a_b", "a/b", "a.b", "a b", "A-B", "a--b", "ab", "a_b-0123456789abcdef"]
    names = {safe_value(v) for v in values}
    assert len(names) == len(values)
    # across placeholders too: the tenant/user split cannot be shifted
    pairs = [("x-y", "bob"), ("x", "y-bob"), ("x", "y_bob"), ("x_y", "bob")]
    rendered = {render_name("home-{tenant}-{user}", {"tenant": t, "user": u}) for t, u in pairs}
    assert len(rendered) == len(pairs)


def test_a_user_id_cannot_inject_path_or_option_syntax() -> None:
    name = render_name("home-{tenant}-{user}", {"tenant": "acme", "user": "../../etc:/x,rw"})
    assert "/" not in name and ":" not in name and "," not in name and ".." not in name[:6]
    assert name.startswith("home-acme-")


@pytest.mark.parametrize(
    ("pattern", "retain", "words"),
    [
        ("home-{user}", RETAIN_USER, "must contain {tenant}"),
        ("shared", RETAIN_USER, "must contain {tenant} and {user}"),
        ("scratch-{user}-{tenant}", RETAIN_SESSION, "must contain {session}"),
        ("home-{nope}-{tenant}-{user}", RETAIN_USER, "unknown placeholder {nope}"),
        ("home-{user!r}-{tenant}", RETAIN_USER, "unknown placeholder"),
        ("home-{user", RETAIN_USER, "volume name"),
        ("/abs-{tenant}-{user}", RETAIN_USER, "not a valid volume name"),
        ("home-{tenant}-{user}", "forever", "retain must be one of"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, retain: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_pattern(pattern, retain)
    assert words in str(caught.value)


# configuration ----------------------------------------------------------------------------------


def _docker(tmp_path: Path, body: str, top: str = "") -> Path:
    path = tmp_path / "dormant.toml"
    path.write_text(
        f'{top}\n[templates.ide]\nruntime = "docker"\nimage = "img:1"\nport = 8080\n{body}\n'
    )
    return path


def test_volumes_binds_user_workdir_shm_size_are_loaded(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "docs").mkdir(parents=True)
    path = _docker(
        tmp_path,
        'user = "1000:1000"\nworkdir = "/home/dev"\nshm_size = "256m"\n'
        'volumes = { "home-{tenant}-{user}" = "/home/dev", "scratch-{session}" = "/scratch", '
        '"cache-{session}-{user}" = { target = "/cache", retain = "session", read_only = true } }\n'
        f'binds = {{ "{shared}/docs/.." = "/shared", "{shared}/docs" = '
        '{ target = "/docs", read_only = false } }',
        top=f'bind_allow = ["{shared}"]',
    )
    tpl = load_settings(path, environ={}).catalog().template("ide")
    assert tpl.volumes == (
        VolumeTemplate("home-{tenant}-{user}", "/home/dev", RETAIN_USER),
        VolumeTemplate("scratch-{session}", "/scratch", RETAIN_SESSION),
        VolumeTemplate("cache-{session}-{user}", "/cache", RETAIN_SESSION, read_only=True),
    )
    assert [(b.source, b.target, b.read_only) for b in tpl.binds] == [
        (str(shared), "/shared", True),  # read-only by default, resolved
        (str(shared / "docs"), "/docs", False),
    ]
    assert (tpl.user, tpl.workdir, tpl.shm_size) == ("1000:1000", "/home/dev", "256m")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('volumes = { "home-{user}" = "/home/dev" }', "must contain {tenant}"),
        ('volumes = { "home-{tenant}-{user}" = "relative" }', "must be an absolute path"),
        ('volumes = { "home-{tenant}-{user}" = "/a/../b" }', "without '..'"),
        ('volumes = { "home-{tenant}-{user}" = { target = "/h", retain = "ever" } }', "retain"),
        ('volumes = { "a-{tenant}-{user}" = "/h", "b-{session}" = "/h" }', "both mounted at /h"),
        ('volumes = { "h-{session}" = "/tmp" }\ntmpfs = { "/tmp" = "size=1m" }', "both mounted"),
        ('user = "root; rm -rf /"', "must be a user name or uid"),
        ('workdir = "home"', "workdir must be an absolute path"),
        ('shm_size = "lots"', "shm_size must look like 64m"),
        ('shm_size = "100g"', "shm_size must be between 1m and 64g"),
        ('home = "user"', "home is for the process runtime"),
    ],
)
def test_bad_docker_storage_settings_are_refused_at_load(
    tmp_path: Path, body: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_settings(_docker(tmp_path, body), environ={})
    assert "templates.ide" in str(caught.value)
    assert words in str(caught.value)


def test_a_bind_outside_the_allow_list_is_refused_after_resolving(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "escape").symlink_to("/etc")
    allow = f'bind_allow = ["{shared}"]'
    for source, resolved in [
        ("/etc", "/etc"),
        (f"{shared}/../../etc", os.path.realpath(f"{shared}/../../etc")),
        (f"{shared}/escape", "/etc"),
        (f"{shared}-sibling", f"{shared}-sibling"),
    ]:
        path = _docker(tmp_path, f'binds = {{ "{source}" = "/x" }}', top=allow)
        with pytest.raises(InvalidInput) as caught:
            load_settings(path, environ={})
        message = str(caught.value)
        assert message.startswith("templates.ide.binds: host path"), message
        assert f"(resolved: {resolved})" in message and "bind_allow" in message
    # without an allow-list nothing may be bound
    with pytest.raises(InvalidInput, match="DORMANT_BIND_ALLOW: none"):
        load_settings(_docker(tmp_path, f'binds = {{ "{shared}" = "/x" }}'), environ={})


def test_bind_allow_and_volume_retention_settings(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        environ={"DORMANT_BIND_ALLOW": "/srv/a, /srv/b/../c", "DORMANT_VOLUME_RETENTION": "1s"},
    )
    assert settings.bind_allow == ["/srv/a", "/srv/c"]
    assert settings.volume_retention == 1.0
    assert load_settings(None, environ={}).volume_retention == 30 * 86400
    with pytest.raises(InvalidInput, match="would allow every host path"):
        load_settings(None, environ={"DORMANT_BIND_ALLOW": "/srv/.."})
    with pytest.raises(InvalidInput, match="must be an absolute host path"):
        load_settings(None, environ={"DORMANT_BIND_ALLOW": "srv"})
    with pytest.raises(InvalidInput, match="volume_retention must not exceed retention"):
        load_settings(None, environ={"DORMANT_VOLUME_RETENTION": "31d"})


def test_process_templates_get_a_home_not_volumes(tmp_path: Path) -> None:
    path = tmp_path / "dormant.toml"
    path.write_text('[templates.nb]\nhome = "user"\n')
    assert load_settings(path, environ={}).catalog().template("nb").home == "user"
    for body in ('volumes = { "h-{tenant}-{user}" = "/h" }', 'workdir = "/x"', 'home = "ever"'):
        path.write_text(f"[templates.nb]\n{body}\n")
        with pytest.raises(InvalidInput, match=r"templates\.nb"):
            load_settings(path, environ={})


# the engine: mounts, re-create notes, retention -----------------------------------------------

_IDE = Template(
    name="ide",
    runtime="process",  # the FakeRuntime is registered as "process"
    volumes=(
        VolumeTemplate("home-{tenant}-{user}", "/home/dev", RETAIN_USER),
        VolumeTemplate("scratch-{session}", "/scratch", RETAIN_SESSION),
    ),
)


def _engine(rig: Rig) -> Engine:
    base = default_catalog()
    catalog = dataclasses.replace(base, templates={**base.templates, "ide": _IDE})
    return Engine(
        rig.store,
        {"process": rig.runtime},
        catalog,
        rig.clock,
        PortAllocator(range(30000, 30050), rig.store.used_ports),
        EngineSettings(instance_id="test-1", backoff=Backoff(base=0.001, cap=0.005, attempts=4)),
    )


def _keeper(rig: Rig, engine: Engine, retention: float = 3600) -> VolumeKeeper:
    return VolumeKeeper(
        rig.store,
        engine.runtimes,
        rig.clock,
        retention=retention,
        settle=30,
        deployment=engine.ensure_deployment,
    )


async def _settle(engine: Engine) -> None:
    for _ in range(10):
        await engine.drain()
        if not await engine.tick() and not engine._tasks:
            return


async def _session(engine: Engine, user: str, template: str = "ide") -> str:
    record = await engine.create_session(tenant="acme", user_id=user, template=template)
    await _settle(engine)
    return record.id


async def _delete(engine: Engine, sid: str) -> None:
    await engine.delete(sid)
    await _settle(engine)


async def test_volumes_are_made_labelled_and_session_ones_go_with_the_session(rig: Rig) -> None:
    engine = _engine(rig)
    await engine.ensure_deployment()
    sid = await _session(engine, "gina/../x")
    spec = rig.runtime.containers[f"dormant-{sid}"].spec
    home, scratch = spec.volumes
    assert home.name == f"home-acme-{safe_value('gina/../x')}" and home.target == "/home/dev"
    assert scratch.name == f"scratch-{safe_value(sid)}"
    assert home.labels == {
        "dormant.managed": "true",
        "dormant.deployment": engine.deployment_id,
        "dormant.tenant": "acme",
        "dormant.user": "gina/../x",
        "dormant.template": "ide",
        "dormant.retain": "user",
    }
    assert (
        scratch.labels["dormant.session"] == sid and scratch.labels["dormant.retain"] == "session"
    )
    assert set(rig.runtime.volumes) == {home.name, scratch.name}
    await _delete(engine, sid)
    assert set(rig.runtime.volumes) == {home.name}  # the user's volume stays


async def test_a_wake_that_recreates_the_container_says_so(rig: Rig) -> None:
    engine = _engine(rig)
    await engine.ensure_deployment()
    for template, words in [
        ("default", "re-created: container was missing; anonymous data lost"),
        ("ide", "re-created: container was missing; volumes kept (home-acme-hal, scratch-"),
    ]:
        sid = await _session(engine, "hal", template)
        await engine.sleep(sid)
        await _settle(engine)
        await engine.wake(sid)  # the container is there: nothing to say
        await _settle(engine)
        await engine.sleep(sid)
        await _settle(engine)
        del rig.runtime.containers[f"dormant-{sid}"]  # lost while asleep
        await engine.wake(sid)
        await _settle(engine)
        record = await rig.store.get_session(sid)
        assert record is not None and record.state is State.RUNNING
        assert "made" not in record.runtime_state
        notes = [e.reason for e in await rig.store.list_events(sid) if e.code == "re-created"]
        assert len(notes) == 1 and notes[0].startswith(words), notes
        await _delete(engine, sid)


async def test_retention_removes_user_volumes_only_after_the_last_session_ends(rig: Rig) -> None:
    engine = _engine(rig)
    keeper = _keeper(rig, engine, retention=3600)
    first = await _session(engine, "ivy")
    second = await _session(engine, "ivy")
    other = await _session(engine, "jon")
    home = "home-acme-ivy"
    by_name = {v.name: v for v in await keeper.survey()}
    assert set(by_name[home].in_use_by) == {first, second}
    assert by_name[home].expires_at is None and not by_name[home].expired

    await _delete(engine, first)
    rig.clock.advance(7200)
    assert await keeper.prune() == []  # ivy still has a live session
    await _delete(engine, second)
    ended = rig.clock.now()
    rig.clock.advance(3599)
    status = {v.name: v for v in await keeper.survey()}[home]
    assert status.expires_at is not None and not status.expired
    assert (status.expires_at - ended).total_seconds() == 3600
    rig.clock.advance(1)
    dry = await keeper.prune(dry_run=True)
    assert [(v.name, v.outcome) for v in dry] == [(home, "would remove")]
    assert home in rig.runtime.volumes
    done = await keeper.prune()
    assert [(v.name, v.outcome) for v in done] == [(home, "removed")]
    # jon's volumes, and another deployment's, are untouched
    rig.runtime.volumes["home-other-x"] = VolumeInfo(
        "home-other-x",
        {
            "dormant.managed": "true",
            "dormant.deployment": "someone-else",
            "dormant.retain": "user",
            "dormant.tenant": "other",
            "dormant.user": "x",
        },
    )
    assert await keeper.prune() == []
    assert set(rig.runtime.volumes) == {
        "home-acme-jon",
        f"scratch-{safe_value(other)}",
        "home-other-x",
    }


async def test_a_new_session_brings_the_users_volume_back_into_use(rig: Rig) -> None:
    engine = _engine(rig)
    keeper = _keeper(rig, engine, retention=60)
    sid = await _session(engine, "kim")
    await _delete(engine, sid)
    rig.clock.advance(30)
    again = await _session(engine, "kim")
    rig.clock.advance(3600)
    assert await keeper.prune() == []
    assert "home-acme-kim" in rig.runtime.volumes
    assert {v.name: v for v in await keeper.survey()}["home-acme-kim"].in_use_by == (again,)


async def test_retention_never_removes_on_a_failed_read(rig: Rig) -> None:
    engine = _engine(rig)
    keeper = _keeper(rig, engine, retention=0)
    sid = await _session(engine, "lea")
    await _delete(engine, sid)
    rig.clock.advance(3600)
    rig.runtime.fail("list_volumes", InvalidInput("listing broke"))
    assert await keeper.prune() == []
    assert keeper.skipped_reads == 1 and "home-acme-lea" in rig.runtime.volumes
    original = rig.store.list_sessions

    async def broken(**kw: object) -> object:
        from dormant.errors import TemporaryError

        raise TemporaryError("store down")

    rig.store.list_sessions = broken  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(Exception, match="store down"):
            await keeper.prune()
    finally:
        rig.store.list_sessions = original  # type: ignore[method-assign]
    assert "home-acme-lea" in rig.runtime.volumes
    assert [v.outcome for v in await keeper.prune()] == ["removed"]


async def test_session_volumes_left_by_a_crash_are_removed(rig: Rig) -> None:
    engine = _engine(rig)
    keeper = _keeper(rig, engine)
    sid = await _session(engine, "max")
    scratch = f"scratch-{safe_value(sid)}"
    # the container was removed, but not its session volume (a crash in between)
    rig.runtime.fail("remove", InvalidInput("boom"))
    await engine.delete(sid)
    await _settle(engine)
    rig.runtime.containers.clear()
    record = await rig.store.get_session(sid)
    assert record is not None
    await rig.store.update_session(
        record.replace(state=State.DELETED, deleted_at=rig.clock.now()), record.version
    )
    rig.clock.advance(10)
    assert scratch not in {v.name for v in await keeper.prune()}  # not settled yet
    rig.clock.advance(60)
    assert [(v.name, v.outcome) for v in await keeper.prune()] == [(scratch, "removed")]
    assert set(rig.runtime.volumes) == {"home-acme-max"}
