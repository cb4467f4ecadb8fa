"""The real-time gateway: Socket.IO activity, presence, heartbeats and session events."""

from dormant.gateway.replicas import RedisReplicas, Replicas
from dormant.gateway.server import Gateway, GatewaySettings, GatewayStats, SocketIORoute
from dormant.gateway.tokens import Claims, TokenError, TokenIssuer, new_secret

__all__ = [
    "Claims",
    "Gateway",
    "GatewaySettings",
    "GatewayStats",
    "RedisReplicas",
    "Replicas",
    "SocketIORoute",
    "TokenError",
    "TokenIssuer",
    "new_secret",
]
