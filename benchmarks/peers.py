"""budget_ws against its peers, over real sockets, side by side in one run.

Run it with ``python -m benchmarks.peers`` (``--help`` lists the options;
``benchmarks/README.md`` and ``docs/performance.md`` explain every figure). For each
scenario and contender this process starts the contender's server
(``benchmarks/peers_server.py``: uvicorn on 127.0.0.1, or a server without it: budget_ws's
``NativeServer``, a plain ``websockets`` or picows server) and client processes
(``benchmarks/loadgen.py``), publishes from inside the server, waits until every client
has every event (bounded by ``--drain``), and reads the server's CPU time and memory
from ``/proc``.

Scenarios:

- ``fanout``: N connections (1,000 and 10,000) x 100 events x 200 B and 2 KB, once as a
  burst and once at a steady ``--steady-rate`` (50 events/s), where nothing coalesces;
- ``stalled``: 100 healthy connections, and the same with 5 more that stop reading
  (small receive buffer), 2 KB events at 500/s; afterwards the stalled clients read
  again, to learn what they held and how (whether) the server closed them;
- ``idle``: 10,000 connections held, nothing published: connect+subscribe latency and
  memory per connection.

budget_ws's figures are divided by each peer's (``ratios``), and so are the native
server's by those of ``websockets``, budget_ws on uvicorn and picows (``NATIVE_PEERS``);
the issue's targets are checked against this run's figures (``verdicts``).

The Redis scenarios (two workers) are ``benchmarks/cross_worker.py``; ``--redis`` runs it
after these with the same contenders it knows.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import discard_dumps, read_dump
from benchmarks.measure import cpu_seconds, cpu_us_per_delivery, free_port, percentiles
from benchmarks.peers_server import (
    BUDGET_WS_PROTOCOL,
    CONTENDERS,
    NO_DEFLATE,
    PICOWS_READ_BUFFER,
    PLAIN_SERVERS,
)
from benchmarks.provenance import PACKAGES, describe, environment, load_average
from budget_ws import OutboxLimits

__all__ = ["Measurement", "main"]

ROOT = Path(__file__).resolve().parent.parent
CLIENTS_PER_PROCESS = 2500
STALLED_CLIENTS = 5
STALLED_RECEIVE_BUFFER = 4096
STALLED_P99_ALLOWANCE_MS = 5.0
"""How much stalled clients may raise healthy clients' latency p99 (the stalled target)."""
RESUME_QUIET_SECONDS = 1.0
"""A resumed stalled client stops reading after this long without data."""
NATIVE_PEERS = ("websockets", "budget_ws", "picows")
"""The contenders the native server's figures are divided by (``ratios_native_to``)."""
NATIVE_STEADY_CPU = {"websockets": 1.0, "budget_ws": 0.5}
"""Steady fan-out: the native server's CPU per delivery at most this x the peer's."""
NATIVE_BURST_CPU = {"budget_ws": 1.0}
"""Burst fan-out: the native server's CPU per delivery at most this x the peer's."""
NATIVE_IDLE_KIB = 16.0
"""Idle: the native server's memory per connection at most this (KiB)."""
NATIVE_CONNECT_P99 = {"websockets": 1.0}
"""Idle: the native server's connect + subscribe p99 at most this x the peer's."""
PACKAGES_PEERS = (*PACKAGES, "picows", "aiofastnet")
"""The versions a peers results file records: picows' (and its transport's) too."""


