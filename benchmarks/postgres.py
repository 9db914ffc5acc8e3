"""PostgreSQL backend benchmark (issue 12), beside the Redis backend and broadcaster's.

Run it with ``python -m benchmarks.postgres`` (``--help`` lists the options;
``benchmarks/README.md`` explains every figure). In one run, for budget_ws on
PostgreSQL, budget_ws on Redis and encode/broadcaster's Postgres backend, after timing a
bare round trip and each PostgreSQL statement behind a publish alone:

1. **publish-to-deliver latency across two workers**: this process publishes at a steady
   ``--rate`` for ``--duration`` seconds, a second process
   (``benchmarks/postgres_receiver.py``, its own backend) receives; latency is receipt -
   ``sent_at`` on the same clock, and the receiving worker's CPU time / events is the
   **CPU per delivered event** (first, so that what the other phases write does not land
   in it);
2. **round trips**: each call below one at a time through ``benchmarks/wire.py``'s TCP
   proxy, which counts the turns of each connection's conversation on the wire;
3. **publishes per second**: ``--concurrency`` tasks of this process publish back to
   back (each awaits its publish before the next, like that many request handlers) to
   one topic and spread over 100, for ``--publish-duration`` seconds each; on
   PostgreSQL also **transactionally**: each publish in a transaction of its own that
   also INSERTs one row into an app table, beside the same transaction without the
   publish (asyncpg and SQLAlchemy's ``AsyncSession``).

Figures 1 and 3 are measured ``--repeat`` times in rotating order; the median is kept.
Each run has a schema (budget_ws's, migrated by its documented step), a key prefix and a
channel of its own, dropped afterwards. PostgreSQL and Redis are private servers of the
run's own (``benchmarks/private_postgres.py``; ``redis-server``) unless
``--postgres-url`` or ``--redis-url`` names one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc

from benchmarks.children import JsonLinesChild
from benchmarks.console import grid, verdict_lines
from benchmarks.measure import cpu_us_per_delivery, percentiles
from benchmarks.postgres_contenders import (
    CONTENDERS,
    DRIVERS,
    LABELS,
    BroadcasterPublisher,
    BudgetWsPublisher,
    Place,
    TransactionalApp,
    drop_schemas,
    prepare_schemas,
    publisher,
    server_address,
)
from benchmarks.private_postgres import PrivatePostgres
from benchmarks.provenance import PACKAGES, checkout, describe, environment, load_average
from benchmarks.wire import RoundTripProxy

__all__ = ["Delivery", "RoundTrips", "Throughput", "main", "results_document"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_USED = (*PACKAGES, "asyncpg", "SQLAlchemy")
WARMUP_EVENTS = 5
MAX_IN_FLIGHT = 64
"""Publish calls awaited at once at most by the steady (open-loop) publisher."""
CONCURRENT_PROBE = 8
"""Publishes started at once on broadcaster's Postgres backend without a lock."""
PUBLISH = "publish"
TRANSACTION = "transaction"
"""The app's transaction alone: BEGIN, INSERT one row, COMMIT."""
TRANSACTION_PUBLISH = "transaction+publish"
"""The same transaction with ``publish(..., within=...)`` in it, before the COMMIT."""
PHASES = ("round-trips", "publish", "delivery")
T = TypeVar("T")
Variant = tuple[str, str, str]
"""(contender, mode, driver); driver ``-`` for a plain publish."""


def variants(contenders: Sequence[str], drivers: Sequence[str]) -> list[Variant]:
    found: list[Variant] = [(name, PUBLISH, "-") for name in contenders]
    if "postgresql" in contenders:
        for driver in drivers:
            found += [("postgresql", mode, driver) for mode in (TRANSACTION, TRANSACTION_PUBLISH)]
    return found


@dataclass
class Throughput:
    """Closed-loop calls of one variant: ``concurrency`` tasks, ``topics`` topics."""

    contender: str
    mode: str
    driver: str
    topics: int
    concurrency: int
    duration: float
    calls: int = 0
    per_second: float = 0.0
    call_ms: dict[str, float] = field(default_factory=dict)
    """Time of one call (a publish, or a whole transaction): p50, p90, p99, max."""
    cpu_us_per_call: float | None = None
    """CPU time of this (the publishing) process / calls."""
    repeats: list[float] = field(default_factory=list)
    """``per_second`` of every repeat; this run is the median one."""
    error: str | None = None


