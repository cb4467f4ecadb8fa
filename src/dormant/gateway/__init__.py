"""The real-time gateway: Socket.IO activity, presence, heartbeats and session events."""

from dormant.gateway.server import Gateway, GatewaySettings, GatewayStats, SocketIORoute
from dormant.gateway.tokens import Claims, TokenError, TokenIssuer, new_secret

__all__ = [
    "Claims",
    "Gateway",
    "GatewaySettings",
    "GatewayStats",
    "SocketIORoute",
    "TokenError",
    "TokenIssuer",
    "new_secret",
]
