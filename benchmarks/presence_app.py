"""The app that ``benchmarks/presence.py`` runs as two uvicorn workers for revocation.

Run as ``uvicorn benchmarks.presence_app:app_factory --factory`` (from the project root);
each process is one worker. ``PRESENCE_BENCH_REDIS_URL`` is the Redis URL, with the run's
``key_prefix`` in its query string. The app is ``budget_ws.adapters.asgi.WebSocketApp``
at every path, over a ``ConnectionManager`` on Redis with presence on (default
``PresenceOptions``): ``authenticate`` takes the principal from the query string
(``/ws?user=alice``) and ``identify`` makes it that user, so every connection has a user
stream and counts in presence, and ``disconnect_user``/``unsubscribe_user`` reach it.
"""

from __future__ import annotations

import os
from typing import Any

from budget_ws import ConnectionManager, HandshakeRejected, Heartbeat, PresenceOptions, User
from budget_ws.adapters.asgi import WebSocketApp
from budget_ws.handshake import Handshake

REDIS_VARIABLE = "PRESENCE_BENCH_REDIS_URL"
HEARTBEAT_SECONDS = 120.0
"""The runs last well under this: no heartbeat traffic in what is measured."""


def _authenticate(handshake: Handshake) -> str:
    user = handshake.query.get("user")
    if not user:
        raise HandshakeRejected("no user in the query string")
    return str(user)


def _identify(principal: Any) -> User:
    return User(str(principal), {"name": f"User {principal}"})


def app_factory() -> WebSocketApp:
    manager = ConnectionManager(
        os.environ.get(REDIS_VARIABLE, "redis://127.0.0.1:6379/0"),
        identify=_identify,
        presence=PresenceOptions(),
        heartbeat=Heartbeat(interval=HEARTBEAT_SECONDS, timeout=HEARTBEAT_SECONDS),
        shutdown_timeout=2,
    )
    return WebSocketApp(manager, authenticate=_authenticate)
