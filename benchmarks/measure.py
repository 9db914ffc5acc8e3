"""What the real-socket benchmarks measure the same way: processes, ports, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["cpu_seconds", "free_port", "package_version", "percentiles", "src_commit"]

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, in nanosecond resolution (0 if it is gone).

    ``/proc/PID/task/TID/schedstat`` starts with the time the thread ran, in ns; the
    ``utime``/``stime`` of ``/proc/PID/stat`` count clock ticks (10 ms), too coarse for
    a burst that lasts a fraction of a second.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                total += int(file.read().split()[0])
        except OSError:
            pass  # a thread that just ended
    return total / 1e9


def percentiles(values: Sequence[int], scale: float = 1e-6) -> dict[str, float]:
    """p50, p90, p99 and max of ``values`` times ``scale`` (ns to ms by default)."""
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(fraction: float) -> float:
        return round(ordered[round(fraction * last)] * scale, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def src_commit() -> str:
    """The last commit that changed ``src/``, or ``-`` outside a git checkout."""
    commit = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", "src"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return commit or "-"
