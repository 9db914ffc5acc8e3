"""What a manager counts of its own activity, for exporters to read when they are scraped.

The core imports no metrics library: it keeps plain counters and bucket counts here, and
an exporter (:mod:`budget_ws.prometheus`) turns them into its own types on demand. Counting
is always on, since it happens off the delivery path (a connection opening or closing, a
refusal, a rejected frame). Timings (publish-to-write latency, publish latency, outbox
fill) cost clock reads per publish and per fan-out (per event, whatever the number of
subscribers) and one per written message, and are off until
:meth:`Metrics.enable_timings`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidMetric

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "PENDING_LIMIT",
    "Histogram",
    "HistogramSnapshot",
    "Metrics",
]

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Upper bounds, in seconds, of the latency buckets (an implicit ``+Inf`` follows)."""

DEFAULT_SIZE_BUCKETS: tuple[int, ...] = (
    0,
    1_024,
    4_096,
    16_384,
    65_536,
    262_144,
    1_048_576,
    4_194_304,
)
"""Upper bounds, in bytes, of the outbox fill buckets (an implicit ``+Inf`` follows)."""

PENDING_LIMIT = 4096
"""Observations a histogram's writers may leave uncounted before :meth:`Metrics.settle`
counts them: enough that sorting them is cheap per value, few enough to hold little."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram as an exporter reads it: cumulative counts per upper bound."""

    bounds: tuple[float, ...]
    """Upper bounds, ascending; ``+Inf`` is implied after the last."""
    cumulative: tuple[int, ...]
    """Observations at or below each bound, then the total (one more entry than bounds)."""
    sum: float
    """Sum of all observed values."""

    @property
    def count(self) -> int:
        """Number of observations."""
        return self.cumulative[-1]

    def since(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed after ``earlier``, a snapshot of the same histogram.

        Raises:
            InvalidMetric: ``earlier`` has other bounds.
        """
        if earlier.bounds != self.bounds:
            raise InvalidMetric("snapshots of histograms with different bounds")
        return HistogramSnapshot(
            self.bounds,
            tuple(
                now - then for now, then in zip(self.cumulative, earlier.cumulative, strict=True)
            ),
            self.sum - earlier.sum,
        )

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q`` quantile (0 to 1), as PromQL's ``histogram_quantile`` does.

        Interpolates linearly inside the bucket that holds it; a quantile in the ``+Inf``
        bucket is reported as the last bound. None when nothing was observed.

        Raises:
            InvalidMetric: ``q`` is outside 0 to 1.
        """
        if not 0 <= q <= 1:
            raise InvalidMetric(f"a quantile is between 0 and 1, not {q}")
        total = self.count
        if total == 0:
            return None
        rank = q * total
        lower, below = 0.0, 0
        for bound, cumulative in zip(self.bounds, self.cumulative[:-1], strict=True):
            if cumulative >= rank and cumulative > below:
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return self.bounds[-1]


class Histogram:
    """Counts of observations per bucket, kept in plain Python for a cheap hot path.

    Buckets include their upper bound (``value <= bound``), as Prometheus's ``le`` does.
    Observing only appends to :attr:`pending`: a connection's writer calls its bound
    ``append`` once per message, with no bisection and no arithmetic. The pending values
    are counted in one sorted pass when anyone reads (:attr:`counts`, :attr:`sum`,
    :meth:`snapshot`) or calls :meth:`flush`, which the topic router does once per
    fan-out when many have piled up.
    """

    __slots__ = ("_counts", "_flushing", "_sum", "bounds", "pending", "weighted")

    def __init__(self, bounds: Sequence[float]) -> None:
        # Kept as given: int bounds for int values compare faster than floats would.
        ordered = tuple(bounds)
        if not ordered or list(ordered) != sorted(set(ordered)):
            raise InvalidMetric("histogram bounds must be distinct and ascending")
        self.bounds = ordered
        self._counts = [0] * (len(ordered) + 1)
        self._sum: float = 0
        self._flushing = threading.Lock()
        self.pending: list[float] = []
        """Values observed once each and not yet counted. Only ever appended to (its
        ``append`` may be kept): :meth:`flush` takes a prefix off."""
        self.weighted: list[tuple[float, int]] = []
        """``(value, times)`` pairs observed and not yet counted, as :attr:`pending`."""

    @property
    def counts(self) -> list[int]:
        """Observations per bucket, the last one above every bound (not cumulative)."""
        self.flush()
        return list(self._counts)

    @property
    def sum(self) -> float:
        """Sum of all observed values (an int while they all are)."""
        self.flush()
        return self._sum

    def observe(self, value: float) -> None:
        """Count one value."""
        self.pending.append(value)

    def observe_times(self, value: float, times: int) -> None:
        """Count one value ``times`` times."""
        self.weighted.append((value, times))

    def flush(self) -> None:
        """Count the pending observations.

        Safe from any thread (an exporter's scrape, say) while the event loop observes:
        observers only append, and this takes off the prefix it counted, leaving whatever
        was appended meanwhile.
        """
        with self._flushing:
            self._count_pending()

    def _count_pending(self) -> None:
        # With the lock held. Sorted values are bucketed by one bisection per bound.
        counts = self._counts
        pending = self.pending
        taken = len(pending)
        if taken:
            values = pending[:taken]
            del pending[:taken]
            values.sort()
            below = 0
            for index, bound in enumerate(self.bounds):
                at_or_below = bisect_right(values, bound, below)
                counts[index] += at_or_below - below
                below = at_or_below
            counts[-1] += taken - below
            self._sum += sum(values)
        weighted = self.weighted
        taken = len(weighted)
        if taken:
            pairs = weighted[:taken]
            del weighted[:taken]
            bounds = self.bounds
            for value, times in pairs:
                counts[bisect_left(bounds, value)] += times
                self._sum += value * times

    def snapshot(self) -> HistogramSnapshot:
        """The counts so far, cumulative, as exporters want them."""
        with self._flushing:
            self._count_pending()
            counts, total_sum = list(self._counts), self._sum
        cumulative: list[int] = []
        total = 0
        for value in counts:
            total += value
            cumulative.append(total)
        return HistogramSnapshot(
            tuple(float(bound) for bound in self.bounds), tuple(cumulative), float(total_sum)
        )


class Metrics:
    """Counters of one :class:`~budget_ws.ConnectionManager`, read by exporters.

    The manager and its connections update them; applications read them (see
    ``docs/reference/metrics.md`` for what each means). Reading is safe from another
    thread: a scrape may see one counter a step ahead of another, never a broken value.
    """

    __slots__ = (
        "closes",
        "connections_opened",
        "delivered",
        "delivery_latency",
        "dropped",
        "frames_rejected",
        "handshake_refusals",
        "outbox_fill",
        "publish_failures",
        "publish_latency",
        "published",
        "queued_at",
        "resyncs",
        "slow_consumers",
    )

    def __init__(self) -> None:
        self.connections_opened = 0
        """Connections the manager started serving."""
        self.closes: Counter[int] = Counter()
        """Connections that ended, by close code (4001 is a heartbeat timeout)."""
        self.handshake_refusals: Counter[str] = Counter()
        """Clients refused before they were served, by the check that refused them."""
        self.frames_rejected: Counter[str] = Counter()
        """Client frames answered with an error frame, by its error code."""
        self.published = 0
        """Events published through this manager."""
        self.publish_failures = 0
        """``publish()`` calls that failed because the backend did (``BackendError``)."""
        self.delivered = 0
        """Frames written to client transports (events, replays and control frames)."""
        self.dropped = 0
        """Frames dropped by the drop-oldest policy on connections that have ended."""
        self.slow_consumers = 0
        """Connections closed because their outbox overflowed."""
        self.resyncs = 0
        """Times a topic's local subscribers were told to resync (events were lost)."""
        self.delivery_latency: Histogram | None = None
        """Seconds from an event's ``publish()``, on whichever worker called it, to its
        write on this one, per live frame (a frame written in one message with others
        counts the oldest one's wait). The publishing manager stamps the time into the
        event when it measures timings too (see :mod:`budget_ws.propagation`), so the
        backend round trip and the pub/sub hop are counted; across hosts the figure is as
        right as their clocks are synchronized (NTP), and a stamp ahead of this host's
        clock counts as no transit. Events without a stamp (an untimed publisher, another
        program writing to the backend) count from their fan-out on this worker."""
        self.publish_latency: Histogram | None = None
        """Seconds ``publish()`` waited for the backend, per successful publish."""
        self.outbox_fill: Histogram | None = None
        """Bytes waiting in a connection's outbox each time its writer takes a message that
        joins several event frames: the backlogs clients let form (control frames and
        replays are not counted)."""
        self.queued_at = 0.0
        """``time.perf_counter()`` reading of when the event of the fan-out under way was
        published (or of the fan-out itself, when the event carries no publish time),
        while timings are measured: the queue time of the frames it puts into empty
        outboxes."""

    def settle(self) -> None:
        """Count the timings observed so far once many are pending, so that what the
        histograms hold stays bounded however rarely they are read.

        Called where frames are queued (once per fan-out, not per frame) and by writers
        that take a backlog.
        """
        latency, fill = self.delivery_latency, self.outbox_fill
        if (
            latency is not None
            and fill is not None
            and len(latency.pending) + len(latency.weighted) + len(fill.pending) >= PENDING_LIMIT
        ):
            latency.flush()
            fill.flush()

    @property
    def heartbeat_timeouts(self) -> int:
        """Connections closed because they did not answer a ping (close code 4001)."""
        return self.closes[4001]

    @property
    def timed(self) -> bool:
        """Whether timings are being measured."""
        return self.delivery_latency is not None

    def enable_timings(
        self,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
    ) -> None:
        """Start measuring latencies and outbox fill; exporters call it.

        Applies to connections opened from now on. Costs clock reads per publish (the
        publish time the event carries, the backend's round trip) and per fan-out (when
        the event was published), and one per written message with an append to a list
        (:meth:`Histogram.flush` buckets the values later, a few thousand at a time).
        Calling it again keeps the histograms that exist.
        """
        if self.delivery_latency is None:
            self.delivery_latency = Histogram(latency_buckets)
            self.publish_latency = Histogram(latency_buckets)
            self.outbox_fill = Histogram(size_buckets)
