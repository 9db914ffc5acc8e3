"""A worker of ``benchmarks/presence.py``: one manager on Redis, in-memory connections.

``python -m benchmarks.presence_worker --redis-url URL --key-prefix P [--presence]`` runs
one ``ConnectionManager`` on a ``RedisBackend`` of its own, as one worker of an app, and
serves connections that live in this process: each is a :class:`Tab`, a transport that
sends its subscribe, then counts what the server sends it (frames and bytes by kind,
the newest presence ``count``) and keeps nothing else. No socket and no client process
take CPU from the worker, so thousands of connections fit beside it on a small machine.

Every principal is a user id and ``identify`` makes it that user, with a small public
``info``. The driver talks in JSON lines: one command object on stdin (``{"do": ...}``),
one answer line on stdout. ``{"ready": ...}`` comes first, once the manager runs; end of
stdin closes the manager (its presence rows are removed) and exits.

Commands: ``connect`` (a group of users, at most ``concurrency`` connecting at once, or
one at a time ``spacing`` seconds apart), ``disconnect`` (a group), ``status`` and
``frames`` (what a group was sent), ``query`` (time ``manager.presence()``) and
``probe`` (one more connection asking for presence: its snapshot frame).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc

__all__ = ["Tab", "main"]

PRESENCE_OP = '{"op":"presence'
DIFF_OP = '{"op":"presence_diff"'
_COUNT = re.compile(r'"count":(\d+)')
HEARTBEAT_SECONDS = 3600.0
"""The tabs never answer pings: no heartbeat may close them during a run."""


class Tab:
    """The server's side of one in-memory connection: sends a subscribe, counts the rest.

    Frames are counted one by one (budget_ws joins frames that queued up into one message,
    separated by ``"\\n"``); only presence frames are looked into, for their ``count``.
    """

    __slots__ = (
        "_leave",
        "close_code",
        "count",
        "diffs",
        "done",
        "failed",
        "frames",
        "group",
        "inbox",
        "keep",
        "last_presence_ns",
        "presence_bytes",
        "snapshot",
        "snapshot_seen",
        "snapshots",
        "subscribed",
        "topic",
        "user",
    )

    def __init__(self, user: str, group: str, topic: str, presence: bool, keep: bool = False):
        self.user = user
        self.group = group
        self.topic = topic
        frame: dict[str, Any] = {"op": "subscribe", "topic": topic, "id": 1}
        if presence:
            frame["presence"] = True
        self.inbox = [json.dumps(frame, separators=(",", ":"))]
        self.keep = keep
        self.snapshot = ""
        """The last presence snapshot frame, when ``keep``."""
        self.snapshot_seen = anyio.Event()
        """Set once a snapshot was kept, or the connection closed."""
        self.subscribed = anyio.Event()
        """Set once the subscribe was answered, or the connection closed."""
        self.failed = ""
        self.done = anyio.Event()
        """Set once the manager stopped serving this connection."""
        self._leave = anyio.Event()
        self.close_code: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start counting anew (a phase of the run)."""
        self.frames = 0
        self.snapshots = 0
        self.diffs = 0
        self.presence_bytes = 0
        self.count = -1
        self.last_presence_ns = 0

    # Transport

    async def send_text(self, text: str) -> None:
        for line in text.split("\n"):
            self.frames += 1
            if line.startswith(PRESENCE_OP):
                self.presence_bytes += len(line.encode())
                self.last_presence_ns = time.time_ns()
                found = _COUNT.search(line, 0, 200)
                if found is not None:
                    self.count = int(found.group(1))
                if line.startswith(DIFF_OP):
                    self.diffs += 1
                else:
                    self.snapshots += 1
                    if self.keep:
                        self.snapshot = line
                        self.snapshot_seen.set()
            elif not self.subscribed.is_set():
                if line.startswith('{"op":"subscribed"') and f'"topic":"{self.topic}"' in line:
                    self.subscribed.set()
                elif line.startswith('{"op":"error"'):
                    self.failed = line[:300]
                    self.subscribed.set()

    async def receive(self) -> str | bytes:
        if self.inbox:
            return self.inbox.pop(0)
        await self._leave.wait()
        from budget_ws import ConnectionClosed

        raise ConnectionClosed(1000, "client closed")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code
        if not self.subscribed.is_set():
            self.failed = f"closed with {code} {reason}"
            self.subscribed.set()
        self.snapshot_seen.set()
        self._leave.set()

    def leave(self) -> None:
        """Close from the client's side, as a tab being closed."""
        self._leave.set()


