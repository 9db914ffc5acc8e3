"""A Starlette app with Prometheus metrics, run as ``uvicorn --workers 2`` by
``test_prometheus_http.py``.

Run as ``uvicorn prometheus_workers_app:app_factory --factory --workers 2 --app-dir
tests/adapters`` with ``PROMETHEUS_MULTIPROC_DIR`` set: each worker process has its own
``ConnectionManager`` on the memory backend and its own ``PrometheusExporter``; any
worker answers ``/metrics`` with every worker's values, summed.

Routes:
    ``/ws``: the WebSocket endpoint (subprotocol ``budget-ws.v1``).
    ``/metrics``: the metrics, from ``metrics_app(manager)``.
    ``POST /publish?topic=T&count=N``: publishes ``N`` events to ``T`` on this worker.
    ``GET /local``: this worker's pid and its manager's own counts, as JSON.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from budget_ws import ConnectionManager, Event, Heartbeat
from budget_ws.adapters.starlette import websocket_route
from budget_ws.prometheus import PrometheusExporter, metrics_app

EXPORT_INTERVAL = 0.2
"""Seconds between a worker's copies of its metrics (the default, 1 s, slows the test)."""


class Counted(Event, name="prometheus_workers_counted", register=False):
    n: int


def app_factory() -> Starlette:
    """One worker's app: its manager, its exporter, the shared metrics endpoint."""
    manager = ConnectionManager(heartbeat=Heartbeat(interval=60, timeout=60), shutdown_timeout=2)

    async def publish(request: Request) -> Response:
        topic = request.query_params["topic"]
        count = int(request.query_params["count"])
        for number in range(count):
            await manager.publish(Counted(n=number), topic=topic)
        return JSONResponse({"published": count, "pid": os.getpid()})

    async def local(request: Request) -> Response:
        stats = manager.stats()
        return JSONResponse(
            {"pid": os.getpid(), "connections": stats.connections, "published": stats.published}
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The exporter starts first and stops last: its last copy counts the shutdown.
        async with PrometheusExporter(manager, interval=EXPORT_INTERVAL), manager:
            yield

    return Starlette(
        routes=[
            websocket_route(manager, "/ws"),
            Mount("/metrics", metrics_app(manager)),
            Route("/publish", publish, methods=["POST"]),
            Route("/local", local),
        ],
        lifespan=lifespan,
    )
