"""A Starlette app for the browser tests of the bundled client (``test_client.py``).

Run by the ``client_server`` fixture as ``uvicorn client_app:app_factory --factory``. It
serves the client from the asset route, a page that records what the client does, a page
that uses it through ``htmxTrigger``, and test-only endpoints that publish, drop every
connection, push frames verbatim, or stop and start the native server.

Environment:
    BUDGET_WS_HISTORY: events the memory backend keeps per topic (default 1000).
    BUDGET_WS_BACKEND: a backend URL instead of the memory backend (e.g. redis://...).
    BUDGET_WS_HEARTBEAT: heartbeat interval and timeout in seconds (default 20).
    BUDGET_WS_TOKEN: when set, a WebSocket must carry ``?token=<it>`` or is refused.
    BUDGET_WS_CLIENT_FILE: a ``budget-ws.js`` to serve instead of the bundled one, to
        measure another version of the client with the same tests (e.g. the previous
        release: ``git show HEAD:src/budget_ws/static/budget-ws.js > /tmp/old.js``).
    BUDGET_WS_NATIVE_PORT: when set, WebSockets are served by a
        :class:`~budget_ws.native.NativeServer` on this port of 127.0.0.1 (over the same
        manager, started in the lifespan), not by the app: the ASGI ``/ws`` route is gone
        and the page connects to ``ws://127.0.0.1:PORT/ws`` by default.
    BUDGET_WS_ORIGIN: with ``BUDGET_WS_NATIVE_PORT``, the origin whose pages the native
        server allows (the page's own, ``http://127.0.0.1:HTTP_PORT``: another port is
        another origin).

The page (``/``) takes query parameters ``topic`` (default ``t``), ``ws`` (the URL given to
``connect``, default ``/ws``, or the native server's URL), ``storage=1`` (keep positions in
``sessionStorage``) and ``defaults=1`` (the client's own backoff, not the quick one of most
tests), and fills ``window.received`` (events), ``window.states`` (the client's
``budget-ws:`` events, each with ``at``, the page's ``Date.now()``),
``window.resyncs`` (``onResync`` calls), ``window.controls`` (every control frame received),
``window.messages`` (frames per WebSocket message), ``window.sent`` (frames sent) and
``window.attempts`` (WebSockets created).

The htmx page (``/htmx``, htmx vendored by the family-budget demo) subscribes to ``t`` and
maps its ticks to htmx events on ``<body>`` with ``htmxTrigger``; ``#ticks`` re-fetches
``/ticks`` (how many ticks ``t`` has had) on a tick or a ``budget-ws:resync``. It fills
``window.ticks`` (``n`` of each tick event's detail), ``window.resyncs`` (the detail of each
``budget-ws:resync``) and ``window.subscriptions``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from budget_ws import (
    ConnectionManager,
    Event,
    Handshake,
    HandshakeRejected,
    Heartbeat,
    MemoryBackend,
    Position,
    create_backend,
)
from budget_ws.adapters import client_url
from budget_ws.adapters.starlette import client_route, lifespan, websocket_route
from budget_ws.native import NativeServer


class Tick(Event, name="browser_test_tick", register=False):
    """The event the tests publish: ``n`` counts the events of its topic, from 1."""

    n: int


PAGE = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>budget_ws client test</title>
<link rel="icon" href="data:,">
</head>
<body>
<script type="module">
import { connect, BudgetWS } from "__CLIENT_URL__";

const params = new URLSearchParams(location.search);
const topic = params.get("topic") || "t";
Object.assign(window, {
  received: [], states: [], resyncs: [], controls: [], messages: [], sent: [],
  subscriptions: [], attempts: 0,
});

// Sees what crosses the socket, below the client.
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    window.attempts += 1;
    this.addEventListener("message", (message) => {
      const lines = String(message.data).split("\\n").filter(Boolean);
      window.messages.push(lines.length);
      for (const line of lines) {
        const frame = JSON.parse(line);
        if (frame.op) window.controls.push(frame);
      }
    });
  }
  send(data) {
    window.sent.push(JSON.parse(data));
    super.send(data);
  }
}

const ws = connect(params.get("ws") || __WS_URL__, {
  ...(params.get("defaults") ? {} : { minDelay: 100, maxDelay: 1000 }),
  WebSocket: RecordingWebSocket,
  storage: params.get("storage") ? sessionStorage : null,
  onResync: (topic, position) => window.resyncs.push({ topic, position }),
});
ws.on("browser_test_tick", (data, frame) => {
  window.received.push({ n: data.n, topic: frame.topic, offset: frame.offset, epoch: frame.epoch });
});
ws.on("*", (data, frame) => {
  if (frame.event.startsWith("budget-ws:")) {
    window.states.push({ event: frame.event.slice(10), at: Date.now(), ...data });
  }
});
window.ws = ws;
window.BudgetWS = BudgetWS;
ws.subscribe(topic).then(
  (frame) => window.subscriptions.push(frame),
  (error) => window.subscriptions.push({ error: error.code }),
);
</script>
</body>
</html>
"""

