"""The receiving worker of ``benchmarks/postgres.py``: a process with its own backend.

``python -m benchmarks.postgres_receiver --contender C --url URL --topic T`` subscribes
to one topic and talks to the driver in JSON lines:

- prints ``{"ready": ...}`` once subscribed (every event published after it arrives);
- on ``start N`` (stdin), notes its CPU time and prints ``{"started": true}``; from then
  on it waits for the events ``seq`` 0 to N - 1 (negative ones are the warm-up);
- on ``report DRAIN``, waits at most DRAIN seconds for the rest, then prints what it got.

budget_ws contenders receive through the backend's listener (``Backend.subscribe(topic,
listener)``, what a ``ConnectionManager`` subscribes its connections with), timestamped
when ``deliver()`` is called; broadcaster through ``Broadcast.subscribe(channel)``,
timestamped when its subscriber yields the event. Either way the receipt is the moment
the library hands the event to the app, which parses the JSON for ``sent_at``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from benchmarks.measure import cpu_seconds

__all__ = ["main"]


class Receipts:
    """What arrived: latency per event, duplicates, gaps in offsets, CPU until the last."""

    def __init__(self) -> None:
        self.expected = -1
        self.seen: set[int] = set()
        self.latencies_ns: list[int] = []
        self.duplicates = 0
        self.offset_gaps = 0
        self.resyncs = 0
        self.last_offset: int | None = None
        self.cpu_start = 0.0
        self.cpu_end: float | None = None
        self.last_receipt = 0
        self.done = anyio.Event()

    def start(self, expected: int) -> None:
        self.expected = expected
        self.cpu_start = cpu_seconds(os.getpid())

    def record(self, message: bytes | str, offset: int | None = None) -> None:
        now = time.time_ns()
        if offset is not None:
            if self.last_offset is not None and offset != self.last_offset + 1:
                self.offset_gaps += 1
            self.last_offset = offset
        data = json.loads(message)["data"]
        seq = data["seq"]
        if seq < 0 or self.expected < 0:
            return  # the warm-up
        if seq in self.seen:
            self.duplicates += 1
            return
        self.seen.add(seq)
        self.latencies_ns.append(now - data["sent_at"])
        self.last_receipt = now
        if len(self.seen) == self.expected:
            self.cpu_end = cpu_seconds(os.getpid())
            self.done.set()

    def report(self) -> dict[str, Any]:
        cpu_end = self.cpu_end if self.cpu_end is not None else cpu_seconds(os.getpid())
        return {
            "received": len(self.seen),
            "duplicates": self.duplicates,
            "offset_gaps": self.offset_gaps,
            "resyncs": self.resyncs,
            "cpu_seconds": round(cpu_end - self.cpu_start, 6),
            "last_receipt": self.last_receipt,
            "latencies_ns": self.latencies_ns,
        }


class _Listener:
    """budget_ws's ``Listener``: the backend calls it from its own task."""

    def __init__(self, receipts: Receipts) -> None:
        self.receipts = receipts

    def deliver(self, topic: str, position: Any, payload: bytes) -> None:
        self.receipts.record(payload, position.offset)

    def resync(self, topic: str, position: Any) -> None:
        self.receipts.resyncs += 1


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _commands(receipts: Receipts) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return  # the driver is gone
        command, _, argument = line.strip().partition(" ")
        if command == "start":
            receipts.start(int(argument))
            _say({"started": True})
        elif command == "report":
            with anyio.move_on_after(float(argument)):
                await receipts.done.wait()
            _say(receipts.report())
            return


async def _budget_ws(url: str, topic: str, receipts: Receipts) -> None:
    from budget_ws.backends import create_backend

    async with create_backend(url) as backend:
        await backend.subscribe(topic, _Listener(receipts))
        _say({"ready": True, "library": _library()})
        await _commands(receipts)


async def _broadcaster(url: str, channel: str, receipts: Receipts) -> None:
    from broadcaster import Broadcast

    async def consume(subscriber: Any) -> None:
        async for event in subscriber:
            receipts.record(event.message)

    async with (
        Broadcast(url) as broadcast,
        broadcast.subscribe(channel) as subscriber,
        anyio.create_task_group() as group,
    ):
        group.start_soon(consume, subscriber)
        _say({"ready": True, "library": _library()})
        await _commands(receipts)
        group.cancel_scope.cancel()


def _library() -> str:
    import budget_ws

    return str(budget_ws.__file__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres_receiver")
    parser.add_argument("--contender", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args(argv)
    receipts = Receipts()
    receive = _broadcaster if args.contender == "broadcaster-postgres" else _budget_ws
    anyio.run(receive, args.url, args.topic, receipts, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