@dataclass
class Measurement:
    """One contender in one configuration."""

    scenario: str
    contender: str
    connections: int
    events: int
    payload_bytes: int
    stalled: int = 0
    rate: float = 0.0
    """Events per second the server publishes at; 0: a burst."""
    expected: int = 0
    delivered: int = 0
    messages: int = 0
    """WebSocket messages that carried events, over healthy clients (delivered / messages:
    how many events a message carried on average, 1.0 when nothing coalesced)."""
    cpu_seconds: float = 0.0
    cpu_us_per_delivery: float | None = None
    """``measure.cpu_us_per_delivery``: per delivery made (None: nothing delivered)."""
    wall_seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    connect_ms: dict[str, float] = field(default_factory=dict)
    """Per client, from its process setting out to connect it (waiting for one of the 64
    connections a client process opens at once included) to its ``subscribed`` frame."""
    handshake_ms: dict[str, float] = field(default_factory=dict)
    """Per client, from the start of its own connection (TCP connect, opening handshake,
    subscribe) to its ``subscribed`` frame: ``connect_ms`` without the client's own wait."""
    rss_idle_kib_per_connection: float = 0.0
    rss_growth_kib: float = 0.0
    """Peak RSS during the burst minus RSS before it (kB): what the burst held."""
    publish_seconds: float = 0.0
    blocked: bool = False
    """Publishing had not returned ``--drain`` seconds after the clients stopped waiting."""
    stalled_clients: list[dict[str, Any]] = field(default_factory=list)
    """Per stalled client, read after the run: ``bytes_read``, ``events``, ``close_code``,
    ``close_reason``, ``closed`` (False: still open when it had read everything)."""
    server_loop: str = ""
    """The class of the server's event loop, as the server reported it."""
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.delivered == self.expected

    @property
    def mode(self) -> str:
        """``burst``, ``steady`` (at ``rate``), or ``idle`` (nothing published)."""
        return "idle" if not self.events else "steady" if self.rate else "burst"


# --------------------------------------------------------------------------------------
# /proc


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _ = line.split()
                values[name[:-1]] = int(amount)
    return values


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass


# --------------------------------------------------------------------------------------
# Processes