HTMX = Path(__file__).resolve().parents[2] / "examples/family_budget/static/vendor/htmx.min.js"

HTMX_PAGE = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>budget_ws htmxTrigger test</title>
<link rel="icon" href="data:,">
<script src="/htmx.js"></script>
</head>
<body>
<div id="ticks" hx-get="/ticks"
     hx-trigger="browser_test_tick from:body, budget-ws:resync from:body">none</div>
<script type="module">
import { connect, htmxTrigger } from "__CLIENT_URL__";

Object.assign(window, { ticks: [], resyncs: [], subscriptions: [] });
document.body.addEventListener("browser_test_tick", (event) => window.ticks.push(event.detail.n));
document.body.addEventListener("budget-ws:resync", (event) => {
  window.resyncs.push({ topic: event.detail.topic, position: event.detail.position });
});
const ws = connect(__WS_URL__, { minDelay: 100, maxDelay: 1000 });
htmxTrigger(ws, ["browser_test_tick"], document.body);
window.ws = ws;
ws.subscribe("t").then((frame) => window.subscriptions.push(frame));
</script>
</body>
</html>
"""


def app_factory() -> Starlette:
    """Build the app from the environment (uvicorn ``--factory``)."""
    history = int(os.environ.get("BUDGET_WS_HISTORY", "1000"))
    beat = float(os.environ.get("BUDGET_WS_HEARTBEAT", "20"))
    token = os.environ.get("BUDGET_WS_TOKEN")
    backend_url = os.environ.get("BUDGET_WS_BACKEND")
    client_file = os.environ.get("BUDGET_WS_CLIENT_FILE")
    native_port = os.environ.get("BUDGET_WS_NATIVE_PORT")
    origin = os.environ.get("BUDGET_WS_ORIGIN")
    # What the pages connect to by default.
    ws_url = f"ws://127.0.0.1:{native_port}/ws" if native_port else "/ws"
    manager = ConnectionManager(
        create_backend(backend_url) if backend_url else MemoryBackend(history_size=history),
        heartbeat=Heartbeat(interval=beat, timeout=beat),
        shutdown_timeout=2,
    )
    counts: dict[str, int] = {}
    handshakes: list[str] = []

    def authenticate(handshake: Handshake) -> str:
        handshakes.append(handshake.path)
        if token is not None and handshake.query.get("token") != token:
            raise HandshakeRejected("bad token")
        return "tester"

    async def publish_ticks(topic: str, count: int, burst: bool) -> list[list[Any]]:
        positions: list[Position] = []

        async def one(n: int) -> None:
            positions.append(await manager.publish(Tick(n=n), topic=topic))

        start = counts.get(topic, 0)
        counts[topic] = start + count
        if burst:
            # Every publish delivers before its first await, so all the frames are queued
            # before any connection writer runs: they leave joined in one message.
            async with anyio.create_task_group() as group:
                for n in range(start + 1, start + count + 1):
                    group.start_soon(one, n)
        else:
            for n in range(start + 1, start + count + 1):
                await one(n)
        return [[position.offset, position.epoch] for position in positions]

    async def page(request: Request) -> HTMLResponse:
        module = "/client-under-test.js" if client_file else client_url("/budget-ws")
        return HTMLResponse(
            PAGE.replace("__CLIENT_URL__", module).replace("__WS_URL__", json.dumps(ws_url))
        )

    async def htmx_page(request: Request) -> HTMLResponse:
        html = HTMX_PAGE.replace("__CLIENT_URL__", client_url("/budget-ws"))
        return HTMLResponse(html.replace("__WS_URL__", json.dumps(ws_url)))

    async def htmx_script(request: Request) -> FileResponse:
        return FileResponse(HTMX, media_type="text/javascript")

    async def ticks(request: Request) -> HTMLResponse:
        """The fragment of the htmx page: how many ticks topic ``t`` has had."""
        return HTMLResponse(f"{counts.get('t', 0)} ticks")

    async def client_under_test(request: Request) -> FileResponse:
        assert client_file is not None
        return FileResponse(client_file, media_type="text/javascript")

    async def publish(request: Request) -> JSONResponse:
        """``?topic=t&count=1&burst=`` publishes ``count`` ticks."""
        query = request.query_params
        positions = await publish_ticks(
            query.get("topic", "t"), int(query.get("count", "1")), bool(query.get("burst"))
        )
        return JSONResponse({"positions": positions})

    async def drop_connections(request: Request) -> JSONResponse:
        """Close every connection with ``code`` (1012), then publish ``count`` ticks.

        An outage of one worker, simulated inside the process so that history survives:
        the ticks are published after the connections are closed and before any client
        can come back, so clients only get them by recovery.
        """
        return JSONResponse(await outage(request, "test: connection dropped"))

    async def outage(request: Request, reason: str) -> dict[str, Any]:
        query = request.query_params
        code = int(query.get("code", "1012"))
        connections = list(manager.connections.values())
        for connection in connections:
            connection.close(code, reason)
        positions = await publish_ticks(
            query.get("topic", "t"), int(query.get("count", "0")), False
        )
        return {"closed": len(connections), "positions": positions}

    async def resubscribe(request: Request) -> JSONResponse:
        """Subscribe every connection to ``topic`` again, server-side, from ``offset``."""
        query = request.query_params
        position = Position(int(query["offset"]), query["epoch"])
        connections = list(manager.connections.values())
        for connection in connections:
            await manager.subscribe(connection, query.get("topic", "t"), position=position)
        return JSONResponse({"resubscribed": len(connections)})

    async def inject(request: Request) -> JSONResponse:
        """Push the request body verbatim to every connection, as one message."""
        text = (await request.body()).decode()
        connections = list(manager.connections.values())
        for connection in connections:
            connection.push(text)
        return JSONResponse({"pushed": len(connections)})

    async def stats(request: Request) -> Response:
        body = {"connections": len(manager.connections), "handshakes": len(handshakes)}
        return Response(json.dumps(body), media_type="application/json")

    routes = [
        Route("/", page),
        Route("/publish", publish, methods=["POST"]),
        Route("/drop-connections", drop_connections, methods=["POST"]),
        Route("/resubscribe", resubscribe, methods=["POST"]),
        Route("/inject", inject, methods=["POST"]),
        Route("/stats", stats),
        Route("/htmx", htmx_page),
        Route("/htmx.js", htmx_script),
        Route("/ticks", ticks),
        client_route("/budget-ws"),
        *([Route("/client-under-test.js", client_under_test)] if client_file else []),
    ]
    if native_port is None:
        return Starlette(
            routes=[*routes, websocket_route(manager, "/ws", authenticate=authenticate)],
            lifespan=lifespan(manager),
        )

    # The native transport: the page's WebSockets go to a NativeServer on another port,
    # over the same manager. Another port is another origin: the page's must be allowed.
    assert origin is not None, "BUDGET_WS_ORIGIN: the origin of the page"
    natives: list[NativeServer] = []

    async def start_native() -> None:
        native = NativeServer(
            manager,
            port=int(native_port),
            authenticate=authenticate,
            allowed_origins=[origin],
        )
        await native.start()
        natives.append(native)

    async def native_stop(request: Request) -> JSONResponse:
        """Stop the NativeServer (the manager keeps running): stop listening, close every
        connection with ``code`` (1012), then publish ``count`` ticks, which clients only
        get by recovery once ``/native/start`` serves them again."""
        await natives.pop().aclose()
        return JSONResponse(await outage(request, "test: native server stopped"))

    async def native_start(request: Request) -> JSONResponse:
        """A new NativeServer on the same port, over the same manager."""
        await start_native()
        return JSONResponse({"port": natives[-1].port})

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        async with manager:
            await start_native()
            try:
                yield
            finally:
                # Stop listening first; the manager's shutdown closes the clients (1012).
                while natives:
                    await natives.pop().aclose()

    return Starlette(
        routes=[
            *routes,
            Route("/native/stop", native_stop, methods=["POST"]),
            Route("/native/start", native_start, methods=["POST"]),
        ],
        lifespan=run,
    )
