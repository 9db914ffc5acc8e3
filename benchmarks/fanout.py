"""Fan-out benchmark: one topic, N in-memory connections, M events; budget_ws against naive.

Run it with ``scripts/bench`` (or ``python -m benchmarks.fanout``); ``--help`` lists the
options and ``benchmarks/README.md`` explains every figure. Throughput is measured in this
process; memory is measured in a fresh child process per contender and N, so that neither
contender's heap (nor a previous run's) pollutes the other's figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import anyio
import anyio.lowlevel

import budget_ws
from budget_ws import (
    ConnectionClosed,
    ConnectionManager,
    Event,
    Heartbeat,
    MemoryBackend,
    OutboxLimits,
)
from budget_ws.propagation import Tracer

from .naive import NaiveConnectionManager
from .provenance import PACKAGES, describe, environment, load_average

__all__ = [
    "BudgetFactCreated",
    "CountingTransport",
    "MemoryProbe",
    "Tally",
    "TimedRun",
    "Workload",
    "main",
    "measure_memory",
    "measure_throughput",
    "results_document",
    "summarise",
    "verdicts",
]

T = TypeVar("T")

Contender = Literal["budget_ws", "observed", "metrics", "tracing", "naive"]
Mode = Literal["burst", "paced"]
Probe = Literal["rss", "traced"]

CONTENDERS: tuple[Contender, ...] = ("budget_ws", "observed", "naive")
EXTRA_CONTENDERS: tuple[Contender, ...] = ("metrics", "tracing")
"""On demand (``--contenders``): budget_ws with metrics only, or with tracing only."""
MODES: tuple[Mode, ...] = ("burst", "paced")
PROBES: tuple[Probe, ...] = ("rss", "traced")
TOPIC = "budget:42"
TARGET_RATIO = 10.0
OBSERVED_TARGETS: dict[Mode, float] = {"paced": 1.10, "burst": 1.20}
"""Most CPU per delivery that metrics and tracing may cost, as a multiple of budget_ws's
own: 10 % more in a steady stream (paced), 20 % in a burst."""
OBSERVABILITY_PACKAGES = ("prometheus-client", "opentelemetry-api", "opentelemetry-sdk")
"""Recorded beside ``provenance.PACKAGES``: what the instrumented contenders run."""
DELIVERY_TIMEOUT = 600.0
"""Seconds a timed run may take before it is reported as failed (never hang)."""

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTBOX = OutboxLimits()


class BudgetFactCreated(Event, name="budget_fact_created", register=False):
    """A budget fact as the original app broadcast it (what an HTMX page refreshes on)."""

    id: int
    budget_id: int
    category: str
    amount: Decimal
    currency: str
    booked_on: dt.date
    note: str
    created_by: str
    created_at: dt.datetime


_NOTE_WORDS = (
    "weekly shop at the farmers market, split with Sam; receipt photo attached; "
    "reimburse half from the household pot before the end of the month; "
)


@dataclass(frozen=True)
class Workload:
    """The M events both contenders publish, built before any clock starts.

    Args:
        events: How many events (M).
        payload_bytes: Size of each event's ``data`` object as compact JSON.
    """

    events: int
    payload_bytes: int
    typed: list[BudgetFactCreated] = field(init=False, repr=False)
    """The events as budget_ws publishes them."""
    dicts: list[dict[str, Any]] = field(init=False, repr=False)
    """The same events as the plain dicts the naive manager sends."""

    def __post_init__(self) -> None:
        typed = [self._fact(index) for index in range(self.events)]
        object.__setattr__(self, "typed", typed)
        object.__setattr__(self, "dicts", [fact.model_dump(mode="json") for fact in typed])

    def _fact(self, index: int) -> BudgetFactCreated:
        fields: dict[str, Any] = {
            "id": 1_000_000 + index,
            "budget_id": 42,
            "category": "groceries",
            "amount": Decimal("-42.50") - index,
            "currency": "EUR",
            "booked_on": dt.date(2024, 5, 17),
            "note": "",
            "created_by": "user-1729",
            "created_at": dt.datetime(2024, 5, 17, 9, 41, 27, 512000, tzinfo=dt.timezone.utc),
        }
        bare = len(BudgetFactCreated(**fields).model_dump_json())
        missing = max(0, self.payload_bytes - bare)
        fields["note"] = (_NOTE_WORDS * (missing // len(_NOTE_WORDS) + 1))[:missing]
        return BudgetFactCreated(**fields)


class Tally:
    """Frames delivered across all connections; ``done`` is set when the expected count is hit."""

    __slots__ = ("all_reading", "connections", "done", "expected", "frames", "messages", "reading")

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.reading = 0
        """Transports whose ``receive`` is being awaited (their server side is up)."""
        self.all_reading = anyio.Event()
        self.frames = 0
        self.messages = 0
        self.expected = 0
        self.done = anyio.Event()

    def arm(self, expected: int) -> None:
        """Start counting towards ``expected`` frames from zero."""
        self.frames = 0
        self.messages = 0
        self.expected = expected
        self.done = anyio.Event()


class CountingTransport:
    """An in-memory WebSocket that counts what it is sent and keeps nothing else.

    budget_ws joins frames that queued up into one message separated by ``"\\n"``, so a
    message of k frames counts k. ``receive`` waits until :meth:`close`, as an idle
    browser tab would.
    """

    __slots__ = ("_closed", "frames", "tally")

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.frames = 0
        self._closed = anyio.Event()

    async def send_text(self, text: str) -> None:
        frames = text.count("\n") + 1
        self.frames += frames
        tally = self.tally
        tally.messages += 1
        tally.frames += frames
        if tally.frames >= tally.expected:
            tally.done.set()

    async def receive(self) -> str | bytes:
        tally = self.tally
        tally.reading += 1
        if tally.reading == tally.connections:
            tally.all_reading.set()
        await self._closed.wait()
        raise ConnectionClosed(1000, "client closed")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closed.set()


class _CountSuspensions(Generic[T]):
    """Awaits a coroutine and records how often, and after what, it suspended.

    Every value a coroutine yields goes up to the event loop (a future on asyncio, a trap
    on trio), so counting the yields counts the loop round-trips ``publish`` needed. Until
    its first yield no other task can run, so the client sends counted by then were made
    by the publishing task itself, and the time to get there is the work it did alone.
    """

    __slots__ = ("_coroutine", "_tally", "alone_seconds", "sends_alone", "suspensions")

    def __init__(self, coroutine: Coroutine[Any, Any, T], tally: Tally) -> None:
        self._coroutine = coroutine
        self._tally = tally
        self.suspensions = 0
        self.alone_seconds = 0.0
        self.sends_alone = 0

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine = self._coroutine
        tally = self._tally
        messages = tally.messages
        began = time.perf_counter()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = coroutine.send(value) if error is None else coroutine.throw(error)
            except StopIteration as stop:
                if not self.suspensions:
                    self.alone_seconds = time.perf_counter() - began
                    self.sends_alone = tally.messages - messages
                result: T = stop.value
                return result
            if not self.suspensions:
                self.alone_seconds = time.perf_counter() - began
                self.sends_alone = tally.messages - messages
            self.suspensions += 1
            value, error = None, None
            try:
                value = yield yielded
            except BaseException as exc:  # delivered back into the coroutine, like await
                error = exc


class _GarbageCollections:
    """Time spent in the cyclic garbage collector, via ``gc.callbacks``."""

    __slots__ = ("_started", "full", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info["generation"] == 2

    def __enter__(self) -> _GarbageCollections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


Publish = Callable[[int], Coroutine[Any, Any, object]]
Serving = Callable[[list[CountingTransport], Tally, Workload], AbstractAsyncContextManager[Publish]]


@asynccontextmanager
async def _serve_budget_ws(
    transports: list[CountingTransport],
    tally: Tally,
    workload: Workload,
    *,
    metrics: bool = False,
    tracing: bool = False,
) -> AsyncIterator[Publish]:
    """Connect every transport to a ConnectionManager, subscribed server-side to TOPIC.

    ``metrics``: with every timing measured and a Prometheus collector registered;
    ``tracing``: with OpenTelemetry tracing through an SDK tracer provider with no
    exporter attached. Both: as an instrumented production app runs.
    """
    frame_bytes = workload.payload_bytes + 256

    async def subscribe(connection: budget_ws.Connection) -> None:
        await manager.subscribe(connection, TOPIC)

    manager = ConnectionManager(
        MemoryBackend(),
        # The default outbox, raised if needed so that a whole burst fits: this measures
        # throughput, not the overflow policy.
        outbox=OutboxLimits(
            max_messages=max(DEFAULT_OUTBOX.max_messages, workload.events + 16),
            max_bytes=max(DEFAULT_OUTBOX.max_bytes, (workload.events + 16) * frame_bytes),
        ),
        heartbeat=Heartbeat(interval=3600.0, timeout=3600.0),
        on_connect=subscribe,
        tracer=_tracer() if tracing else None,
    )
    if metrics:
        from prometheus_client import CollectorRegistry

        from budget_ws.prometheus import instrument

        instrument(manager, CollectorRegistry())
    events = workload.typed

    def publish(index: int) -> Coroutine[Any, Any, object]:
        return manager.publish(events[index], topic=TOPIC)

    async with manager, anyio.create_task_group() as task_group:
        for transport in transports:
            task_group.start_soon(manager.serve, transport)
        with anyio.fail_after(DELIVERY_TIMEOUT):
            # A connection reads only after on_connect has subscribed it.
            await tally.all_reading.wait()
            # Setup only, not timed: no event says that every welcome and subscribed
            # frame has left its outbox, so look.
            while manager.stats().queued_frames:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        try:
            yield publish
        finally:
            await manager.aclose()


def _tracer() -> Tracer:
    from opentelemetry.sdk.trace import TracerProvider

    from budget_ws.tracing import OpenTelemetryTracer

    return OpenTelemetryTracer(TracerProvider())


@asynccontextmanager
async def _serve_naive(
    transports: list[CountingTransport], tally: Tally, workload: Workload
) -> AsyncIterator[Publish]:
    """Connect every transport to the naive manager through its endpoint coroutine."""
    naive = NaiveConnectionManager()
    name = BudgetFactCreated.event_name
    dicts = workload.dicts

    def publish(index: int) -> Coroutine[Any, Any, object]:
        return naive.broadcast(name, dicts[index])

    async with anyio.create_task_group() as task_group:
        for index, transport in enumerate(transports):
            task_group.start_soon(naive.serve, f"client-{index}", transport)
        with anyio.fail_after(DELIVERY_TIMEOUT):
            await tally.all_reading.wait()
        try:
            yield publish
        finally:
            for transport in transports:
                await transport.close()


SERVING: dict[Contender, Serving] = {
    "budget_ws": _serve_budget_ws,
    "observed": functools.partial(_serve_budget_ws, metrics=True, tracing=True),
    "metrics": functools.partial(_serve_budget_ws, metrics=True),
    "tracing": functools.partial(_serve_budget_ws, tracing=True),
    "naive": _serve_naive,
}


@dataclass
class TimedRun:
    """One timed fan-out of M events to N connections."""

    contender: Contender
    connections: int
    mode: Mode
    events: int
    seconds: float
    """From the first publish until the last connection received the last frame."""
    cpu_seconds: float
    """CPU time this process used meanwhile (user and system, every thread)."""
    publish_loop_seconds: float
    """From the first publish until the last publish() returned."""
    publish_call_median: float
    """Median wall time of one publish() call, in seconds, until it returned (including
    whatever other tasks ran while it was suspended)."""
    publish_call_max: float
    publish_alone_median: float
    """Median time one publish() call worked before it first yielded to the loop (or
    returned): the fan-out work the publishing task does itself."""
    suspensions_per_publish: int
    """Most loop suspensions any publish() call made (0: it never yielded)."""
    sends_by_publish: float
    """Client sends (transport.send_text calls) the publishing task made itself inside
    publish(), per call: those before its first suspension. Exact here, because the
    in-memory transport never suspends; a per-client await shows up as N."""
    gc_seconds: float
    """Time the cyclic garbage collector ran during ``seconds``."""
    gc_full_collections: int
    """Full (generation 2) collections during ``seconds``."""
    frames: int
    """Frames the transports counted; N*M when complete."""
    messages: int
    """WebSocket messages (send_text calls) that carried them."""
    complete: bool
    """Whether every connection received exactly M frames."""

    @property
    def deliveries_per_second(self) -> float:
        return self.connections * self.events / self.seconds

    @property
    def cpu_us_per_delivery(self) -> float:
        return self.cpu_seconds / (self.connections * self.events) * 1e6


async def _timed_fanout(
    contender: Contender,
    mode: Mode,
    publish: Publish,
    transports: list[CountingTransport],
    tally: Tally,
    events: int,
) -> TimedRun:
    connections = len(transports)
    for transport in transports:
        transport.frames = 0
    tally.arm(connections * events)
    calls: list[float] = []
    alone: list[float] = []
    suspensions = 0
    sends = 0
    gc.collect()
    clock = time.perf_counter
    cpu_start = time.process_time()
    start = clock()
    with _GarbageCollections() as collections, anyio.fail_after(DELIVERY_TIMEOUT):
        for index in range(events):
            call = _CountSuspensions(publish(index), tally)
            began = clock()
            await call
            calls.append(clock() - began)
            alone.append(call.alone_seconds)
            sends += call.sends_alone
            suspensions = max(suspensions, call.suspensions)
            if mode == "paced":
                await anyio.lowlevel.checkpoint()  # let the writers run between events
        published = clock()
        await tally.done.wait()
    end = clock()
    cpu_end = time.process_time()
    return TimedRun(
        contender=contender,
        connections=connections,
        mode=mode,
        events=events,
        seconds=end - start,
        cpu_seconds=cpu_end - cpu_start,
        publish_loop_seconds=published - start,
        publish_call_median=statistics.median(calls),
        publish_call_max=max(calls),
        publish_alone_median=statistics.median(alone),
        suspensions_per_publish=suspensions,
        sends_by_publish=sends / events,
        gc_seconds=collections.seconds,
        gc_full_collections=collections.full,
        frames=tally.frames,
        messages=tally.messages,
        complete=all(transport.frames == events for transport in transports),
    )


async def measure_throughput(
    contender: Contender,
    connections: int,
    workload: Workload,
    modes: Sequence[Mode] = MODES,
    rounds: int = 1,
) -> list[TimedRun]:
    """Connect ``connections`` clients to one contender and time ``rounds`` fan-outs per
    mode, the modes taking turns.

    Must run inside an event loop (``anyio.run``).
    """
    tally = Tally(connections)
    transports = [CountingTransport(tally) for _ in range(connections)]
    runs: list[TimedRun] = []
    async with SERVING[contender](transports, tally, workload) as publish:
        for _ in range(rounds):
            for mode in modes:
                runs.append(
                    await _timed_fanout(
                        contender, mode, publish, transports, tally, workload.events
                    )
                )
    return runs


# Memory ------------------------------------------------------------------------------


@dataclass
class MemoryProbe:
    """Memory one contender holds per connection, measured in a fresh process."""

    contender: Contender
    connections: int
    probe: Probe
    """``rss``: resident set size from /proc; ``traced``: Python allocations (tracemalloc)."""
    idle_per_connection: float
    """Bytes per connection once all are connected and subscribed."""
    peak_per_connection: float
    """Bytes per connection at the peak of a burst of M events (idle included)."""
    complete: bool


def _proc_status_kib(field_name: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field_name}; RSS probes need Linux")
    return int(match.group(1))


def _reset_rss_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


async def measure_memory(
    contender: Contender, connections: int, workload: Workload, probe: Probe
) -> MemoryProbe:
    """Measure what connecting, subscribing and one burst cost per connection.

    Meant for a fresh process (``--child``): the baseline is taken after the transports
    (the fake clients) exist, so only the server side counts.
    """
    tally = Tally(connections)
    transports = [CountingTransport(tally) for _ in range(connections)]
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if probe == "traced":
        if not was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
    else:
        _reset_rss_peak()
        baseline = _proc_status_kib("VmRSS") * 1024
    async with SERVING[contender](transports, tally, workload) as publish:
        gc.collect()
        if probe == "traced":
            idle = tracemalloc.get_traced_memory()[0]
        else:
            idle = _proc_status_kib("VmRSS") * 1024
        run = await _timed_fanout(contender, "burst", publish, transports, tally, workload.events)
        if probe == "traced":
            peak = tracemalloc.get_traced_memory()[1]
            if not was_tracing:
                tracemalloc.stop()
        else:
            peak = _proc_status_kib("VmHWM") * 1024
    return MemoryProbe(
        contender=contender,
        connections=connections,
        probe=probe,
        idle_per_connection=(idle - baseline) / connections,
        peak_per_connection=(peak - baseline) / connections,
        complete=run.complete,
    )


def _memory_in_child(
    contender: Contender, connections: int, args: argparse.Namespace, probe: Probe
) -> MemoryProbe:
    command = [
        sys.executable,
        "-m",
        "benchmarks.fanout",
        "--child",
        contender,
        "--probe",
        probe,
        "--connections",
        str(connections),
        "--events",
        str(args.events),
        "--payload-bytes",
        str(args.payload_bytes),
        "--anyio-backend",
        args.anyio_backend,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory probe {contender} N={connections} {probe} failed:\n{completed.stderr}"
        )
    return MemoryProbe(**json.loads(completed.stdout))


# Reporting ---------------------------------------------------------------------------


@dataclass
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


def _source_revision() -> str | None:
    """The git commit the benchmarked source comes from, marked when ``src/`` has edits."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        edits = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}{' + uncommitted changes in src/' if edits else ''}"


