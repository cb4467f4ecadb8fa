"""Where a session serves: the endpoint its runtime reported when it started it."""

from __future__ import annotations

from dormant.runtimes import Endpoint
from dormant.store.records import SessionRecord

#: Where sessions whose stored state predates reported endpoints serve (on their host port).
LEGACY_HOST = "127.0.0.1"


def endpoint_of(record: SessionRecord) -> Endpoint | None:
    """Where dormant reaches the session: the ``"endpoint"`` its runtime's ``start`` put in
    ``record.runtime_state``; for a record written before runtimes reported endpoints,
    ``127.0.0.1:{record.port}`` when it has a port; else ``None``.

    Only meaningful while the session is ``running``: a sleeping session's last endpoint may
    have been handed to another session (its host port is released, a container's address is
    new at every start). Callers check the state first."""
    endpoint = Endpoint.from_state(record.runtime_state)
    if endpoint is not None:
        return endpoint
    if record.port is not None:
        return Endpoint(LEGACY_HOST, record.port)
    return None
