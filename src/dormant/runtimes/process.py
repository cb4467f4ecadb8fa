"""The ``process`` runtime: each session is a local process group.

Sleep stops the group, wake starts the command again in the same work directory (on the host
port dormant gives ``start``, which may differ from the last one), delete removes the group and
the directory. Every process carries ``DORMANT_RUNTIME_ROOT``, ``DORMANT_CONTAINER``
and ``DORMANT_SESSION`` in its environment and its pid and start time are recorded on disk, so a
restarted dormant finds its processes, also ones whose directory is gone (orphans).

A spec's ``user`` runs the session as that host user (dormant must be root, unless it is its own
user): the process gets the user's uid, primary gid and no supplementary groups, ``HOME``,
``USER`` and ``LOGNAME`` of that user, and owns its work directory (mode 0700). Only ``PATH``,
``HOME``, ``LANG``, ``LC_ALL`` and ``TZ`` are taken from dormant's own environment.

A spec's volume (a template's ``home``) is a directory kept apart from the sessions' work
directories (``users_root/NAME/home``, its labels in ``users_root/NAME/volume.json``): the
session gets it as ``HOME`` and ``{home}``; ``retain="session"`` ones are removed with the
session, ``retain="user"`` ones by dormant's retention job (:meth:`ProcessRuntime.remove_volume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from dormant.clock import SystemClock
from dormant.errors import InvalidInput, RuntimeFailure
from dormant.runtimes.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    RETAIN_SESSION,
    SESSION_LABEL,
    ContainerInfo,
    ContainerSpec,
    ContainerStatus,
    Endpoint,
    Runtime,
    VolumeInfo,
    VolumeMount,
    describe_owner,
    owner_mismatch,
)
from dormant.runtimes.stats import (
    ContainerStats,
    cpu_percent_between,
    proc_cpu_ticks,
    proc_rss_bytes,
)

DEFAULT_COMMAND = [
    sys.executable,
    "-m",
    "http.server",
    "{port}",
    "--bind",
    "127.0.0.1",
    "--directory",
    "{workdir}",
]
#: Seconds over which a stats read measures the session's CPU.
STATS_INTERVAL = 0.5
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_LOG_TAIL = 2000


def _proc_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot; ``None`` if the pid is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _proc_started_at(pid: int) -> datetime | None:
    """When the process started (wall clock), from its start ticks and the boot time."""
    ticks = _proc_start_time(pid)
    if ticks is None:
        return None
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), tz=UTC)


def _cpu_ticks(pids: set[int]) -> dict[int, int]:
    """``utime + stime`` of each live (non-zombie) process of ``pids``."""
    ticks = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if raw[raw.rindex(")") + 2 :].startswith("Z"):
            continue
        ticks[pid] = proc_cpu_ticks(raw)
    return ticks


def _rss(pid: int) -> int:
    try:
        return proc_rss_bytes(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def resolve_user(value: str) -> pwd.struct_passwd:
    """The host user ``value`` (a name or a uid) that dormant may run sessions as, or
    ``InvalidInput``: it must exist, and be dormant's own user unless dormant runs as root."""
    try:
        entry = pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except (KeyError, OverflowError):
        raise InvalidInput(f"user {value!r} does not exist on this host") from None
    me = os.geteuid()
    if me != 0 and entry.pw_uid != me:
        raise InvalidInput(
            f"user {value!r} needs dormant to run as root (it runs as uid {me}); "
            "remove user or run dormant as root"
        )
    return entry


def _permits(path: Path, user: pwd.struct_passwd, bits: int) -> bool:
    """Whether ``user`` (primary group only, as sessions run) has ``bits`` (an ``X_OK``-style
    mask of 4/2/1) on ``path`` by its mode bits."""
    if user.pw_uid == 0:
        return True
    st = path.stat()
    if st.st_uid == user.pw_uid:
        mode = (st.st_mode & stat.S_IRWXU) >> 6
    elif st.st_gid == user.pw_gid:
        mode = (st.st_mode & stat.S_IRWXG) >> 3
    else:
        mode = st.st_mode & stat.S_IRWXO
    return mode & bits == bits