@dataclass
class RoundTrips:
    """The same calls, one at a time, through the counting proxy."""

    contender: str
    mode: str
    driver: str
    calls: int = 0
    round_trips: int = 0
    per_call: float | None = None
    connections: int = 0
    """Connections the proxy relayed (the counted ones, and the listener's)."""
    error: str | None = None


@dataclass
class Delivery:
    """Steady publishing on this worker, receipt on another: latency and receiver CPU."""

    contender: str
    rate: float
    duration: float
    published: int = 0
    publish_rate: float = 0.0
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    offset_gaps: int = 0
    """budget_ws: deliveries whose offset was not the previous one + 1 (broadcaster: none)."""
    resyncs: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    publish_call_ms: dict[str, float] = field(default_factory=dict)
    receiver_cpu_seconds: float = 0.0
    receiver_cpu_us_per_event: float | None = None
    """``measure.cpu_us_per_delivery``: receiver CPU from the first publish until the last
    event arrived, / events received."""
    repeats: list[float] = field(default_factory=list)
    """Latency p99 of every repeat; this run is the median one."""
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.received == self.expected and not self.duplicates


# --------------------------------------------------------------------------------------
# Publishes per second


Call = Callable[[int, str], Awaitable[Any]]


async def _closed_loop(calls: Sequence[Call], topics: Sequence[str], seconds: float,
                       durations: list[int] | None) -> int:  # fmt: skip
    """Each call in a task of its own, back to back until ``seconds`` pass; calls made."""
    deadline = time.perf_counter() + seconds
    made = 0

    async def loop(index: int, call: Call) -> None:
        nonlocal made
        seq = index
        while time.perf_counter() < deadline:
            started = time.perf_counter_ns()
            await call(seq, topics[seq % len(topics)])
            if durations is not None:
                durations.append(time.perf_counter_ns() - started)
            made += 1
            seq += len(calls)

    with anyio.fail_after(seconds + 30):
        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(loop, index, call)
    return made


async def _calls(stack: AsyncExitStack, variant: Variant, place: Place, note: str,
                 count: int, port: int | None = None) -> list[Call]:  # fmt: skip
    """``count`` callables doing the variant's work; ``port``: through a proxy there."""
    contender, mode, driver = variant
    plain = mode == PUBLISH
    sender = publisher(contender, place, note, port=port if plain else None, quiet=port is not None)
    await stack.enter_async_context(sender)
    if plain:
        return [sender.publish] * count
    assert isinstance(sender, BudgetWsPublisher)
    within = sender if mode == TRANSACTION_PUBLISH else None
    calls: list[Call] = []
    for _ in range(count):
        app = TransactionalApp(driver, place.postgres_dsn_at(port), place.app_schema, note)
        await stack.enter_async_context(app)

        async def transact(seq: int, topic: str, app: TransactionalApp = app) -> None:
            await app.transact(seq, topic, within)

        calls.append(transact)
    return calls


async def run_throughput(variant: Variant, topics: int, concurrency: int, place: Place,
                         args: argparse.Namespace) -> Throughput:  # fmt: skip
    contender, mode, driver = variant
    run = Throughput(contender, mode, driver, topics, concurrency, args.publish_duration)
    names = [place.topic(contender, index) for index in range(topics)]
    try:
        async with AsyncExitStack() as stack:
            calls = await _calls(stack, variant, place, args.note, concurrency)
            await _closed_loop(calls, names, args.warmup, None)  # statements, pools, caches
            durations: list[int] = []
            cpu, started = time.process_time(), time.perf_counter()
            run.calls = await _closed_loop(calls, names, args.publish_duration, durations)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        run.per_second = round(run.calls / elapsed, 1)
        run.call_ms = percentiles(durations)
        run.cpu_us_per_call = cpu_us_per_delivery(cpu, run.calls)
    except Exception as exc:  # reported, never hidden
        run.error = f"{type(exc).__name__}: {exc}"
    return run


