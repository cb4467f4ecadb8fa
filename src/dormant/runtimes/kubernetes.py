"""Sessions as Kubernetes Pods (``runtime = "kubernetes"``), in one namespace.

**A bare Pod, not a Deployment scaled 1/0.** The contract is dormant's own lifecycle: ``start``
makes the container serve, ``stop`` ends it, a container that dies is *seen* (the reconciler
marks the session asleep and a wake starts it again). A Deployment's controller would replace a
deleted or failed pod by itself, behind dormant's back, with a new address, so the endpoint
dormant keeps would go stale and failures would be hidden in restarts. So: ``start`` creates the
Pod, ``stop`` deletes it (gracefully, waiting until the kubelet has ended it), and a sleeping
session is kept as a **PodTemplate** of the same name (a core/v1 object that stores a pod's
metadata and spec and runs nothing): ``create`` writes it, ``inspect`` and ``list_managed`` see a
session by its template (stopped) or its pod (running), ``remove`` deletes both.

**Volumes** are PersistentVolumeClaims (one per user for ``retain="user"``, per session for
``retain="session"``), made by ``create`` with dormant's labels, never deleted with a session
unless ``retain="session"``; :meth:`KubernetesRuntime.remove_volume` refuses (``False``) while a
pod mounts one. Claims ask ``volume_size`` of the cluster's default (or ``storage_class``).

**Endpoint**: the pod's IP and the container port. dormant must reach pod IPs: run it inside
the cluster (``deploy/kubernetes``). Ready means the pod is ``Running`` with its ``Ready``
condition true (a TCP readiness probe on the port) and then a TCP connection from dormant is
accepted. **Watch** follows pod events (``dormant.managed=true``): a pod deleted or failed behind
dormant's back wakes the reconciler. ``stats`` answers ``None`` (it would need metrics-server,
which reads only every 15 s or so: no honest "now").

The API client is kr8s (why: :mod:`dormant.runtimes.kubernetes_api`, the one place where its
failures become dormant's errors); the manifests are built in
:mod:`dormant.runtimes.kubernetes_spec`, pods are read in :mod:`dormant.runtimes.kubernetes_pods`.
The namespace is this runtime's scope (``docker_scope`` does not apply).

Tested only against kmock's in-memory emulator of the API (with a fake kubelet), never against a
real cluster here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, ClassVar

from dormant.errors import DormantError, RuntimeFailure, RuntimeUnavailable, TemporaryError
from dormant.runtimes.base import (
    MANAGED_LABEL,
    RETAIN_SESSION,
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
from dormant.runtimes.kubernetes_api import (
    CLAIMS,
    POD_TEMPLATES,
    PODS,
    KubeApi,
    ObjectExists,
)
from dormant.runtimes.kubernetes_pods import (
    accepts,
    annotation_seconds,
    container_info,
    container_state,
    endpoint_of,
    is_ready,
    is_terminating,
    parse_time,
    pod_phase,
    pod_status,
    why_ended,
)
from dormant.runtimes.kubernetes_spec import (
    SESSION_VOLUMES_ANNOTATION,
    START_TIMEOUT_ANNOTATION,
    STOP_TIMEOUT_ANNOTATION,
    VOLUME_ANNOTATION,
    claim_manifest,
    claim_name,
    is_managed,
    original_labels,
    pod_manifest,
    pod_template_manifest,
    session_of,
    validate,
)

SELECTOR = f"{MANAGED_LABEL}=true"
#: Waiting reasons of a container that cannot start however long dormant waits.
_HOPELESS = ("InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError")
#: A watch that the server ends sooner than this (seconds) is a failure, not its routine end.
_SHORTEST_WATCH = 5.0


class KubernetesRuntime(Runtime):
    """Pods in ``namespace`` of the cluster that a kubeconfig names (``kubeconfig``, else
    ``KUBECONFIG``, else ``~/.kube/config``; its ``context`` or current context) or, when there
    is none (dormant in a pod), the in-cluster service account (kr8s's order).

    ``url`` (a server without authentication, as in tests) and ``serviceaccount`` (the directory
    of its token, CA and namespace) replace what would be found otherwise."""

    name: ClassVar[str] = "kubernetes"
    #: No host port at all: a pod serves at its own address.
    ports_follow_start: ClassVar[bool] = False
    host_ports: ClassVar[bool] = False  # a pod serves on its own address

    def __init__(
        self,
        namespace: str = "default",
        kubeconfig: str | None = None,
        context: str | None = None,
        *,
        url: str | None = None,
        serviceaccount: str | None = None,
        api_timeout: float = 30.0,
        volume_size: str = "1Gi",
        storage_class: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.volume_size = volume_size
        self.storage_class = storage_class
        self.api = KubeApi(
            namespace,
            kubeconfig=kubeconfig,
            context=context,
            url=url,
            serviceaccount=serviceaccount,
            timeout=api_timeout,
        )
        #: Set while :meth:`watch` is connected to the API server.
        self.watching = asyncio.Event()

    @classmethod
    def validate(cls, spec: ContainerSpec) -> None:
        validate(spec)

    async def check(self, spec: ContainerSpec) -> None:
        validate(spec)

    async def ping(self) -> None:
        await self.api.request("GET", PODS, params={"limit": "1", "labelSelector": SELECTOR})

    # create -----------------------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        pod = pod_manifest(spec, self.namespace)
        session_volumes = [v.name for v in spec.volumes if v.retain == RETAIN_SESSION]
        for volume in spec.volumes:
            await self._ensure_claim(volume)
        template = pod_template_manifest(pod, session_volumes)
        made = True
        try:
            await self.api.request("POST", POD_TEMPLATES, body=template)
        except ObjectExists:
            made = False
        if not made:
            existing = await self.api.get(POD_TEMPLATES, spec.name)
            if existing is None:  # removed in between: a retry makes it
                raise TemporaryError(f"create {spec.name}: its template vanished; will retry")
            self._check_same_session(spec, existing.get("metadata") or {})
        elif (running := await self.api.get(PODS, spec.name)) is not None:
            # A pod without a template (the template was removed by hand): must be ours.
            self._check_same_session(spec, running.get("metadata") or {})
        return {"namespace": self.namespace, "made": made, "session_volumes": session_volumes}

    @staticmethod
    def _check_same_session(spec: ContainerSpec, meta: dict[str, Any]) -> None:
        theirs = session_of(meta)
        if theirs != spec.session_id:
            raise RuntimeFailure(
                f"{spec.name} exists for session {theirs!r}, not {spec.session_id!r}; left alone"
            )

    async def _ensure_claim(self, volume: VolumeMount) -> None:
        name = claim_name(volume.name)
        manifest = claim_manifest(volume, self.namespace, self.volume_size, self.storage_class)
        try:
            await self.api.request("POST", CLAIMS, body=manifest)
            return
        except ObjectExists:
            pass
        existing = await self.api.get(CLAIMS, name)
        if existing is None:
            raise TemporaryError(f"volume {volume.name}: its claim vanished; will retry")
        meta = existing.get("metadata") or {}
        labels = original_labels(meta)
        holds = (meta.get("annotations") or {}).get(VOLUME_ANNOTATION, name)
        if owner_mismatch(volume, labels) or holds != volume.name:
            raise RuntimeFailure(
                f"volume {volume.name} (claim {name}) exists and {describe_owner(labels)}; "
                "not mounted"
            )

    # start ------------------------------------------------------------------------------------

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        template = await self.api.get(POD_TEMPLATES, name)
        if template is None:
            raise RuntimeFailure(f"{name} does not exist (create it first)")
        meta = template.get("metadata") or {}
        timeout = annotation_seconds(meta, START_TIMEOUT_ANNOTATION, 30.0)
        pod = await self.api.get(PODS, name)
        if pod is not None and pod_status(pod) is ContainerStatus.STOPPED:
            await self._delete_pod(name, pod)  # a pod that ended (or ends): start a new one
            pod = None
        if pod is None:
            body = template.get("template") or {}
            manifest = {"apiVersion": "v1", "kind": "Pod", **body}
            manifest["metadata"] = {**manifest.get("metadata", {}), "namespace": self.namespace}
            with contextlib.suppress(ObjectExists):  # another start made it: wait for that
                await self.api.request("POST", PODS, body=manifest)
        endpoint = await self._waitready(name, timeout)
        return {**state, "namespace": self.namespace, "endpoint": endpoint.as_dict()}

    async def _waitready(self, name: str, timeout: float) -> Endpoint:
        """Until the pod is Running and Ready and its address accepts a connection; fail fast
        when it ends or cannot start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        pod: dict[str, Any] | None = None
        while True:
            pod = await self.api.get(PODS, name)
            if pod is None:
                raise RuntimeFailure(f"{name}: its pod vanished while starting")
            if pod_phase(pod) in ("Succeeded", "Failed"):
                raise RuntimeFailure(f"{name}: {why_ended(pod)}")
            waiting = container_state(pod).get("waiting") or {}
            if waiting.get("reason") in _HOPELESS:
                await self._stop_quietly(name)
                raise RuntimeFailure(
                    f"{name}: {waiting.get('reason')}: {waiting.get('message') or ''}"
                )
            endpoint = endpoint_of(pod)
            if (
                endpoint is not None
                and pod_phase(pod) == "Running"
                and is_ready(pod)
                and await accepts(endpoint)
            ):
                return endpoint
            if loop.time() > deadline:
                await self._stop_quietly(name)
                raise RuntimeFailure(
                    f"{name}: not serving within {timeout:g}s (pod {pod_phase(pod)}, "
                    f"ready {is_ready(pod)}, waiting {waiting.get('reason') or '-'})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _stop_quietly(self, name: str) -> None:
        with contextlib.suppress(DormantError):
            await self.stop(name, {})

    # stop / remove ----------------------------------------------------------------------------

    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        pod = await self.api.get(PODS, name)
        if pod is not None:
            await self._delete_pod(name, pod)
        return {k: v for k, v in state.items() if k != "endpoint"}

    async def _delete_pod(self, name: str, pod: dict[str, Any]) -> None:
        """Delete the pod gracefully and wait until the API server no longer has it (its
        kubelet has ended the container): stopped means nothing runs."""
        meta = pod.get("metadata") or {}
        grace = annotation_seconds(meta, STOP_TIMEOUT_ANNOTATION, 5.0)
        if not is_terminating(pod):
            await self.api.delete(PODS, name, grace=grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace + self.api.timeout
        delay = 0.01
        while await self.api.get(PODS, name) is not None:
            if loop.time() > deadline:
                raise TemporaryError(f"stop {name}: its pod is still terminating; will retry")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def remove(self, name: str, state: dict[str, Any]) -> None:
        template = await self.api.get(POD_TEMPLATES, name)
        await self.stop(name, state)
        volumes = state.get("session_volumes")
        if template is not None:
            kept = (template.get("metadata") or {}).get("annotations") or {}
            with contextlib.suppress(ValueError, TypeError):
                volumes = json.loads(kept.get(SESSION_VOLUMES_ANNOTATION) or "[]")
            await self.api.delete(POD_TEMPLATES, name)
        for volume in volumes if isinstance(volumes, list) else []:
            await self.api.delete(CLAIMS, claim_name(str(volume)))

    # reading ----------------------------------------------------------------------------------

    async def inspect(self, name: str) -> ContainerInfo | None:
        template = await self.api.get(POD_TEMPLATES, name)
        pod = await self.api.get(PODS, name)
        if template is None and pod is None:
            return None
        return container_info(name, template, pod)

    async def list_managed(self) -> list[ContainerInfo]:
        templates = {
            t["metadata"]["name"]: t
            for t in await self.api.list(POD_TEMPLATES, SELECTOR)
            if is_managed(t.get("metadata") or {})
        }
        pods = {
            p["metadata"]["name"]: p
            for p in await self.api.list(PODS, SELECTOR)
            if is_managed(p.get("metadata") or {})
        }
        return [
            container_info(n, templates.get(n), pods.get(n)) for n in sorted({*templates, *pods})
        ]

    async def list_volumes(self) -> list[VolumeInfo]:
        infos = []
        for claim in await self.api.list(CLAIMS, SELECTOR):
            meta = claim.get("metadata") or {}
            if not is_managed(meta):
                continue
            name = (meta.get("annotations") or {}).get(VOLUME_ANNOTATION) or meta.get("name")
            infos.append(
                VolumeInfo(
                    name=str(name),
                    labels=original_labels(meta),
                    created_at=parse_time(meta.get("creationTimestamp")),
                )
            )
        return infos

    async def remove_volume(self, name: str) -> bool:
        claim = claim_name(name)
        # Any pod of the namespace, not only dormant's: a claim in use is left alone.
        for pod in await self.api.list(PODS, ""):
            for volume in (pod.get("spec") or {}).get("volumes") or []:
                if (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                    return False
        await self.api.delete(CLAIMS, claim)
        return True

    async def watch(self, notify: Callable[[str], None]) -> None:
        """Follow pod events; a pod deleted or ended behind dormant's back wakes the reconciler.
        An API server ends every watch after a while (``--min-request-timeout``): that is no
        outage, it is watched again at once (its replay wakes the reconciler once more). Raises
        :class:`RuntimeUnavailable` when the stream breaks, or ends right after it began."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                async for kind, pod in self.api.watch(PODS, SELECTOR, self.watching):
                    meta = pod.get("metadata") or {}
                    if is_managed(meta):
                        notify(f"pod {meta.get('name', '?')} {kind.lower()} ({pod_phase(pod)})")
            finally:
                self.watching.clear()
            if loop.time() - began < _SHORTEST_WATCH:
                raise RuntimeUnavailable("watch pods: the API server closed the stream at once")

    async def close(self) -> None:
        await self.api.close()
