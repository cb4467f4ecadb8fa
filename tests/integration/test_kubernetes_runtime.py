"""The kubernetes runtime beyond the contract suite, on kmock's emulator of the API with a fake
kubelet (``kubelet.py``): the engine and the reconciler repairing a pod deleted behind dormant's
back (woken by the pod watch), claims per user that outlive sessions, label values made valid,
kubeconfig authentication, and errors translated at the boundary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dormant.clock import SystemClock
from dormant.engine import Catalog, Engine, EngineSettings, PortAllocator, Template
from dormant.engine.retry import Backoff
from dormant.engine.volumes import VolumeTemplate
from dormant.errors import InvalidInput, RuntimeFailure, RuntimeUnavailable, TemporaryError
from dormant.policy import PRESETS, State
from dormant.reconciler import Reconciler
from dormant.runtimes import BindMount, ContainerSpec, ContainerStatus, Resources, VolumeMount
from dormant.runtimes.kubernetes import KubernetesRuntime
from dormant.runtimes.kubernetes_pods import endpoint_of
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async

from .kubelet import Cluster
from .podman import IMAGE, free_port, http_get

pytestmark = pytest.mark.integration

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    started = await Cluster().start()
    try:
        yield started
    finally:
        left = await started.close()
    assert left == [], f"pods still served: {left}"


@pytest.fixture
async def runtime(cluster: Cluster) -> AsyncIterator[KubernetesRuntime]:
    rt = KubernetesRuntime(cluster.namespace, url=cluster.url)
    try:
        yield rt
    finally:
        for name in cluster.objects("podtemplates") | cluster.objects("pods"):
            await rt.remove(name, {})
        await rt.close()


def spec(session: str, **extra: object) -> ContainerSpec:
    labels = {"dormant.managed": "true", "dormant.session": session, "dormant.user": "alice"}
    base = ContainerSpec(
        name=f"dormant-{session}",
        session_id=session,
        labels=labels,
        port=None,
        image=IMAGE,
        container_port=free_port(),
        start_timeout=10,
        stop_timeout=1,
    )
    return replace(base, **extra)  # type: ignore[arg-type]


# the engine and the reconciler ------------------------------------------------------------------


@dataclass
class Rig:
    engine: Engine
    store: SqlStore
    runtime: KubernetesRuntime
    reconciler: Reconciler

    async def state(self, sid: str) -> State:
        record = await self.store.get_session(sid)
        assert record is not None
        return record.state


@pytest.fixture
async def rig(tmp_path: Path, cluster: Cluster) -> AsyncIterator[Rig]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dormant.db'}"
    await upgrade_async(url)
    store = SqlStore(url)
    runtime = KubernetesRuntime(cluster.namespace, url=cluster.url)
    web = Template(
        name="web",
        runtime="kubernetes",
        image=IMAGE,
        port=free_port(),
        start_timeout=10,
        stop_timeout=1,
        volumes=(VolumeTemplate("home-{tenant}-{user}", "/home/user"),),
    )
    engine = Engine(
        store,
        {"kubernetes": runtime},
        Catalog(templates={"web": web}, policies=dict(PRESETS), default_template="web"),
        SystemClock(),
        PortAllocator(range(30300, 30400), store.used_ports),
        EngineSettings(instance_id="k8s-1", backoff=Backoff(base=0.05, cap=0.2, attempts=3)),
    )
    await engine.heartbeat()
    try:
        yield Rig(engine, store, runtime, Reconciler(engine, debounce=0.05, min_gap=0.05))
    finally:
        await engine.drain()
        for name in cluster.objects("podtemplates") | cluster.objects("pods"):
            await runtime.remove(name, {})
        for volume in await runtime.list_volumes():
            await runtime.remove_volume(volume.name)
        await runtime.close()
        await store.close()


async def _until(check: object, what: str) -> None:
    """Poll ``check`` (an async callable returning bool) until true; an event-driven wait with
    a generous bound, not a timed assertion."""
    for _ in range(400):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_a_pod_deleted_behind_dormants_back_is_noticed_by_the_watch_and_repaired(
    rig: Rig, cluster: Cluster
) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="alice")
    await rig.engine.drain()
    record = await rig.engine.get(record.id)
    assert record.state is State.RUNNING, record.error
    name = record.container_name
    first = await cluster.pod(name)
    assert first is not None and endpoint_of(first) is not None
    assert record.runtime_state["endpoint"] == endpoint_of(first).as_dict()  # type: ignore[union-attr]

    loop = asyncio.create_task(rig.reconciler.loop(interval=3600))  # only events wake it
    try:
        await asyncio.wait_for(rig.runtime.watching.wait(), 30)
        await _until(lambda: _true(rig.reconciler.wakeups >= 1), "the replayed pods' sweep")
        woken = rig.reconciler.wakeups
        await cluster.delete_pod(name)  # kubectl delete pod, behind dormant's back

        async def asleep() -> bool:
            return await rig.state(record.id) is State.SLEEPING

        await _until(asleep, "the session marked asleep")
        assert rig.reconciler.wakeups > woken  # the pod watch woke it, not the interval
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    events = await rig.store.list_events(record.id)
    assert any(e.code == "container_exited" for e in events)
    info = await rig.runtime.inspect(name)
    assert info is not None and info.status is ContainerStatus.STOPPED  # its template is kept

    await rig.engine.wake(record.id)  # a wake brings it back: a new pod, serving
    await rig.engine.drain()
    woke = await rig.engine.get(record.id)
    assert woke.state is State.RUNNING, woke.error
    assert cluster.kubelet is not None and cluster.kubelet.ran.count(name) == 2
    endpoint = woke.runtime_state["endpoint"]
    assert await asyncio.to_thread(http_get, endpoint["port"], "/", endpoint["host"]) == (
        f"pod {name}\n"
    )


async def _true(value: bool) -> bool:
    return value


async def test_a_users_claim_outlives_the_session_and_serves_the_next_one(
    rig: Rig, cluster: Cluster
) -> None:
    first = await rig.engine.create_session(tenant="t", user_id="Alice@Example.com")
    await rig.engine.drain()
    assert (await rig.engine.get(first.id)).state is State.RUNNING
    claims = cluster.objects("persistentvolumeclaims")
    assert len(claims) == 1
    (claim_name, claim) = next(iter(claims.items()))
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", claim_name)  # a valid object name
    volume = claim["metadata"]["annotations"]["dormant.volume"]
    pod = await cluster.pod(first.container_name)
    assert pod is not None
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim_name
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/home/user"

    await rig.engine.delete(first.id)
    await rig.engine.drain()
    assert cluster.objects("pods") == {} and cluster.objects("podtemplates") == {}
    assert list(cluster.objects("persistentvolumeclaims")) == [claim_name]  # kept
    listed = await rig.runtime.list_volumes()
    assert [(v.name, v.retain, v.labels["dormant.user"]) for v in listed] == [
        (volume, "user", "Alice@Example.com")
    ]

    second = await rig.engine.create_session(tenant="t", user_id="Alice@Example.com")
    await rig.engine.drain()
    assert (await rig.engine.get(second.id)).state is State.RUNNING
    assert list(cluster.objects("persistentvolumeclaims")) == [claim_name]  # the same claim
    assert await rig.runtime.remove_volume(volume) is False  # mounted by a pod: left alone
    await rig.engine.delete(second.id)
    await rig.engine.drain()
    assert await rig.runtime.remove_volume(volume) is True
    assert cluster.objects("persistentvolumeclaims") == {}
    assert await rig.runtime.remove_volume(volume) is True  # not found is success


# the runtime alone --------------------------------------------------------------------------------


async def test_session_claims_go_with_the_session_and_another_users_claim_is_refused(
    runtime: KubernetesRuntime, cluster: Cluster
) -> None:
    def mount(name: str, retain: str, user: str = "alice", session: str = "s1") -> VolumeMount:
        labels = {
            "dormant.managed": "true",
            "dormant.tenant": "t",
            "dormant.user": user,
            "dormant.retain": retain,
        }
        if retain == "session":
            labels["dormant.session"] = session
        return VolumeMount(name, f"/{retain}", retain, labels)

    mine = spec("s1", volumes=(mount("scratch_s1", "session"), mount("home_t_alice", "user")))
    state = await runtime.start(mine.name, await runtime.create(mine))
    assert state["session_volumes"] == ["scratch_s1"]
    assert set(cluster.objects("persistentvolumeclaims")) == {
        "scratch-s1-" + _hash("scratch_s1"),
        "home-t-alice-" + _hash("home_t_alice"),
    }
    await runtime.remove(mine.name, {})  # without the state: the template remembers
    assert list(cluster.objects("persistentvolumeclaims")) == [
        "home-t-alice-" + _hash("home_t_alice")
    ]

    theirs = spec("s2", volumes=(mount("home_t_alice", "user", user="mallory"),))
    with pytest.raises(RuntimeFailure, match="belongs to t/alice"):
        await runtime.create(theirs)
    assert await runtime.inspect(theirs.name) is None  # nothing made
    assert await runtime.remove_volume("home_t_alice") is True


def _hash(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()[:10]


async def test_label_values_are_made_valid_and_the_originals_reported(
    runtime: KubernetesRuntime, cluster: Cluster
) -> None:
    odd = {
        "dormant.user": "ünïcode user@example.com/with spaces",
        "dormant.tenant": "t" * 80,
        "dormant.created": "2026-12-01T00:10:00+00:00",
        "dormant.template": "-starts-with-dash",
        "acme.example/team": "blue",
    }
    s = spec("labels1")
    s = replace(s, labels={**s.labels, **odd})
    await runtime.create(s)
    template = cluster.objects("podtemplates")[s.name]
    labels = template["metadata"]["labels"]
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values()), labels
    assert "dormant.created" not in labels  # no timestamps in label values
    assert labels["acme.example/team"] == "blue" and labels["dormant.managed"] == "true"
    assert labels["dormant.user"] != labels["dormant.tenant"]
    kept = json.loads(template["metadata"]["annotations"]["dormant.labels"])
    assert kept == s.labels
    info = await runtime.inspect(s.name)
    assert info is not None and info.labels == s.labels  # what dormant gave, exactly
    assert [i.labels for i in await runtime.list_managed()] == [s.labels]
    other = replace(s, labels={**s.labels, "dormant.user": odd["dormant.user"] + "!"})
    assert KubernetesRuntime.validate(other) is None
    from dormant.runtimes.kubernetes_spec import label_value

    assert label_value(other.labels["dormant.user"]) != labels["dormant.user"]  # never meet


async def test_the_pod_carries_the_templates_isolation_and_resources(
    runtime: KubernetesRuntime, cluster: Cluster
) -> None:
    s = spec(
        "iso1",
        resources=Resources(cpus=0.5, memory="64m"),
        read_only=True,
        cap_drop=("ALL",),
        no_new_privileges=True,
        user="1000:1000",
        env={"GREETING": "hi"},
        command=["serve", "--port", "{port}"],
        workdir="/srv",
        tmpfs={"/tmp": "size=16m"},
        shm_size="32m",
    )
    state = await runtime.start(s.name, await runtime.create(s))
    pod = await cluster.pod(s.name)
    assert pod is not None
    body = pod["spec"]
    (container,) = body["containers"]
    assert body["automountServiceAccountToken"] is False  # a tenant's code gets no token
    assert body["restartPolicy"] == "Never"
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsUser": 1000,
        "runAsGroup": 1000,
    }
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": str(64 * 1024**2)}
    assert container["args"] == ["serve", "--port", str(s.container_port)]
    assert container["workingDir"] == "/srv"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GREETING"] == "hi" and env["DORMANT_SESSION"] == "iso1"
    sizes = {v["name"]: v["emptyDir"].get("sizeLimit") for v in body["volumes"]}
    assert sizes == {"t0": str(16 * 1024**2), "shm": str(32 * 1024**2)}
    assert state["endpoint"]["port"] == s.container_port
    await runtime.remove(s.name, state)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"binds": (BindMount("/etc", "/host-etc"),)}, "host paths"),
        ({"network": "backend"}, "network"),
        ({"network_mode": "host"}, "network"),
        ({"resources": Resources(pids_limit=100)}, "pids_limit"),
        ({"user": "www-data"}, "numeric uid"),
        ({"name": "Dormant_Upper"}, "invalid pod name"),
        ({"image": None}, "needs an image"),
    ],
)
async def test_what_a_pod_cannot_do_is_refused_before_anything_is_made(
    runtime: KubernetesRuntime, cluster: Cluster, extra: dict[str, object], message: str
) -> None:
    s = spec("refused1", **extra)
    with pytest.raises(InvalidInput, match=message):
        KubernetesRuntime.validate(s)
    with pytest.raises(InvalidInput, match=message):
        await runtime.create(s)
    assert cluster.objects("podtemplates") == {}


async def test_a_container_that_exits_while_starting_fails_with_its_output(
    runtime: KubernetesRuntime, cluster: Cluster
) -> None:
    s = spec("crash1", command=["exit", "3", "config missing: /etc/app.yml"])
    state = await runtime.create(s)
    with pytest.raises(RuntimeFailure, match=r"code 3 .*config missing: /etc/app.yml"):
        await runtime.start(s.name, state)
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED


async def test_kubeconfig_authentication_sends_its_token(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(  # JSON is YAML
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": cluster.url}}],
                "users": [{"name": "dormant", "user": {"token": "s3cret-token"}}],
                "contexts": [
                    {"name": "other", "context": {"cluster": "emu", "user": "nobody"}},
                    {"name": "emu", "context": {"cluster": "emu", "user": "dormant"}},
                ],
                "current-context": "other",
            }
        )
    )
    rt = KubernetesRuntime(cluster.namespace, kubeconfig=str(kubeconfig), context="emu")
    try:
        await rt.ping()
        assert await rt.list_managed() == []
    finally:
        await rt.close()
    sent = [
        r.headers.get("Authorization") for r in cluster.emulator if "/podtemplates" in str(r.url)
    ]
    assert sent and set(sent) == {"Bearer s3cret-token"}


async def test_errors_are_translated_and_listing_never_answers_partly(cluster: Cluster) -> None:
    base = f"/api/v1/namespaces/{cluster.namespace}"
    cluster.emulator[f"get {base}/podtemplates"] << 503 << {"kind": "Status", "message": "busy"}
    cluster.emulator[f"get {base}/pods/forbidden"] << 403 << {"kind": "Status", "message": "no"}
    cluster.emulator[f"post {base}/podtemplates"] << 422 << {"kind": "Status", "message": "bad"}
    rt = KubernetesRuntime(cluster.namespace, url=cluster.url)
    try:
        with pytest.raises(InvalidInput, match="422"):  # the cluster refused the manifest
            await rt.create(spec("refused2"))
        with pytest.raises(TemporaryError, match="503"):
            await rt.list_managed()  # the pods would list; the templates do not: no answer
        with pytest.raises(RuntimeFailure, match="403"):
            await rt.stop("forbidden", {})
    finally:
        await rt.close()

    closed = free_port()  # nothing listens there
    gone = KubernetesRuntime(cluster.namespace, url=f"http://127.0.0.1:{closed}")
    try:
        with pytest.raises(RuntimeUnavailable):
            await gone.ping()
        with pytest.raises(RuntimeUnavailable):
            await gone.list_managed()
        with pytest.raises(RuntimeUnavailable):
            await gone.watch(lambda what: None)
    finally:
        await gone.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _certificate(where: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"]
    command += ["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


@contextlib.asynccontextmanager
async def tls_front(upstream_port: int, cert: Path, key: Path) -> AsyncIterator[int]:
    """An HTTPS address in front of the emulator (which speaks plain HTTP), as the API server
    is seen from a pod; its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    pipes: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        both = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        task = asyncio.ensure_future(both)
        pipes.add(task)
        task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


