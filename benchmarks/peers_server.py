"""The servers that ``benchmarks/peers.py`` compares, one contender per process.

Run by the driver as ``python -m benchmarks.peers_server --contender NAME --port P``; a
person never needs to. The process serves WebSockets at ``/ws`` on 127.0.0.1 and takes
commands from its driver on stdin, answering each with one JSON line on stdout:

- ``publish COUNT BYTES [RATE [due]]``: publish COUNT events back to back (a burst), or
  RATE events per second, each with a ``data`` of about BYTES of JSON:
  ``{"seq": i, "sent_at": time.time_ns(), "pad": ...}``; ``sent_at`` is taken as each
  event is published, or with ``due`` (paced only) it is the time the event was due, so
  that a publisher held up by a busy event loop counts in the latency too;
- ``warmup``: publish 3 events with negative ``seq`` (clients do not count them), then
  run a full garbage collection;
- end of stdin: stop.

Once listening it says ``{"ready": true, "library": ..., "loop": ...}``: the
``budget_ws`` package it imported (None if none) and the class of its event loop.

Every contender sends ``{"op":"subscribed"}`` (budget_ws: its own ``subscribed`` frame)
once a client is registered, so the driver knows when everyone is listening. The
contenders (``CONTENDERS``):

- ``budget_ws``: ``budget_ws.adapters.asgi.WebSocketApp`` over a ``ConnectionManager`` on
  the memory backend (default limits); clients subscribe with ``budget-ws.v1`` frames;
  events are a pydantic ``Event`` published with ``manager.publish``. With
  ``--client-events`` (the hostile-client scenario, ``benchmarks/hostile.py``) it also
  accepts a ``note`` event from clients (``text: str``, ``amount: int``) whose handler
  does nothing, so that every client event is validated and answered; without it,
  clients may send no event, as before.
- ``naive``: the original app: Starlette's ``WebSocket``, a dict of sockets and
  ``await websocket.send_json(...)`` for each client in turn.
- ``broadcaster``: encode/broadcaster on ``memory://``, the pattern of its README: one
  ``broadcast.subscribe()`` per WebSocket and ``await websocket.send_text()`` per event.
  The process holds a subscription of its own from startup (the workaround for the
  subscribe race described in ``benchmarks/cross_worker_app.py``).
- ``websockets``: a plain ``websockets`` server (no ASGI, no uvicorn) calling
  ``websockets.broadcast()`` with each event encoded once; it registers a client and
  answers ``{"op":"subscribed"}`` when the client's first message (its subscribe)
  arrives, so that connect + subscribe costs it the round trip it costs budget_ws.
- ``native``: budget_ws's own server, ``budget_ws.native.NativeServer``, over the same
  ``ConnectionManager`` as ``budget_ws`` (memory backend, default limits, the same
  ``Event``, ``manager.publish`` and ``budget-ws.v1`` subscribe frames), no uvicorn.
- ``picows``: a plain picows server (Cython; no ASGI, no uvicorn) that encodes each event
  once and calls ``transport.send(WSMsgType.TEXT, payload)`` with the same bytes for
  every connection, answers the client's first message with ``{"op":"subscribed"}`` as
  the ``websockets`` contender does, answers its closing handshake; a 2 KiB initial read buffer
  (``read_buffer_init_size``), and nothing else that budget_ws lacks: no auto-ping, no
  subprotocol, no backpressure (like ``websockets.broadcast()``), picows' transport as
  picows picks it (``aiofastnet`` when installed, its default).
- ``floor``: the least a library can do with one send per event on uvicorn: a
  framework-free ASGI app that encodes each event once, ``put_nowait``s it into a bounded
  queue per connection, and has one writer task per connection doing one ASGI send per
  event.

uvicorn contenders run on asyncio's own loop, ``--ws`` as given (default
``websockets-sansio``), per-message deflate off unless ``--deflate``. The servers without
uvicorn (``PLAIN_SERVERS``: ``native``, ``websockets``, ``picows``) run on ``--loop``:
asyncio's own (default) or uvloop; ``native`` and ``picows`` offer no per-message deflate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["BUDGET_WS_PROTOCOL", "CONTENDERS", "NO_DEFLATE", "PLAIN_SERVERS", "main"]

CONTENDERS = ("budget_ws", "naive", "broadcaster", "websockets", "floor", "native", "picows")
PLAIN_SERVERS = ("native", "websockets", "picows")
"""The contenders served without uvicorn: they run on ``--loop``."""
BUDGET_WS_PROTOCOL = ("budget_ws", "native")
"""The contenders whose clients speak ``budget-ws.v1`` (the others' clients send nothing)."""
NO_DEFLATE = ("native", "picows")
"""The contenders that offer no per-message deflate."""
LOOPS = ("asyncio", "uvloop")
TOPIC = "bench"
SUBSCRIBED = '{"op":"subscribed"}'
PICOWS_READ_BUFFER = 2048
"""picows' initial read buffer per connection (``read_buffer_init_size``; 16 KiB by
default): a client sends the server little more than its subscribe."""
FLOOR_QUEUE = 1000
"""The floor's per-connection queue bound (budget_ws's default outbox holds 1,000)."""

Publish = Callable[[int, int, int], Awaitable[None]]
"""publish(count, payload_bytes, first_seq)."""
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
DUE_NS: ContextVar[int | None] = ContextVar("DUE_NS", default=None)
"""Set by a paced ``publish ... due``: the ``sent_at`` of the event being published."""


def payload(seq: int, size: int) -> dict[str, Any]:
    """An event's data of about ``size`` bytes of JSON; ``seq`` and ``sent_at`` first."""
    sent_at = DUE_NS.get() or time.time_ns()
    return {"seq": seq, "sent_at": sent_at, "pad": "x" * max(0, size - 48)}


# --------------------------------------------------------------------------------------
# Contenders


def budget_ws_manager(client_events: bool = False) -> tuple[Any, Publish]:
    """The ``ConnectionManager`` that ``budget_ws`` (ASGI) and ``native`` serve alike."""
    from budget_ws import ConnectionManager, Event

    class Tick(Event, name="tick", register=False):
        seq: int
        sent_at: int
        pad: str

    manager = ConnectionManager()
    if client_events:

        class Note(Event, name="note", register=False):
            text: str
            amount: int

        @manager.on(Note)
        async def note(message: Any) -> None:
            """Accept the note and do nothing: the cost measured is validating it."""

    async def publish(count: int, size: int, first: int) -> None:
        for seq in range(first, first + count):
            await manager.publish(Tick(**payload(seq, size)), topic=TOPIC)

    return manager, publish


def budget_ws_app(client_events: bool = False) -> tuple[ASGIApp, Publish]:
    from budget_ws.adapters.asgi import WebSocketApp

    manager, publish = budget_ws_manager(client_events)
    return WebSocketApp(manager), publish


def naive_app() -> tuple[ASGIApp, Publish]:
    from starlette.websockets import WebSocket, WebSocketDisconnect

    active: dict[int, WebSocket] = {}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await _lifespan(scope, receive, send)
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        await websocket.send_text(SUBSCRIBED)
        active[id(websocket)] = websocket
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            active.pop(id(websocket), None)

    async def publish(count: int, size: int, first: int) -> None:
        for seq in range(first, first + count):
            data = payload(seq, size)
            for websocket in list(active.values()):
                await websocket.send_json({"event": "tick", "data": data})

    return app, publish


def broadcaster_app() -> tuple[ASGIApp, Publish]:
    from broadcaster import Broadcast
    from starlette.websockets import WebSocket

    broadcast = Broadcast("memory://")
    ready = asyncio.Event()

    async def hold() -> None:
        async with broadcast.subscribe(channel=TOPIC) as subscriber:
            ready.set()
            async for _ in subscriber:  # type: ignore[union-attr]
                pass

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()

        async def receiver() -> None:
            async for _ in websocket.iter_text():
                pass

        async def sender() -> None:
            async with broadcast.subscribe(channel=TOPIC) as subscriber:
                await websocket.send_text(SUBSCRIBED)
                async for event in subscriber:  # type: ignore[union-attr]
                    await websocket.send_text(event.message)  # type: ignore[union-attr]

        receiving = asyncio.ensure_future(receiver())
        sending = asyncio.ensure_future(sender())
        await asyncio.wait((receiving, sending), return_when=asyncio.FIRST_COMPLETED)
        for task in (receiving, sending):
            task.cancel()

    @asynccontextmanager
    async def lifespan() -> Any:
        async with broadcast:
            task = asyncio.ensure_future(hold())
            await ready.wait()
            yield
            task.cancel()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            return await endpoint(WebSocket(scope, receive, send))
        return await _lifespan(scope, receive, send, lifespan)

    async def publish(count: int, size: int, first: int) -> None:
        for seq in range(first, first + count):
            message = json.dumps({"event": "tick", "data": payload(seq, size)})
            await broadcast.publish(channel=TOPIC, message=message)

    return app, publish


def floor_app() -> tuple[ASGIApp, Publish]:
    queues: set[asyncio.Queue[str]] = set()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await _lifespan(scope, receive, send)
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        queue: asyncio.Queue[str] = asyncio.Queue(FLOOR_QUEUE)

        async def writer() -> None:
            while True:
                text = await queue.get()
                await send({"type": "websocket.send", "text": text})

        await send({"type": "websocket.send", "text": SUBSCRIBED})
        queues.add(queue)
        writing = asyncio.ensure_future(writer())
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            queues.discard(queue)
            writing.cancel()

    async def publish(count: int, size: int, first: int) -> None:
        for seq in range(first, first + count):
            text = json.dumps({"event": "tick", "data": payload(seq, size)})
            for queue in queues:
                if queue.full():
                    queue.get_nowait()  # drop the oldest, as budget_ws's default policy
                queue.put_nowait(text)

    return app, publish


async def _lifespan(scope: Scope, receive: Any, send: Any, context: Any = None) -> None:
    if scope["type"] != "lifespan":
        return
    await receive()  # lifespan.startup
    if context is None:
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    async with context():
        await send({"type": "lifespan.startup.complete"})
        await receive()
    await send({"type": "lifespan.shutdown.complete"})


APPS = {"budget_ws": budget_ws_app, "naive": naive_app, "broadcaster": broadcaster_app,
        "floor": floor_app}  # fmt: skip


# --------------------------------------------------------------------------------------
# Serving


async def serve_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn

    if args.contender == "budget_ws":
        app, publish = budget_ws_app(client_events=args.client_events)
    else:
        app, publish = APPS[args.contender]()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        ws=args.ws,
        ws_per_message_deflate=args.deflate,
        loop="asyncio",
        log_level="warning",
        lifespan="on",
        backlog=4096,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    await control(publish)
    server.should_exit = True
    await serving


async def serve_websockets(args: argparse.Namespace) -> None:
    import websockets
    from websockets.asyncio.server import ServerConnection, serve

    connections: set[ServerConnection] = set()

    async def handler(connection: ServerConnection) -> None:
        await connection.recv()  # the client's subscribe: connect + subscribe, as budget_ws
        await connection.send(SUBSCRIBED)
        connections.add(connection)
        try:
            async for _ in connection:
                pass
        finally:
            connections.discard(connection)

    async def publish(count: int, size: int, first: int) -> None:
        for seq in range(first, first + count):
            message = json.dumps({"event": "tick", "data": payload(seq, size)})
            websockets.broadcast(connections, message)

    compression = "deflate" if args.deflate else None
    async with serve(handler, "127.0.0.1", args.port, compression=compression, backlog=4096,
                     ping_interval=None):  # fmt: skip
        await control(publish)


async def serve_native(args: argparse.Namespace) -> None:
    from budget_ws.native import NativeServer

    manager, publish = budget_ws_manager(client_events=args.client_events)
    # The backlog of the other contenders' listening sockets (uvicorn's, websockets').
    async with manager, NativeServer(manager, host="127.0.0.1", port=args.port, path="/ws",
                                     backlog=4096):  # fmt: skip
        await control(publish)


async def serve_picows(args: argparse.Namespace) -> None:
    from picows import (
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        ws_create_server,
    )

    connections: set[WSTransport] = set()
    subscribed = SUBSCRIBED.encode()

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT and transport not in connections:
                # The client's subscribe: connect + subscribe, as for budget_ws.
                transport.send(WSMsgType.TEXT, subscribed)
                connections.add(transport)
            elif frame.msg_type == WSMsgType.CLOSE:  # the closing handshake, as picows shows it
                connections.discard(transport)
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            connections.discard(transport)

    def route(request: WSUpgradeRequest) -> Listener | None:
        return Listener() if request.path == b"/ws" else None  # None: 404

    async def publish(count: int, size: int, first: int) -> None:
        for seq in range(first, first + count):
            message = json.dumps({"event": "tick", "data": payload(seq, size)}).encode()
            for transport in connections:
                transport.send(WSMsgType.TEXT, message)

    server = await ws_create_server(route, "127.0.0.1", args.port, backlog=4096,
                                    read_buffer_init_size=PICOWS_READ_BUFFER)  # fmt: skip
    async with server:
        await control(publish)


async def control(publish: Publish) -> None:
    """Answer the driver's commands until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    library = sys.modules.get("budget_ws")  # which checkout's src/ runs (hostile.py --src)
    kind = type(loop)
    _answer({"ready": True, "library": getattr(library, "__file__", None),
             "loop": f"{kind.__module__}.{kind.__qualname__}"})  # fmt: skip
    while line := (await reader.readline()).decode().strip():
        command, *values = line.split()
        began = time.perf_counter()
        started_ns = time.time_ns()
        collections = [generation["collections"] for generation in gc.get_stats()]
        if command == "publish":
            count, size = int(values[0]), int(values[1])
            rate = float(values[2]) if len(values) > 2 else 0.0
            due = values[3:4] == ["due"]
            if rate <= 0:
                await publish(count, size, 0)
            else:  # paced: each event at its due time, however long the previous took
                start = loop.time()
                start_ns = time.time_ns()
                for seq in range(count):
                    delay = start + seq / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    token = DUE_NS.set(start_ns + round(seq * 1e9 / rate)) if due else None
                    await publish(1, size, seq)
                    if token is not None:
                        DUE_NS.reset(token)
        elif command == "warmup":
            await publish(3, 64, -3)
            # Start the measurement from a collected heap: otherwise a full collection
            # left pending by connecting thousands of clients lands in whichever burst
            # comes next (0.5 s at 10,000 connections), depending on heap sizes by chance.
            gc.collect()
        seconds = round(time.perf_counter() - began, 6)
        collected = [g["collections"] - c for g, c in zip(gc.get_stats(), collections, strict=True)]
        _answer({"done": command, "seconds": seconds, "started_ns": started_ns, "gc": collected})


def _answer(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers_server")
    parser.add_argument("--contender", choices=CONTENDERS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws", default="websockets-sansio")
    parser.add_argument("--deflate", action="store_true", help="offer per-message deflate")
    parser.add_argument("--client-events", action="store_true",
                        help="budget_ws, native: accept a `note` event from clients")  # fmt: skip
    parser.add_argument("--loop", choices=LOOPS, default="asyncio",
                        help="event loop of the servers without uvicorn "
                        f"({', '.join(PLAIN_SERVERS)}); uvicorn's is asyncio's")  # fmt: skip
    args = parser.parse_args()
    if args.loop != "asyncio" and args.contender not in PLAIN_SERVERS:
        parser.error(f"--loop {args.loop}: {args.contender} runs on uvicorn's asyncio loop")
    if args.deflate and args.contender in NO_DEFLATE:
        parser.error(f"--deflate: {args.contender} offers no per-message deflate")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    serve = {"websockets": serve_websockets, "native": serve_native,
             "picows": serve_picows}.get(args.contender, serve_uvicorn)  # fmt: skip
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