async def count_round_trips(variant: Variant, place: Place, args: argparse.Namespace) -> RoundTrips:
    """The variant's calls, one at a time, through a proxy counting round trips."""
    contender, mode, driver = variant
    run = RoundTrips(contender, mode, driver)
    host, port = server_address(place.redis_url if contender == "redis" else place.postgres_dsn)
    topic = place.topic(contender, 0)
    try:
        async with RoundTripProxy(host, port) as proxy, AsyncExitStack() as stack:
            calls = await _calls(stack, variant, place, args.note, 1, port=proxy.port)
            for seq in range(10):  # prepared statements, a pooled connection
                await calls[0](seq, topic)
            before = proxy.round_trips
            for seq in range(args.count_calls):
                await calls[0](seq, topic)
            run.round_trips = proxy.round_trips - before
            run.calls = args.count_calls
            run.per_call = round(run.round_trips / run.calls, 3)
            run.connections = proxy.connections
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    return run


async def measure_rtt(place: Place, count: int = 200) -> dict[str, dict[str, float]]:
    """A bare round trip to each server (``SELECT 1``, ``PING``), one at a time, in ms."""
    import asyncpg
    import redis.asyncio

    found: dict[str, dict[str, float]] = {}
    connection = await asyncpg.connect(place.postgres_dsn)
    client = redis.asyncio.Redis.from_url(place.redis_url)
    try:
        for name, call in (("postgresql", lambda: connection.fetchval("SELECT 1")),
                           ("redis", client.ping)):  # fmt: skip
            times = []
            for number in range(count + 20):
                started = time.perf_counter_ns()
                await call()
                if number >= 20:
                    times.append(time.perf_counter_ns() - started)
            found[name] = percentiles(times)
    finally:
        await connection.close()
        await client.aclose()
    return found


STATEMENTS = ("select_1", "pg_notify", "publish_function", "publish_function_async_commit")
"""What ``measure_statements`` times: a bare round trip, broadcaster's publish statement,
budget_ws's, and budget_ws's with a commit that does not wait for the WAL flush."""


async def measure_statements(place: Place, rate: float, note: str,
                             count: int = 200) -> dict[str, dict[str, float]]:  # fmt: skip
    """Each contender's PostgreSQL statement alone, one at a time at ``rate`` per second.

    On one connection, with the pauses of the steady stream between calls (a statement
    after an idle gap costs more than back to back): ``SELECT 1``; ``SELECT pg_notify``
    (broadcaster's publish); budget_ws's publish function, as ``PostgresBackend`` calls
    it; and the same with ``synchronous_commit = off`` for this session, which is not
    how budget_ws runs (a crash could then lose offsets clients have seen): it shows what
    waiting for the write-ahead log's flush costs.
    """
    import asyncpg

    from benchmarks.postgres_contenders import tick_json
    from budget_ws.backends._postgres_schema import publish_sql
    from budget_ws.backends.postgresql import HistoryPolicy

    policy = HistoryPolicy()
    payload = tick_json(0, time.time_ns(), note)
    topic = place.topic("postgresql", "statements")
    calls: dict[str, tuple[str, tuple[Any, ...]]] = {
        "select_1": ("SELECT 1", ()),
        "pg_notify": ("SELECT pg_notify($1, $2)", (place.topic("broadcaster-postgres", 0),
                                                   payload)),
        "publish_function": (publish_sql(place.schema, ("$1", "$2", "$3", "$4")),
                             (topic, payload.encode(), policy.size, policy.ttl)),
    }  # fmt: skip
    calls["publish_function_async_commit"] = calls["publish_function"]
    found: dict[str, dict[str, float]] = {}
    connection = await asyncpg.connect(place.postgres_dsn)
    try:
        for name in STATEMENTS:
            query, arguments = calls[name]
            if name == "publish_function_async_commit":
                await connection.execute("SET synchronous_commit = off")
            times = []
            for number in range(count + 10):
                await anyio.sleep(1 / rate)
                started = time.perf_counter_ns()
                await connection.fetchrow(query, *arguments)
                if number >= 10:
                    times.append(time.perf_counter_ns() - started)
            found[name] = percentiles(times)
    finally:
        await connection.close()
    return found


# --------------------------------------------------------------------------------------
# Across two workers