class Child:
    """A child speaking JSON lines on stdout and taking commands on stdin."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        # A thread reads the lines, so that waiting for one can time out (a server whose
        # publish is stuck behind a stalled client never answers).
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def line(self, timeout: float | None = None) -> dict[str, Any]:
        """The next JSON line; raises ``queue.Empty`` after ``timeout`` seconds."""
        raw = self._lines.get(timeout=timeout)
        if not raw:
            raise RuntimeError(f"{self.command[2]} exited with {self.process.wait()}")
        result: dict[str, Any] = json.loads(raw)
        return result

    def stop(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()  # end of stdin: the child stops (if it still runs)
            self.process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()


@contextmanager
def server(contender: str, ws: str, deflate: bool,
           loop: str = "asyncio") -> Iterator[tuple[Child, str, dict[str, Any]]]:  # fmt: skip
    """The contender's server, its URL and its ``ready`` line; ``loop`` is that of the
    servers without uvicorn."""
    port = free_port()
    child = Child([
        sys.executable, "-m", "benchmarks.peers_server", "--contender", contender,
        "--port", str(port), "--ws", ws, *(["--deflate"] if deflate else []),
        *(["--loop", loop] if contender in PLAIN_SERVERS else []),
    ])  # fmt: skip
    try:
        ready = child.line()
        assert ready.get("ready"), ready
        yield child, f"ws://127.0.0.1:{port}/ws", ready
    finally:
        child.stop()


def clients(url: str, contender: str, count: int, drain: float, *, stalled: bool = False,
            deflate: bool = False) -> list[Child]:  # fmt: skip
    protocol = "budget-ws" if contender in BUDGET_WS_PROTOCOL else "plain"
    children = []
    per_process = CLIENTS_PER_PROCESS
    for start in range(0, count, per_process):
        command = [
            sys.executable, "-m", "benchmarks.loadgen", "--urls", url, "--protocol", protocol,
            "--count", str(min(per_process, count - start)), "--first", str(start),
            "--drain", str(drain), *(["--deflate"] if deflate else []),
        ]  # fmt: skip
        if stalled:
            command += ["--stalled", "--receive-buffer", str(STALLED_RECEIVE_BUFFER)]
        children.append(Child(command))
    return children


# --------------------------------------------------------------------------------------
# Runs


def measure(scenario: str, contender: str, connections: int, events: int, size: int,
            args: argparse.Namespace, *, stalled: int = 0, rate: float = 0.0,
            ) -> Measurement:  # fmt: skip
    result = Measurement(scenario, contender, connections, events, size, stalled, rate)
    held: list[Child] = []
    try:
        with server(contender, args.ws, args.deflate, args.loop) as (process, url, ready):
            result.server_loop = ready.get("loop", "")
            pid = process.pid
            before = memory_kib(pid)["VmRSS"]
            held = clients(url, contender, connections, args.drain, deflate=args.deflate)
            connect_ns = array("q")
            handshake_ns = array("q")
            for child in held:
                ready = child.line()
                connect_ns.extend(read_dump(ready["connect_file"]))
                handshake_ns.extend(read_dump(ready["handshake_file"]))
            slow = []
            if stalled:
                slow = clients(url, contender, stalled, args.drain, stalled=True,
                               deflate=args.deflate)  # fmt: skip
            for child in slow:
                discard_dumps(child.line())
            held += slow
            time.sleep(0.5)  # let the server settle (uvicorn's handshake tasks end)
            result.connect_ms = percentiles(connect_ns)
            result.handshake_ms = percentiles(handshake_ns)
            idle = memory_kib(pid)["VmRSS"]
            result.rss_idle_kib_per_connection = round((idle - before) / connections, 2)
            if not events:
                return result
            process.send("warmup")
            process.line()
            time.sleep(1.0 + connections / 10_000)
            reset_peak(pid)
            rss_before = memory_kib(pid)["VmRSS"]
            cpu_before = cpu_seconds(pid)
            process.send(f"publish {events} {size} {rate}")
            for child in held:
                child.send(f"expect {events}")
            started = time.time_ns()
            latencies = array("q")
            last = 0
            for child in held[: len(held) - len(slow)]:
                report = child.line()
                result.delivered += report["received"]
                result.messages += report["messages"]
                latencies.extend(read_dump(report["latency_file"]))
                last = max(last, report["last_receipt"])
            for child in slow:
                read_dump(child.line()["latency_file"])
            try:
                answer = process.line(timeout=args.drain)
            except queue.Empty:
                result.blocked = True  # its publish is stuck behind a stalled client
            else:
                result.publish_seconds = answer["seconds"]
                started = answer["started_ns"]
            result.cpu_seconds = round(cpu_seconds(pid) - cpu_before, 3)
            peak = memory_kib(pid)
            result.rss_growth_kib = max(peak["VmHWM"], peak["VmRSS"]) - rss_before
            result.expected = connections * events
            result.latency_ms = percentiles(latencies)
            if last:
                result.wall_seconds = round((last - started) / 1e9, 3)
            result.cpu_us_per_delivery = cpu_us_per_delivery(result.cpu_seconds, result.delivered)
            for child in slow:  # after every figure: reading again unblocks a stuck server
                child.send(f"resume {RESUME_QUIET_SECONDS}")
            for child in slow:
                result.stalled_clients += child.line(timeout=args.drain + 10)["stalled_clients"]
    except Exception as exc:  # reported, never hidden: the row shows the failure
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for child in held:
            child.stop()
    return result


def median_of(runs: list[Measurement]) -> Measurement:
    """The run with the median figure of its scenario: CPU per delivery, or for an idle run
    the connect + subscribe p99 (every figure from that one run)."""

    def figure(run: Measurement) -> float:
        if run.scenario == "idle":
            return float(run.connect_ms.get("p99", 0))
        return run.cpu_us_per_delivery or 0.0

    ordered = sorted(runs, key=lambda run: (run.error is not None, figure(run)))
    return ordered[(len(ordered) - 1) // 2]


def run_all(args: argparse.Namespace) -> list[Measurement]:
    results: list[Measurement] = []
    plans: list[tuple[str, int, int, int, int, float]] = []
    if "fanout" in args.scenarios:
        rates = [0.0] + ([args.steady_rate] if args.steady_rate > 0 else [])
        for connections in args.connections:
            for size in args.payload_bytes:
                for rate in rates:  # the steady row beside each burst row
                    plans.append(("fanout", connections, args.events, size, 0, rate))
    if "stalled" in args.scenarios:
        for stalled in (0, STALLED_CLIENTS):
            plans.append(("stalled", args.stalled_connections, args.stalled_events, 2048,
                          stalled, args.stalled_rate))  # fmt: skip
    if "idle" in args.scenarios:
        plans.append(("idle", args.idle_connections, 0, 0, 0, 0.0))
    for scenario, connections, events, size, stalled, rate in plans:
        runs: dict[str, list[Measurement]] = {contender: [] for contender in args.contenders}
        for repeat in range(args.repeat):
            # The contenders take turns within each repeat, and each goes first as often as
            # last: a machine that drifts during the run favours none of them.
            order = args.contenders if repeat % 2 == 0 else args.contenders[::-1]
            for contender in order:
                _progress(
                    f"{scenario}: {contender}, {connections} connections"
                    + (f" (+{stalled} stalled)" if stalled else "")
                    + (f", {events} x {size} B" if events else "")
                    + (f" at {rate:g}/s" if rate else ", burst" if events else "")
                    + (f", run {repeat + 1}/{args.repeat}" if args.repeat > 1 else "")
                )
                runs[contender].append(measure(scenario, contender, connections, events, size,
                                               args, stalled=stalled, rate=rate))  # fmt: skip
        results.extend(median_of(runs[contender]) for contender in args.contenders)
    return results


# --------------------------------------------------------------------------------------
# Report


Key = tuple[str, int, int, int, float]


def _key(result: Measurement) -> Key:
    return result.scenario, result.connections, result.payload_bytes, result.stalled, result.rate


def _by_configuration(results: Sequence[Measurement]) -> dict[Key, dict[str, Measurement]]:
    """The results of each configuration, by contender."""
    groups: dict[Key, dict[str, Measurement]] = {}
    for result in results:
        groups.setdefault(_key(result), {})[result.contender] = result
    return groups


def table(results: Sequence[Measurement]) -> str:
    header = ("scenario", "contender", "conns", "events", "delivered", "CPU µs/deliv",
              "xnaive", "xbroadc", "xfloor", "xwebsock", "xbudget", "xpicows", "p50 ms",
              "p99 ms", "wall s", "KiB/conn", "burst KiB", "connect p99 ms",
              "handshake p99 ms")  # fmt: skip
    groups = _by_configuration(results)
    rows = []
    for result in results:
        peers = groups[_key(result)]

        def ratio(peer: str, result: Measurement = result, peers: dict[str, Measurement]
                  = peers) -> str:  # fmt: skip
            other = peers.get(peer)
            if other is None or not other.cpu_us_per_delivery or not result.cpu_us_per_delivery:
                return "-"
            return f"{result.cpu_us_per_delivery / other.cpu_us_per_delivery:.2f}"

        events = f"{result.events} x {result.payload_bytes} B" if result.events else "-"
        events += f" @{result.rate:g}/s" if result.rate else ""
        conns = f"{result.connections}" + (f"+{result.stalled}s" if result.stalled else "")
        mark = "" if result.complete or not result.events else " !"
        mark += " blocked" if result.blocked else ""
        rows.append((
            result.scenario, result.contender, conns, events,
            f"{result.delivered}/{result.expected}{mark}" if result.events else "-",
            f"{result.cpu_us_per_delivery:.2f}" if result.cpu_us_per_delivery else "-",
            ratio("naive"), ratio("broadcaster"), ratio("floor"), ratio("websockets"),
            ratio("budget_ws"), ratio("picows"),
            f"{result.latency_ms.get('p50', float('nan')):.1f}" if result.events else "-",
            f"{result.latency_ms.get('p99', float('nan')):.1f}" if result.events else "-",
            f"{result.wall_seconds:.2f}" if result.events else "-",
            f"{result.rss_idle_kib_per_connection:.1f}",
            f"{result.rss_growth_kib:,}" if result.events else "-",
            f"{result.connect_ms.get('p99', float('nan')):.1f}",
            f"{result.handshake_ms.get('p99', float('nan')):.1f}",
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    for result in results:
        if result.error:
            lines.append(f"{result.scenario}/{result.contender}: {result.error}")
    return "\n".join(lines)


FIGURES: dict[str, Callable[[Measurement], float | None]] = {
    "cpu": lambda r: r.cpu_us_per_delivery,
    "p50": lambda r: r.latency_ms.get("p50"),
    "p99": lambda r: r.latency_ms.get("p99"),
    "wall": lambda r: r.wall_seconds,
    "rss": lambda r: r.rss_idle_kib_per_connection,
    "connect_p99": lambda r: r.connect_ms.get("p99"),
    "handshake_p99": lambda r: r.handshake_ms.get("p99"),
}
"""The figures compared between contenders, by name."""


def ratios(results: Sequence[Measurement], ours_name: str = "budget_ws",
           against: Sequence[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """``ours_name``'s figures / each peer's (those of ``against``, default every other
    contender), per configuration (None where one is missing)."""
    groups = _by_configuration(results)
    entries = []
    for key, peers in groups.items():
        ours = peers.get(ours_name)
        if ours is None:
            continue
        for name, theirs in peers.items():
            if name == ours_name or (against is not None and name not in against):
                continue
            entry: dict[str, Any] = {"scenario": key[0], "connections": key[1],
                                     "payload_bytes": key[2], "stalled": key[3],
                                     "rate": key[4], "mode": ours.mode,
                                     "against": name}  # fmt: skip
            for figure, read in FIGURES.items():
                a, b = read(ours), read(theirs)
                entry[figure] = round(a / b, 3) if a and b else None
            entries.append(entry)
    return entries


def _label(scenario: str, connections: int, size: int, stalled: int, rate: float) -> str:
    label = f"{scenario} {connections}" + (f"+{stalled} stalled" if stalled else "")
    label += f" x {size} B" if size else ""
    return label + (f" at {rate:g}/s" if rate else " burst" if size else "")


def ratio_lines(results: Sequence[Measurement], ours_name: str = "budget_ws",
                against: Sequence[str] | None = None) -> list[str]:  # fmt: skip
    lines = []
    for entry in ratios(results, ours_name, against):
        label = _label(entry["scenario"], entry["connections"], entry["payload_bytes"],
                       entry["stalled"], entry["rate"])  # fmt: skip
        figures = ", ".join(
            f"{figure} x{value:g}" for figure, value in entry.items()
            if figure in FIGURES and value is not None
        )  # fmt: skip
        lines.append(f"{ours_name}/{entry['against']} {label}: {figures}")
    return lines


def _verdict(label: str, check: str, met: bool) -> dict[str, Any]:
    return {"label": label, "check": check, "met": met}


def verdicts(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """The issue's targets, each checked against figures of this run (all can fail)."""
    found = []
    for key, peers in _by_configuration(results).items():
        ours = peers.get("budget_ws")
        if ours is None or key[0] != "fanout":
            continue
        label = _label(*key)
        for peer, bound in (("broadcaster", 0.75), ("floor", 0.9)):
            other = peers.get(peer)
            if other and other.cpu_us_per_delivery and ours.cpu_us_per_delivery:
                value = ours.cpu_us_per_delivery / other.cpu_us_per_delivery
                found.append(_verdict(label, f"CPU/delivery {value:.2f} x {peer} <= {bound}",
                                      value <= bound))  # fmt: skip
        found.append(_verdict(label, f"delivered {ours.delivered:,}/{ours.expected:,}",
                              ours.complete))  # fmt: skip
    stalled = {
        r.stalled: r for r in results if r.scenario == "stalled" and r.contender == "budget_ws"
    }
    if 0 in stalled and STALLED_CLIENTS in stalled:
        alone, beside = stalled[0], stalled[STALLED_CLIENTS]
        label = _label("stalled", beside.connections, beside.payload_bytes, beside.stalled,
                       beside.rate)  # fmt: skip
        found.append(_verdict(label, "healthy clients got every event, with and without "
                              f"stalled clients ({alone.delivered:,}/{alone.expected:,}, "
                              f"{beside.delivered:,}/{beside.expected:,})",
                              alone.complete and beside.complete))  # fmt: skip
        p99_alone = alone.latency_ms.get("p99", float("inf"))
        p99_beside = beside.latency_ms.get("p99", float("inf"))
        found.append(_verdict(label, f"healthy p99 {p99_beside:.1f} ms with stalled clients "
                              f"<= {p99_alone:.1f} ms without + {STALLED_P99_ALLOWANCE_MS:g}",
                              p99_beside <= p99_alone + STALLED_P99_ALLOWANCE_MS))  # fmt: skip
        codes = [client["close_code"] for client in beside.stalled_clients]
        found.append(_verdict(label, f"every stalled client closed with 4000: {codes}",
                              len(codes) == STALLED_CLIENTS and set(codes) == {4000}))  # fmt: skip
        held = (beside.rss_growth_kib - alone.rss_growth_kib) / STALLED_CLIENTS
        bound = OutboxLimits().max_bytes / 1024
        found.append(_verdict(label, f"server memory per stalled client {held:,.0f} KiB "
                              f"(RSS growth with - without, / {STALLED_CLIENTS}) <= outbox "
                              f"bound {bound:,.0f} KiB", held <= bound))  # fmt: skip
    idle = {r.contender: r for r in results if r.scenario == "idle"}
    if "budget_ws" in idle and "floor" in idle:
        above = (
            idle["budget_ws"].rss_idle_kib_per_connection
            - idle["floor"].rss_idle_kib_per_connection
        )
        found.append(_verdict(f"idle {idle['budget_ws'].connections}",
                              f"{above:.1f} KiB/connection above the floor <= 2",
                              above <= 2))  # fmt: skip
    return found + native_verdicts(results)


