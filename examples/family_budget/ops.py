"""What the operator page shows: the manager's own numbers, read again and compared.

``/metrics`` exports the same counters and histograms to Prometheus, which computes rates
and percentiles from its scrapes (``rate()``, ``histogram_quantile()``). The page does the
same arithmetic on its own reads, so it works without a Prometheus server.

Both answer only requests from this machine (see :func:`is_local`): they show every
budget's traffic, which no demo user should see. A real app puts them behind its own
operator login, or serves them on a port only its monitoring can reach.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from budget_ws import CloseCode, ConnectionManager
from budget_ws.metrics import Histogram, HistogramSnapshot

__all__ = [
    "LOCAL_ONLY",
    "NO_VALUE",
    "LocalOnly",
    "Readings",
    "close_reason",
    "is_local",
    "milliseconds",
    "per_second",
]

LOCAL_ONLY = "The operator pages answer only requests from the machine the demo runs on."
NO_VALUE = "\N{EN DASH}"
"""What the page shows for a number it does not have (no event in the window)."""


def is_local(client: tuple[str, int] | None) -> bool:
    """Whether a request's client address (the ASGI ``client``) is a loopback address.

    Behind a reverse proxy on the same host, uvicorn replaces the proxy's address by the
    one in ``X-Forwarded-For`` (``--forwarded-allow-ips``), so outside clients stay outside.
    """
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # not an IP address: a Unix socket, a test client's made-up name
        return False


class LocalOnly:
    """Passes requests from this machine to ``app``; answers others 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_local(scope.get("client")):
            await PlainTextResponse(LOCAL_ONLY, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def milliseconds(seconds: float | None) -> str:
    """``0.25 ms``: a latency for the page."""
    return NO_VALUE if seconds is None else f"{seconds * 1000:,.2f} ms"


def per_second(rate: float | None) -> str:
    """``2.5/s``: a rate for the page."""
    return NO_VALUE if rate is None else f"{rate:,.1f}/s"


def close_reason(code: int | str) -> str:
    """``4000 slow consumer``: a close code with its name, when budget_ws has one."""
    try:
        return f"{code} {CloseCode(int(code)).name.lower().replace('_', ' ')}"
    except ValueError:
        return str(code)


@dataclass(frozen=True, slots=True)
class Reading:
    """The manager's cumulative counts at one moment."""

    at: float
    """``time.monotonic()`` when read."""
    published: int
    delivered: int
    delivery_latency: HistogramSnapshot | None
    publish_latency: HistogramSnapshot | None


class Readings:
    """Reads a manager's metrics when asked, and keeps the reads of the last ``window`` s.

    Rates compare the current counts with a read at least ``interval`` s old, so any
    number of open operator pages polling at once see steady numbers; latency percentiles
    cover the whole window.

    Args:
        manager: The manager to watch; its timings are switched on.
        interval: Shortest span a rate is computed over, in seconds.
        window: Span of the latency percentiles, in seconds (longer after a quiet spell,
            until reads fill it again).
        clock: Monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        interval: float = 0.5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.interval = interval
        self.window = window
        self._clock = clock
        manager.metrics.enable_timings()  # also done by /metrics; calling twice is harmless
        self._reads: deque[Reading] = deque([self._read()])

    def _read(self) -> Reading:
        metrics = self.manager.metrics
        return Reading(
            at=self._clock(),
            published=metrics.published,
            delivered=metrics.delivered,
            delivery_latency=_snapshot(metrics.delivery_latency),
            publish_latency=_snapshot(metrics.publish_latency),
        )

    def report(self) -> dict[str, Any]:
        """Everything the operator page shows, JSON-ready (latencies in seconds)."""
        now = self._read()
        reads = self._reads
        # The window's base is the newest read at least `window` old, once there is one.
        while len(reads) > 1 and reads[1].at <= now.at - self.window:
            reads.popleft()
        rate_base = next(
            (read for read in reversed(reads) if read.at <= now.at - self.interval), reads[0]
        )
        window_base = reads[0]
        if now.at - reads[-1].at >= self.interval:
            reads.append(now)

        stats = self.manager.stats()
        metrics = self.manager.metrics
        backend = stats.backend_status
        delivery = _since(now.delivery_latency, window_base.delivery_latency)
        publish = _since(now.publish_latency, window_base.publish_latency)
        return {
            "connections": stats.connections,
            "topics": stats.topics,
            "queued_frames": stats.queued_frames,
            "queued_bytes": stats.queued_bytes,
            "rates": _rates(rate_base, now),
            "latency": {
                "seconds": now.at - window_base.at,
                "delivery": {
                    "count": delivery.count if delivery else 0,
                    **{f"p{q}": _quantile(delivery, q / 100) for q in (50, 95, 99)},
                },
                "publish": {
                    "count": publish.count if publish else 0,
                    "p99": _quantile(publish, 0.99),
                },
            },
            "totals": {
                "published": metrics.published,
                "delivered": metrics.delivered,
                "connections_opened": metrics.connections_opened,
                "slow_consumers": metrics.slow_consumers,
                "resyncs": metrics.resyncs,
                "publish_failures": metrics.publish_failures,
                "dropped": stats.dropped,
            },
            "closes": {str(code): count for code, count in sorted(metrics.closes.items())},
            "handshake_refusals": dict(sorted(metrics.handshake_refusals.items())),
            "frames_rejected": dict(sorted(metrics.frames_rejected.items())),
            "backend": {
                "name": stats.backend,
                "connected": backend.get("connected"),
                "reconnects": backend.get("reconnects"),
                "status": backend,
            },
        }


def _snapshot(histogram: Histogram | None) -> HistogramSnapshot | None:
    return None if histogram is None else histogram.snapshot()


def _since(
    now: HistogramSnapshot | None, earlier: HistogramSnapshot | None
) -> HistogramSnapshot | None:
    if now is None:
        return None
    return now if earlier is None else now.since(earlier)


def _quantile(snapshot: HistogramSnapshot | None, q: float) -> float | None:
    return None if snapshot is None else snapshot.quantile(q)


def _rates(earlier: Reading, now: Reading) -> dict[str, float | None]:
    """Events published and frames delivered per second between two reads."""
    seconds = now.at - earlier.at
    if seconds <= 0:  # the first request, right after the app was built
        return {"seconds": None, "published": None, "delivered": None}
    return {
        "seconds": seconds,
        "published": (now.published - earlier.published) / seconds,
        "delivered": (now.delivered - earlier.delivered) / seconds,
    }
