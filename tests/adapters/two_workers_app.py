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
"""

from __future__ import annotations

import dataclasses
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from budget_ws import ConnectionManager, Event, Heartbeat
from budget_ws.adapters.starlette import STATE_KEY, lifespan, websocket_route

BACKEND_VARIABLE = "TWO_WORKERS_BACKEND"


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
    for number in range(1, count + 1):
        position = await manager.publish(Numbered(n=number, source=source), topic=topic)
        published.append([position.offset, position.epoch, number])
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
