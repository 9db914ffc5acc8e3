"""Hostile clients beside healthy ones: what costly frames from a few cost everyone else.

Run it with ``python -m benchmarks.hostile`` (``--help`` lists the options;
``benchmarks/README.md`` explains every figure). One budget_ws server
(``benchmarks/peers_server.py``, the ``budget_ws`` contender with ``--client-events``: it
accepts a ``note`` event from clients and validates every one) publishes at a steady rate
to healthy clients (``benchmarks/loadgen.py``) for a while, twice: quiet, then with
hostile clients (``benchmarks/hostile_client.py``) that never read and send large
``note`` frames full of unknown keys as fast as the frame rate limit allows. It records
the healthy clients' deliveries and latency in both phases, the server's memory (RSS at
start, peak, end) and CPU, and how each hostile connection ended. The pass line: the
hostile clients at most double the healthy clients' latency p99.

``--src PATH`` runs the server on another checkout's ``src/`` (through ``PYTHONPATH``),
e.g. the commit before a fix, with this harness.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import discard_dumps, read_dump
from benchmarks.measure import cpu_seconds, free_port, percentiles
from benchmarks.peers import Child, clients, memory_kib, reset_peak
from benchmarks.provenance import describe, environment, load_average
from budget_ws import Limits, OutboxLimits

__all__ = ["PASS_LINE", "Phase", "Run", "main", "verdicts"]

ROOT = Path(__file__).resolve().parent.parent
PASS_LINE = 2.0
"""Hostile clients may multiply the healthy clients' latency p99 by at most this."""
DECODE_ALLOWANCE = 1 << 20
"""Memory a hostile client may cost beyond its bounds: decoding and validating a frame in
flight (a dict of thousands of keys, then as many errors), in bytes."""
SAMPLE_SECONDS = 0.05
"""How often the server's RSS is sampled during a phase (its peak also comes from VmHWM)."""


@dataclass
class Phase:
    """One publishing phase: the healthy clients, quiet or beside hostile ones."""

    name: str
    hostile: int = 0
    expected: int = 0
    delivered: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """From each event's due time (the steady schedule) to its receipt: a publisher held
    up by a busy event loop counts too."""
    cpu_seconds: float = 0.0
    """Server CPU (every thread, schedstat) from the first publish to the last receipt."""
    cpu_percent: float = 0.0
    """``cpu_seconds`` in % of one core over the same wall time."""
    wall_seconds: float = 0.0
    rss_kib: dict[str, int] = field(default_factory=dict)
    """Server RSS: ``before`` the phase, ``peak`` during it, ``end`` once it was over."""
    load: list[float] = field(default_factory=list)
    """The 1, 5 and 15-minute load averages when the phase started."""
    publish_late: bool = False
    """The server's publishing had not finished ``--drain`` seconds after its schedule."""
    hostile_clients: list[dict[str, Any]] = field(default_factory=list)
    """Per hostile client: ``connects``, ``frames_sent``, and per connection
    (``attempts``) its frames sent whole, how it ended, the close code and reason."""

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.delivered == self.expected


@dataclass
class Run:
    ws: str
    library: str | None = None
    """The ``budget_ws/__init__.py`` the server imported (which checkout ran)."""
    frame_bytes: int = 0
    """Length of one hostile frame's JSON."""
    rss_kib: dict[str, int] = field(default_factory=dict)
    """Server RSS: ``start`` (before any client), ``peak`` (of both phases), ``end`` (the
    hostile phase over, hostile sockets just closed), ``released`` (2 s later)."""
    quiet: Phase | None = None
    hostile: Phase | None = None
    error: str | None = None


# --------------------------------------------------------------------------------------
# Measuring


@contextlib.contextmanager
def sampling(pid: int) -> Iterator[list[int]]:
    """Sample the process's VmRSS every ``SAMPLE_SECONDS``; yields [max so far]."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], memory_kib(pid)["VmRSS"])
            stop.wait(SAMPLE_SECONDS)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


def hostile_process(url: str, args: argparse.Namespace, duration: float) -> Child:
    return Child([
        sys.executable, "-m", "benchmarks.hostile_client", "--url", url,
        "--count", str(args.hostile), "--rate", str(args.hostile_rate),
        "--frame-bytes", str(args.frame_bytes), "--keys", str(args.keys),
        "--duration", str(duration), "--max-connects", str(args.max_connects),
        "--receive-buffer", str(args.receive_buffer),
    ])  # fmt: skip


def _line(child: Child, timeout: float, what: str) -> dict[str, Any]:
    """The child's next line, or an error that says who did not answer."""
    try:
        return child.line(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"{what}: no answer within {timeout:g} s") from None