def _summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0, "max": 0}
    return {"mean": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}


class Worker:
    """The manager and its tabs, by group."""

    def __init__(self, manager: Any, task_group: anyio.abc.TaskGroup) -> None:
        self.manager = manager
        self.task_group = task_group
        self.groups: dict[str, list[Tab]] = {}

    async def _serve(self, tab: Tab) -> None:
        try:
            await self.manager.serve(tab, principal=tab.user)
        finally:
            tab.done.set()
            tab.subscribed.set()

    async def _open(self, tab: Tab, limit: float) -> None:
        """Serve ``tab`` and wait (at most ``limit`` seconds) for its subscribe's answer."""
        self.task_group.start_soon(self._serve, tab)
        with anyio.move_on_after(limit):
            await tab.subscribed.wait()
        if not tab.subscribed.is_set():
            tab.failed = f"no answer to the subscribe within {limit:g} s"

    async def connect(self, command: dict[str, Any]) -> dict[str, Any]:
        group = self.groups.setdefault(command["group"], [])
        users = [f"{command['prefix']}{index:06d}" for index in
                 range(command["first"], command["first"] + command["count"])]  # fmt: skip
        tabs = [Tab(user, command["group"], command["topic"], command["presence"])
                for user in users]  # fmt: skip
        group.extend(tabs)
        timeout = float(command.get("timeout", 60.0))
        spacing = float(command.get("spacing", 0.0))
        began = time.perf_counter()
        if spacing:
            for number, tab in enumerate(tabs):
                await anyio.sleep(max(0.0, began + number * spacing - time.perf_counter()))
                await self._open(tab, timeout)
        else:
            limiter = anyio.CapacityLimiter(int(command.get("concurrency", 1_000_000)))

            async def one(tab: Tab) -> None:
                async with limiter:
                    await self._open(tab, timeout)

            async with anyio.create_task_group() as connecting:
                for tab in tabs:
                    connecting.start_soon(one, tab)
        failed = [tab.failed for tab in tabs if tab.failed]
        return {"connected": len(tabs) - len(failed), "failed": len(failed),
                "errors": failed[:3], "seconds": round(time.perf_counter() - began, 3)}  # fmt: skip

    async def disconnect(self, command: dict[str, Any]) -> dict[str, Any]:
        """Close the group's first ``count`` tabs (all by default) from the client's side."""
        group = self.groups.get(command["group"], [])
        count = int(command.get("count", len(group)))
        tabs, group[:count] = group[:count], []
        spacing = float(command.get("spacing", 0.0))
        began = time.perf_counter()
        with anyio.move_on_after(float(command.get("timeout", 60.0))):
            for number, tab in enumerate(tabs):
                if spacing:
                    await anyio.sleep(max(0.0, began + number * spacing - time.perf_counter()))
                tab.leave()
                if spacing:
                    await tab.done.wait()
            for tab in tabs:
                await tab.done.wait()
        left = sum(1 for tab in tabs if tab.done.is_set())
        return {"disconnected": left, "still_open": len(tabs) - left,
                "seconds": round(time.perf_counter() - began, 3)}  # fmt: skip

    def status(self, command: dict[str, Any]) -> dict[str, Any]:
        tabs = self.groups.get(command["group"], [])
        counts = [tab.count for tab in tabs]
        return {"tabs": len(tabs), "min_count": min(counts, default=-1),
                "max_count": max(counts, default=-1),
                "last_presence_ns": max((tab.last_presence_ns for tab in tabs), default=0),
                "connections": len(self.manager.connections)}  # fmt: skip

    def frames(self, command: dict[str, Any]) -> dict[str, Any]:
        """What each tab of a group was sent since the last reset; then reset."""
        tabs = self.groups.get(command["group"], [])
        found = {
            "tabs": len(tabs),
            "presence_frames": _summary([tab.snapshots + tab.diffs for tab in tabs]),
            "snapshots": _summary([tab.snapshots for tab in tabs]),
            "diffs": _summary([tab.diffs for tab in tabs]),
            "presence_bytes": _summary([tab.presence_bytes for tab in tabs]),
            "frames": _summary([tab.frames for tab in tabs]),
            "last_presence_ns": max((tab.last_presence_ns for tab in tabs), default=0),
            "final_counts": sorted({tab.count for tab in tabs}),
        }
        if command.get("reset", True):
            for tab in tabs:
                tab.reset()
        return found

    async def query(self, command: dict[str, Any]) -> dict[str, Any]:
        """``manager.presence(topic)``, ``count`` times one after the other."""
        times: list[int] = []
        result = None
        for _ in range(int(command["count"])):
            started = time.perf_counter_ns()
            result = await self.manager.presence(command["topic"])
            times.append(time.perf_counter_ns() - started)
        assert result is not None
        return {"ns": times, "count": result.count, "listed": len(result.members),
                "truncated": result.truncated}  # fmt: skip

    async def probe(self, command: dict[str, Any]) -> dict[str, Any]:
        """One more connection asking for presence: the snapshot frame it is sent."""
        tab = Tab(command["user"], "probe", command["topic"], True, keep=True)
        await self._open(tab, 30.0)
        with anyio.move_on_after(30.0):
            await tab.snapshot_seen.wait()
        tab.leave()
        with anyio.move_on_after(30.0):
            await tab.done.wait()
        if not tab.snapshot:
            return {"error": tab.failed or "no presence frame"}
        frame = json.loads(tab.snapshot)
        return {"bytes": len(tab.snapshot.encode()), "listed": len(frame["members"]),
                "count": frame["count"], "truncated": frame["truncated"]}  # fmt: skip


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _commands(worker: Worker) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line.strip():
            return  # the driver is gone, or done
        command = json.loads(line)
        try:
            kind = command["do"]
            if kind == "connect":
                _say(await worker.connect(command))
            elif kind == "disconnect":
                _say(await worker.disconnect(command))
            elif kind == "status":
                _say(worker.status(command))
            elif kind == "frames":
                _say(worker.frames(command))
            elif kind == "query":
                _say(await worker.query(command))
            elif kind == "probe":
                _say(await worker.probe(command))
            else:
                _say({"error": f"unknown command {kind!r}"})
        except Exception as exc:  # reported to the driver, which fails the run
            _say({"error": f"{type(exc).__name__}: {exc}"})


