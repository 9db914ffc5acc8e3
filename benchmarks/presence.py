"""Presence, user streams and revocation on Redis (issue 11): what they cost, how fast.

Run it with ``python -m benchmarks.presence`` (``--help`` lists the options;
``benchmarks/README.md`` explains every figure). On a ``redis-server`` of the run's own
(or ``--redis-url``), each part with a key prefix of its own, deleted afterwards:

1. **Redis cost of a connection** (``redis-cost``): two workers
   (``benchmarks/presence_worker.py``: a ``ConnectionManager`` each, in-memory
   connections) reach Redis through ``benchmarks/wire.py``'s counting proxy. N identified
   users connect and subscribe a topic, then leave: all at once (storm) and one at a time,
   further apart than the presence interval (steady); with presence on (each asks for
   presence) and off (the same without it). Round trips and bytes each way come from the
   proxy, commands from ``INFO commandstats`` deltas; all per connection.
2. **presence() at 10,000 members** (``storm``, ``rows``): the time of
   ``manager.presence(topic)`` with 10,000 users connected across two workers; and over
   10,000 rows written through ``presence_write`` as two workers would; and the size of
   the ``presence`` snapshot a client is sent then (1,000 members listed).
3. **Presence frames per subscriber in a storm** (``storm``): 10,000 connections join
   one topic across two workers, each asking for presence, then all leave; observers
   that stay through both count what each phase sent them, members what the join sent
   them.
4. **Revocation** (``revocation``): two uvicorn workers (``benchmarks/presence_app.py``),
   a client process (``benchmarks/presence_client.py``) with background connections and
   target users of 3 tabs spread over both; this process calls ``unsubscribe_user`` and
   then ``disconnect_user`` for one user at a time, and the clients time the last tab's
   ``unsubscribed`` frame and the last socket's end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from benchmarks.children import JsonLinesChild
from benchmarks.console import grid, verdict_lines
from benchmarks.cross_worker import Worker, redis_snapshot, start_redis
from benchmarks.measure import cpu_seconds, free_port, percentiles
from benchmarks.provenance import describe, environment, load_average
from benchmarks.wire import RoundTripProxy

__all__ = [
    "IdleRates",
    "Query",
    "RedisCost",
    "Revocation",
    "StormFrames",
    "main",
    "results_document",
]

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "budget:1"
PARTS = ("redis-cost", "storm", "rows", "revocation")
TARGET_SECONDS = 1.0
"""disconnect_user and unsubscribe_user must reach every tab within this."""
QUIET_SECONDS = 0.5
"""Redis traffic through the proxy must stop this long before a window is closed."""
ANSWER_SECONDS = 600.0
"""The longest a worker may take to answer a command (a storm phase is bounded lower)."""
OUTBOX_BYTES_PER_MEMBER = 1024
"""``OutboxLimits.max_bytes`` per listed member where the default is too small for a
presence frame of them all (each member may carry ``max_info_bytes``, 512, of info)."""
COST_TTL = 600.0
COST_HEALTH_CHECK = 300.0
"""The cost windows' workers renew their presence (every ttl / 3) and ping Redis per
worker, not per connection: far enough apart to stay out of every window."""


@dataclass
class RedisCost:
    """One window of part 1: N connections arriving (or leaving) at two workers."""

    presence: bool
    mode: str
    """``storm`` (all at once) or ``steady`` (one at a time, ``spacing`` apart)."""
    phase: str
    """``connect`` or ``disconnect``."""
    connections: int
    spacing: float = 0.0
    seconds: float = 0.0
    """From the first connect (disconnect) to the last; the settling after is not in it."""
    round_trips: int = 0
    commands: dict[str, int] = field(default_factory=dict)
    """Commands Redis ran in the window, by name (those of scripts included)."""
    bytes_to_redis: int = 0
    bytes_from_redis: int = 0
    window_seconds: float = 0.0
    """The whole window: the connects (disconnects) and the settling after them."""
    worker_cpu_seconds: float = 0.0
    """Both workers' CPU time over the window, less what they spend idle in as long."""
    redis_cpu_seconds: float = 0.0
    """Redis's CPU time over the window, less what it spends idle in as long."""
    idle_cpu_per_second: dict[str, float] = field(default_factory=dict)
    """What was taken out: CPU seconds per second of the idle workers and Redis."""
    failed: int = 0
    per_connection: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class StormFrames:
    """What the presence frames of a storm cost a group of subscribers."""

    group: str
    """``observers`` (subscribed before, through both phases) or ``members``."""
    phase: str
    """``join`` or ``leave``."""
    subscribers: int
    changes: int
    """Users who joined (or left) during the phase."""
    interval: float
    seconds: float = 0.0
    """From the start of the storm to the last presence frame any subscriber got."""
    ticks: int = 0
    """The most presence_diff frames the interval lets through in ``seconds``."""
    presence_frames: dict[str, float] = field(default_factory=dict)
    snapshots: dict[str, float] = field(default_factory=dict)
    diffs: dict[str, float] = field(default_factory=dict)
    presence_bytes: dict[str, float] = field(default_factory=dict)
    final_counts: list[int] = field(default_factory=list)
    """The ``count`` of each subscriber's last presence frame (distinct values)."""
    expected_count: int = 0

    @property
    def bounded(self) -> bool:
        snapshot = 1 if self.group == "members" else 0
        return self.presence_frames.get("max", math.inf) <= self.ticks + snapshot

    @property
    def settled(self) -> bool:
        return self.final_counts == [self.expected_count]


