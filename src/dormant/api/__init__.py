"""HTTP API: FastAPI routes, API-key auth, JSON errors."""

from dormant.api.app import create_api

__all__ = ["create_api"]
