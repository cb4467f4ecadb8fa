"""Named volumes of the docker runtime: made on demand with their owner's labels, refused when
another owner's, listed and removed for retention."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import aiodocker

from dormant.errors import (
    DormantError,
    InvalidInput,
    RuntimeFailure,
    TemporaryError,
)
from dormant.runtimes.base import (
    MANAGED_LABEL,
    ContainerSpec,
    VolumeInfo,
    VolumeMount,
    describe_owner,
    owner_mismatch,
)
from dormant.runtimes.docker_base import DockerBase, _parse_time
from dormant.runtimes.docker_errors import ContainerMissing
from dormant.runtimes.docker_spec import _VOLUME

log = logging.getLogger("dormant.runtimes.docker")


class DockerVolumes(DockerBase):
    """The volume half of the docker runtime (a base of :class:`DockerRuntime`)."""

    #: The engine's volume driver for the volumes dormant makes (None: the engine's default,
    #: ``local``); the swarm runtime lets the operator name one that spans nodes.
    volume_driver: str | None = None

    async def _inspect_volume(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = await self._call(
                f"inspect volume {name}", lambda d: d._query_json(f"volumes/{name}")
            )
        except ContainerMissing:
            return None
        return data

    async def _ensure_volumes(self, spec: ContainerSpec) -> None:
        """Make each of the spec's volumes that is missing, with its labels; refuse one that
        exists with another owner (another deployment's, a hand-made one, another user's)."""
        for volume in spec.volumes:
            info = await self._inspect_volume(volume.name) or await self._create_volume(volume)
            _check_owner(volume, info)

    async def _create_volume(self, volume: VolumeMount) -> dict[str, Any]:
        made: dict[str, Any] = {"Name": volume.name, "Labels": {**volume.labels, **self.scope}}
        if self.volume_driver is not None:
            made["Driver"] = self.volume_driver
        body = json.dumps(made)
        try:
            info: dict[str, Any] = await self._call(
                f"create volume {volume.name}",
                lambda d: d._query_json("volumes/create", method="POST", data=body),
            )
        except RuntimeFailure:
            found = await self._inspect_volume(volume.name)  # made meanwhile?
            if found is None:
                raise
            return found
        log.info(
            "volume %s created (retain=%s, driver=%s)",
            volume.name,
            volume.retain,
            self.volume_driver or "local",
        )
        return info

    async def _check_volumes_after_create(self, spec: ContainerSpec) -> None:
        """A volume removed (by retention) between its check and the container's creation is
        made again by the engine, without labels: then the container is removed and the
        create retried, so that no volume dormant uses lacks its labels."""
        for volume in spec.volumes:
            info = await self._inspect_volume(volume.name)
            labels = (info or {}).get("Labels") or {}
            if labels.get(MANAGED_LABEL) == "true":
                continue
            log.warning(
                "volume %s lost its labels while %s was made: again", volume.name, spec.name
            )
            await self.remove(spec.name, {})
            if info is not None and not labels:
                with contextlib.suppress(DormantError):
                    await self.remove_volume(volume.name)
            raise TemporaryError(f"create {spec.name}: volume {volume.name} changed; will retry")

    async def list_volumes(self) -> list[VolumeInfo]:
        params = {"filters": json.dumps({"label": self._label_filter()})}
        data: dict[str, Any] = await self._call(
            "list volumes", lambda d: d._query_json("volumes", params=params)
        )
        infos = []
        for row in data.get("Volumes") or []:
            labels = dict(row.get("Labels") or {})
            if labels.get(MANAGED_LABEL) != "true":
                continue
            if any(labels.get(k) != v for k, v in self.scope.items()):
                continue
            infos.append(VolumeInfo(str(row["Name"]), labels, _parse_time(row.get("CreatedAt"))))
        return infos

    async def remove_volume(self, name: str) -> bool:
        if not _VOLUME.match(name):
            raise InvalidInput(f"invalid volume name {name!r}")

        async def _delete(d: aiodocker.Docker) -> None:
            async with d._query(f"volumes/{name}", method="DELETE") as response:
                try:
                    await response.read()
                finally:
                    response.close()

        try:
            await self._call(f"remove volume {name}", _delete)
        except ContainerMissing:
            return True
        except RuntimeFailure as exc:
            text = str(exc).lower()
            if "in use" in text or "being used" in text or "(http 409)" in text:
                return False
            raise
        return True

    async def _remove_session_volumes(self, names: list[str]) -> None:
        for volume in names:
            if not await self.remove_volume(volume):
                log.warning("session volume %s is still in use; retention removes it", volume)


def _check_owner(volume: VolumeMount, info: dict[str, Any]) -> None:
    """Refuse to use a volume whose labels say it belongs to someone else."""
    labels = info.get("Labels") or {}
    if differ := owner_mismatch(volume, labels):
        raise RuntimeFailure(
            f"volume {volume.name} exists and {describe_owner(labels)}; not using it "
            f"(labels that differ: {', '.join(differ)})"
        )