@dataclass
class Query:
    """``manager.presence(topic)``, one call after the other."""

    source: str
    """``connections`` (users connected to two workers) or ``rows`` (written through
    ``presence_write`` as two workers would)."""
    users: int
    rows: int
    """Rows the store held for the topic (each worker stores ``max_members`` at most)."""
    max_members: int
    queries: int
    outbox_max_bytes: int | None = None
    """``OutboxLimits.max_bytes`` when raised from its default, as the manager requires
    for a presence frame of ``max_members`` to fit."""
    count: int = 0
    listed: int = 0
    truncated: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Revocation:
    """``unsubscribe_user`` or ``disconnect_user``, one user at a time, timed to the last tab."""

    operation: str
    repetitions: int
    tabs: int
    background: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    """From just before the call to the last tab's frame (or end), over repetitions."""
    call_ms: dict[str, float] = field(default_factory=dict)
    complete: int = 0
    """Repetitions in which every tab saw it within ``--revocation-timeout``."""
    close_codes: list[int | None] = field(default_factory=list)
    target_ms: float = TARGET_SECONDS * 1000
    error: str | None = None

    @property
    def p99_to_target(self) -> float | None:
        p99 = self.latency_ms.get("p99")
        return round(p99 / self.target_ms, 4) if p99 is not None else None


# --------------------------------------------------------------------------------------
# Processes


class PresenceWorker(JsonLinesChild):
    """A ``benchmarks.presence_worker`` child: one worker, in-memory connections."""

    @classmethod
    async def start(cls, redis_url: str, key_prefix: str, *, presence: bool,
                    args: argparse.Namespace, ttl: float = 30.0,
                    health_check_interval: float = 5.0) -> PresenceWorker:  # fmt: skip
        command = [sys.executable, "-m", "benchmarks.presence_worker", "--redis-url", redis_url,
                   "--key-prefix", key_prefix, "--interval", str(args.interval),
                   "--ttl", str(ttl), "--max-members", str(args.max_members),
                   "--health-check-interval", str(health_check_interval)]  # fmt: skip
        if presence:
            command.append("--presence")
        worker = cls(await anyio.open_process(command, cwd=ROOT, stderr=None), max_line=1 << 24)
        with anyio.fail_after(30):
            ready = await worker.line()
        import budget_ws

        if ready.get("library") != budget_ws.__file__:
            await worker.stop()
            raise RuntimeError(f"the worker imported {ready.get('library')}, this process "
                               f"{budget_ws.__file__}")  # fmt: skip
        return worker

    async def ask(self, **command: Any) -> dict[str, Any]:
        """Send one command and return its answer; a worker's error raises."""
        await self.send(json.dumps({"do": command.pop("do"), **command}))
        with anyio.fail_after(ANSWER_SECONDS):
            answer = await self.line()
        if "error" in answer:
            raise RuntimeError(f"worker: {answer['error']}")
        return answer

    async def close(self) -> None:
        """End of stdin: the worker closes its manager (its presence rows go) and exits."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        with anyio.move_on_after(15):
            await self.process.wait()
        await self.stop()


class AppWorker(Worker):
    """``uvicorn benchmarks.presence_app:app_factory`` on a free loopback port.

    ``cross_worker.Worker``'s waiting and stopping, for another app: this ``__init__``
    starts the process in place of that one.
    """

    def __init__(self, name: str, redis_url: str) -> None:
        self.name = name
        self.port = free_port()
        command = [
            sys.executable, "-m", "uvicorn", "benchmarks.presence_app:app_factory",
            "--factory", "--app-dir", str(ROOT), "--host", "127.0.0.1",
            "--port", str(self.port), "--ws", "websockets-sansio", "--loop", "asyncio",
            "--ws-per-message-deflate", "false", "--log-level", "warning",
            "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip
        variables = {**os.environ, "PRESENCE_BENCH_REDIS_URL": redis_url}
        handle, self.log = tempfile.mkstemp(prefix=f"presence-{name}-", suffix=".log")
        with os.fdopen(handle, "wb") as log:
            self.process = subprocess.Popen(
                command, env=variables, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )


class RevocationClients(JsonLinesChild):
    """A ``benchmarks.presence_client`` child: the background and the targets' tabs."""

    @classmethod
    async def start(cls, urls: Sequence[str], args: argparse.Namespace) -> RevocationClients:
        command = [sys.executable, "-m", "benchmarks.presence_client", "--urls", *urls,
                   "--topic", TOPIC, "--users", str(args.revocation_repetitions),
                   "--tabs", str(args.tabs), "--background", str(args.background)]  # fmt: skip
        return cls(await anyio.open_process(command, cwd=ROOT, stderr=None))


# --------------------------------------------------------------------------------------
# Shared steps


