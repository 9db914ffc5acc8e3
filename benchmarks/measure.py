"""What the real-socket benchmarks measure the same way: CPU per delivery, percentiles, ports."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

__all__ = ["cpu_seconds", "cpu_us_per_delivery", "free_port", "percentiles"]


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


def cpu_us_per_delivery(cpu: float, delivered: int) -> float | None:
    """Server CPU time per delivery *made*, in µs: ``cpu`` seconds / events clients received.

    The one definition every benchmark uses. Dividing by the deliveries made rather than
    those due means a server that loses events cannot look cheap by it: what it spent is
    shared by what arrived. A run that delivered nothing has no figure (None), and the
    delivered / due count stands beside the figure in every table, so a shortfall shows.
    """
    if delivered <= 0:
        return None
    return round(1e6 * cpu / delivered, 3)


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
