"""The benchmarks' client processes: many WebSocket clients that count and time events.

Run by the drivers (``benchmarks/cross_worker.py``, ``benchmarks/peers.py``) as
``python -m benchmarks.loadgen --urls ... --count N``; a person never needs to. Each
process holds ``--count`` clients of ``benchmarks/wsclient.py`` spread over ``--urls``
(client i of the run connects to ``urls[i % len(urls)]``), and talks to its driver in
JSON lines:

- once every client is connected and subscribed, it prints ``{"ready": N, ...}`` with
  two files of nanoseconds per client (``array("q")``): ``connect_file``, from the
  moment the process set out to connect the client (waiting for one of the
  ``--connect-concurrency`` slots included) to its ``subscribed`` frame, and
  ``handshake_file``, from the moment its connection started (a slot free: TCP connect,
  opening handshake, subscribe) to that frame;
- ``expect K`` on stdin: wait until every client has counted K events in all (or
  ``--drain`` seconds), then print what was received since the previous report and the
  latencies (in a file, as ``array("q")`` of nanoseconds: too many for a JSON line);
- ``resume S`` on stdin (stalled clients): read again until each connection is closed
  or nothing arrives for S seconds, then print per client the bytes it read, the events
  it counted, and the close code and reason the server sent (``null``: not closed);
- end of stdin: close every connection and exit.

Subscribing: each client sends ``{"op": "subscribe", "topic": ...}``, with ``--protocol
budget-ws`` after offering the ``budget-ws.v1`` subprotocol. Either way a client counts as
subscribed when a frame with ``"op":"subscribed"`` arrives (every contender app sends one:
the ``websockets`` and ``picows`` servers in answer to that first message, so that their
connect + subscribe is the same round trip as budget_ws's; the uvicorn peers unasked).
An event is any frame with an ``"event"`` key; its ``data`` carries ``seq`` (negative:
warm-up, not counted) and ``sent_at``
(``time.time_ns()`` when the event was published, or when it was due, see the drivers).
A message may hold several frames separated by ``"\\n"`` (budget_ws joins queued frames).

``--stalled`` clients stop reading once subscribed, with a small ``SO_RCVBUF``: the
slow consumers of the stalled-client scenario. They are never counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from urllib.parse import urlsplit

from benchmarks.wsclient import Receiver, connect, run_client

__all__ = ["discard_dumps", "main", "read_dump"]

SUBPROTOCOL = "budget-ws.v1"


class Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.count: int = args.count
        self.received = [0] * self.count
        self.latencies = array("q")
        self.last_receipt = 0
        self.messages = 0
        """WebSocket messages that carried events: deliveries / messages is the coalescing."""
        self.expected: int | None = None
        self.complete = 0
        self.done = asyncio.Event()
        self.connections: list[Receiver] = []
        self.indices: list[int] = []
        """The client index of each of ``connections`` (they open in any order)."""
        self.subscribed: list[asyncio.Future[None]] = []

    def handler(self, index: int) -> object:
        loads = json.loads
        latencies = self.latencies
        received = self.received
        subscribed = self.subscribed[index]

        def on_message(payload: bytes, now: int) -> None:
            counted = 0
            for line in payload.split(b"\n"):
                if b'"event"' not in line:
                    if line and loads(line).get("op") == "subscribed" and not subscribed.done():
                        subscribed.set_result(None)
                    continue
                # Events are the hot path: two integers read without decoding the JSON.
                seq = _integer_after(line, b'"seq":')
                if seq < 0:
                    continue
                latencies.append(now - _integer_after(line, b'"sent_at":'))
                counted += 1
            if counted:
                self.last_receipt = now
                self.messages += 1
                total = received[index] + counted
                received[index] = total
                expected = self.expected
                if expected is not None and total >= expected > total - counted:
                    self.complete += 1
                    if self.complete == self.count:
                        self.done.set()

        return on_message

    async def open(self, index: int, limiter: asyncio.Semaphore) -> int:
        """Connect and subscribe client ``index``; returns the ns from the moment its
        connection started (a slot of ``--connect-concurrency`` free) to its ``subscribed``."""
        args = self.args
        url = urlsplit(args.urls[(args.first + index) % len(args.urls)])
        async with limiter:
            began = time.perf_counter_ns()
            connection = await connect(
                url.hostname or "127.0.0.1",
                url.port or 80,
                url.path or "/",
                self.handler(index),  # type: ignore[arg-type]
                subprotocol=SUBPROTOCOL if args.protocol == "budget-ws" else None,
                receive_buffer=args.receive_buffer,
                deflate=args.deflate,
                timeout=args.connect_timeout,
            )
            self.connections.append(connection)
            self.indices.append(index)
            # Every client asks, so that connect + subscribe is the same round trip for
            # every contender (the plain ones answer the first message they get).
            connection.send_text(json.dumps({"op": "subscribe", "topic": args.topic}))
            await asyncio.wait_for(self.subscribed[index], args.connect_timeout)
            took = time.perf_counter_ns() - began
            if args.stalled:
                assert connection.transport is not None
                connection.transport.pause_reading()
            return took

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.subscribed = [loop.create_future() for _ in range(self.count)]
        limiter = asyncio.Semaphore(self.args.connect_concurrency)
        connect_ns = array("q")
        handshake_ns = array("q")

        async def timed(index: int) -> None:
            began = time.perf_counter_ns()
            handshake_ns.append(await self.open(index, limiter))
            connect_ns.append(time.perf_counter_ns() - began)

        await asyncio.gather(*(timed(index) for index in range(self.count)))
        ready = {
            "ready": self.count,
            "connect_file": _dump(connect_ns),
            "handshake_file": _dump(handshake_ns),
        }
        self.report(ready)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            command, _, value = line.partition(" ")
            if command == "expect":
                await self.expect(int(value))
            elif command == "resume":
                await self.resume(float(value))
        for connection in self.connections:
            connection.abort()

    async def expect(self, expected: int) -> None:
        self.expected = expected
        self.complete = sum(1 for value in self.received if value >= expected)
        if self.complete == self.count or self.args.stalled:
            self.done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), self.args.drain)
        closed = sum(1 for connection in self.connections if connection.closed.done())
        urls = self.args.urls
        by_url = dict.fromkeys(urls, 0)
        for index, value in enumerate(self.received):
            by_url[urls[(self.args.first + index) % len(urls)]] += value
        self.report({
            "received": sum(self.received),
            "by_url": by_url,
            "complete_clients": sum(1 for value in self.received if value >= expected),
            "closed_clients": closed,
            "last_receipt": self.last_receipt,
            "messages": self.messages,
            "latency_file": _dump(self.latencies),
        })  # fmt: skip
        del self.latencies[:]  # in place: the handlers hold this array
        self.last_receipt = 0
        self.messages = 0
        self.done = asyncio.Event()

    async def resume(self, quiet: float) -> None:
        """Drain what the stalled sockets hold and learn how the server ended them.

        Bounded: each connection is read until it closes or stays silent ``quiet``
        seconds, and the whole at most ``--drain`` seconds.
        """
        for connection in self.connections:
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.resume_reading()
        deadline = time.monotonic() + self.args.drain
        while time.monotonic() < deadline:
            before = sum(connection.bytes_received for connection in self.connections)
            open_ = [c.closed for c in self.connections if not c.closed.done()]
            if not open_:
                break
            await asyncio.wait(open_, timeout=quiet)
            if sum(connection.bytes_received for connection in self.connections) == before:
                break  # nothing arrived for `quiet` seconds: the server holds nothing more
        self.report({
            "stalled_clients": [
                {"bytes_read": connection.bytes_received, "events": received,
                 "close_code": connection.close_code if connection.closed.done() else None,
                 "close_reason": connection.close_reason,
                 "closed": connection.closed.done()}
                for connection, received in zip(
                    self.connections, [self.received[i] for i in self.indices], strict=True
                )
            ],
        })  # fmt: skip

    @staticmethod
    def report(message: dict[str, object]) -> None:
        print(json.dumps(message), flush=True)


def _integer_after(line: bytes, key: bytes) -> int:
    start = line.index(key) + len(key)
    while line[start] == 32:  # json.dumps' default separators put a space after ":"
        start += 1
    end = start + 1
    while line[end] in _DIGITS:
        end += 1
    return int(line[start:end])


_DIGITS = frozenset(b"0123456789")


def _dump(values: array[int]) -> str:
    handle, path = tempfile.mkstemp(prefix="budget-ws-bench-", suffix=".q")
    with os.fdopen(handle, "wb") as file:
        values.tofile(file)
    return path


def read_dump(path: str) -> array[int]:
    """Read (and delete) a file of ``array("q")`` values written by a client process."""
    values = array("q")
    with open(path, "rb") as file:
        values.frombytes(file.read())
    os.unlink(path)
    return values


def discard_dumps(ready: dict[str, object]) -> None:
    """Delete the files of a ``ready`` line whose figures the driver does not read."""
    for key in ("connect_file", "handshake_file"):
        path = ready.get(key)
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--urls", nargs="+", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--protocol", choices=("budget-ws", "plain"), default="plain")
    parser.add_argument("--topic", default="bench")
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--stalled", action="store_true")
    parser.add_argument("--receive-buffer", type=int)
    parser.add_argument("--deflate", action="store_true", help="offer per-message deflate")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--connect-concurrency", type=int, default=64)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_client(Clients(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
