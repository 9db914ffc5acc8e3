"""The app that ``test_reuse_port.py`` and ``test_cli.py`` serve with
``python -m budget_ws serve``, several processes on one port sharing a Redis backend.

Each connection is told which process serves it: a ``reuse_port_worker`` event with the
process id, right after its welcome frame.

Environment:
    REUSE_PORT_BACKEND: the backend URL, e.g. ``redis://127.0.0.1:6379/0?key_prefix=x``
    (default ``memory://``).

Targets:
    ``make_manager``: a callable returning a ``ConnectionManager``.
    ``make_app``: a callable returning a ``WebSocketApp`` whose ``authenticate`` wants
    ``?token=secret`` (401 otherwise).
    ``not_a_manager``: neither, for the command's error message.
"""

from __future__ import annotations

import os

from budget_ws import Connection, ConnectionManager, Event, Handshake, HandshakeRejected, Heartbeat
from budget_ws.adapters import WebSocketApp

BACKEND_VARIABLE = "REUSE_PORT_BACKEND"


class Worker(Event, name="reuse_port_worker", register=False):
    """Which process serves the connection."""

    pid: int


def make_manager() -> ConnectionManager:
    manager: ConnectionManager

    async def tell_worker(connection: Connection) -> None:
        await manager.send(connection, Worker(pid=os.getpid()))

    manager = ConnectionManager(
        os.environ.get(BACKEND_VARIABLE) or "memory://",
        heartbeat=Heartbeat(interval=60, timeout=60),
        shutdown_timeout=2,
        on_connect=tell_worker,
    )
    return manager


def authenticate(handshake: Handshake) -> str:
    if handshake.query.get("token") != "secret":
        raise HandshakeRejected("token required", status=401, close_code=4003)
    return "ann"


def make_app() -> WebSocketApp:
    return WebSocketApp(make_manager(), authenticate=authenticate)


not_a_manager = {"a": "dict"}