async def test_in_cluster_authentication_uses_the_service_accounts_token_and_ca(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _certificate(tmp_path, "server")
    account = tmp_path / "serviceaccount"  # what the kubelet mounts into dormant's pod
    account.mkdir()
    (account / "token").write_text("in-cluster-token")
    (account / "ca.crt").write_bytes(cert.read_bytes())
    (account / "namespace").write_text(cluster.namespace)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    upstream = int(cluster.url.rsplit(":", 1)[1])
    async with tls_front(upstream, cert, key) as port:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
        rt = KubernetesRuntime(cluster.namespace, serviceaccount=str(account))
        try:
            await rt.ping()
            assert await rt.list_managed() == []
        finally:
            await rt.close()
        stranger, _ = _certificate(tmp_path, "stranger")  # did not sign the server's
        (account / "ca.crt").write_bytes(stranger.read_bytes())
        untrusting = KubernetesRuntime(cluster.namespace, serviceaccount=str(account))
        try:
            with pytest.raises(RuntimeUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.ping()
        finally:
            await untrusting.close()
    sent = [r.headers.get("Authorization") for r in cluster.emulator if "/pods" in str(r.url)]
    sent = [s for s in sent if s is not None]
    assert sent and set(sent) == {"Bearer in-cluster-token"}


async def test_a_watch_the_server_ends_at_once_is_an_outage(cluster: Cluster) -> None:
    # A watch ended after a while is routine (watched again); one that ends as it begins is not.
    cluster.emulator[f"get /api/v1/namespaces/{cluster.namespace}/pods"] << b""
    rt = KubernetesRuntime(cluster.namespace, url=cluster.url)
    seen: list[str] = []
    try:
        with pytest.raises(RuntimeUnavailable, match="closed the stream at once"):
            await asyncio.wait_for(rt.watch(seen.append), 30)
    finally:
        await rt.close()
    assert seen == [] and not rt.watching.is_set()
