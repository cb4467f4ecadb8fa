"""What the gateway is told (its settings) and what it tells (its counters, on ``/metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    max_connections: int = 10_000
    max_connections_per_session: int = 100
    activity_rate: float = 20.0
    activity_burst: int = 40
    max_payload_bytes: int = 64 * 1024
    cors_origins: str | list[str] = "*"
    #: How often heartbeats, presence and level changes are looked at (seconds).
    tick: float = 0.1
    #: Participants listed in a ``presence`` event; ``occupancy`` always counts everyone.
    presence_limit: int = 100
    #: An Engine.IO socket that has not completed a Socket.IO connect with a valid token this
    #: many seconds after its handshake (or after its Socket.IO connection ended) is closed.
    handshake_timeout: float = 10.0
    #: How long a token's API key is trusted without a look at the store, and how often the
    #: keys of live connections are checked for revocation (seconds).
    key_check_interval: float = 5.0
    #: Across replicas: how long a replica's presence entry holds without a refresh (it is
    #: refreshed every third of this), i.e. how soon a dead replica's clients disappear.
    presence_ttl: float = 15.0


@dataclass
class GatewayStats:
    connections: int = 0
    connected_total: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    activity_applied: int = 0
    activity_dropped: int = 0
    invalid_events: int = 0
    heartbeat_drops: int = 0
    broadcasts: int = 0
    #: Engine.IO sockets open now, authenticated or not (each counts against the limit).
    sockets: int = 0
    #: Of those, the ones without an accepted Socket.IO connection.
    unauthenticated: int = 0
    #: Packets dropped because they do not parse, or come before a successful connect.
    malformed_packets: int = 0
    #: Sockets closed for not completing a connect within ``handshake_timeout``.
    handshake_timeouts: int = 0
    #: Connections closed because the API key of their token was revoked.
    revoked_drops: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "sockets": self.sockets,
            "unauthenticated": self.unauthenticated,
            "malformed_packets": self.malformed_packets,
            "handshake_timeouts": self.handshake_timeouts,
            "revoked_drops": self.revoked_drops,
            "connected_total": self.connected_total,
            "refused": dict(self.refused),
            "activity_applied": self.activity_applied,
            "activity_dropped": self.activity_dropped,
            "invalid_events": self.invalid_events,
            "heartbeat_drops": self.heartbeat_drops,
            "broadcasts": self.broadcasts,
        }