class Receiver(JsonLinesChild):
    """A ``benchmarks.postgres_receiver`` child: the receiving worker."""

    @classmethod
    async def start(cls, contender: str, url: str, topic: str) -> Receiver:
        command = [sys.executable, "-m", "benchmarks.postgres_receiver", "--contender",
                   contender, "--url", url, "--topic", topic]  # fmt: skip
        # Its last report holds every event's timing: a long line.
        return cls(await anyio.open_process(command, cwd=ROOT, stderr=None), max_line=1 << 26)


async def run_delivery(contender: str, place: Place, args: argparse.Namespace) -> Delivery:
    run = Delivery(contender, args.rate, args.duration)
    topic = place.topic(contender, "delivery")
    receiver = await Receiver.start(contender, place.url(contender), topic)
    try:
        with anyio.fail_after(30):
            ready = await receiver.line()
        import budget_ws

        if ready.get("library") != budget_ws.__file__:
            raise RuntimeError(f"the receiver imported {ready.get('library')}, "
                               f"this process {budget_ws.__file__}")  # fmt: skip
        async with publisher(contender, place, args.note) as sender:
            for number in range(WARMUP_EVENTS):
                await sender.publish(-1 - number, topic)
                await anyio.sleep(0.02)
            await anyio.sleep(0.5)
            total = max(1, round(args.rate * args.duration))
            await receiver.send(f"start {total}")
            with anyio.fail_after(10):
                await receiver.line()
            call_ns: list[int] = []
            limiter = anyio.CapacityLimiter(MAX_IN_FLIGHT)

            async def publish(seq: int) -> None:
                async with limiter:
                    started = time.perf_counter_ns()
                    await sender.publish(seq, topic)
                    call_ns.append(time.perf_counter_ns() - started)

            # Open loop: each event at its due time whatever earlier publishes are doing
            # (like independent request handlers), so a slow one shows up as latency.
            interval = 1.0 / args.rate
            with anyio.fail_after(args.duration + 60):
                async with anyio.create_task_group() as group:
                    began = time.perf_counter()
                    for seq in range(total):
                        delay = began + seq * interval - time.perf_counter()
                        if delay > 0:
                            await anyio.sleep(delay)
                        group.start_soon(publish, seq)
                    last_due = time.perf_counter()
            run.published = total
            run.publish_rate = round((total - 1) / (last_due - began), 1) if total > 1 else 0.0
            run.publish_call_ms = percentiles(call_ns)
            await receiver.send(f"report {args.drain}")
            with anyio.fail_after(args.drain + 30):
                report = await receiver.line()
        run.expected = total
        run.received = report["received"]
        run.duplicates = report["duplicates"]
        run.offset_gaps = report["offset_gaps"]
        run.resyncs = report["resyncs"]
        run.latency_ms = percentiles(report["latencies_ns"])
        run.receiver_cpu_seconds = report["cpu_seconds"]
        run.receiver_cpu_us_per_event = cpu_us_per_delivery(report["cpu_seconds"], run.received)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        with anyio.CancelScope(shield=True):
            await receiver.stop()
    return run


# --------------------------------------------------------------------------------------
# Summaries: transactions, ratios, verdicts