def phase(name: str, server: Child, healthy: Child, url: str, args: argparse.Namespace,
          run: Run, before: int) -> Phase:  # fmt: skip
    """Publish ``--duration`` seconds of events; ``before``: events every healthy client
    was due in earlier phases (the clients count from their start)."""
    result = Phase(name, hostile=args.hostile if name == "hostile" else 0)
    hostile = hostile_process(url, args, args.duration + args.lead) if result.hostile else None
    try:
        _measure_phase(result, server, healthy, hostile, args, run, before)
    finally:
        if hostile:
            hostile.stop()
    if result.publish_late:  # later commands would be answered out of turn
        raise RuntimeError(f"{name}: the server was still publishing {args.drain:g} s late")
    return result


def _measure_phase(result: Phase, server: Child, healthy: Child, hostile: Child | None,
                   args: argparse.Namespace, run: Run, before: int) -> None:  # fmt: skip
    pid = server.pid
    events = round(args.rate * args.duration)
    if hostile:
        _line(hostile, 60, "the hostile clients, connecting")
    result.load = load_average()
    reset_peak(pid)
    result.rss_kib["before"] = memory_kib(pid)["VmRSS"]
    with sampling(pid) as sampled:
        if hostile:
            hostile.send("go")
            time.sleep(args.lead)  # they are at their steady rate when publishing starts
        cpu_before = cpu_seconds(pid)
        began = time.time_ns()
        server.send(f"publish {events} {args.payload_bytes} {args.rate} due")
        healthy.send(f"expect {before + events}")
        report = _line(healthy, args.duration + args.drain + 30, "the healthy clients")
        result.cpu_seconds = round(cpu_seconds(pid) - cpu_before, 3)
        last = report["last_receipt"] or time.time_ns()
        result.wall_seconds = round((last - began) / 1e9, 3)
        if result.wall_seconds > 0:
            result.cpu_percent = round(100 * result.cpu_seconds / result.wall_seconds, 1)
        result.expected = args.healthy * events
        result.delivered = report["received"] - args.healthy * before
        result.latency_ms = percentiles(read_dump(report["latency_file"]))
        try:
            server.line(timeout=args.drain)
        except queue.Empty:
            result.publish_late = True
        if hostile:
            answer = _line(hostile, args.duration + args.lead + 60, "the hostile clients")
            run.frame_bytes = answer["frame_bytes"]
            result.hostile_clients = answer["clients"]
            hostile.stop()  # its sockets are closed: what the server held for them can go
        status = memory_kib(pid)
        result.rss_kib["peak"] = max(status["VmHWM"], status["VmRSS"], sampled[0])
        result.rss_kib["end"] = status["VmRSS"]


