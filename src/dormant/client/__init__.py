"""A client for backends: the REST API (httpx) and the real-time gateway (python-socketio).

::

    from dormant.client import AsyncClient

    async with AsyncClient("http://127.0.0.1:8080", api_key) as dormant:
        session = await dormant.create_session("alice", policy={"sleep_after": "30m"})
        work = await dormant.ensure_session("alice", "notebook", wake=True)  # get or create
        mine = await dormant.list_sessions(user_id="alice", labels={"team": "ml"})
        await dormant.activity(session["id"], "build")
        token = await dormant.token(session["id"], name="Alice")     # for the browser
        await dormant.broadcast(session["id"], "build", {"status": "ok"})

        live = dormant.realtime(session["id"], name="ci-bot")          # a socket of our own
        live.on("session", print)
        await live.connect()
        await live.activity("command")
        await live.close()

:class:`Client` is the same API, synchronous (for scripts and threaded web frameworks).
Errors are :class:`ApiError` with the server's ``status``, ``code`` and ``message``.
"""

from dormant.client.aio import AsyncClient
from dormant.client.calls import URL_HINT, ApiError, Token, base_url
from dormant.client.realtime import Realtime, RealtimeError
from dormant.client.sync import Client

__all__ = [
    "URL_HINT",
    "ApiError",
    "AsyncClient",
    "Client",
    "Realtime",
    "RealtimeError",
    "Token",
    "base_url",
]