def _unreachable(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to ``path`` (itself excluded) that ``user`` cannot
    enter, or ``None``."""
    for parent in reversed(path.parents):
        if parent.exists() and not _permits(parent, user, os.X_OK):
            return parent
    return None


def _as_user(user: pwd.struct_passwd) -> dict[str, Any]:
    """Arguments of ``create_subprocess_exec`` that run the child as ``user``."""
    if user.pw_uid == os.geteuid():
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class ProcessRuntime(Runtime):
    name: ClassVar[str] = "process"
    #: The port is only the command's argument: a start may use another one.
    ports_follow_start: ClassVar[bool] = True

    def __init__(self, root: str | Path, users_root: str | Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        #: Where volumes (home directories) live: default ``.volumes`` inside ``root``.
        self.users_root = Path(users_root or self.root / ".volumes").resolve()
        self._children: dict[str, asyncio.subprocess.Process] = {}

    # layout ---------------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise InvalidInput(f"invalid container name {name!r}")
        return self.root / name

    def _volume_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise InvalidInput(f"invalid volume name {name!r}")
        return self.users_root / name

    def _read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _alive_pid(self, name: str) -> int | None:
        record = self._read_json(self._dir(name) / "pid.json")
        if record is None:
            return None
        pid = int(record["pid"])
        if _proc_start_time(pid) != record.get("start_time"):
            return None  # exited, or the pid was reused by something else
        return pid

    def _marked_pids(self, name: str | None = None) -> dict[int, str]:
        """Processes whose environment marks them as ours (optionally for one container)."""
        found: dict[int, str] = {}
        root = str(self.root)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            env = _proc_environ(int(entry.name))
            if env.get("DORMANT_RUNTIME_ROOT") != root:
                continue
            container = env.get("DORMANT_CONTAINER", "")
            if (name is None or container == name) and _proc_start_time(int(entry.name)):
                found[int(entry.name)] = container
        return found

    # contract -------------------------------------------------------------------------------

    async def check(self, spec: ContainerSpec) -> None:
        if spec.user is not None:
            self._check_user(spec, spec.user)

    def _check_user(self, spec: ContainerSpec, name: str) -> None:
        """That ``name`` may be used, and can reach the work directories and run the command
        (by file modes): else a session would only fail when started."""
        user = resolve_user(name)
        if (blocked := _unreachable(self.root / "x", user)) is not None:
            raise InvalidInput(
                f"user {name!r} cannot enter {blocked}, on the way to the sessions' "
                f"directories in {self.root}; allow it (chmod o+x) or move the data directory"
            )
        program = (spec.command or DEFAULT_COMMAND)[0]
        if "{" in program:
            return
        search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(program, path=search)
        if found is None:
            return  # start fails with "cannot run", as it does without a user
        for path in dict.fromkeys((Path(os.path.abspath(found)), Path(found).resolve())):
            blocked = _unreachable(path, user)
            if blocked is not None or not _permits(path, user, os.X_OK):
                raise InvalidInput(
                    f"user {name!r} cannot run {found} (no access to {blocked or path}); "
                    "give the template a command that it can run"
                )

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        if spec.port is None:
            raise InvalidInput("the process runtime needs a port for every session")
        directory = self._dir(spec.name)
        existing = self._read_json(directory / "spec.json")
        if existing is not None and existing.get("session_id") != spec.session_id:
            raise RuntimeFailure(
                f"{spec.name} already exists for session {existing.get('session_id')}"
            )
        user = resolve_user(spec.user) if spec.user is not None else None
        for volume in spec.volumes:  # refused before anything else is made
            self._ensure_volume(volume, user)
        work = directory / "work"
        made = not work.exists()
        work.mkdir(parents=True, exist_ok=True)
        if user is not None:
            directory.chmod(0o711)  # the user enters it, and reads nothing else in it
            os.chown(work, user.pw_uid, user.pw_gid)
            work.chmod(0o700)
        data = asdict(spec)
        data["created_at"] = spec.labels.get("dormant.created", "")
        self._write_spec(directory, data)
        state: dict[str, Any] = {"dir": str(directory)}
        if made:
            state["made"] = True
        session_volumes = [v.name for v in spec.volumes if v.retain == RETAIN_SESSION]
        if session_volumes:
            state["session_volumes"] = session_volumes
        return state

    def _ensure_volume(self, volume: VolumeMount, user: pwd.struct_passwd | None) -> None:
        """The volume's directory, made with its labels if missing; refused if it exists
        for another owner."""
        directory = self._volume_dir(volume.name)
        meta = self._read_json(directory / "volume.json")
        if meta is None:
            self.users_root.mkdir(parents=True, exist_ok=True)
            (directory / "home").mkdir(parents=True, exist_ok=True)
            # its creation time is the file's: written once, never again
            meta = {"name": volume.name, "labels": dict(volume.labels)}
            tmp = directory / "volume.json.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.replace(directory / "volume.json")
        labels = meta.get("labels") or {}
        if differ := owner_mismatch(volume, labels):
            raise RuntimeFailure(
                f"volume {volume.name} exists and {describe_owner(labels)}; not using it "
                f"(labels that differ: {', '.join(differ)})"
            )
        home = directory / "home"
        home.mkdir(exist_ok=True)
        if user is not None:
            directory.chmod(0o711)
            os.chown(home, user.pw_uid, user.pw_gid)
            home.chmod(0o700)

    def _home_of(self, spec: dict[str, Any]) -> Path | None:
        """The home directory of a session (its volume mounted at ``""``), if any."""
        for volume in spec.get("volumes") or []:
            if isinstance(volume, dict) and volume.get("target") == "":
                return self._volume_dir(str(volume["name"])) / "home"
        return None

    def _write_spec(self, directory: Path, data: dict[str, Any]) -> None:
        tmp = directory / "spec.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the env
        with open(fd, "w") as out:
            out.write(json.dumps(data))
        tmp.replace(directory / "spec.json")

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        directory = self._dir(name)
        spec = self._read_json(directory / "spec.json")
        if spec is None:
            raise RuntimeFailure(f"{name} does not exist (create it first)")
        wanted = state.get("port")
        if wanted is not None and wanted != spec["port"]:
            # A new host port (dormant released the old one while the session slept).
            spec = {**spec, "port": int(wanted)}
            self._write_spec(directory, spec)
        if spec["port"] is None:
            raise RuntimeFailure(f"{name} has no port to serve on")
        port = int(spec["port"])
        timeout = float(spec["start_timeout"])
        endpoint = Endpoint("127.0.0.1", port).as_dict()
        pid = self._running_pid(name)
        if pid is not None and self._port_of(name, pid) not in (None, port):
            await self.stop(name, {})  # running on another port: restarted on this one
            pid = None
        # Already running (also when dormant crashed before it could record the pid): adopt it,
        # but still only call it started once it serves.
        if pid is not None:
            await self._wait_ready(
                name, lambda: None if self._running_pid(name) else -1, port, timeout
            )
            return {**state, "pid": pid, "endpoint": endpoint}
        workdir = directory / "work"
        home = self._home_of(spec)
        if home is not None and not home.is_dir():
            raise RuntimeFailure(f"{name}: its home directory {home} is missing (create again)")
        values = {
            "port": str(port),
            "workdir": str(workdir),
            "session": spec["session_id"],
            "home": str(home or workdir),
        }
        command = [part.format(**values) for part in (spec["command"] or DEFAULT_COMMAND)]
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        run_as: dict[str, Any] = {}
        if spec.get("user") is not None:
            try:
                user = resolve_user(str(spec["user"]))
            except InvalidInput as exc:
                raise RuntimeFailure(str(exc)) from None
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            run_as = _as_user(user)
        if home is not None:
            env["HOME"] = str(home)
        env.update(spec["env"])
        env.update(
            PORT=str(port),
            DORMANT_SESSION=spec["session_id"],
            DORMANT_CONTAINER=name,
            DORMANT_RUNTIME_ROOT=str(self.root),
            # Which deployment owns it, also for a process whose directory is gone.
            DORMANT_DEPLOYMENT=str(spec["labels"].get(DEPLOYMENT_LABEL, "")),
        )
        fd = os.open(directory / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        log = open(fd, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                **run_as,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot run {command[0]!r}: {exc.strerror}") from exc
        finally:
            log.close()
        self._children[name] = proc
        record = {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "port": port}
        (directory / "pid.json").write_text(json.dumps(record))
        await self._wait_ready(name, lambda: proc.returncode, port, timeout)
        return {**state, "pid": proc.pid, "endpoint": endpoint}

    def _port_of(self, name: str, pid: int) -> int | None:
        """The port the running process ``pid`` was started on (``None``: unknown)."""
        record = self._read_json(self._dir(name) / "pid.json") or {}
        if record.get("pid") == pid and isinstance(record.get("port"), int):
            return int(record["port"])
        value = _proc_environ(pid).get("PORT", "")
        return int(value) if value.isdigit() else None

    def _running_pid(self, name: str) -> int | None:
        """The recorded pid if alive, else any live process carrying this container's marks."""
        if (pid := self._alive_pid(name)) is not None:
            return pid
        marked = self._marked_pids(name)
        return min(marked) if marked else None

    async def _wait_ready(
        self, name: str, exit_code: Callable[[], int | None], port: int, timeout: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if (code := exit_code()) is not None:
                raise RuntimeFailure(
                    f"process exited with code {code} while starting; "
                    f"last output: {self._log_tail(name)}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                pass
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            if loop.time() > deadline:
                await self.stop(name, {})
                raise RuntimeFailure(
                    f"process did not answer on port {port} within {timeout:g}s; "
                    f"last output: {self._log_tail(name)}"
                )
            await asyncio.sleep(0.02)

    def _log_tail(self, name: str) -> str:
        try:
            data = (self._dir(name) / "log.txt").read_bytes()[-_LOG_TAIL:]
        except FileNotFoundError:
            return "(no output)"
        return data.decode(errors="replace").strip() or "(no output)"

    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        spec = self._read_json(self._dir(name) / "spec.json") or {}
        timeout = float(spec.get("stop_timeout", 5.0))
        pids = set(self._marked_pids(name))
        if (pid := self._alive_pid(name)) is not None:
            pids.add(pid)
        await self._terminate(pids, timeout)
        self._children.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            (self._dir(name) / "pid.json").unlink()
        return {k: v for k, v in state.items() if k != "pid"}

    async def _terminate(self, pids: set[int], timeout: float) -> None:
        if not pids:
            return
        groups = set()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                groups.add(os.getpgid(pid))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for target in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(target, sig)
            for pid in pids:  # members that left the group still carry the mark
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (timeout if sig == signal.SIGTERM else 5.0)
            while loop.time() < deadline:
                if all(_proc_start_time(p) is None for p in pids):
                    return
                await asyncio.sleep(0.02)
        still = [p for p in pids if _proc_start_time(p) is not None]
        if still:
            raise RuntimeFailure(f"processes {still} survived SIGKILL")

    async def remove(self, name: str, state: dict[str, Any]) -> None:
        await self.stop(name, state)
        directory = self._dir(name)
        if directory.exists():
            await asyncio.to_thread(shutil.rmtree, directory, True)
        volumes = state.get("session_volumes")
        if isinstance(volumes, list):
            for volume in volumes:
                await self.remove_volume(str(volume))

    async def list_volumes(self) -> list[VolumeInfo]:
        if not self.users_root.is_dir():
            return []
        infos = []
        for entry in sorted(self.users_root.iterdir()):
            meta = self._read_json(entry / "volume.json") if entry.is_dir() else None
            if meta is None or not isinstance(meta.get("labels"), dict):
                continue  # not a volume dormant finished making
            labels = {str(k): str(v) for k, v in meta["labels"].items()}
            try:
                made = datetime.fromtimestamp((entry / "volume.json").stat().st_mtime, tz=UTC)
            except FileNotFoundError:
                continue  # removed meanwhile
            if labels.get(MANAGED_LABEL) == "true":
                infos.append(VolumeInfo(entry.name, labels, made))
        return infos

    async def remove_volume(self, name: str) -> bool:
        directory = self._volume_dir(name)
        home = str(directory / "home")
        for pid in self._marked_pids():
            if _proc_environ(pid).get("HOME") == home:
                return False  # a session's process runs with it
        if directory.exists():
            # the labels last: a half-removed volume is still listed, and removed again
            await asyncio.to_thread(shutil.rmtree, directory / "home", True)
            await asyncio.to_thread(shutil.rmtree, directory, True)
        return True

    async def stats(self, name: str, state: dict[str, Any]) -> ContainerStats | None:
        """CPU from ``utime + stime`` of every process of the session (its children carry the
        mark too) over ``STATS_INTERVAL``, memory as the sum of their VmRSS. No limit: the
        process runtime enforces none."""
        pids = set(self._marked_pids(name))
        if (pid := self._alive_pid(name)) is not None:
            pids.add(pid)
        if not pids:
            return None
        loop = asyncio.get_running_loop()
        before, started = _cpu_ticks(pids), loop.time()
        await asyncio.sleep(STATS_INTERVAL)
        after, ended = _cpu_ticks(pids), loop.time()
        alive = set(after)
        if not alive:
            return None  # stopped meanwhile
        # Only processes seen both times count: one that left took its ticks with it.
        used = sum(max(after[p] - before[p], 0) for p in alive if p in before)
        seconds = used / os.sysconf("SC_CLK_TCK")
        cpu = cpu_percent_between(int(seconds * 1e9), ended - started)
        return ContainerStats(cpu, sum(_rss(p) for p in alive), None, SystemClock().now())

    async def inspect(self, name: str) -> ContainerInfo | None:
        return self._inspect(name, None)

    def _inspect(self, name: str, marks: dict[int, str] | None) -> ContainerInfo | None:
        """``marks``: a /proc scan already made (``pid -> container``), to scan once per list."""
        if marks is None:
            marks = self._marked_pids(name)
        marked = sorted(pid for pid, container in marks.items() if container == name)
        spec = self._read_json(self._dir(name) / "spec.json")
        if spec is None:
            return self._stray_info(name, marked[0]) if marked else None
        pid = self._alive_pid(name) or (marked[0] if marked else None)
        return ContainerInfo(
            name=name,
            labels=dict(spec["labels"]),
            status=ContainerStatus.RUNNING if pid else ContainerStatus.STOPPED,
            created_at=_parse_time(spec.get("created_at")),
            detail={"pid": pid, "port": spec["port"]},
        )

    def _stray_info(self, name: str, pid: int) -> ContainerInfo:
        env = _proc_environ(pid)
        labels = {MANAGED_LABEL: "true"}
        if "DORMANT_SESSION" in env:
            labels[SESSION_LABEL] = env["DORMANT_SESSION"]
        if env.get("DORMANT_DEPLOYMENT"):
            labels[DEPLOYMENT_LABEL] = env["DORMANT_DEPLOYMENT"]
        started = _proc_started_at(pid)  # a stray's age: when its process started
        return ContainerInfo(name, labels, ContainerStatus.RUNNING, started, {"pid": pid})

    async def list_managed(self) -> list[ContainerInfo]:
        infos: dict[str, ContainerInfo] = {}
        marks = self._marked_pids()
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue  # .volumes (and nothing dormant names a container so)
            if entry.is_dir() and (info := self._inspect(entry.name, marks)) is not None:
                infos[entry.name] = info
        for pid, name in marks.items():
            if name and name not in infos:
                infos[name] = self._stray_info(name, pid)
        return list(infos.values())


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