async def _run(args: argparse.Namespace) -> None:
    import budget_ws
    from budget_ws import ConnectionManager, Heartbeat, PresenceOptions, User
    from budget_ws.backends.redis import RedisBackend

    def identify(principal: Any) -> User:
        return User(str(principal), {"name": f"User {principal}"})

    backend = RedisBackend(
        args.redis_url,
        key_prefix=args.key_prefix,
        health_check_interval=args.health_check_interval,
    )
    presence = None
    if args.presence:
        presence = PresenceOptions(ttl=args.ttl, interval=args.interval,
                                   max_members=args.max_members)  # fmt: skip
    manager = ConnectionManager(
        backend,
        identify=identify,
        presence=presence,
        heartbeat=Heartbeat(interval=HEARTBEAT_SECONDS, timeout=HEARTBEAT_SECONDS),
        shutdown_timeout=5,
    )
    async with manager, anyio.create_task_group() as task_group:
        worker = Worker(manager, task_group)
        _say({"ready": True, "library": budget_ws.__file__})
        await _commands(worker)
        for tabs in worker.groups.values():
            for tab in tabs:
                tab.leave()
        with anyio.move_on_after(10):
            for tabs in worker.groups.values():
                for tab in tabs:
                    await tab.done.wait()
        task_group.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.presence_worker")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument("--presence", action="store_true", help="PresenceOptions on")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument("--max-members", type=int, default=1000)
    parser.add_argument("--health-check-interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    anyio.run(_run, args, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