def measure(args: argparse.Namespace) -> Run:
    run = Run(args.ws)
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.peers_server", "--contender", "budget_ws",
               "--client-events", "--port", str(port), "--ws", args.ws]  # fmt: skip
    if args.src:
        command = ["env", f"PYTHONPATH={args.src.resolve()}", *command]
    server = Child(command)
    held: list[Child] = []
    try:
        ready = _line(server, 60, "the server, starting")
        run.library = ready.get("library")
        if args.src and not str(run.library).startswith(str(args.src.resolve())):
            raise RuntimeError(f"the server imported {run.library}, not --src {args.src}")
        url = f"ws://127.0.0.1:{port}/ws"
        pid = server.pid
        run.rss_kib["start"] = memory_kib(pid)["VmRSS"]
        held = clients(url, "budget_ws", args.healthy, args.drain)
        healthy = held[0]
        discard_dumps(_line(healthy, 60, "the healthy clients, connecting"))
        server.send("warmup")
        _line(server, 30, "the server, warming up")
        time.sleep(1.0)
        _progress(f"quiet: {args.healthy} healthy clients, {args.rate:g} events/s")
        run.quiet = phase("quiet", server, healthy, url, args, run, 0)
        _progress(f"hostile: the same beside {args.hostile} hostile clients at "
                  f"{args.hostile_rate:g} frames/s")  # fmt: skip
        run.hostile = phase("hostile", server, healthy, url, args, run,
                            run.quiet.expected // args.healthy)  # fmt: skip
        run.rss_kib["end"] = run.hostile.rss_kib["end"]
        time.sleep(2.0)
        run.rss_kib["released"] = memory_kib(pid)["VmRSS"]
        run.rss_kib["peak"] = max(run.quiet.rss_kib["peak"], run.hostile.rss_kib["peak"])
    except Exception as exc:  # reported, never hidden: the results file says what failed
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        for child in held:
            child.stop()
        server.stop()
    return run


# --------------------------------------------------------------------------------------
# Report


def _verdict(label: str, check: str, met: bool) -> dict[str, Any]:
    return {"label": label, "check": check, "met": met}


def close_codes(phase: Phase) -> list[int | None]:
    return [attempt["close_code"] for client in phase.hostile_clients
            for attempt in client["attempts"] if attempt["ended"] != "refused"]  # fmt: skip


def verdicts(run: Run) -> list[dict[str, Any]]:
    """The pass line and what the fixes promise, each checked against this run."""
    quiet, hostile = run.quiet, run.hostile
    if quiet is None or hostile is None:
        return []
    label = f"hostile {hostile.hostile} + healthy, --ws {run.ws}"
    p99_quiet = quiet.latency_ms.get("p99", float("inf"))
    p99_hostile = hostile.latency_ms.get("p99", float("inf"))
    found = [
        _verdict(label, f"healthy p99 {p99_hostile:.1f} ms with hostile clients <= "
                 f"{PASS_LINE:g} x {p99_quiet:.1f} ms quiet", p99_hostile <= PASS_LINE * p99_quiet),
        _verdict(label, f"healthy clients got every event, quiet and beside hostile ones "
                 f"({quiet.delivered:,}/{quiet.expected:,}, "
                 f"{hostile.delivered:,}/{hostile.expected:,})",
                 quiet.complete and hostile.complete),
    ]  # fmt: skip
    # A connection the time ran out on before it sent byte_burst had nothing to be closed for.
    within = Limits().byte_burst // max(1, run.frame_bytes) + 1
    attempts = [attempt for client in hostile.hostile_clients for attempt in client["attempts"]
                if attempt["ended"] != "refused"]  # fmt: skip
    found.append(_verdict(label, "every hostile connection closed by the server, or open "
                          f"having sent at most byte_burst ({within} frames): "
                          f"{close_codes(hostile)}",
                          bool(attempts) and all(attempt["close_code"] is not None
                                                 or attempt["frames_sent"] <= within
                                                 for attempt in attempts)))  # fmt: skip
    held = (hostile.rss_kib["peak"] - quiet.rss_kib["peak"]) / max(1, hostile.hostile)
    bound = (OutboxLimits().max_bytes + Limits().byte_burst + DECODE_ALLOWANCE) / 1024
    found.append(_verdict(label, f"server memory per hostile client {held:,.0f} KiB (peak RSS "
                          f"hostile - quiet, / {hostile.hostile}) <= outbox max_bytes + "
                          f"byte_burst + 1 MiB decoding = {bound:,.0f} KiB",
                          held <= bound))  # fmt: skip
    return found


def summary(run: Run) -> str:
    lines = []
    for phase in (run.quiet, run.hostile):
        if phase is None:
            continue
        latency = phase.latency_ms
        lines.append(
            f"{phase.name:>7}: delivered {phase.delivered:,}/{phase.expected:,}, "
            f"p50 {latency.get('p50', float('nan')):.2f} ms, "
            f"p99 {latency.get('p99', float('nan')):.2f} ms, "
            f"server CPU {phase.cpu_percent:g} % of a core, RSS {phase.rss_kib}, "
            f"load {phase.load}"
        )
        for client in phase.hostile_clients:
            endings = ", ".join(
                f"{a['frames_sent']} frames, {a['ended']}, "
                f"{a['close_code']} {a['close_reason']!r}".rstrip()
                for a in client["attempts"]
            )  # fmt: skip
            lines.append(f"         hostile {client['index']}: {endings}")
    if run.quiet and run.hostile and run.quiet.latency_ms and run.hostile.latency_ms:
        for key in ("p50", "p99"):
            ratio = run.hostile.latency_ms[key] / run.quiet.latency_ms[key]
            lines.append(f"{key} hostile / quiet: x{ratio:.2f}")
    lines.append(f"server RSS (KiB): {run.rss_kib}; budget_ws from {run.library}")
    if run.error:
        lines.append(f"error: {run.error}")
    return "\n".join(lines)


def ratios(run: Run) -> dict[str, float | None]:
    quiet = run.quiet.latency_ms if run.quiet else {}
    hostile = run.hostile.latency_ms if run.hostile else {}
    return {key: round(hostile[key] / quiet[key], 3) if quiet.get(key) and key in hostile
            else None for key in ("p50", "p99")}  # fmt: skip


def _library(src: Path) -> dict[str, Any]:
    """What ``provenance.git_commit`` says of ``src/``, for another checkout's ``src``."""

    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(src), *arguments], capture_output=True,
                              text=True, check=False).stdout.strip()  # fmt: skip

    digest = hashlib.sha256()
    top = Path(git("rev-parse", "--show-toplevel") or src)
    for file in sorted(src.rglob("*.py")):
        if "__pycache__" not in file.parts:
            digest.update(str(file.relative_to(top)).encode() + b"\0" + file.read_bytes())
    return {"commit": git("log", "-1", "--format=%h", "--", ".") or "-",
            "checkout": git("rev-parse", "--short", "HEAD") or "-",
            "dirty": bool(git("status", "--porcelain", "--", ".")),
            "digest": digest.hexdigest()[:16], "path": str(src)}  # fmt: skip


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        _progress(f"load {os.getloadavg()[0]:.2f} > {max_load}: waiting")
        time.sleep(min(10.0, max(0.1, deadline - time.monotonic())))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile",
        description="Healthy clients of one budget_ws server, quiet and beside hostile "
        "clients that never read and send costly frames.",
    )
    parser.add_argument("--healthy", type=int, default=20, help="healthy clients (20)")
    parser.add_argument("--rate", type=float, default=100, help="events/s published (100)")
    parser.add_argument("--payload-bytes", type=int, default=200, help="event data (200 B)")
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds of publishing per phase (10)")  # fmt: skip
    parser.add_argument("--hostile", type=int, default=3, help="hostile clients (3)")
    parser.add_argument("--hostile-rate", type=float, default=25,
                        help="frames/s per hostile client (25: half the default frame rate "
                        "limit)")  # fmt: skip
    parser.add_argument("--frame-bytes", type=int, default=60_000,
                        help="JSON length of a hostile frame (60,000)")  # fmt: skip
    parser.add_argument("--keys", type=int, default=5000,
                        help="unknown keys in a hostile frame's data (5,000)")  # fmt: skip
    parser.add_argument("--max-connects", type=int, default=20,
                        help="connections per hostile client in all (20)")  # fmt: skip
    parser.add_argument("--receive-buffer", type=int, default=4096,
                        help="the hostile sockets' SO_RCVBUF (4,096)")  # fmt: skip
    parser.add_argument("--lead", type=float, default=0.5,
                        help="seconds hostile clients send before publishing starts")  # fmt: skip
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn's --ws")
    parser.add_argument("--src", type=Path, metavar="PATH",
                        help="run the server on this src/ (via PYTHONPATH)")  # fmt: skip
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds the healthy clients wait for late events (30)")  # fmt: skip
    parser.add_argument("--max-load", type=float, default=0.7)
    parser.add_argument("--max-wait", type=float, default=120,
                        help="seconds to wait for load < --max-load (120)")  # fmt: skip
    parser.add_argument("--json-file", type=Path, metavar="PATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wait_for_quiet(args.max_load, args.max_wait)
    parameters = {key: value for key, value in vars(args).items() if key != "json_file"}
    parameters["pass_line"] = PASS_LINE
    env = environment("hostile", parameters)
    if args.src:
        env["library"] = _library(args.src.resolve())
    run = measure(args)
    env["load_after"] = load_average()
    print(describe(env))
    print(summary(run))
    found = verdicts(run)
    for verdict in found:
        print(f"target {verdict['label']}: {verdict['check']}: {'yes' if verdict['met'] else 'NO'}")
    if args.json_file:
        document = {"environment": env, "run": asdict(run), "ratios_hostile_to_quiet": ratios(run),
                    "verdicts": found}  # fmt: skip
        args.json_file.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if run.error else 0


if __name__ == "__main__":
    sys.exit(main())
