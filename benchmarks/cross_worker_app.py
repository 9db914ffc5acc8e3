"""The app that ``benchmarks/cross_worker.py`` runs as two uvicorn workers (or two
native servers).

Run as ``uvicorn benchmarks.cross_worker_app:app_factory --factory`` (from the project
root); each process is one worker. The ``native`` contender runs without uvicorn, as
``python -m benchmarks.cross_worker_app --port P --status-file PATH`` (below). The
contender is chosen by environment variables:

    CROSS_WORKER_CONTENDER: ``budget_ws``, ``broadcaster``, ``broadcaster-primed`` or
        ``native``.
    CROSS_WORKER_REDIS_URL: the Redis URL. For budget_ws it may carry budget_ws options in
        its query string (``?key_prefix=...``), as ``ConnectionManager`` accepts them.
    CROSS_WORKER_CHANNEL: the topic (budget_ws) or channel (broadcaster); default ``bench``.

Both serve one WebSocket endpoint at ``/ws``:

- budget_ws: ``websocket_route(manager, "/ws")`` on a ``ConnectionManager`` over the Redis
  backend; clients speak ``budget-ws.v1`` and subscribe to the topic themselves.
- native: the same ``ConnectionManager`` served by ``budget_ws.native.NativeServer``
  (asyncio), no uvicorn and no Starlette. Both workers listen on one port with
  ``reuse_port=True`` (``SO_REUSEPORT``), so the kernel splits the clients between them.
  The worker writes ``{"ready": true, "connections": N, "pid": ...}`` to ``--status-file``
  once it listens, and again (with the connections it serves then) on ``SIGUSR1``: how
  the kernel split the clients. ``SIGTERM`` stops it (clients closed with 1012).
- broadcaster: the pattern of encode/broadcaster's README (its chat example): one
  ``async with broadcast.subscribe(channel)`` per WebSocket, and
  ``await websocket.send_text(event.message)`` for every event, beside a receiver task that
  notices the client leaving. The only addition is one ``{"op": "subscribed"}`` text sent
  once the subscription context is entered, so the benchmark knows when to start
  publishing (budget_ws clients get the equivalent ``subscribed`` frame from the library).
- broadcaster-primed: the same app, plus a workaround for two races of broadcaster 0.3.1
  that otherwise lose events here, so that its latency can be measured at all: (1) its
  Redis listener task may run before the first SUBSCRIBE is done, see no subscription, end
  ``listen()`` and wait for a flag that is never set again (that worker never receives
  anything); (2) WebSockets that subscribe while the channel's first subscription is in
  flight are replaced in its subscriber set and never receive anything. From startup, each
  worker holds a subscription on a channel of its own and then one on the benchmark's
  channel (drained by a task), so the listener is running and the channel's subscriber
  set exists before any client connects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

CONTENDER_VARIABLE = "CROSS_WORKER_CONTENDER"
REDIS_VARIABLE = "CROSS_WORKER_REDIS_URL"
CHANNEL_VARIABLE = "CROSS_WORKER_CHANNEL"
SUBSCRIBED = '{"op":"subscribed"}'


def budget_ws_manager(redis_url: str) -> Any:
    """The ``ConnectionManager`` of a budget_ws worker, served by Starlette or natively."""
    from budget_ws import ConnectionManager, Heartbeat

    return ConnectionManager(
        redis_url,
        # The runs last seconds: no heartbeat traffic in the measurement.
        heartbeat=Heartbeat(interval=120, timeout=120),
        shutdown_timeout=2,
    )


def budget_ws_app(redis_url: str) -> Starlette:
    from budget_ws.adapters.starlette import lifespan, websocket_route

    manager = budget_ws_manager(redis_url)
    return Starlette(routes=[websocket_route(manager, "/ws")], lifespan=lifespan(manager))


def broadcaster_app(redis_url: str, channel: str, *, primed: bool = False) -> Starlette:
    from broadcaster import Broadcast

    broadcast = Broadcast(redis_url)

    async def receiver(websocket: WebSocket) -> None:
        async for _ in websocket.iter_text():
            pass

    async def sender(websocket: WebSocket) -> None:
        async with broadcast.subscribe(channel=channel) as subscriber:
            await websocket.send_text(SUBSCRIBED)
            async for event in subscriber:  # type: ignore[union-attr]
                await websocket.send_text(event.message)  # type: ignore[union-attr]

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async with anyio.create_task_group() as task_group:

            async def run_receiver() -> None:
                await receiver(websocket)
                task_group.cancel_scope.cancel()

            task_group.start_soon(run_receiver)
            await sender(websocket)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with broadcast:
            if not primed:
                yield
                return
            # The workaround for two races of broadcaster 0.3.1 (see the module docstring):
            # hold, from startup, a subscription on a channel of the worker's own, then
            # one on the benchmark's channel, read and discarded by a task of its own.
            async with anyio.create_task_group() as task_group:
                ready = anyio.Event()

                async def hold() -> None:
                    own = f"{channel}:prime-{os.getpid()}"
                    async with (
                        broadcast.subscribe(channel=own),  # first: may strand the listener
                        broadcast.subscribe(channel=channel) as subscriber,  # then wakes it
                    ):
                        ready.set()
                        async for _ in subscriber:  # type: ignore[union-attr]
                            pass

                task_group.start_soon(hold)
                await ready.wait()
                yield
                task_group.cancel_scope.cancel()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)


def app_factory() -> Starlette:
    contender = os.environ.get(CONTENDER_VARIABLE, "budget_ws")
    redis_url = os.environ.get(REDIS_VARIABLE, "redis://127.0.0.1:6379/0")
    channel = os.environ.get(CHANNEL_VARIABLE, "bench")
    if contender == "budget_ws":
        return budget_ws_app(redis_url)
    if contender in ("broadcaster", "broadcaster-primed"):
        return broadcaster_app(redis_url, channel, primed=contender == "broadcaster-primed")
    raise ValueError(f"unknown {CONTENDER_VARIABLE}: {contender!r}")


# --------------------------------------------------------------------------------------
# The native contender: a NativeServer per worker process, one port shared


def _write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file at once (a reader never sees half of it)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(status))
    partial.replace(path)


async def serve_native(port: int, status_file: Path) -> None:
    from budget_ws.native import NativeServer

    redis_url = os.environ.get(REDIS_VARIABLE, "redis://127.0.0.1:6379/0")
    manager = budget_ws_manager(redis_url)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def status() -> None:
        connections = len(manager.connections)
        _write_status(status_file, {"ready": True, "pid": os.getpid(),
                                    "connections": connections})  # fmt: skip

    # The backlog of the uvicorn workers' listening sockets (uvicorn's default).
    async with manager, NativeServer(manager, host="127.0.0.1", port=port, path="/ws",
                                     reuse_port=True, backlog=2048):  # fmt: skip
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, status)
        status()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """One native worker (``CROSS_WORKER_CONTENDER=native``) until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cross_worker_app")
    parser.add_argument("--port", type=int, required=True, help="shared with SO_REUSEPORT")
    parser.add_argument("--status-file", type=Path, required=True)
    args = parser.parse_args(argv)
    contender = os.environ.get(CONTENDER_VARIABLE, "native")
    if contender != "native":
        parser.error(f"{CONTENDER_VARIABLE}={contender}: run it with uvicorn (app_factory)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve_native(args.port, args.status_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
