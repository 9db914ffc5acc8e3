"""Cross-worker benchmark: events published to Redis, delivered by two uvicorn workers.

Run it with ``python -m benchmarks.cross_worker`` (``--help`` lists the options;
``benchmarks/README.md`` explains every figure). For each contender (budget_ws,
encode/broadcaster's Redis backend on the same app shape, and budget_ws's native server)
and scenario, this process:

1. starts two uvicorn workers (A and B) running ``benchmarks/cross_worker_app.py``, or
   for ``native`` two processes of it each serving a ``NativeServer``, both on one port
   (``SO_REUSEPORT``);
2. starts client processes (``benchmarks/loadgen.py``) whose clients connect,
   split evenly across A and B (``native``: split by the kernel, reported as
   ``connections_by_worker``), and subscribe to one topic;
3. publishes events itself, straight to Redis through the contender's own publisher
   (``ConnectionManager.publish`` / ``Broadcast.publish``), at a steady rate for
   ``--duration`` seconds; every event carries ``sent_at`` (``time.time_ns()`` taken just
   before the publish call);
4. has the clients report what they received; latency = receive time - ``sent_at``, on
   the same machine clock.

Redis commands are counted twice: server-side from ``INFO commandstats`` deltas (every
command Redis ran, including those a Lua script runs), and publisher-side by counting the
commands this process's redis-py connections sent (the round trips).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio

from benchmarks.children import JsonLinesChild
from benchmarks.loadgen import discard_dumps, read_dump
from benchmarks.measure import cpu_seconds, cpu_us_per_delivery, free_port, percentiles
from benchmarks.provenance import describe, environment, load_average

__all__ = ["SCENARIOS", "Run", "Scenario", "main"]

Contender = Literal["budget_ws", "broadcaster", "broadcaster-primed", "native"]
CONTENDERS: tuple[Contender, ...] = ("budget_ws", "broadcaster", "broadcaster-primed", "native")
BUDGET_WS: tuple[Contender, ...] = ("budget_ws", "native")
"""The contenders that are budget_ws (its publisher, its clients' ``budget-ws.v1``)."""
SHARED_PORT = "A+B"
"""``delivered_by_worker``'s key when both workers listen on one port (``native``): the
clients cannot tell which worker served them (``connections_by_worker`` can)."""
ROOT = Path(__file__).resolve().parent.parent
SUBPROTOCOL = "budget-ws.v1"
TOPIC = "bench"
WARMUP_EVENTS = 5
NOT_PER_EVENT = frozenset({"PING", "HELLO", "CLIENT", "AUTH", "SELECT"})
"""Commands a publisher sends that are not part of publishing an event."""
MAX_IN_FLIGHT = 64
"""Publish calls awaited at once at most (the open-loop publisher's bound)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    rate: float
    """Events published per second."""
    target_p99_ms: float | None
    target_deliveries_per_second: float | None = None
    events: int | None = None
    """A fixed number of events (a burst at ``rate``) instead of ``rate`` x ``--duration``."""


SCENARIOS = {
    "fanout": Scenario("fanout", clients=1000, rate=50, target_p99_ms=10.0,
                       target_deliveries_per_second=50_000),
    "rate": Scenario("rate", clients=20, rate=1000, target_p99_ms=5.0),
    "burst": Scenario("burst", clients=1000, rate=10_000, target_p99_ms=None, events=100),
}  # fmt: skip


@dataclass
class Run:
    """One contender on one scenario."""

    contender: str
    scenario: str
    clients: int
    target_rate: float
    duration: float
    published: int = 0
    publish_rate: float = 0.0
    expected: int = 0
    delivered: int = 0
    messages: int = 0
    """WebSocket messages that carried events (delivered / messages: events per message)."""
    delivered_by_worker: dict[str, int] = field(default_factory=dict)
    connections_by_worker: dict[str, int] = field(default_factory=dict)
    """``native``: the clients each worker served once all had subscribed, as the workers
    count them: how the kernel split one port's connections (``SO_REUSEPORT``)."""
    complete_clients: int = 0
    deliveries_per_second: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    publish_call_ms: dict[str, float] = field(default_factory=dict)
    redis_calls: dict[str, int] = field(default_factory=dict)
    redis_calls_per_event: float = 0.0
    evalsha_per_event: float = 0.0
    publish_cmd_per_event: float = 0.0
    round_trips: dict[str, int] = field(default_factory=dict)
    round_trips_per_event: float = 0.0
    cpu_percent: dict[str, float] = field(default_factory=dict)
    worker_cpu_us_per_delivery: float | None = None
    """``measure.cpu_us_per_delivery`` of both workers, from the first publish until every
    client had every event (or ``--drain``): per delivery made (None: nothing arrived)."""
    redis_cpu_source: str = ""
    """``schedstat`` (a redis-server of the run's own) or ``INFO`` (a shared server)."""
    client_errors: int = 0
    ok: bool = False
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.delivered == self.expected

    @property
    def mode(self) -> str:
        return "burst" if self.scenario == "burst" else "steady"


# --------------------------------------------------------------------------------------
# Measurements


def redis_snapshot(url: str, pid: int | None) -> tuple[dict[str, int], float]:
    """Calls per command (``INFO commandstats``) and the server's CPU seconds.

    The CPU time comes from ``schedstat`` (ns) when the run started the server (``pid``),
    as for every other process; a shared server's only source is ``INFO cpu``.
    """
    import redis

    with redis.Redis.from_url(url) as admin:
        stats = admin.info("commandstats")
        cpu = admin.info("cpu") if pid is None else {}
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    if pid is not None:
        return calls, cpu_seconds(pid)
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class CommandCounter:
    """Counts the commands this process's redis-py asyncio connections send."""

    counts: ClassVar[Counter[str]] = Counter()
    _installed: ClassVar[bool] = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        from redis.asyncio.connection import AbstractConnection

        original = AbstractConnection.send_command

        async def send_command(self: Any, *args: Any, **kwargs: Any) -> None:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            cls.counts[name.upper()] += 1
            await original(self, *args, **kwargs)

        AbstractConnection.send_command = send_command  # type: ignore[method-assign]
        cls._installed = True


# --------------------------------------------------------------------------------------
# Processes


class Worker:
    """``uvicorn benchmarks.cross_worker_app:app_factory`` on a free loopback port, or for
    ``native`` ``python -m benchmarks.cross_worker_app`` on ``port`` (shared)."""

    status_file: Path | None = None
    """``native``: where the worker says it listens, and how many clients it serves."""

    def __init__(self, name: str, contender: str, redis_url: str, channel: str,
                 port: int | None = None) -> None:  # fmt: skip
        self.name = name
        self.port = port or free_port()
        if contender == "native":
            handle, status = tempfile.mkstemp(prefix=f"cross-worker-{name}-", suffix=".json")
            os.close(handle)
            self.status_file = Path(status)
            self.status_file.unlink()
            command = [
                sys.executable, "-m", "benchmarks.cross_worker_app", "--port", str(self.port),
                "--status-file", str(self.status_file),
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "uvicorn", "benchmarks.cross_worker_app:app_factory",
                "--factory", "--app-dir", str(ROOT), "--host", "127.0.0.1",
                "--port", str(self.port), "--ws", "websockets-sansio", "--loop", "asyncio",
                "--ws-per-message-deflate", "false", "--log-level", "warning",
                "--timeout-graceful-shutdown", "3",
            ]  # fmt: skip
        environment = {
            **os.environ,
            "CROSS_WORKER_CONTENDER": contender,
            "CROSS_WORKER_REDIS_URL": redis_url,
            "CROSS_WORKER_CHANNEL": channel,
        }
        # uvicorn's and the app's own messages go to a log file, named in failures.
        handle, self.log = tempfile.mkstemp(prefix=f"cross-worker-{name}-", suffix=".log")
        with os.fdopen(handle, "wb") as log:
            self.process = subprocess.Popen(
                command, env=environment, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def wait_listening(self) -> None:
        with anyio.fail_after(20):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"worker {self.name} exited with {self.process.returncode}; see {self.log}"
                    )
                if self.status_file is not None:  # a shared port: connecting tells nothing
                    if self.status_file.exists():
                        return
                    await anyio.sleep(0.05)
                    continue
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", self.port)
                except OSError:
                    await anyio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    async def connections(self) -> int:
        """``native``: the connections the worker serves now, as it counts them."""
        assert self.status_file is not None
        self.status_file.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        with anyio.fail_after(10):
            while True:  # a file, not an event: the worker is another process
                if self.status_file.exists():
                    break
                await anyio.sleep(0.02)
        count: int = json.loads(self.status_file.read_text())["connections"]
        return count

    def stop(self, timeout: float = 10.0, keep_log: bool = False) -> None:
        if not keep_log:
            Path(self.log).unlink(missing_ok=True)
        if self.status_file is not None:
            self.status_file.unlink(missing_ok=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ClientProcess(JsonLinesChild):
    """A ``benchmarks.loadgen`` child holding some of the WebSocket clients."""

    @classmethod
    async def start(
        cls, contender: str, urls: Sequence[str], first: int, count: int, drain: float
    ) -> ClientProcess:
        protocol = "budget-ws" if contender in BUDGET_WS else "plain"
        command = [
            sys.executable, "-m", "benchmarks.loadgen", "--protocol", protocol,
            "--topic", TOPIC, "--urls", *urls, "--first", str(first),
            "--count", str(count), "--drain", str(drain),
        ]  # fmt: skip
        process = await anyio.open_process(command, cwd=ROOT, stderr=None)
        return cls(process)


# --------------------------------------------------------------------------------------
# Publishers


class BudgetWsPublisher:
    def __init__(self, redis_url: str) -> None:
        from budget_ws import ConnectionManager, Event

        class Tick(Event, name="bench_tick", register=False):
            seq: int
            sent_at: int

        self.tick = Tick
        self.manager = ConnectionManager(redis_url, shutdown_timeout=1)

    async def __aenter__(self) -> BudgetWsPublisher:
        await self.manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.manager.__aexit__(None, None, None)

    async def publish(self, seq: int) -> int:
        sent_at = time.time_ns()
        await self.manager.publish(self.tick(seq=seq, sent_at=sent_at), topic=TOPIC)
        return sent_at


class BroadcasterPublisher:
    def __init__(self, redis_url: str, channel: str) -> None:
        from broadcaster import Broadcast

        self.broadcast = Broadcast(redis_url)
        self.channel = channel

    async def __aenter__(self) -> BroadcasterPublisher:
        await self.broadcast.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.broadcast.disconnect()

    async def publish(self, seq: int) -> int:
        sent_at = time.time_ns()
        message = json.dumps(
            {"event": "bench_tick", "data": {"seq": seq, "sent_at": sent_at}},
            separators=(",", ":"),
        )
        await self.broadcast.publish(self.channel, message)
        return sent_at


# --------------------------------------------------------------------------------------
# One run


async def run_one(contender: Contender, scenario: Scenario, args: argparse.Namespace) -> Run:
    run = Run(contender, scenario.name, scenario.clients, scenario.rate, args.duration)
    tag = f"bench-cross-{uuid.uuid4().hex[:10]}"
    channel = f"{tag}:{TOPIC}"  # broadcaster: a channel of this run's own
    base_url = args.redis_url
    if contender in BUDGET_WS:
        separator = "&" if "?" in base_url else "?"
        redis_url = f"{base_url}{separator}key_prefix={tag}"
    else:
        redis_url = base_url
    shared = free_port() if contender == "native" else None  # one port for both workers
    workers = [Worker(name, contender, redis_url, channel, shared) for name in ("A", "B")]
    clients: list[ClientProcess] = []
    try:
        for worker in workers:
            await worker.wait_listening()
        urls = list(dict.fromkeys(worker.url for worker in workers))
        names = {worker.url: worker.name if shared is None else SHARED_PORT
                 for worker in workers}  # fmt: skip
        processes = max(1, min(args.client_processes, scenario.clients))
        per_process = -(-scenario.clients // processes)
        for first in range(0, scenario.clients, per_process):
            count = min(per_process, scenario.clients - first)
            clients.append(await ClientProcess.start(contender, urls, first, count, args.drain))
        with anyio.fail_after(args.connect_timeout):
            for client in clients:
                ready = await client.line()
                if ready.get("ready") is None:
                    raise RuntimeError(f"client process failed: {ready}")
                discard_dumps(ready)
        if shared is not None:
            for worker in workers:
                run.connections_by_worker[worker.name] = await worker.connections()
        publisher: BudgetWsPublisher | BroadcasterPublisher
        if contender in BUDGET_WS:
            publisher = BudgetWsPublisher(redis_url)
        else:
            publisher = BroadcasterPublisher(redis_url, channel)
        async with publisher:
            for number in range(WARMUP_EVENTS):  # loads the script, warms every path
                await publisher.publish(-1 - number)
                await anyio.sleep(0.02)
            await anyio.sleep(0.5)
            pids = {
                "workers": [worker.process.pid for worker in workers],
                "clients": [client.process.pid for client in clients],
            }
            calls_before, redis_cpu_before = redis_snapshot(base_url, args.redis_pid)
            run.redis_cpu_source = "INFO cpu" if args.redis_pid is None else "schedstat"
            cpu_before = {key: sum(map(cpu_seconds, value)) for key, value in pids.items()}
            own_before = time.process_time()
            CommandCounter.counts.clear()
            call_ns: list[int] = []
            interval = 1.0 / scenario.rate
            total = scenario.events or max(1, round(scenario.rate * args.duration))
            start = time.perf_counter()
            # Open loop: each event is published at its due time whatever the previous
            # publishes are doing (like independent request handlers), so a slow round
            # trip shows up as latency instead of silently lowering the rate; at most
            # MAX_IN_FLIGHT calls at once, beyond which the rate does drop.
            limiter = anyio.CapacityLimiter(MAX_IN_FLIGHT)
            sent: list[int] = []
            began = 0

            async def publish_one(seq: int) -> None:
                async with limiter:
                    called = time.perf_counter_ns()
                    sent.append(await publisher.publish(seq))
                    call_ns.append(time.perf_counter_ns() - called)

            async with anyio.create_task_group() as task_group:
                for seq in range(total):
                    delay = start + seq * interval - time.perf_counter()
                    if delay > 0:
                        await anyio.sleep(delay)
                    began = time.perf_counter_ns()
                    await limiter.acquire_on_behalf_of(seq)  # waits only when saturated
                    limiter.release_on_behalf_of(seq)
                    task_group.start_soon(publish_one, seq)
            first_sent = min(sent)
            elapsed = time.perf_counter() - start
            round_trips = dict(CommandCounter.counts)
            calls_after, redis_cpu_after = redis_snapshot(base_url, args.redis_pid)
            # CPU over the publishing window (the drain that follows is not counted).
            window = elapsed
            for key, value in pids.items():
                used = sum(map(cpu_seconds, value)) - cpu_before[key]
                run.cpu_percent[key] = round(100 * used / window, 1)

            run.cpu_percent["driver"] = round(100 * (time.process_time() - own_before) / window, 1)
            run.cpu_percent["redis"] = round(100 * (redis_cpu_after - redis_cpu_before) / window, 1)
        run.published = total
        # Events over the span from the first publish to the last one's due time + 1 slot.
        span_published = max(elapsed, began / 1e9 - start + interval)
        run.publish_rate = round(total / span_published, 1)
        run.publish_call_ms = percentiles(call_ns)
        delta = {
            name: calls_after.get(name, 0) - calls_before.get(name, 0)
            for name in calls_after
            if name != "info"  # our own snapshots
        }
        run.redis_calls = {name: calls for name, calls in delta.items() if calls}
        run.redis_calls_per_event = round(sum(run.redis_calls.values()) / total, 3)
        run.evalsha_per_event = round((delta.get("evalsha", 0) + delta.get("eval", 0)) / total, 3)
        run.publish_cmd_per_event = round(delta.get("publish", 0) / total, 3)
        run.round_trips = round_trips
        # Health-check PINGs and the handshake of pooled connections opened meanwhile
        # (HELLO, CLIENT SETINFO...: once per connection, not per event) are left out.
        publishing = sum(calls for name, calls in round_trips.items() if name not in NOT_PER_EVENT)
        run.round_trips_per_event = round(publishing / total, 3)

        # Tell every client how many events to expect; each reports once it has them all
        # or once --drain seconds have passed.
        run.expected = total * scenario.clients
        worker_pids = pids["workers"]
        for client in clients:
            await client.send(f"expect {total}")
        latencies = array("q")
        last_receipt = 0
        with anyio.fail_after(args.drain + 30):
            for client in clients:
                report = await client.line()
                run.delivered += report["received"]
                run.messages += report["messages"]
                run.complete_clients += report["complete_clients"]
                run.client_errors += report["closed_clients"]
                for url, received in report["by_url"].items():
                    name = names[url]
                    run.delivered_by_worker[name] = run.delivered_by_worker.get(name, 0) + received
                last_receipt = max(last_receipt, report["last_receipt"])
                latencies.extend(read_dump(report["latency_file"]))
        # Worker CPU until every client had every event (a burst is delivered after the
        # publishing window), over the deliveries made: the one definition (measure.py).
        used = sum(map(cpu_seconds, worker_pids)) - cpu_before["workers"]
        run.worker_cpu_us_per_delivery = cpu_us_per_delivery(used, run.delivered)
        span = (last_receipt - first_sent) / 1e9 if last_receipt > first_sent else 0.0
        run.deliveries_per_second = round(run.delivered / span, 1) if span > 0 else 0.0
        run.latency_ms = percentiles(latencies)
        run.ok = run.complete
    except Exception as exc:  # reported, never hidden: the run counts as failed
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        with anyio.CancelScope(shield=True):
            for client in clients:
                await client.stop()
        for worker in workers:
            worker.stop(keep_log=run.error is not None)
        _delete_keys(base_url, tag)
    return run


def _delete_keys(url: str, tag: str) -> None:
    import redis

    with redis.Redis.from_url(url) as admin:
        keys = list(admin.scan_iter(match=f"{tag}:*", count=1000))
        if keys:
            admin.delete(*keys)


# --------------------------------------------------------------------------------------
# Client processes


# --------------------------------------------------------------------------------------
# Report


def table(runs: Sequence[Run]) -> str:
    header = (
        "scenario", "contender", "clients", "ev/s", "delivered", "deliv/s", "p50 ms",
        "p99 ms", "max ms", "cmds/ev", "evalsha/ev", "publish/ev", "RTT/ev", "CPU% w/c/d/r",
        "µs/deliv",
    )  # fmt: skip
    rows = [header]
    for run in runs:
        latency = run.latency_ms
        rows.append((
            run.scenario, run.contender, str(run.clients),
            f"{run.publish_rate:g}/{run.target_rate:g}",
            f"{run.delivered}/{run.expected}" + ("" if run.complete else " !"),
            f"{run.deliveries_per_second:,.0f}",
            f"{latency.get('p50', float('nan')):.2f}", f"{latency.get('p99', float('nan')):.2f}",
            f"{latency.get('max', float('nan')):.1f}",
            f"{run.redis_calls_per_event:g}", f"{run.evalsha_per_event:g}",
            f"{run.publish_cmd_per_event:g}", f"{run.round_trips_per_event:g}",
            "/".join(f"{run.cpu_percent.get(key, 0):.0f}"
                     for key in ("workers", "clients", "driver", "redis")),
            f"{run.worker_cpu_us_per_delivery:.1f}" if run.worker_cpu_us_per_delivery else "-",
        ))  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for run in runs:
        if run.error:
            lines.append(f"{run.scenario}/{run.contender} failed: {run.error}")
        if run.delivered_by_worker and not run.complete:
            lines.append(
                f"{run.scenario}/{run.contender}: delivered by worker {run.delivered_by_worker}"
                f", {run.complete_clients}/{run.clients} clients complete"
            )
        if run.connections_by_worker:
            lines.append(f"{run.scenario}/{run.contender}: {split_text(run)}")
    return "\n".join(lines)


def split_text(run: Run) -> str:
    """How the kernel split one port's clients between the workers, and whether that
    left a worker without clients (the run then measured one worker, not two)."""
    split = " / ".join(f"{name} {count:,}" for name, count in run.connections_by_worker.items())
    text = f"clients split by the kernel (SO_REUSEPORT): {split}"
    if 0 in run.connections_by_worker.values():
        text += " (one worker served no client: this run measured one worker)"
    return text


def ratios(runs: Sequence[Run], ours_name: str = "budget_ws",
           against: Sequence[str] = ("broadcaster-primed", "broadcaster"),
           ) -> list[dict[str, Any]]:  # fmt: skip
    """``ours_name``'s figures / those of the first of ``against`` that ran, per scenario."""
    result = []
    for scenario in dict.fromkeys(run.scenario for run in runs):
        pair = {run.contender: run for run in runs if run.scenario == scenario}
        ours = pair.get(ours_name)
        theirs = next((pair[name] for name in against if name in pair), None)
        if ours is None or theirs is None:
            continue
        entry: dict[str, Any] = {"scenario": scenario, "against": theirs.contender}
        for key in ("p50", "p99"):
            a, b = ours.latency_ms.get(key), theirs.latency_ms.get(key)
            entry[f"latency_{key}"] = round(a / b, 3) if a and b else None
        a, b = ours.deliveries_per_second, theirs.deliveries_per_second
        entry["deliveries_per_second"] = round(a / b, 3) if a and b else None
        a, b = ours.worker_cpu_us_per_delivery, theirs.worker_cpu_us_per_delivery
        entry["cpu_per_delivery"] = round(a / b, 3) if a and b else None
        result.append(entry)
    return result


def verdicts(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The issue's targets for budget_ws, each checked against this run's figures."""
    found: list[dict[str, Any]] = []

    def check(label: str, text: str, met: bool) -> None:
        found.append({"label": label, "check": text, "met": met})

    cpu_ratios = {entry["scenario"]: entry for entry in ratios(runs)}
    for run in runs:
        if run.contender not in BUDGET_WS or run.scenario not in SCENARIOS:
            continue
        scenario = SCENARIOS[run.scenario]
        if run.clients != scenario.clients or run.target_rate != scenario.rate:
            continue  # overridden: the targets do not apply
        label = f"{run.scenario} ({run.mode}), {run.clients} clients"
        if run.contender != "budget_ws":
            label += f", {run.contender}"
        p99 = run.latency_ms.get("p99", float("inf"))
        if scenario.target_p99_ms is not None:
            check(label, f"p99 {p99:.2f} <= {scenario.target_p99_ms:g} ms",
                  p99 <= scenario.target_p99_ms)  # fmt: skip
        check(label, f"delivered {run.delivered:,}/{run.expected:,}", run.complete)
        check(label, f"round trips/event {run.round_trips_per_event:g} == 1",
              run.round_trips_per_event == 1)  # fmt: skip
        if scenario.target_deliveries_per_second:
            target = scenario.target_deliveries_per_second
            check(label, f"{run.deliveries_per_second:,.0f} deliveries/s >= {target:,.0f}",
                  run.deliveries_per_second >= target * 0.98)  # fmt: skip
        ratio = cpu_ratios.get(run.scenario, {}).get("cpu_per_delivery")
        if run.contender == "budget_ws" and run.scenario == "burst" and ratio is not None:
            against = cpu_ratios[run.scenario]["against"]
            check(label, f"worker CPU per delivery x{ratio} {against} <= 0.5", ratio <= 0.5)
    return found


# --------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cross_worker",
        description=(
            "Publish events to Redis at a steady rate and measure their delivery to "
            "WebSocket clients of two uvicorn workers, with budget_ws and with "
            "encode/broadcaster's Redis backend, and of two native budget_ws servers on "
            "one port (native)."
        ),
    )
    parser.add_argument(
        "--scenario",
        nargs="+",
        choices=sorted(SCENARIOS),
        default=["fanout", "rate", "burst"],
        help="fanout: 50 ev/s to 1,000 clients; rate: 1,000 ev/s to 20 clients; burst: 100 "
        "events at once to 1,000 clients (default: all three)",
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of publishing (default: 10)"
    )
    parser.add_argument("--clients", type=int, help="override the scenario's client count")
    parser.add_argument("--rate", type=float, help="override the scenario's events/s")
    parser.add_argument(
        "--client-processes", type=int, default=4, help="processes holding the clients (4)"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=3.0,
        help="seconds clients may take to receive the last events after publishing (3)",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=120.0, help="seconds to connect every client"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis server shared by publisher and workers (default: 127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--private-redis",
        action="store_true",
        help=(
            "start a redis-server of the run's own on a free loopback port instead, so that "
            "nobody else's commands show up in INFO commandstats"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--json-file", type=Path, metavar="PATH", help="also write the JSON results to PATH"
    )
    return parser


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if any(name.startswith("broadcaster") for name in args.contenders):
        try:
            import broadcaster  # noqa: F401
        except ImportError:
            _progress("broadcaster is not installed: pip install 'broadcaster[redis]'")
            return 2
    CommandCounter.install()
    parameters = {
        key: value for key, value in vars(args).items() if key not in ("json_file", "json")
    }
    parameters["scenarios"] = {name: asdict(SCENARIOS[name]) for name in args.scenario}
    parameters |= {"warmup_events": WARMUP_EVENTS, "max_in_flight": MAX_IN_FLIGHT}
    env = environment("cross_worker", parameters)
    runs: list[Run] = []
    private: subprocess.Popen[bytes] | None = None
    args.redis_pid = None
    if args.private_redis:
        private, args.redis_url = start_redis()
        args.redis_pid = private.pid
    env["redis_url"] = args.redis_url
    try:
        _run_all(args, runs)
    finally:
        if private is not None:
            private.terminate()
            private.wait(10)
    return _report(args, env, runs)


def start_redis(timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway ``redis-server`` on a free loopback port, without persistence."""
    import redis

    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with redis.Redis.from_url(url) as probe:
                probe.ping()
            return process, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the private redis-server did not start") from None
            time.sleep(0.05)


def _run_all(args: argparse.Namespace, runs: list[Run]) -> None:
    for name in args.scenario:
        scenario = SCENARIOS[name]
        if args.clients or args.rate:
            scenario = Scenario(
                name,
                clients=args.clients or scenario.clients,
                rate=args.rate or scenario.rate,
                target_p99_ms=scenario.target_p99_ms,
                events=scenario.events,
            )
        for contender in args.contenders:
            _progress(
                f"{name}: {contender}, {scenario.clients} clients, "
                + (f"{scenario.events} events at {scenario.rate:g} ev/s" if scenario.events
                   else f"{scenario.rate:g} ev/s for {args.duration:g} s")
            )  # fmt: skip
            run = anyio.run(run_one, contender, scenario, args, backend="asyncio")
            runs.append(run)


def _report(args: argparse.Namespace, env: dict[str, Any], runs: list[Run]) -> int:
    env["load_after"] = load_average()
    result: dict[str, Any] = {
        "environment": env,
        "runs": [asdict(run) | {"complete": run.complete, "mode": run.mode} for run in runs],
        "ratios_budget_ws_to_broadcaster": ratios(runs),
        "ratios_native_to_budget_ws": ratios(runs, "native", ("budget_ws",)),
        "verdicts": verdicts(runs),
    }
    if args.json_file:
        args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{describe(env)}; {args.duration:g} s per run")
        print(table(runs))
        native = [("native", entry) for entry in result["ratios_native_to_budget_ws"]]
        for ours, entry in [("budget_ws", entry) for entry in ratios(runs)] + native:
            print(
                f"{ours}/{entry['against']} {entry['scenario']}: latency p50 "
                f"x{entry['latency_p50']}, p99 x{entry['latency_p99']}, "
                f"deliveries/s x{entry['deliveries_per_second']}, "
                f"worker CPU per delivery x{entry['cpu_per_delivery']}"
            )
        for verdict in result["verdicts"]:
            print(f"target {verdict['label']}: {verdict['check']}: "
                  + ("yes" if verdict["met"] else "NO"))  # fmt: skip
    # broadcaster as its README has it is expected to lose events here: that is a finding.
    failed = [
        run for run in runs if run.error or (not run.complete and run.contender != "broadcaster")
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