def _with_prefix(url: str, key_prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}key_prefix={key_prefix}"


def _new_prefix(part: str) -> str:
    return f"bench-presence-{part}-{uuid.uuid4().hex[:8]}"


def _delete_keys(url: str, key_prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url) as admin:
        keys = list(admin.scan_iter(match=f"{key_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            admin.delete(*keys[start : start + 1000])


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _both(workers: Sequence[PresenceWorker], **commands: Any) -> list[dict[str, Any]]:
    """The same command to every worker at once (``first`` offset per worker), answers."""
    answers: list[dict[str, Any]] = [{} for _ in workers]

    async def one(index: int, worker: PresenceWorker) -> None:
        command = dict(commands)
        if "count" in command and "first" in command:
            command["first"] = index * command["count"]
        answers[index] = await worker.ask(**command)

    async with anyio.create_task_group() as group:
        for index, worker in enumerate(workers):
            group.start_soon(one, index, worker)
    return answers


# --------------------------------------------------------------------------------------
# 1. Redis cost of a connection


@dataclass(frozen=True)
class IdleRates:
    """CPU seconds per second the workers and Redis spend with nothing to do (timers,
    the presence loop's ticks): taken out of each window, which is mostly waiting when
    the connections come one at a time."""

    workers: float
    redis: float

    @classmethod
    async def measure(cls, worker_pids: Sequence[int], redis_url: str, redis_pid: int | None,
                      seconds: float = 2.0) -> IdleRates:  # fmt: skip
        _, redis_before = redis_snapshot(redis_url, redis_pid)
        workers_before, began = sum(map(cpu_seconds, worker_pids)), time.perf_counter()
        await anyio.sleep(seconds)
        elapsed = time.perf_counter() - began
        _, redis_after = redis_snapshot(redis_url, redis_pid)
        workers = (sum(map(cpu_seconds, worker_pids)) - workers_before) / elapsed
        return cls(round(workers, 6), round((redis_after - redis_before) / elapsed, 6))


class _Window:
    """Counters of the proxy, Redis and the workers' CPU at the start of a window."""

    def __init__(self, proxy: RoundTripProxy, redis_url: str, redis_pid: int | None,
                 worker_pids: Sequence[int], idle: IdleRates) -> None:  # fmt: skip
        self.proxy = proxy
        self.redis_url = redis_url
        self.redis_pid = redis_pid
        self.worker_pids = worker_pids
        self.idle = idle
        self.round_trips = proxy.round_trips
        self.sent = proxy.bytes_from_clients
        self.received = proxy.bytes_to_clients
        self.commands, self.redis_cpu = redis_snapshot(redis_url, redis_pid)
        self.worker_cpu = sum(map(cpu_seconds, worker_pids))
        self.began = time.perf_counter()

    async def settle(self, limit: float = 30.0) -> None:
        """Wait until nothing crossed the proxy for ``QUIET_SECONDS`` (at most ``limit``)."""
        deadline = time.monotonic() + limit
        last = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            moved = self.proxy.bytes_from_clients + self.proxy.bytes_to_clients
            if moved != last:
                last, quiet_since = moved, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                return
            await anyio.sleep(0.05)

    def close(self, cost: RedisCost) -> RedisCost:
        commands, redis_cpu = redis_snapshot(self.redis_url, self.redis_pid)
        proxy = self.proxy
        cost.round_trips = proxy.round_trips - self.round_trips
        cost.bytes_to_redis = proxy.bytes_from_clients - self.sent
        cost.bytes_from_redis = proxy.bytes_to_clients - self.received
        # INFO: the driver's own snapshots.
        delta = {name: calls - self.commands.get(name, 0) for name, calls in commands.items()
                 if name != "info"}  # fmt: skip
        cost.commands = {name: calls for name, calls in sorted(delta.items()) if calls}
        cost.window_seconds = round(time.perf_counter() - self.began, 3)
        cost.idle_cpu_per_second = asdict(self.idle)
        used = sum(map(cpu_seconds, self.worker_pids)) - self.worker_cpu
        cost.worker_cpu_seconds = round(used - self.idle.workers * cost.window_seconds, 6)
        used = redis_cpu - self.redis_cpu
        cost.redis_cpu_seconds = round(used - self.idle.redis * cost.window_seconds, 6)
        n = max(1, cost.connections)
        cost.per_connection = {
            "round_trips": round(cost.round_trips / n, 3),
            "commands": round(sum(cost.commands.values()) / n, 3),
            "bytes_to_redis": round(cost.bytes_to_redis / n, 1),
            "bytes_from_redis": round(cost.bytes_from_redis / n, 1),
            "worker_cpu_us": round(1e6 * cost.worker_cpu_seconds / n, 1),
            "redis_cpu_us": round(1e6 * cost.redis_cpu_seconds / n, 1),
        }
        return cost


async def _cost_windows(workers: Sequence[PresenceWorker], proxy: RoundTripProxy,
                        presence: bool, args: argparse.Namespace) -> list[RedisCost]:  # fmt: skip
    pids = [worker.process.pid for worker in workers]
    idle = await IdleRates.measure(pids, args.redis_url, args.redis_pid)
    found = []
    for mode in ("storm", "steady"):
        count = args.storm_connections if mode == "storm" else args.steady_connections
        spacing = 0.0 if mode == "storm" else args.steady_spacing
        per_worker = count // len(workers)
        for phase in ("connect", "disconnect"):
            _progress(f"redis cost: presence {'on' if presence else 'off'}, {mode}, {phase} "
                      f"of {count} connections")  # fmt: skip
            cost = RedisCost(presence, mode, phase, per_worker * len(workers), spacing)
            window = _Window(proxy, args.redis_url, args.redis_pid, pids, idle)
            began = time.perf_counter()
            if mode == "storm" and phase == "connect":
                answers = await _both(workers, do="connect", group=mode, prefix=f"{mode}-",
                                      first=0, count=per_worker, topic=TOPIC,
                                      presence=presence)  # fmt: skip
                cost.failed = sum(answer["failed"] for answer in answers)
            elif mode == "storm":
                await _both(workers, do="disconnect", group=mode)
            else:
                for number in range(cost.connections):
                    await anyio.sleep(max(0.0, began + number * spacing - time.perf_counter()))
                    worker = workers[number % len(workers)]
                    if phase == "connect":
                        answer = await worker.ask(do="connect", group=mode, prefix=f"{mode}-",
                                                  first=number, count=1, topic=TOPIC,
                                                  presence=presence)  # fmt: skip
                        cost.failed += answer["failed"]
                    else:
                        await worker.ask(do="disconnect", group=mode, count=1)
            cost.seconds = round(time.perf_counter() - began, 3)
            await window.settle()
            found.append(window.close(cost))
    return found


async def redis_costs(args: argparse.Namespace) -> list[RedisCost]:
    """Part 1: presence off, then on, each on two fresh workers behind the counting proxy."""
    found: list[RedisCost] = []
    parts = urlsplit(args.redis_url)
    for presence in (False, True):
        prefix = _new_prefix("cost")
        try:
            async with RoundTripProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
                proxied = f"redis://127.0.0.1:{proxy.port}{parts.path or '/0'}"
                async with AsyncExitStack() as stack:
                    workers = []
                    for _ in range(2):
                        worker = await PresenceWorker.start(
                            proxied, prefix, presence=presence, args=args,
                            ttl=COST_TTL, health_check_interval=COST_HEALTH_CHECK)  # fmt: skip
                        stack.push_async_callback(worker.close)
                        workers.append(worker)
                    await anyio.sleep(0.5)  # each worker's first (whole-state) write
                    found += await _cost_windows(workers, proxy, presence, args)
        except Exception as exc:
            found.append(RedisCost(presence, "-", "-", 0, error=f"{type(exc).__name__}: {exc}"))
        finally:
            _delete_keys(args.redis_url, prefix)
    return found


def presence_cost(costs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per connection, presence on - presence off, for each mode and phase."""
    found = []
    for on in costs:
        if not on["presence"] or on["error"]:
            continue
        off = next((cost for cost in costs if not cost["presence"] and not cost["error"]
                    and (cost["mode"], cost["phase"]) == (on["mode"], on["phase"])),
                   None)  # fmt: skip
        if off is None:
            continue
        found.append({"mode": on["mode"], "phase": on["phase"]} | {
            key: round(value - off["per_connection"][key], 3)
            for key, value in on["per_connection"].items()
        })  # fmt: skip
    return found


# --------------------------------------------------------------------------------------
# 2 and 3. A storm of 10,000 connections on one topic; presence() beside it


async def _settle_storm(workers: Sequence[PresenceWorker], expected: int, interval: float,
                        limit: float) -> None:  # fmt: skip
    """Until every observer was told ``expected`` users and no presence frame came for
    1.5 intervals (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        states = [await worker.ask(do="status", group="observers") for worker in workers]
        counts = {state["min_count"] for state in states} | {s["max_count"] for s in states}
        last = max(state["last_presence_ns"] for state in states)
        if counts == {expected} and time.time_ns() - last > 1.5 * interval * 1e9:
            return
        await anyio.sleep(0.2)


async def _frames(workers: Sequence[PresenceWorker], group: str, phase: str, changes: int,
                  began_ns: int, expected: int, interval: float) -> StormFrames:  # fmt: skip
    answers = [await worker.ask(do="frames", group=group) for worker in workers]
    tabs = sum(answer["tabs"] for answer in answers)
    frames = StormFrames(group, phase, tabs, changes, interval, expected_count=expected)
    last = max(answer["last_presence_ns"] for answer in answers)
    frames.seconds = round(max(0, last - began_ns) / 1e9, 3)
    frames.ticks = math.floor(frames.seconds / interval) + 1
    counted = [answer for answer in answers if answer["tabs"]]
    for key in ("presence_frames", "snapshots", "diffs", "presence_bytes"):
        setattr(frames, key, {
            "mean": round(sum(a[key]["mean"] * a["tabs"] for a in counted) / max(1, tabs), 3),
            "min": min((a[key]["min"] for a in counted), default=0),
            "max": max((a[key]["max"] for a in counted), default=0),
        })  # fmt: skip
    frames.final_counts = sorted({c for answer in answers for c in answer["final_counts"]})
    return frames


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 2 and 3: observers, then ``--members`` join at once, presence() and the
    snapshot while they are there, then all leave."""
    from budget_ws.backends.redis import RedisBackend

    found: dict[str, Any] = {"frames": [], "queries": [], "snapshot": None, "connect": {}}
    prefix = _new_prefix("storm")
    per_worker = args.members // 2
    members = per_worker * 2
    observers = args.observers * 2
    interval = args.interval
    try:
        async with AsyncExitStack() as stack:
            workers = []
            for _ in range(2):
                worker = await PresenceWorker.start(args.redis_url, prefix, presence=True,
                                                    args=args)  # fmt: skip
                stack.push_async_callback(worker.close)
                workers.append(worker)
            _progress(f"storm: {observers} observers")
            for index, worker in enumerate(workers):
                await worker.ask(do="connect", group="observers", prefix=f"watch-{index}-",
                                 first=0, count=args.observers, topic=TOPIC,
                                 presence=True)  # fmt: skip
            await _settle_storm(workers, observers, interval, args.settle_timeout)
            for worker in workers:
                await worker.ask(do="frames", group="observers")  # counting starts now

            _progress(f"storm: {members:,} members join, {args.concurrency} connecting at "
                      "once per worker")  # fmt: skip
            began = time.time_ns()
            answers = await _both(
                workers, do="connect", group="members", prefix="member-", first=0,
                count=per_worker, topic=TOPIC, presence=True, concurrency=args.concurrency,
                timeout=args.settle_timeout)  # fmt: skip
            found["connect"]["join_seconds"] = max(answer["seconds"] for answer in answers)
            found["connect"]["failed"] = sum(answer["failed"] for answer in answers)
            found["connect"]["errors"] = [e for answer in answers for e in answer["errors"]][:3]
            await _settle_storm(workers, observers + members, interval, args.settle_timeout)
            for group in ("observers", "members"):
                found["frames"].append(await _frames(workers, group, "join", members, began,
                                                     observers + members, interval))  # fmt: skip

            _progress(f"presence(): {args.queries} queries at {observers + members:,} users")
            query = Query("connections", observers + members, 0, args.max_members, args.queries)
            async with RedisBackend(args.redis_url, key_prefix=prefix) as backend:
                query.rows = len((await backend.presence_read(TOPIC)).rows)
            await workers[0].ask(do="query", topic=TOPIC, count=5)  # warm-up
            answer = await workers[0].ask(do="query", topic=TOPIC, count=args.queries)
            query.count, query.listed = answer["count"], answer["listed"]
            query.truncated = answer["truncated"]
            query.latency_ms = percentiles(answer["ns"])
            found["queries"].append(query)
            found["snapshot"] = await workers[1].ask(do="probe", topic=TOPIC, user="probe-0")

            _progress(f"storm: {members:,} members leave")
            began = time.time_ns()
            answers = await _both(workers, do="disconnect", group="members",
                                  timeout=args.settle_timeout)  # fmt: skip
            found["connect"]["leave_seconds"] = max(answer["seconds"] for answer in answers)
            await _settle_storm(workers, observers, interval, args.settle_timeout)
            found["frames"].append(await _frames(workers, "observers", "leave", members, began,
                                                 observers, interval))  # fmt: skip
    except Exception as exc:
        found["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        _delete_keys(args.redis_url, prefix)
    return found


async def query_rows(args: argparse.Namespace) -> list[Query]:
    """Part 2 over rows written through ``presence_write``, two workers' worth, each
    storing every one of its users (as ``max_members`` of ``--rows`` would let it)."""
    from budget_ws import ConnectionManager, InvalidLimit, OutboxLimits, PresenceOptions, User
    from budget_ws.backends import PresenceRow
    from budget_ws.backends.redis import RedisBackend

    prefix = _new_prefix("rows")
    found = []
    try:
        async with RedisBackend(args.redis_url, key_prefix=prefix) as backend:
            per_worker = args.rows // 2
            for index in range(2):
                worker = f"simulated{index}"
                users = [f"user-{index}-{n:06d}" for n in range(per_worker)]
                for seq, start in enumerate(range(0, per_worker, 500), start=1):
                    rows = [PresenceRow(TOPIC, worker, user, 1,
                                        json.dumps({"name": f"User {user}"}).encode())
                            for user in users[start : start + 500]]  # fmt: skip
                    await backend.presence_write(worker, seq, COST_TTL, rows, replace=seq == 1)
            stored = len((await backend.presence_read(TOPIC)).rows)
        for max_members in sorted({args.max_members, args.rows}):
            _progress(f"presence(): {args.queries} queries over {stored:,} rows, "
                      f"max_members {max_members:,}")  # fmt: skip
            query = Query("rows", per_worker * 2, stored, max_members, args.queries)
            options = PresenceOptions(max_members=max_members)
            outbox = OutboxLimits()
            try:
                options.check_fits(outbox)
            except InvalidLimit:  # the manager refuses it: raise the bound, as an app must
                query.outbox_max_bytes = OUTBOX_BYTES_PER_MEMBER * max_members
                outbox = OutboxLimits(max_bytes=query.outbox_max_bytes)
            manager = ConnectionManager(
                RedisBackend(args.redis_url, key_prefix=prefix),
                identify=lambda principal: User(str(principal)),
                presence=options,
                outbox=outbox,
            )
            times = []
            async with manager:
                for number in range(args.queries + 5):
                    started = time.perf_counter_ns()
                    result = await manager.presence(TOPIC)
                    if number >= 5:
                        times.append(time.perf_counter_ns() - started)
            query.count, query.listed = result.count, len(result.members)
            query.truncated = result.truncated
            query.latency_ms = percentiles(times)
            found.append(query)
    except Exception as exc:
        found.append(Query("rows", args.rows, 0, args.max_members, args.queries,
                           error=f"{type(exc).__name__}: {exc}"))  # fmt: skip
    finally:
        _delete_keys(args.redis_url, prefix)
    return found


# --------------------------------------------------------------------------------------
# 4. Revocation across two uvicorn workers


async def _revoke(manager: Any, clients: RevocationClients, operation: str,
                  args: argparse.Namespace) -> Revocation:  # fmt: skip
    run = Revocation(operation, args.revocation_repetitions, args.tabs, args.background)
    latencies, calls = [], []
    what = "unsubscribed" if operation == "unsubscribe_user" else "closed"
    for number in range(args.revocation_repetitions):
        user = f"target-{number:04d}"
        await anyio.sleep(args.revocation_spacing)
        began = time.time_ns()
        if operation == "unsubscribe_user":
            await manager.unsubscribe_user(user, TOPIC)
        else:
            await manager.disconnect_user(user)
        calls.append(time.time_ns() - began)
        await clients.send(f"wait {what} {user} {args.revocation_timeout}")
        with anyio.fail_after(args.revocation_timeout + 10):
            report = await clients.line()
        if all(report["ns"]):
            run.complete += 1
            latencies.append(max(report["ns"]) - began)
        if operation == "disconnect_user":
            run.close_codes = sorted(set(run.close_codes) | set(report["close_codes"]),
                                     key=lambda code: -1 if code is None else code)  # fmt: skip
    run.latency_ms = percentiles(latencies)
    run.call_ms = percentiles(calls)
    return run


async def revocation(args: argparse.Namespace) -> list[Revocation]:
    """Part 4: unsubscribe_user, then disconnect_user, of each target user in turn."""
    from budget_ws import ConnectionManager

    prefix = _new_prefix("revoke")
    url = _with_prefix(args.redis_url, prefix)
    workers = [AppWorker(name, url) for name in ("A", "B")]
    clients: RevocationClients | None = None
    failed = False
    try:
        for worker in workers:
            await worker.wait_listening()
        urls = [worker.url for worker in workers]
        clients = await RevocationClients.start(urls, args)
        with anyio.fail_after(120):
            ready = await clients.line()
        _progress(f"revocation: {ready['ready']:,} connections on two workers")
        found = []
        # The app's code, on a third worker: a request handler calling the manager.
        async with ConnectionManager(url) as manager:
            await anyio.sleep(2 * args.interval)  # presence of the crowd settles
            for operation in ("unsubscribe_user", "disconnect_user"):
                _progress(f"revocation: {operation}, {args.revocation_repetitions} users of "
                          f"{args.tabs} tabs")  # fmt: skip
                found.append(await _revoke(manager, clients, operation, args))
        return found
    except Exception as exc:
        failed = True
        return [Revocation("-", 0, args.tabs, args.background,
                           error=f"{type(exc).__name__}: {exc}")]  # fmt: skip
    finally:
        with anyio.CancelScope(shield=True):
            if clients is not None:
                await clients.stop()
        for worker in workers:
            worker.stop(keep_log=failed)
        _delete_keys(args.redis_url, prefix)


# --------------------------------------------------------------------------------------
# The results


def verdicts(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each checked against this run's figures."""
    found: list[dict[str, Any]] = []

    def check(label: str, text: str, met: bool) -> None:
        found.append({"label": label, "check": text, "met": met})

    for run in document["revocation"]:
        if run["error"]:
            check("revocation", f"failed: {run['error']}", False)
            continue
        label = f"{run['operation']}, {run['tabs']} tabs on 2 workers"
        p99 = run["latency_ms"].get("p99")
        text = "no repetition completed"
        if p99 is not None:
            text = f"p99 {p99:.1f} ms <= {run['target_ms']:g} ms"
        check(label, text, p99 is not None and p99 <= run["target_ms"])
        check(label, f"every tab reached in {run['complete']}/{run['repetitions']} repetitions",
              run["complete"] == run["repetitions"])  # fmt: skip
    storm = document["storm"]
    for frames in storm.get("frames", []):
        label = f"presence storm ({frames['phase']}), {frames['group']}"
        snapshot = 1 if frames["group"] == "members" else 0
        check(label, f"at most {frames['presence_frames']['max']:g} presence frames per "
              f"subscriber <= {frames['ticks']} intervals{' + 1 snapshot' if snapshot else ''} "
              f"for {frames['changes']:,} changes", frames["bounded"])  # fmt: skip
        check(label, f"every subscriber told the final count {frames['expected_count']:,}",
              frames["settled"])  # fmt: skip
    if storm.get("error"):
        check("presence storm", f"failed: {storm['error']}", False)
    elif storm.get("connect"):
        check("presence storm", f"{storm['connect']['failed']} connections failed",
              storm["connect"]["failed"] == 0)  # fmt: skip
    return found


def results_document(env: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """What the results file holds: every part's figures and the verdicts."""
    storm = found.get("storm", {})
    queries = [*storm.get("queries", []), *found.get("rows", [])]
    frames = [asdict(frames) | {"bounded": frames.bounded, "settled": frames.settled}
              for frames in storm.get("frames", [])]  # fmt: skip
    revocations = [asdict(run) | {"p99_to_target": run.p99_to_target}
                   for run in found.get("revocation", [])]  # fmt: skip
    document: dict[str, Any] = {
        "environment": env,
        "redis_costs": [asdict(cost) for cost in found.get("redis_costs", [])],
        "queries": [asdict(query) for query in queries],
        "snapshot_frame": storm.get("snapshot"),
        "storm": {
            "frames": frames,
            "connect": storm.get("connect", {}),
            "error": storm.get("error"),
        },
        "revocation": revocations,
    }
    document["presence_cost"] = presence_cost(document["redis_costs"])
    document["verdicts"] = verdicts(document)
    return document


def report_text(document: dict[str, Any]) -> str:
    parts = [describe(document["environment"])]
    rows = []
    for cost in document["redis_costs"]:
        if cost["error"]:
            parts.append(f"redis cost, presence {cost['presence']}: {cost['error']}")
            continue
        each = cost["per_connection"]
        rows.append(["on" if cost["presence"] else "off", cost["mode"], cost["phase"],
                     f"{cost['connections']}", f"{each['round_trips']:g}", f"{each['commands']:g}",
                     f"{each['bytes_to_redis']:g}", f"{each['bytes_from_redis']:g}",
                     f"{each['worker_cpu_us']:g}", f"{each['redis_cpu_us']:g}",
                     f"{cost['failed']}"])  # fmt: skip
    if rows:
        parts.append(grid(["presence", "mode", "phase", "conns", "RTT/conn", "cmds/conn",
                            "B to Redis/conn", "B from Redis/conn", "worker CPU µs/conn",
                            "Redis CPU µs/conn", "failed"], rows))  # fmt: skip
    for diff in document["presence_cost"]:
        parts.append(f"presence costs per {diff['phase']} ({diff['mode']}): "
                     f"{diff['round_trips']:+g} round trips, {diff['commands']:+g} commands, "
                     f"{diff['bytes_to_redis']:+g} B to and {diff['bytes_from_redis']:+g} B from "
                     f"Redis")  # fmt: skip
    rows = [[q["source"], f"{q['users']:,}", f"{q['rows']:,}", f"{q['max_members']:,}",
             f"{q['listed']:,}", f"{q['count']:,}", f"{q['latency_ms'].get('p50', 0):.2f}",
             f"{q['latency_ms'].get('p99', 0):.2f}", q["error"] or ""]
            for q in document["queries"]]  # fmt: skip
    if rows:
        parts.append(grid(["presence()", "users", "rows", "max_members", "listed", "count",
                            "p50 ms", "p99 ms", "error"], rows))  # fmt: skip
    snapshot = document["snapshot_frame"]
    if snapshot:
        parts.append(f"presence snapshot frame: {snapshot.get('bytes', 0):,} B, "
                     f"{snapshot.get('listed', 0):,} members listed of "
                     f"{snapshot.get('count', 0):,}")  # fmt: skip
    storm = document["storm"]
    rows = [[f["phase"], f["group"], f"{f['subscribers']:,}", f"{f['changes']:,}",
             f"{f['seconds']:.1f}", f"{f['ticks']}", f"{f['presence_frames']['mean']:.2f}",
             f"{f['presence_frames']['max']:g}", f"{f['presence_bytes']['mean']:,.0f}",
             f"{f['presence_bytes']['max']:,.0f}", ",".join(map(str, f["final_counts"]))]
            for f in storm["frames"]]  # fmt: skip
    if rows:
        parts.append(grid(["storm", "subscribers", "n", "changes", "seconds", "ticks",
                            "frames mean", "frames max", "bytes mean", "bytes max",
                            "final counts"], rows))  # fmt: skip
    if storm.get("connect"):
        parts.append(f"storm connects: {storm['connect']}")
    if storm.get("error"):
        parts.append(f"storm failed: {storm['error']}")
    rows = [[r["operation"], f"{r['complete']}/{r['repetitions']}",
             f"{r['latency_ms'].get('p50', 0):.2f}", f"{r['latency_ms'].get('p99', 0):.2f}",
             f"{r['latency_ms'].get('max', 0):.2f}", f"{r['call_ms'].get('p50', 0):.2f}",
             f"{r['p99_to_target']}", ",".join(map(str, r["close_codes"])), r["error"] or ""]
            for r in document["revocation"]]  # fmt: skip
    if rows:
        header = ["revocation", "complete", "p50 ms", "p99 ms", "max ms", "call p50 ms",
                  "p99/target", "close codes", "error"]  # fmt: skip
        parts.append(grid(header, rows))
    parts += verdict_lines(document["verdicts"])
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.presence", description=(
        "Presence, user streams and revocation on Redis: Redis round trips and bytes per "
        "connection with presence on and off, presence() at 10,000 users, presence frames "
        "per subscriber in a storm, and disconnect_user/unsubscribe_user to the last tab "
        "across two uvicorn workers."))  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="redis-cost, storm (frames and presence() among 10,000 "
                        "connections), rows (presence() over written rows), revocation; "
                        "all by default")  # fmt: skip
    parser.add_argument("--interval", type=float, default=1.0,
                        help="PresenceOptions.interval of every worker, seconds (1)")  # fmt: skip
    parser.add_argument("--storm-connections", type=int, default=1000,
                        help="connections of the Redis cost's storm windows (1000)")  # fmt: skip
    parser.add_argument("--steady-connections", type=int, default=20,
                        help="connections of the Redis cost's steady windows (20)")  # fmt: skip
    parser.add_argument("--steady-spacing", type=float, default=1.2,
                        help="seconds between two steady connects, more than --interval "
                        "(1.2)")  # fmt: skip
    parser.add_argument("--members", type=int, default=10_000,
                        help="connections of the storm, half on each worker (10000)")  # fmt: skip
    parser.add_argument("--observers", type=int, default=10,
                        help="observers per worker, through both storm phases (10)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=250,
                        help="storm connects in flight at once per worker (250)")  # fmt: skip
    parser.add_argument("--settle-timeout", type=float, default=120.0,
                        help="seconds a storm phase may take to connect and settle "
                        "(120)")  # fmt: skip
    parser.add_argument("--queries", type=int, default=200,
                        help="presence() calls timed per figure (200)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=10_000,
                        help="users of the written-rows presence() figure (10000)")  # fmt: skip
    parser.add_argument("--max-members", type=int, default=1000,
                        help="PresenceOptions.max_members of every worker (1000, the "
                        "library's default)")  # fmt: skip
    parser.add_argument("--revocation-repetitions", type=int, default=50,
                        help="users revoked, one at a time, per operation (50)")  # fmt: skip
    parser.add_argument("--tabs", type=int, default=3, help="tabs of each revoked user (3)")
    parser.add_argument("--background", type=int, default=1000,
                        help="other connections during the revocations (1000)")  # fmt: skip
    parser.add_argument("--revocation-spacing", type=float, default=0.2,
                        help="seconds before each revocation (0.2)")  # fmt: skip
    parser.add_argument("--revocation-timeout", type=float, default=5.0,
                        help="seconds every tab has to see a revocation (5)")  # fmt: skip
    parser.add_argument("--redis-url", help="a Redis server to use (a key prefix of the run's "
                        "own) instead of a private redis-server of the run's own")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--json-file", type=Path, metavar="PATH",
                        help="also write the JSON results to PATH")  # fmt: skip
    return parser


async def _run_all(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "redis-cost" in args.parts:
        found["redis_costs"] = await redis_costs(args)
    if "storm" in args.parts:
        found["storm"] = await storm(args)
    if "rows" in args.parts:
        found["rows"] = await query_rows(args)
    if "revocation" in args.parts:
        found["revocation"] = await revocation(args)
    return found


def _redis_version(url: str) -> str:
    import redis

    with redis.Redis.from_url(url) as admin:
        return str(admin.info("server")["redis_version"])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.steady_spacing <= args.interval:
        _progress("--steady-spacing must be more than --interval")
        return 2
    parameters = {key: value for key, value in vars(args).items()
                  if key not in ("json", "json_file")}  # fmt: skip
    parameters |= {"topic": TOPIC, "quiet_seconds": QUIET_SECONDS, "cost_ttl": COST_TTL,
                   "cost_health_check_interval": COST_HEALTH_CHECK,
                   "target_seconds": TARGET_SECONDS}  # fmt: skip
    env = environment("presence", parameters)
    private: subprocess.Popen[bytes] | None = None
    args.redis_pid = None
    if args.redis_url is None:
        private, args.redis_url = start_redis()
        args.redis_pid = private.pid
    try:
        env["redis"] = _redis_version(args.redis_url)
        env["redis_url"] = "private redis-server" if private else args.redis_url
        found = anyio.run(_run_all, args, backend="asyncio")
    finally:
        if private is not None:
            private.send_signal(signal.SIGTERM)
            private.wait(10)
    env["load_after"] = load_average()
    document = results_document(env, found)
    if args.json_file:
        args.json_file.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2) if args.json else report_text(document))
    failed = [cost for cost in document["redis_costs"] if cost["error"] or cost["failed"]]
    failed += [query for query in document["queries"] if query["error"]]
    failed += [run for run in document["revocation"] if run["error"]]
    return 1 if failed or document["storm"].get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