def _find(runs: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((run for run in runs if all(run.get(k) == v for k, v in match.items())), None)


def _divide(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def transactions(throughput: Sequence[dict[str, Any]],
                 rtt: dict[str, dict[str, float]]) -> list[dict[str, Any]]:  # fmt: skip
    """Per driver, topics and concurrency: the time the publish adds to the transaction."""
    rows = []
    for run in throughput:
        if run["mode"] != TRANSACTION:
            continue
        key = {"driver": run["driver"], "topics": run["topics"], "concurrency": run["concurrency"]}
        with_publish = _find(throughput, mode=TRANSACTION_PUBLISH, **key)
        if with_publish is None:
            continue
        p50 = [run["call_ms"].get("p50"), with_publish["call_ms"].get("p50")]
        added = _minus(p50[1], p50[0])
        rows.append(key | {
            "per_second": [run["per_second"], with_publish["per_second"]],
            "p50_ms": p50,
            "added_p50_ms": added,
            "added_in_rtts": _divide(added, rtt.get("postgresql", {}).get("p50"), 2),
        })  # fmt: skip
    return rows


def transaction_round_trips(round_trips: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per driver: round trips of the app's transaction without and with the publish."""
    rows = []
    for run in round_trips:
        if run["mode"] != TRANSACTION:
            continue
        with_publish = _find(round_trips, mode=TRANSACTION_PUBLISH, driver=run["driver"])
        after = with_publish["per_call"] if with_publish else None
        rows.append({"driver": run["driver"], "without": run["per_call"], "with": after,
                     "added": _minus(after, run["per_call"])})  # fmt: skip
    return rows


def ratios(throughput: Sequence[dict[str, Any]],
           deliveries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """budget_ws on PostgreSQL ÷ each peer, from this run's figures."""
    found = []
    for peer in CONTENDERS[1:]:
        for run in throughput:
            if run["contender"] != "postgresql" or run["mode"] != PUBLISH:
                continue
            theirs = _find(throughput, contender=peer, mode=PUBLISH, topics=run["topics"],
                           concurrency=run["concurrency"])  # fmt: skip
            if theirs:
                ratio = _divide(run["per_second"], theirs["per_second"])
                found.append({"against": peer, "figure": "publishes/s", "topics": run["topics"],
                              "concurrency": run["concurrency"], "ratio": ratio})  # fmt: skip
        ours, theirs = _find(deliveries, contender="postgresql"), _find(deliveries, contender=peer)
        if ours and theirs:
            for key in ("p50", "p99"):
                found.append({"against": peer, "figure": f"latency {key}",
                              "ratio": _divide(ours["latency_ms"].get(key),
                                               theirs["latency_ms"].get(key))})  # fmt: skip
            found.append({"against": peer, "figure": "receiver CPU per event",
                          "ratio": _divide(ours["receiver_cpu_us_per_event"],
                                           theirs["receiver_cpu_us_per_event"])})  # fmt: skip
    return found


def verdicts(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each checked against this run's figures."""
    found: list[dict[str, Any]] = []

    def check(label: str, text: str, met: bool) -> None:
        found.append({"label": label, "check": text, "met": met})

    for row in document["transaction_round_trips"]:
        if row["added"] is None:
            continue
        check(f"transactional publish ({row['driver']})",
              f"adds {row['added']:g} round trips to the app's transaction "
              f"({row['without']:g} -> {row['with']:g}) <= 1", row["added"] <= 1)  # fmt: skip
    for run in document["round_trips"]:
        if run["mode"] == PUBLISH and run["contender"] in ("postgresql", "redis"):
            check(f"publish() on {LABELS[run['contender']]}",
                  f"round trips per publish {run['per_call']} == 1 (as documented)",
                  run["per_call"] == 1)  # fmt: skip
    deliveries = document["delivery"]
    ours, redis = _find(deliveries, contender="postgresql"), _find(deliveries, contender="redis")
    if ours and redis and ours["latency_ms"] and redis["latency_ms"]:
        for key in ("p50", "p99"):
            a, b = ours["latency_ms"][key], redis["latency_ms"][key]
            check(f"fan-out across workers, steady {ours['rate']:g}/s",
                  f"PostgreSQL latency {key} {a:.2f} ms <= 2 x Redis's {b:.2f} ms",
                  a <= 2 * b)  # fmt: skip
    for run in deliveries:
        if run["contender"] in ("postgresql", "redis"):
            check(f"fan-out across workers, {LABELS[run['contender']]}",
                  f"delivered {run['received']:,}/{run['expected']:,}, {run['duplicates']} "
                  f"duplicates, {run['offset_gaps']} offset gaps, {run['resyncs']} resyncs",
                  run["complete"] and not run["offset_gaps"] and not run["resyncs"])  # fmt: skip
    return found


def results_document(env: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """What the results file holds: ``_run_all``'s figures, their ratios and verdicts."""
    document: dict[str, Any] = {
        "environment": env,
        "rtt_ms": found["rtt"],
        "statements_ms": found["statements"],
        "throughput": [asdict(run) for run in found["throughput"]],
        "round_trips": [asdict(run) for run in found["round_trips"]],
        "delivery": [asdict(run) | {"complete": run.complete} for run in found["delivery"]],
        "broadcaster_concurrent_publish": found["probe"],
    }
    document["transactions"] = transactions(document["throughput"], found["rtt"])
    document["transaction_round_trips"] = transaction_round_trips(document["round_trips"])
    document["ratios_postgresql_to"] = ratios(document["throughput"], document["delivery"])
    document["verdicts"] = verdicts(document)
    return document


# --------------------------------------------------------------------------------------
# Printing


def _ms(figures: dict[str, float], key: str) -> str:
    return f"{figures[key]:.2f}" if key in figures else "-"


def report_text(document: dict[str, Any]) -> str:
    parts = [describe(document["environment"])]
    rtt = document["rtt_ms"]
    parts.append("round trip alone: PostgreSQL SELECT 1 p50 "
                 f"{_ms(rtt.get('postgresql', {}), 'p50')} ms, Redis PING p50 "
                 f"{_ms(rtt.get('redis', {}), 'p50')} ms")  # fmt: skip
    parts.append("one statement at a time, paced: " + ", ".join(
        f"{name} p50 {_ms(figures, 'p50')} / p99 {_ms(figures, 'p99')} ms"
        for name, figures in document["statements_ms"].items()))  # fmt: skip
    rows = []
    for run in document["throughput"]:
        trips = _find(document["round_trips"], contender=run["contender"], mode=run["mode"],
                      driver=run["driver"])  # fmt: skip
        rows.append([run["contender"], run["mode"], run["driver"], str(run["topics"]),
                     str(run["concurrency"]), f"{run['per_second']:,.0f}",
                     _ms(run["call_ms"], "p50"), _ms(run["call_ms"], "p99"),
                     f"{run['cpu_us_per_call']:.0f}" if run["cpu_us_per_call"] else "-",
                     f"{trips['per_call']:g}" if trips and trips["per_call"] else "-",
                     run["error"] or ""])  # fmt: skip
    parts.append(grid(["contender", "mode", "driver", "topics", "tasks", "calls/s", "p50 ms",
                        "p99 ms", "CPU µs/call", "RTT/call", "error"], rows))  # fmt: skip
    rows = [[row["driver"], str(row["topics"]), str(row["concurrency"]),
             " -> ".join(f"{v:,.0f}" for v in row["per_second"]),
             " -> ".join(f"{v:.2f}" for v in row["p50_ms"]),
             f"{row['added_p50_ms']:+.3f}" if row["added_p50_ms"] is not None else "-",
             f"{row['added_in_rtts']:g}" if row["added_in_rtts"] is not None else "-"]
            for row in document["transactions"]]  # fmt: skip
    parts.append(grid(["transaction", "topics", "tasks", "tx/s without -> with",
                        "p50 ms without -> with", "added ms", "added / RTT"], rows))  # fmt: skip
    for row in document["transaction_round_trips"]:
        parts.append(f"round trips of the app's transaction ({row['driver']}): "
                     f"{row['without']} without the publish, {row['with']} with it")  # fmt: skip
    rows = []
    for run in document["delivery"]:
        latency = run["latency_ms"]
        rows.append([run["contender"], f"{run['publish_rate']:g}/{run['rate']:g}",
                     f"{run['received']:,}/{run['expected']:,}" + ("" if run["complete"] else " !"),
                     _ms(latency, "p50"), _ms(latency, "p99"), _ms(latency, "max"),
                     f"{run['receiver_cpu_us_per_event']:.1f}"
                     if run["receiver_cpu_us_per_event"] else "-",
                     run["error"] or ""])  # fmt: skip
    parts.append(grid(["contender", "ev/s", "received", "p50 ms", "p99 ms", "max ms",
                        "receiver CPU µs/event", "error"], rows))  # fmt: skip
    for entry in document["ratios_postgresql_to"]:
        where = (f" ({entry['topics']} topics, {entry['concurrency']} tasks)"
                 if "topics" in entry else "")  # fmt: skip
        parts.append(f"postgresql/{entry['against']} {entry['figure']}{where}: x{entry['ratio']}")
    probe = document.get("broadcaster_concurrent_publish")
    if probe:
        parts.append(f"broadcaster-postgres: {probe['failed']} of {probe['attempted']} publishes "
                     f"started at once failed ({probe['error'] or 'none'})")  # fmt: skip
    parts += verdict_lines(document["verdicts"])
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres", description=(
        "budget_ws on PostgreSQL against budget_ws on Redis and encode/broadcaster's "
        "Postgres backend: publishes per second (plain and transactional), round trips, "
        "and publish-to-deliver latency and CPU across two workers."))  # fmt: skip
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="round-trips, publish (publishes/s) and delivery (across two "
                        "workers); all by default")  # fmt: skip
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument(
        "--drivers",
        nargs="*",
        choices=DRIVERS,
        default=list(DRIVERS),
        help="how the app holds its transaction (none: no transactional rows)",
    )
    parser.add_argument("--topics", nargs="+", type=int, default=[1, 100],
                        help="topics the publishes are spread over (1 100)")  # fmt: skip
    parser.add_argument(
        "--concurrency",
        nargs="+",
        type=int,
        default=[1, 8],
        help="publishing tasks at once, each awaiting its call (1 8)",
    )
    parser.add_argument("--publish-duration", type=float, default=1.5,
                        help="seconds of publishing per publishes/s figure (1.5)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every publishes/s and cross-worker figure, in rotating "
                        "order; the median is kept (3)")  # fmt: skip
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="seconds of the same calls before each timed one (0.5)",
    )
    parser.add_argument(
        "--count-calls",
        type=int,
        default=200,
        help="calls counted through the round-trip proxy, one at a time (200)",
    )
    parser.add_argument(
        "--statement-calls",
        type=int,
        default=200,
        help="calls timed per statement, one at a time at --rate (200)",
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="events/s of the steady cross-worker stream (200)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of the steady cross-worker stream (10)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=3.0,
        help="seconds the receiver may take after the last publish (3)",
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=200,
        help="length of each event's note, about its data's size (200)",
    )
    parser.add_argument(
        "--postgres-url",
        help="a PostgreSQL server to use (e.g. postgresql://postgres@127.0.0.1:5432/test; a "
        "schema of the run's own is created there) instead of a private server of the run's "
        "own",
    )
    parser.add_argument("--redis-url", help="a Redis server to use instead of a private "
                        "redis-server of the run's own")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--json-file", type=Path, metavar="PATH",
                        help="also write the JSON results to PATH")  # fmt: skip
    return parser


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _servers(place: Place) -> dict[str, Any]:
    import asyncpg
    import redis.asyncio

    connection = await asyncpg.connect(place.postgres_dsn)
    try:
        postgres = str(await connection.fetchval("SHOW server_version"))
        names = ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers")
        settings = {name: str(await connection.fetchval(f"SHOW {name}")) for name in names}
    finally:
        await connection.close()
    async with redis.asyncio.Redis.from_url(place.redis_url) as client:
        info = await client.info("server")
    return {"postgresql": postgres, "postgresql_settings": settings,
            "redis": str(info["redis_version"])}  # fmt: skip


RunT = TypeVar("RunT", Throughput, Delivery)


def _rotated(items: Sequence[T], shift: int) -> list[T]:
    """``items`` starting at ``shift``: each goes first as often as any other."""
    shift %= max(1, len(items))
    return [*items[shift:], *items[:shift]]


def _median(runs: Sequence[RunT], figure: Callable[[RunT], float]) -> RunT:
    """The run with the median ``figure`` (the first failed one, if any failed)."""
    failed = [run for run in runs if run.error]
    kept = failed[0] if failed else sorted(runs, key=figure)[len(runs) // 2]
    kept.repeats = [round(figure(run), 3) for run in runs]
    return kept


async def _delivery_phase(place: Place, args: argparse.Namespace) -> list[Delivery]:
    runs: dict[str, list[Delivery]] = {name: [] for name in args.contenders}
    for repeat in range(args.repeat):
        for contender in _rotated(args.contenders, repeat):
            _progress(f"across workers ({repeat + 1}/{args.repeat}): {contender}, "
                      f"{args.rate:g} ev/s for {args.duration:g} s")  # fmt: skip
            runs[contender].append(await run_delivery(contender, place, args))
    return [_median(found, lambda run: run.latency_ms.get("p99", 0.0)) for found in runs.values()]


async def _publish_phase(place: Place, args: argparse.Namespace,
                         planned: Sequence[Variant]) -> list[Throughput]:  # fmt: skip
    kept: list[Throughput] = []
    for topics in args.topics:
        for concurrency in args.concurrency:
            runs: dict[Variant, list[Throughput]] = {variant: [] for variant in planned}
            for repeat in range(args.repeat):
                for variant in _rotated(planned, repeat):
                    _progress(f"publishes/s ({repeat + 1}/{args.repeat}): {' '.join(variant)}, "
                              f"{topics} topics, {concurrency} tasks")  # fmt: skip
                    runs[variant].append(
                        await run_throughput(variant, topics, concurrency, place, args)
                    )
            kept += [_median(found, lambda run: run.per_second) for found in runs.values()]
    return kept


async def _run_all(place: Place, args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {"throughput": [], "round_trips": [], "delivery": [], "probe": None}
    await prepare_schemas(place)
    try:
        found["servers"] = await _servers(place)
        found["rtt"] = await measure_rtt(place)
        found["statements"] = await measure_statements(place, args.rate, args.note,
                                                       args.statement_calls)  # fmt: skip
        # The steady stream first, on a topic of its own: what the throughput runs write
        # (and its vacuuming) must not land in its latency.
        if "delivery" in args.phases:
            found["delivery"] = await _delivery_phase(place, args)
        planned = variants(args.contenders, args.drivers)
        for variant in planned if "round-trips" in args.phases else ():
            _progress(f"round trips: {' '.join(variant)}")
            found["round_trips"].append(await count_round_trips(variant, place, args))
        if "publish" in args.phases:
            found["throughput"] = await _publish_phase(place, args, planned)
            if "broadcaster-postgres" in args.contenders:
                async with BroadcasterPublisher(place.postgres_dsn, args.note) as sender:
                    topic = place.topic("broadcaster-postgres", 0)
                    failed, error = await sender.concurrent_publish_errors(topic, CONCURRENT_PROBE)
                found["probe"] = {"attempted": CONCURRENT_PROBE, "failed": failed, "error": error}
    finally:
        with anyio.CancelScope(shield=True):
            await drop_schemas(place)
    return found


def _library_env() -> dict[str, Any] | None:
    """The library's provenance when it was imported from another checkout (PYTHONPATH)."""
    import budget_ws

    src = Path(budget_ws.__file__).resolve().parent.parent
    return None if src == ROOT / "src" else checkout(src)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if "broadcaster-postgres" in args.contenders:
        try:
            import broadcaster  # noqa: F401
        except ImportError:
            _progress("broadcaster is not installed: pip install 'broadcaster[postgres]'")
            return 2
    args.note = "x" * max(0, args.payload_bytes - 60)  # seq, sent_at and the keys: ~60 B
    parameters = {key: value for key, value in vars(args).items()
                  if key not in ("json", "json_file", "note")}  # fmt: skip
    parameters |= {"warmup_events": WARMUP_EVENTS, "max_in_flight": MAX_IN_FLIGHT}
    env = environment("postgres", parameters, PACKAGES_USED)
    library = _library_env()
    if library is not None:
        env["library"] = library
    from benchmarks.cross_worker import start_redis

    with ExitStack() as servers:
        postgres_url = args.postgres_url
        if postgres_url is None:
            postgres_url = servers.enter_context(PrivatePostgres()).dsn
        redis_url = args.redis_url
        if redis_url is None:
            private, redis_url = start_redis()
            servers.callback(private.wait, 10)
            servers.callback(private.terminate)
        place = Place.new(postgres_url, redis_url)
        found = anyio.run(_run_all, place, args, backend="asyncio")
    env["servers"] = found.get("servers", {})
    env["postgres_url"] = args.postgres_url or "private PostgreSQL server"
    env["redis_url"] = args.redis_url or "private redis-server"
    env["load_after"] = load_average()
    document = results_document(env, found)
    if args.json_file:
        args.json_file.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2) if args.json else report_text(document))
    failed = [run for kind in ("throughput", "round_trips", "delivery")
              for run in document[kind] if run["error"]]  # fmt: skip
    lost = [run for run in document["delivery"]
            if run["contender"] != "broadcaster-postgres" and not run["complete"]]  # fmt: skip
    return 1 if failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
