"""Reading the kubernetes runtime's objects: a pod's phase, readiness, endpoint and end, and the
:class:`ContainerInfo` of a session from its PodTemplate and Pod. Pure functions of the
JSON the API server answers (kept apart from the runtime's calls)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from dormant.runtimes.base import ContainerInfo, ContainerStatus, Endpoint
from dormant.runtimes.kubernetes_spec import original_labels


def parse_time(value: object) -> datetime | None:
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def annotation_seconds(meta: dict[str, Any], key: str, default: float) -> float:
    try:
        return float((meta.get("annotations") or {}).get(key, default))
    except (TypeError, ValueError):
        return default


def is_terminating(pod: dict[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return dict(statuses[0].get("state") or {})


def why_ended(pod: dict[str, Any]) -> str:
    """Why a pod that ended did: exit code, reason, and the output the kubelet kept."""
    terminated = container_state(pod).get("terminated") or {}
    status = pod.get("status") or {}
    message = terminated.get("message") or status.get("message") or ""
    return (
        f"container exited with code {terminated.get('exitCode', '?')} "
        f"({terminated.get('reason') or status.get('reason') or pod_phase(pod)}) while starting; "
        f"last output: {str(message)[-2000:]}"
    )


def pod_status(pod: dict[str, Any] | None) -> ContainerStatus:
    if pod is None or is_terminating(pod) or pod_phase(pod) in ("Succeeded", "Failed"):
        return ContainerStatus.STOPPED
    return ContainerStatus.RUNNING  # Pending, Running, Unknown: it holds (or will) a node


def _container_port(pod: dict[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


def endpoint_of(pod: dict[str, Any]) -> Endpoint | None:
    """Where a running pod serves: its IP and its container's port."""
    ip = (pod.get("status") or {}).get("podIP")
    port = _container_port(pod)
    if (
        not isinstance(ip, str)
        or not ip
        or port is None
        or pod_status(pod) is not ContainerStatus.RUNNING
    ):
        return None
    return Endpoint(ip, port)


def container_info(
    name: str, template: dict[str, Any] | None, pod: dict[str, Any] | None
) -> ContainerInfo:
    source = template if template is not None else pod
    assert source is not None
    meta = source.get("metadata") or {}
    detail: dict[str, Any] = {"namespace": meta.get("namespace")}
    if pod is not None:
        endpoint = endpoint_of(pod)
        detail.update(
            phase=pod_phase(pod),
            ready=is_ready(pod),
            endpoint=None if endpoint is None else endpoint.as_dict(),
        )
    return ContainerInfo(
        name=name,
        labels=original_labels(meta),
        status=pod_status(pod),
        created_at=parse_time(meta.get("creationTimestamp")),
        detail=detail,
    )


async def accepts(endpoint: Endpoint) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