def native_verdicts(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """The native server's targets (issue 14), each against figures of this run."""
    found = []
    for key, peers in _by_configuration(results).items():
        ours = peers.get("native")
        if ours is None or key[0] != "fanout":
            continue
        label = _label(*key)
        bounds = NATIVE_STEADY_CPU if ours.rate else NATIVE_BURST_CPU
        for peer, bound in bounds.items():
            other = peers.get(peer)
            if other and other.cpu_us_per_delivery and ours.cpu_us_per_delivery:
                value = ours.cpu_us_per_delivery / other.cpu_us_per_delivery
                where = " on uvicorn" if peer == "budget_ws" else ""
                found.append(_verdict(label, f"native CPU/delivery {value:.2f} x {peer}{where} "
                                      f"<= {bound:g}", value <= bound))  # fmt: skip
        found.append(_verdict(label, f"native delivered {ours.delivered:,}/{ours.expected:,}",
                              ours.complete))  # fmt: skip
    idle = {r.contender: r for r in results if r.scenario == "idle"}
    native = idle.get("native")
    if native is not None:
        label = f"idle {native.connections}"
        kib = native.rss_idle_kib_per_connection
        found.append(_verdict(label, f"native {kib:.1f} KiB/connection <= {NATIVE_IDLE_KIB:g}",
                              kib <= NATIVE_IDLE_KIB))  # fmt: skip
        ours_p99 = native.connect_ms.get("p99")
        for peer, bound in NATIVE_CONNECT_P99.items():
            theirs = idle.get(peer)
            theirs_p99 = theirs.connect_ms.get("p99") if theirs else None
            if ours_p99 and theirs_p99:
                whose = peer + ("'" if peer.endswith("s") else "'s")
                found.append(_verdict(label, f"native connect + subscribe p99 {ours_p99:,.0f} ms "
                                      f"<= {bound:g} x {whose} {theirs_p99:,.0f} ms",
                                      ours_p99 <= bound * theirs_p99))  # fmt: skip
    return found


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="budget_ws against naive, broadcaster, websockets and a plain-ASGI floor, "
        "over real sockets.",
    )
    parser.add_argument("--scenarios", nargs="+", choices=("fanout", "stalled", "idle"),
                        default=["fanout", "stalled", "idle"])  # fmt: skip
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS,
                        help="default: all (with --deflate, those that offer it)")  # fmt: skip
    parser.add_argument("--connections", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--steady-rate", type=float, default=50,
                        help="events/s of the steady fan-out row beside each burst row "
                        "(50; 0: bursts only)")  # fmt: skip
    parser.add_argument("--payload-bytes", nargs="+", type=int, default=[200, 2048])
    parser.add_argument("--stalled-connections", type=int, default=100,
                        help="healthy connections beside the stalled ones (100)")  # fmt: skip
    parser.add_argument("--stalled-events", type=int, default=2000,
                        help="2 KB events in the stalled scenario: enough to fill the kernel's "
                        "buffers of a stalled socket, ~3 MB here (2,000)")  # fmt: skip
    parser.add_argument("--stalled-rate", type=float, default=500,
                        help="events/s in the stalled scenario (500): a steady stream that "
                        "healthy clients keep up with")  # fmt: skip
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per figure, the contenders taking turns; each figure is "
                        "the median run's (CPU per delivery; connect p99 for idle)")  # fmt: skip
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn's --ws")
    parser.add_argument("--deflate", action="store_true",
                        help="servers offer and clients accept per-message deflate")  # fmt: skip
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of the servers without uvicorn "
                        f"({', '.join(PLAIN_SERVERS)}); uvicorn's is asyncio's")  # fmt: skip
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds the clients wait for every event (30)")  # fmt: skip
    parser.add_argument("--redis", action="store_true",
                        help="then run benchmarks.cross_worker (two workers on Redis)")  # fmt: skip
    parser.add_argument("--json-file", type=Path, metavar="PATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.contenders is None:
        args.contenders = [c for c in CONTENDERS if not (args.deflate and c in NO_DEFLATE)]
    elif args.deflate and set(args.contenders) & set(NO_DEFLATE):
        parser.error(f"--deflate: {', '.join(NO_DEFLATE)} offer no per-message deflate")
    parameters = {key: value for key, value in vars(args).items() if key != "json_file"}
    parameters |= {"stalled_clients": STALLED_CLIENTS,
                   "stalled_receive_buffer": STALLED_RECEIVE_BUFFER,
                   "clients_per_process": CLIENTS_PER_PROCESS,
                   "loop_contenders": [c for c in PLAIN_SERVERS if c in args.contenders],
                   "picows_read_buffer": PICOWS_READ_BUFFER}  # fmt: skip
    env = environment("peers", parameters, PACKAGES_PEERS)
    results = run_all(args)
    env["load_after"] = load_average()
    print(describe(env))
    print(table(results))
    for line in ratio_lines(results):
        print(line)
    for line in ratio_lines(results, "native", NATIVE_PEERS):
        print(line)
    found = verdicts(results)
    for verdict in found:
        print(f"target {verdict['label']}: {verdict['check']}: {'yes' if verdict['met'] else 'NO'}")
    if args.json_file:
        report = {"environment": env, "results": [asdict(r) | {"mode": r.mode} for r in results],
                  "ratios_budget_ws_to": ratios(results),
                  "ratios_native_to": ratios(results, "native", NATIVE_PEERS),
                  "verdicts": found}  # fmt: skip
        args.json_file.write_text(json.dumps(report, indent=2) + "\n")
    must_deliver = ("budget_ws", "native", "floor")
    failed = [r for r in results if r.error or (r.events and not r.complete
                                                and r.contender in must_deliver)]  # fmt: skip
    status = 1 if failed else 0
    if args.redis:
        status |= subprocess.call([sys.executable, "-m", "benchmarks.cross_worker",
                                   "--private-redis"], cwd=ROOT)  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
