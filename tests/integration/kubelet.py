"""A Kubernetes API without a cluster, for the ``kubernetes`` runtime's tests: kmock's
:class:`KubernetesEmulator` (objects in memory, served over HTTP on 127.0.0.1) and a fake
kubelet that makes its pods real enough to serve.

Kept here (test support) rather than in ``dormant.testing``: it needs kmock, which only the
``dev`` extra installs, and nothing in dormant itself runs it.

The :class:`FakeKubelet` talks to the emulator only over HTTP (its own client, as a node would):
it watches the namespace's pods; for each new one it starts a tiny HTTP server on a loopback
address of its own (``127.0.0.N``, so that every pod has its own IP, as on a cluster) on the
container's port, then reports it through the ``status`` subresource: phase ``Running``,
condition ``Ready``, ``podIP``. A pod whose container args are ``["exit", CODE, OUTPUT…]``
fails instead (phase ``Failed``, the output as its termination message). Like a real kubelet, a
pod it runs stays ``Terminating`` after a delete until it has stopped the server: it holds a
finalizer that it removes then (a real kubelet confirms with a final delete; kmock's emulator
knows finalizers but not grace periods).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import Any

import httpx
import kmock

FINALIZER = "kubelet.test.dormant/running"
RESOURCES = ("v1/pods", "v1/podtemplates", "v1/persistentvolumeclaims")


class FakeKubelet:
    def __init__(self, url: str, namespace: str) -> None:
        self.namespace = namespace
        self.client = httpx.AsyncClient(base_url=url, timeout=10)
        self.servers: dict[str, asyncio.Server] = {}
        self.addresses: dict[str, str] = {}
        self._free = deque(f"127.0.0.{n}" for n in range(2, 255))
        self._task: asyncio.Task[None] | None = None
        self.watching = asyncio.Event()
        #: Pods it ran, in order (a test can tell a pod made anew from one kept).
        self.ran: list[str] = []

    def _path(self, name: str = "") -> str:
        base = f"/api/v1/namespaces/{self.namespace}/pods"
        return f"{base}/{name}" if name else base

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        waiter = asyncio.create_task(self.watching.wait())
        await asyncio.wait([self._task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            waiter.cancel()
            self._task.result()  # raises why the watch could not start

    async def _run(self) -> None:
        async with self.client.stream(
            "GET", self._path(), params={"watch": "true"}, timeout=httpx.Timeout(10, read=None)
        ) as response:
            response.raise_for_status()
            self.watching.set()
            async for line in response.aiter_lines():
                if line.strip():
                    event = json.loads(line)
                    await self._handle(event["type"], event["object"])

    async def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        name = meta["name"]
        if kind == "DELETED":
            await self._stop_server(name)
        elif meta.get("deletionTimestamp"):
            await self._stop_server(name)
            if FINALIZER in (meta.get("finalizers") or []):
                await self._patch(name, {"metadata": {"finalizers": []}})
        elif name not in self.servers and (pod.get("status") or {}).get("phase") is None:
            await self._run_pod(name, pod)

    async def _run_pod(self, name: str, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        args = [str(a) for a in container.get("args") or []]
        if args[:1] == ["exit"]:
            code = int(args[1]) if len(args) > 1 else 1
            await self._fail(name, code, " ".join(args[2:]))
            return
        port = int(container["ports"][0]["containerPort"])
        address = self._free.popleft()
        try:
            server = await asyncio.start_server(_serve(name), address, port)
        except OSError as exc:
            self._free.append(address)
            await self._fail(name, 128, f"cannot listen on {address}:{port}: {exc}")
            return
        self.servers[name], self.addresses[name] = server, address
        self.ran.append(name)
        await self._patch(name, {"metadata": {"finalizers": [FINALIZER]}})
        await self._patch(
            name,
            {
                "status": {
                    "phase": "Running",
                    "podIP": address,
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        {"name": container["name"], "ready": True, "state": {"running": {}}}
                    ],
                }
            },
            "/status",
        )

    async def _fail(self, name: str, code: int, output: str) -> None:
        terminated = {"exitCode": code, "reason": "Error", "message": output}
        status = {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]}
        await self._patch(name, {"status": status}, "/status")

    async def _patch(self, name: str, body: dict[str, Any], sub: str = "") -> None:
        response = await self.client.patch(
            self._path(name) + sub,
            content=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code != 404:  # deleted meanwhile: nothing to report
            response.raise_for_status()

    async def _stop_server(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            server.close()
            await server.wait_closed()
            self._free.append(self.addresses.pop(name))

    async def close(self) -> list[str]:
        """Stop watching and every server; the pods that were still running (a leak)."""
        left = sorted(self.servers)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for name in list(self.servers):
            await self._stop_server(name)
        await self.client.aclose()
        return left


def _serve(name: str) -> Any:
    body = f"pod {name}\n".encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()).strip():
                pass  # the request line and headers: any request gets the page
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    return handle


class Cluster:
    """kmock's emulator on 127.0.0.1 and a :class:`FakeKubelet` for ``namespace``."""

    def __init__(self, namespace: str = "dormant-test") -> None:
        self.namespace = namespace
        self.emulator = kmock.KubernetesEmulator()
        for resource in RESOURCES:
            self.emulator.resources[resource]  # served (and listed empty) before any exists
        self._stack = contextlib.AsyncExitStack()
        self.url = ""
        self.kubelet: FakeKubelet | None = None

    async def start(self) -> Cluster:
        try:
            await self._stack.enter_async_context(self.emulator)
            server = await self._stack.enter_async_context(kmock.Server(self.emulator))
            self.url = str(server.url).rstrip("/")
            self.kubelet = FakeKubelet(self.url, self.namespace)
            await self.kubelet.start()
        except BaseException:
            await self.close()
            raise
        return self

    def objects(self, resource: str) -> dict[str, dict[str, Any]]:
        """The live objects of ``resource`` (``"pods"``, …) in the namespace, by name (read
        from the emulator's memory: what the API server holds)."""
        found = {}
        for (res, namespace, name), obj in self.emulator.objects.items():
            if res.plural == resource and namespace == self.namespace and not obj.deleted:
                found[name] = dict(obj.raw)
        return found

    async def pod(self, name: str) -> dict[str, Any] | None:
        """A pod read over HTTP, as any client sees it."""
        assert self.kubelet is not None
        response = await self.kubelet.client.get(self.kubelet._path(name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        pod: dict[str, Any] = response.json()
        return pod

    async def delete_pod(self, name: str) -> None:
        """Delete a pod behind dormant's back (``kubectl delete pod``)."""
        assert self.kubelet is not None
        response = await self.kubelet.client.delete(self.kubelet._path(name))
        response.raise_for_status()

    async def close(self) -> list[str]:
        left = [] if self.kubelet is None else await self.kubelet.close()
        await self._stack.aclose()
        return left
