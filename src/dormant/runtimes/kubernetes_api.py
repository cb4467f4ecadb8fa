"""The ``kubernetes`` runtime's one door to the API server: authentication, requests, watches,
and the translation of every failure into :mod:`dormant.errors` (the only place it happens).

The client is **kr8s** (``kr8s.asyncio``): maintained (releases through 2025), asyncio-native on
httpx (which dormant already depends on), light (no generated model classes: manifests stay
plain dicts, which is all this runtime writes), and it loads credentials the way ``kubectl``
does: a kubeconfig file and context, or in-cluster from the service account's token, CA and
namespace under ``/var/run/secrets/kubernetes.io/serviceaccount`` (its token re-read on 401).
Only its authentication and its ``call_api`` (raw REST) are used, so that the requests are
exactly the documented API paths and the errors come back as HTTP statuses to translate here.
``kubernetes_asyncio`` works too but brings thousands of generated classes for the same calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from kr8s import APITimeoutError, ServerError
from kr8s.asyncio import Api

from dormant.errors import (
    DormantError,
    InvalidInput,
    NotFound,
    RuntimeFailure,
    RuntimeUnavailable,
    TemporaryError,
)

PODS = "pods"
POD_TEMPLATES = "podtemplates"
CLAIMS = "persistentvolumeclaims"
_MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class ObjectMissing(NotFound):
    """The API server has no such object (404)."""


class ObjectExists(RuntimeFailure):
    """An object of that name exists already, or changed under us (409)."""


def translate(exc: Exception, what: str) -> DormantError:
    """A kr8s or httpx failure of ``what`` as a dormant error (see :mod:`dormant.errors`)."""
    if isinstance(exc, ServerError) and exc.response is not None:
        status = exc.response.status_code
        message = f"{what}: {status} {exc}"
        if status == 404:
            return ObjectMissing(message)
        if status == 409:
            return ObjectExists(message)
        if status in (400, 422):
            return InvalidInput(message)  # the cluster refused what a template asked for
        if status == 429 or status >= 500:
            return TemporaryError(message)
        if status in (401, 403):
            return RuntimeFailure(
                f"{message} (check the service account's Role: deploy/kubernetes)"
            )
        return RuntimeFailure(message)
    if isinstance(exc, APITimeoutError | httpx.TransportError | OSError | TimeoutError):
        return RuntimeUnavailable(f"{what}: Kubernetes API unreachable: {exc!r}")
    return RuntimeFailure(f"{what}: {exc!r}")


class KubeApi:
    """Namespaced REST calls on core/v1 objects, authenticated lazily (at the first call: the
    runtime is made synchronously when dormant starts)."""

    def __init__(
        self,
        namespace: str,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        url: str | None = None,
        serviceaccount: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self._options: dict[str, Any] = {
            "url": url,
            "kubeconfig": kubeconfig,
            "context": context,
            "serviceaccount": serviceaccount,
            "namespace": namespace,
        }
        self._api: Api | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> Api:
        async with self._lock:
            if self._api is None:
                # Our own instance (bypass_factory), not kr8s's per-loop cache: closing one
                # runtime must not close another's connections.
                api = Api(bypass_factory=True, **self._options)
                try:
                    await api.auth
                except Exception as exc:  # kr8s raises ValueError, OSError, KeyError, …
                    raise RuntimeUnavailable(f"Kubernetes credentials: {exc!r}") from exc
                self._api = api
            return self._api

    async def request(
        self,
        method: str,
        resource: str,
        name: str | None = None,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        merge_patch: bool = False,
    ) -> dict[str, Any]:
        """One call on ``resource`` (``name`` and a subresource as ``"pods/x/status"``) in
        this namespace; the decoded answer."""
        path = resource if name is None else f"{resource}/{name}"
        what = f"{method} {path}"
        api = await self._client()
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if body is not None:
            kwargs["content"] = json.dumps(body)
        if params:
            kwargs["params"] = dict(params)
        if merge_patch:
            kwargs["headers"] = _MERGE_PATCH
        try:
            async with api.call_api(method, namespace=self.namespace, url=path, **kwargs) as r:
                answer = r.json()
        except (ServerError, APITimeoutError, httpx.HTTPError, OSError, TimeoutError) as exc:
            raise translate(exc, what) from exc
        except ValueError as exc:  # not JSON
            raise RuntimeFailure(f"{what}: the API server's answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise RuntimeFailure(f"{what}: unexpected answer {type(answer).__name__}")
        return answer

    async def get(self, resource: str, name: str) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist."""
        try:
            return await self.request("GET", resource, name)
        except ObjectMissing:
            return None

    async def delete(self, resource: str, name: str, grace: float | None = None) -> bool:
        """Delete it; ``False`` when it was not there."""
        body = None
        if grace is not None:
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": int(grace)}
        try:
            await self.request("DELETE", resource, name, body=body)
        except ObjectMissing:
            return False
        return True

    async def list(self, resource: str, selector: str) -> list[dict[str, Any]]:
        """Every object matching ``selector``, all pages, or an error: never a partial list."""
        items: list[dict[str, Any]] = []
        params = {"labelSelector": selector, "limit": "500"}
        while True:
            page = await self.request("GET", resource, params=params)
            rows = page.get("items")
            if not isinstance(rows, list):
                raise RuntimeFailure(f"list {resource}: the answer has no items")
            items.extend(row for row in rows if isinstance(row, dict))
            more = (page.get("metadata") or {}).get("continue")
            if not more:
                return items
            params = {**params, "continue": str(more)}

    async def watch(
        self, resource: str, selector: str, connected: asyncio.Event | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(type, object)`` of each change of ``resource`` matching ``selector`` (the server
        first replays what exists as ``ADDED``); ends when the server closes the stream.
        ``connected`` is set once the server has answered."""
        api = await self._client()
        params = {"watch": "true", "labelSelector": selector, "allowWatchBookmarks": "false"}
        what = f"watch {resource}"
        try:
            async with api.call_api(
                "GET",
                namespace=self.namespace,
                url=resource,
                params=params,
                stream=True,
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as response:
                if connected is not None:
                    connected.set()
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    kind, obj = event.get("type"), event.get("object")
                    if kind == "ERROR":
                        raise RuntimeUnavailable(f"{what}: the server ended it: {obj}")
                    if isinstance(kind, str) and isinstance(obj, dict):
                        yield kind, obj
        except (ServerError, APITimeoutError, httpx.HTTPError, OSError, TimeoutError) as exc:
            raise translate(exc, what) from exc

    async def close(self) -> None:
        api, self._api = self._api, None
        session = None if api is None else api._session
        if session is not None:
            await session.aclose()
