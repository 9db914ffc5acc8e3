"""A Starlette app serving the ORIGINAL family-budget page from a budget_ws server.

For ``test_original_page.py``; run by the ``live_server`` fixture as
``uvicorn compat_app:app_factory --factory``. The page and its client are read from
``examples/migration/original/`` as they are (never copied nor changed): ``/`` is
``index.html`` and ``/budget_socket.js`` its ``BudgetSocket``, which connects to ``/ws``
without a subprotocol, never subscribes and reads one ``{"event", "data"}`` object per
message. ``/ws`` serves it in compatibility mode, subscribed to one budget's topic.

Environment:
    BUDGET_WS_BACKEND: a backend URL (default ``memory://``; ``redis://...`` to keep
        history across a restart).
    BUDGET_WS_TOPIC: the topic every page is subscribed to (default ``budget:1``).

Test-only endpoints:
    ``POST /publish`` with a JSON body ``{"events": [{"event": name, "data": {...}}, ...],
    "delay": seconds}`` publishes the events to the topic, one every ``delay`` seconds, or
    all at once without a pause when ``delay`` is 0 (a burst: they queue up and leave
    the manager joined, as one message per batch).
    ``GET /stats`` gives ``{"connections": n, "subscribed": n, "handshakes": [t, ...]}``:
    connections served, those of them subscribed to the topic (a connection is
    registered just before its server-side subscription), and the ``time.time()`` of
    every handshake this process saw.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from budget_ws import ConnectionManager, Event, EventRegistry, Handshake
from budget_ws.adapters.starlette import lifespan, websocket_route
from budget_ws.compat import Compatibility

ORIGINAL = Path(__file__).resolve().parents[2] / "examples" / "migration" / "original"


class FactCreated(Event, name="budget_fact_created", register=False):
    """What the page's ``budget_fact_created`` handler reads: ``id`` and ``amount``."""

    id: int
    amount: Decimal


class FactUpdated(Event, name="budget_fact_updated", register=False):
    id: int
    amount: Decimal


class FactDeleted(Event, name="budget_fact_deleted", register=False):
    id: int


class ArticleUpdated(Event, name="article_updated", register=False):
    id: int
    name: str


EVENTS = EventRegistry([FactCreated, FactUpdated, FactDeleted, ArticleUpdated])
"""The events ``/publish`` accepts, by wire name."""


def app_factory() -> Starlette:
    """Build the app from the environment (uvicorn ``--factory``)."""
    topic = os.environ.get("BUDGET_WS_TOPIC", "budget:1")
    manager = ConnectionManager(
        os.environ.get("BUDGET_WS_BACKEND", "memory://"), shutdown_timeout=2
    )
    handshakes: list[float] = []

    def topics(handshake: Handshake, principal: Any) -> list[str]:
        handshakes.append(time.time())
        return [topic]

    async def index(request: Request) -> FileResponse:
        return FileResponse(ORIGINAL / "index.html", media_type="text/html")

    async def budget_socket(request: Request) -> FileResponse:
        return FileResponse(ORIGINAL / "budget_socket.js", media_type="text/javascript")

    async def publish(request: Request) -> JSONResponse:
        body = await request.json()
        events = [EVENTS.validate(item["event"], item["data"]) for item in body["events"]]
        delay = float(body.get("delay", 0))
        offsets = []
        for event in events:
            # Without a delay nothing here awaits a client: the events of the burst are
            # all queued before any connection writes, and leave joined.
            offsets.append((await manager.publish(event, topic=topic)).offset)
            if delay:
                await anyio.sleep(delay)
        return JSONResponse({"offsets": offsets})

    async def stats(request: Request) -> JSONResponse:
        served = manager.connections.values()
        return JSONResponse(
            {
                "connections": len(served),
                "subscribed": sum(topic in connection.topics for connection in served),
                "handshakes": handshakes,
            }
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/budget_socket.js", budget_socket),
            Route("/publish", publish, methods=["POST"]),
            Route("/stats", stats),
            websocket_route(manager, "/ws", compatibility=Compatibility(topics=topics)),
        ],
        lifespan=lifespan(manager),
    )
