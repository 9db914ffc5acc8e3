"""A Starlette app run as two uvicorn workers by ``test_two_workers.py``.

Run as ``uvicorn two_workers_app:app_factory --factory --app-dir tests/adapters``; each
process is one worker with its own ``ConnectionManager``, and the workers share events
and history through the backend.

Routes:
    ``/ws``: the WebSocket endpoint (subprotocol ``budget-ws.v1``).
    ``POST /publish?topic=T&count=N&source=S``: publishes ``N`` numbered events to ``T``,
    one after the other, and answers ``{"published": [[offset, epoch, n], ...]}``.
    ``GET /stats``: the manager's ``stats()``, as JSON.

Environment:
    TWO_WORKERS_BACKEND: the backend URL, e.g. ``redis://127.0.0.1:6379/0?key_prefix=x``
    (default ``memory://``).
    TWO_WORKERS_TRANSACTIONS: a PostgreSQL DSN: each event is then published in a
    transaction of its own on that database (``publish(..., within=connection)``), as an
    app writing its data in the same transaction would.
"""

from __future__ import annotations

import dataclasses
import os

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from budget_ws import ConnectionManager, Event, Heartbeat
from budget_ws.adapters.starlette import STATE_KEY, lifespan, websocket_route

BACKEND_VARIABLE = "TWO_WORKERS_BACKEND"
TRANSACTIONS_VARIABLE = "TWO_WORKERS_TRANSACTIONS"


class Numbered(Event, name="two_workers_numbered", register=False):
    """One published event: ``n`` counts the events one request published, from 1."""

    n: int
    source: str


def manager_of(request: Request) -> ConnectionManager:
    manager = getattr(request.state, STATE_KEY)
    assert isinstance(manager, ConnectionManager)
    return manager


async def publish(request: Request) -> Response:
    topic = request.query_params["topic"]
    count = int(request.query_params.get("count", "1"))
    source = request.query_params.get("source", "")
    manager = manager_of(request)
    published = []
    database = os.environ.get(TRANSACTIONS_VARIABLE)
    connection = await asyncpg.connect(database) if database else None
    try:
        for number in range(1, count + 1):
            event = Numbered(n=number, source=source)
            if connection is None:
                position = await manager.publish(event, topic=topic)
            else:
                async with connection.transaction():
                    position = await manager.publish(event, topic=topic, within=connection)
            published.append([position.offset, position.epoch, number])
    finally:
        if connection is not None:
            await connection.close()
    return JSONResponse({"published": published})


async def stats(request: Request) -> Response:
    return JSONResponse(dataclasses.asdict(manager_of(request).stats()))


def app_factory() -> Starlette:
    """The app, with its backend from ``$TWO_WORKERS_BACKEND``."""
    manager = ConnectionManager(
        os.environ.get(BACKEND_VARIABLE) or "memory://",
        heartbeat=Heartbeat(interval=60, timeout=60),
        shutdown_timeout=2,
    )
    return Starlette(
        routes=[
            websocket_route(manager, "/ws"),
            Route("/publish", publish, methods=["POST"]),
            Route("/stats", stats),
        ],
        lifespan=lifespan(manager),
    )