def _environment(backend: str) -> dict[str, Any]:
    return {
        "source": _source_revision(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "anyio_backend": backend,
        "anyio": version("anyio"),
        "pydantic": version("pydantic"),
        "budget_ws": budget_ws.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


def summarise(
    runs: Sequence[TimedRun],
    memory: Sequence[MemoryProbe],
    connections_tried: Sequence[int],
    modes: Sequence[Mode],
    events: int,
) -> list[dict[str, Any]]:
    """One row per contender, N and mode: medians and spreads over the repeats, ratios.

    An ``observed`` row also carries the target it is held to (``cpu_ratio_target``, from
    ``OBSERVED_TARGETS``) and whether it met it (``target_met``: within the target, and
    both it and budget_ws delivered every frame).
    """
    rows: list[dict[str, Any]] = []
    for connections in connections_tried:
        for mode in modes:
            medians: dict[str, float] = {}
            cpu: dict[str, float] = {}
            group_rows: list[dict[str, Any]] = []
            for contender in CONTENDERS + EXTRA_CONTENDERS:
                group = [
                    run
                    for run in runs
                    if (run.contender, run.connections, run.mode) == (contender, connections, mode)
                ]
                if not group:
                    continue
                rate = Spread.of([run.deliveries_per_second for run in group])
                medians[contender] = rate.median
                cpu[contender] = statistics.median(run.cpu_us_per_delivery for run in group)
                row: dict[str, Any] = {
                    "contender": contender,
                    "connections": connections,
                    "mode": mode,
                    "events": events,
                    "repeats": len(group),
                    "deliveries_per_second": asdict(rate),
                    "cpu_us_per_delivery": asdict(
                        Spread.of([run.cpu_us_per_delivery for run in group])
                    ),
                    "publish_call_ms": asdict(
                        Spread.of([run.publish_call_median * 1e3 for run in group])
                    ),
                    "publish_alone_ms": asdict(
                        Spread.of([run.publish_alone_median * 1e3 for run in group])
                    ),
                    "suspensions_per_publish": max(run.suspensions_per_publish for run in group),
                    "sends_by_publish": statistics.median(run.sends_by_publish for run in group),
                    "gc_share": statistics.median(run.gc_seconds / run.seconds for run in group),
                    "gc_full_collections": statistics.median(
                        run.gc_full_collections for run in group
                    ),
                    "frames_per_message": statistics.median(
                        run.frames / run.messages for run in group
                    ),
                    "complete": all(run.complete for run in group),
                }
                for probe in PROBES:
                    probes = [
                        item
                        for item in memory
                        if (item.contender, item.connections, item.probe)
                        == (contender, connections, probe)
                    ]
                    if probes:
                        row[f"{probe}_idle_kib_per_connection"] = asdict(
                            Spread.of([item.idle_per_connection / 1024 for item in probes])
                        )
                        row[f"{probe}_peak_kib_per_connection"] = asdict(
                            Spread.of([item.peak_per_connection / 1024 for item in probes])
                        )
                        row["complete"] = row["complete"] and all(i.complete for i in probes)
                group_rows.append(row)
            if "budget_ws" in medians and "naive" in medians:
                for row in group_rows:
                    row["ratio_budget_ws_to_naive"] = medians["budget_ws"] / medians["naive"]
            if "budget_ws" in cpu:
                baseline = next(row for row in group_rows if row["contender"] == "budget_ws")
                for row in group_rows:
                    if row["contender"] in ("observed", *EXTRA_CONTENDERS):
                        # CPU per delivery with instrumentation on, over budget_ws's own.
                        row["cpu_ratio_to_budget_ws"] = cpu[row["contender"]] / cpu["budget_ws"]
                    if row["contender"] == "observed":
                        limit = OBSERVED_TARGETS[mode]
                        row["cpu_ratio_target"] = limit
                        row["target_met"] = (
                            row["cpu_ratio_to_budget_ws"] <= limit
                            and row["complete"]
                            and baseline["complete"]
                        )
            rows.extend(group_rows)
    return rows


def scenario_name(mode: str) -> str:
    """How a verdict names a mode: paced is the steady case."""
    return "steady (paced)" if mode == "paced" else mode


def observed_verdict(
    label: str, measure: str, ratio: float, limit: float, met: bool
) -> dict[str, Any]:
    """One observability target's verdict, in the shape every results file uses.

    ``ratio`` is observed's ``measure`` over budget_ws's, ``limit`` its target; ``met``
    also needs every frame delivered, which the check says when it alone failed.
    """
    check = (
        f"observed {measure} {ratio:.3f} x budget_ws's <= {limit:g} "
        f"({100 * (ratio - 1):+.1f} % <= +{100 * (limit - 1):.0f} %)"
    )
    if ratio <= limit and not met:
        check += ", but not every frame was delivered"
    return {"label": label, "check": check, "met": met}


def verdicts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The observability targets, one per N and mode where observed and budget_ws both ran.

    Each says what metrics and tracing cost in CPU per delivery, as a multiple of
    budget_ws's own in the same run, against ``OBSERVED_TARGETS``; it is met only when
    both delivered every frame too.
    """
    return [
        observed_verdict(
            f"in-memory fanout {row['connections']} x {row['events']} events, "
            f"{scenario_name(row['mode'])}",
            "CPU/delivery",
            row["cpu_ratio_to_budget_ws"],
            row["cpu_ratio_target"],
            row["target_met"],
        )
        for row in rows
        if "target_met" in row
    ]


def results_document(
    env: dict[str, Any],
    settings: dict[str, Any],
    runs: Sequence[TimedRun],
    memory: Sequence[MemoryProbe],
) -> dict[str, Any]:
    """The JSON of a run (``--json``, ``--json-file``), the form ``benchmarks.report`` reads.

    Args:
        env: ``provenance.environment("fanout", ...)`` with ``load_after`` added.
        settings: ``connections``, ``events``, ``payload_bytes``, ``frame_bytes``,
            ``repeat`` and ``modes`` of the run.
        runs: Every timed run.
        memory: Every memory probe.
    """
    rows = summarise(runs, memory, settings["connections"], settings["modes"], settings["events"])
    return {
        "environment": env,
        "loadavg_end": env["load_after"],
        "settings": settings,
        "rows": rows,
        "runs": [
            {**asdict(run), "deliveries_per_second": run.deliveries_per_second} for run in runs
        ],
        "memory": [asdict(item) for item in memory],
        "verdicts": verdicts(rows),
    }


def _format_spread(spread: dict[str, float] | None, digits: int) -> str:
    if spread is None:
        return "-"
    return (
        f"{spread['median']:,.{digits}f} ({spread['low']:,.{digits}f}-{spread['high']:,.{digits}f})"
    )


def _print_table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    widths = [
        max(len(header), *(len(line[column]) for line in lines))
        for column, header in enumerate(headers)
    ]
    print(
        "  ".join(
            h.ljust(w) if i < 3 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    print("  ".join("-" * width for width in widths))
    for line in lines:
        print(
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def _print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    settings = report["settings"]
    rows: list[dict[str, Any]] = report["rows"]
    print(describe(env))
    print(
        f"Python {env['python']} ({env['implementation']}), anyio {env['anyio']} on "
        f"{env['anyio_backend']}, pydantic {env['pydantic']}, budget_ws {env['budget_ws']} "
        f"(source {env['source'] or 'unknown'})"
    )
    print(
        f"CPUs: {env['cpu_count']} ({env['cpus_usable']} usable); load average "
        f"{' '.join(f'{x:.2f}' for x in env['loadavg'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_end'])} at end; {env['platform']}"
    )
    print(
        f"One topic, M = {settings['events']} events with {settings['payload_bytes']} B of "
        f"data (frame: budget_ws {settings['frame_bytes']['budget_ws']} B, naive "
        f"{settings['frame_bytes']['naive']} B); {settings['repeat']} repeats x "
        f"{settings.get('rounds', 1)} rounds, median (min-max)"
    )
    print()
    print(
        "observed = budget_ws with metrics timings, a Prometheus collector and OpenTelemetry "
        "tracing (SDK provider, no exporter)"
    )
    _print_table(
        [
            "contender",
            "N",
            "mode",
            "deliveries/s",
            "CPU us/delivery",
            "budget_ws/naive",
            "CPU/budget_ws's",
            "RSS KiB/conn",
        ],
        [
            [
                row["contender"],
                f"{row['connections']:,}",
                row["mode"],
                _format_spread(row["deliveries_per_second"], 0)
                + ("" if row["complete"] else " INCOMPLETE"),
                _format_spread(row["cpu_us_per_delivery"], 2),
                f"{row['ratio_budget_ws_to_naive']:.2f}x"
                if row["contender"] == "budget_ws" and "ratio_budget_ws_to_naive" in row
                else "",
                f"{row['cpu_ratio_to_budget_ws']:.3f}x" if "cpu_ratio_to_budget_ws" in row else "",
                _format_spread(row.get("rss_idle_kib_per_connection"), 2),
            ]
            for row in rows
        ],
    )
    print()
    print("publish(): wall time per call until it returns; 'alone' until it first yields;")
    print("suspensions = loop yields per call (max); sends = client sends made by publish itself;")
    print("GC = share of the run spent in the cyclic garbage collector, and its full collections")
    _print_table(
        [
            "contender",
            "N",
            "mode",
            "publish() ms",
            "alone ms",
            "suspensions",
            "sends",
            "frames/msg",
            "GC",
            "full GCs",
        ],
        [
            [
                row["contender"],
                f"{row['connections']:,}",
                row["mode"],
                _format_spread(row["publish_call_ms"], 3),
                _format_spread(row["publish_alone_ms"], 3),
                str(row["suspensions_per_publish"]),
                f"{row['sends_by_publish']:,.0f}",
                f"{row['frames_per_message']:.1f}",
                f"{row['gc_share']:.0%}",
                f"{row['gc_full_collections']:g}",
            ]
            for row in rows
        ],
    )
    labels = {"rss": "RSS", "traced": "traced"}
    memory_columns = [
        (f"{labels[probe]} {state}", f"{probe}_{state}_kib_per_connection")
        for probe in PROBES
        for state in ("idle", "peak")
        if any(f"{probe}_{state}_kib_per_connection" in row for row in rows)
    ]
    if memory_columns:
        memory_rows = {(row["contender"], row["connections"]): row for row in rows}
        print()
        print("memory per connection, KiB, each in a fresh process (RSS from /proc, traced from")
        print("tracemalloc): idle = connected and subscribed, peak = during a burst of M events")
        _print_table(
            ["contender", "N", "", *(title for title, _ in memory_columns)],
            [
                [contender, f"{connections:,}", ""]
                + [_format_spread(row.get(key), 2) for _, key in memory_columns]
                for (contender, connections), row in memory_rows.items()
            ],
        )
    print()
    for row in rows:
        observed = row.get("cpu_ratio_to_budget_ws")
        if row["contender"] == "observed" and observed is not None:
            limit = OBSERVED_TARGETS[row["mode"]]
            verdict = "met" if observed <= limit else "NOT met"
            print(
                f"target: metrics and tracing cost <= {limit - 1:.0%} more CPU per delivery at "
                f"N={row['connections']:,} ({row['mode']}): {observed - 1:+.1%}, {verdict}"
            )
    for row in rows:
        ratio = row.get("ratio_budget_ws_to_naive")
        if row["contender"] == "budget_ws" and ratio is not None and row["connections"] >= 10_000:
            verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
            print(
                f"target >= {TARGET_RATIO:g}x naive deliveries/s at N={row['connections']:,} "
                f"({row['mode']}): {ratio:.2f}x, {verdict}"
            )


# Command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout",
        description=(
            "Fan out M events on one topic to N in-memory connections, with budget_ws and "
            "with a naive per-client-await manager; print deliveries/s, publish() cost and "
            "memory per connection."
        ),
    )
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1_000, 10_000],
        metavar="N",
        help="numbers of connections to try (default: 1000 10000)",
    )
    parser.add_argument(
        "--events", type=int, default=100, metavar="M", help="events per run (default: 100)"
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=200,
        metavar="B",
        help="size of each event's data object as JSON (default: 200)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="measure each figure this many times (default: 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="timed fan-outs per mode on each set of connections (default: 1)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="burst: publish back to back; paced: yield to the loop between events",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=CONTENDERS + EXTRA_CONTENDERS,
        default=list(CONTENDERS),
        help="observed: budget_ws with metrics and tracing; metrics, tracing: with one of them",
    )
    parser.add_argument(
        "--memory",
        nargs="*",
        choices=PROBES,
        default=["rss"],
        metavar="PROBE",
        help=(
            "memory probes, each run in a child process: rss (resident set size) and/or "
            "traced (tracemalloc, slower); default: rss; give no value to skip memory"
        ),
    )
    parser.add_argument(
        "--anyio-backend", choices=("asyncio", "trio"), default="asyncio", help="event loop"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--json-file", type=Path, metavar="PATH", help="also write the JSON results to PATH"
    )
    parser.add_argument("--child", choices=CONTENDERS + EXTRA_CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=PROBES, default="rss", help=argparse.SUPPRESS)
    return parser


def _frame_bytes(workload: Workload) -> dict[str, int]:
    from budget_ws.backends import Position
    from budget_ws.protocol import encode_event, position_frame

    budget = position_frame(
        encode_event(workload.typed[0]), TOPIC, Position(workload.events, "0123abcd")
    )
    naive = json.dumps(
        {"event": BudgetFactCreated.event_name, "data": workload.dicts[0]},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return {"budget_ws": len(budget.encode()), "naive": len(naive.encode())}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every contender delivered every frame."""
    args = _parser().parse_args(argv)
    if args.events < 1 or args.repeat < 1 or args.rounds < 1 or min(args.connections) < 1:
        raise SystemExit("--events, --repeat, --rounds and --connections must be positive")
    workload = Workload(args.events, args.payload_bytes)

    if args.child is not None:
        result = anyio.run(
            measure_memory,
            args.child,
            args.connections[0],
            workload,
            args.probe,
            backend=args.anyio_backend,
        )
        print(json.dumps(asdict(result)))
        return 0

    parameters = {
        key: value
        for key, value in vars(args).items()
        if key not in ("json", "json_file", "child", "probe")
    }
    parameters["observed_targets"] = OBSERVED_TARGETS
    # The standard header of every results file, and this benchmark's own fields beside it.
    env = environment("fanout", parameters, (*PACKAGES, *OBSERVABILITY_PACKAGES))
    env |= _environment(args.anyio_backend)
    runs: list[TimedRun] = []
    memory: list[MemoryProbe] = []
    for connections in args.connections:
        for repeat in range(args.repeat):
            # Alternate who goes first, so drift in the machine's load hits both alike.
            order = args.contenders if repeat % 2 == 0 else args.contenders[::-1]
            for contender in order:
                batch = anyio.run(
                    functools.partial(
                        measure_throughput,
                        contender,
                        connections,
                        workload,
                        args.modes,
                        args.rounds,
                    ),
                    backend=args.anyio_backend,
                )
                runs.extend(batch)
                for run in batch:
                    _progress(
                        f"{contender:<9} N={connections:<6} {run.mode:<5} repeat {repeat + 1}: "
                        f"{run.deliveries_per_second:>13,.0f} deliveries/s, "
                        f"{run.cpu_us_per_delivery:.3f} us CPU each"
                        + ("" if run.complete else " INCOMPLETE")
                    )
                for probe in args.memory:
                    item = _memory_in_child(contender, connections, args, probe)
                    memory.append(item)
                    _progress(
                        f"{contender:<9} N={connections:<6} memory {probe:<6} repeat "
                        f"{repeat + 1}: {item.idle_per_connection / 1024:.2f} KiB/conn idle, "
                        f"{item.peak_per_connection / 1024:.2f} at peak"
                    )

    env["load_after"] = load_average()
    settings = {
        "connections": args.connections,
        "events": args.events,
        "payload_bytes": args.payload_bytes,
        "frame_bytes": _frame_bytes(workload),
        "repeat": args.repeat,
        "rounds": args.rounds,
        "modes": args.modes,
    }
    report = results_document(env, settings, runs, memory)
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    complete = all(run.complete for run in runs) and all(item.complete for item in memory)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
