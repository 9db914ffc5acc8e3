"""A Starlette app for the browser tests of the bundled client (``test_client.py``).

Run by the ``live_server`` fixture as ``uvicorn client_app:app_factory --factory``. It
serves the client from the asset route, a page that records what the client does, and
test-only endpoints that publish, drop every connection, or push frames verbatim.

Environment:
    BUDGET_WS_HISTORY: events the memory backend keeps per topic (default 1000).
    BUDGET_WS_BACKEND: a backend URL instead of the memory backend (e.g. redis://...).
    BUDGET_WS_HEARTBEAT: heartbeat interval and timeout in seconds (default 20).
    BUDGET_WS_TOKEN: when set, a WebSocket must carry ``?token=<it>`` or is refused.
    BUDGET_WS_CLIENT_FILE: a ``budget-ws.js`` to serve instead of the bundled one, to
        measure another version of the client with the same tests (e.g. the previous
        release: ``git show HEAD:src/budget_ws/static/budget-ws.js > /tmp/old.js``).

The page (``/``) takes query parameters ``topic`` (default ``t``), ``ws`` (the URL given to
``connect``, default ``/ws``), ``storage=1`` (keep positions in ``sessionStorage``) and
``defaults=1`` (the client's own backoff, not the quick one of most tests), and fills
``window.received`` (events), ``window.states`` (the client's ``budget-ws:`` events, each
with ``at``, the page's ``Date.now()``),
``window.resyncs`` (``onResync`` calls), ``window.controls`` (every control frame received),
``window.messages`` (frames per WebSocket message), ``window.sent`` (frames sent) and
``window.attempts`` (WebSockets created).
"""

from __future__ import annotations

import json
import os
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

const ws = connect(params.get("ws") || "/ws", {
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


def app_factory() -> Starlette:
    """Build the app from the environment (uvicorn ``--factory``)."""
    history = int(os.environ.get("BUDGET_WS_HISTORY", "1000"))
    beat = float(os.environ.get("BUDGET_WS_HEARTBEAT", "20"))
    token = os.environ.get("BUDGET_WS_TOKEN")
    backend_url = os.environ.get("BUDGET_WS_BACKEND")
    client_file = os.environ.get("BUDGET_WS_CLIENT_FILE")
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
        return HTMLResponse(PAGE.replace("__CLIENT_URL__", module))

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
        query = request.query_params
        code = int(query.get("code", "1012"))
        connections = list(manager.connections.values())
        for connection in connections:
            connection.close(code, "test: connection dropped")
        positions = await publish_ticks(
            query.get("topic", "t"), int(query.get("count", "0")), False
        )
        return JSONResponse({"closed": len(connections), "positions": positions})

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

    return Starlette(
        routes=[
            Route("/", page),
            Route("/publish", publish, methods=["POST"]),
            Route("/drop-connections", drop_connections, methods=["POST"]),
            Route("/resubscribe", resubscribe, methods=["POST"]),
            Route("/inject", inject, methods=["POST"]),
            Route("/stats", stats),
            websocket_route(manager, "/ws", authenticate=authenticate),
            client_route("/budget-ws"),
            *([Route("/client-under-test.js", client_under_test)] if client_file else []),
        ],
        lifespan=lifespan(manager),
    )
