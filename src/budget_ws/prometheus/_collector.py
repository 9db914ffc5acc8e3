"""The collector of one process: it reads a manager when Prometheus scrapes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..adapters.asgi import Receive, Scope, Send
from ..errors import PrometheusSetupError
from ..manager import ConnectionManager
from ..metrics import HistogramSnapshot
from ._families import FAMILIES, Family, bucket_pairs, label_names, read, register
from ._workers import WorkersCollector, exporting, multiprocess_dir

logger = logging.getLogger("budget_ws.prometheus")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ManagerCollector(Collector):
    """Reads a manager's metrics when Prometheus scrapes (see ``docs/reference/metrics.md``).

    Values are exact at scrape time in a single process. Prefer :func:`instrument`, which
    also turns the timings on. Counters never go down: a counter the manager reports lower
    than it did at an earlier scrape (a scrape from another thread can catch an ending
    connection's dropped frames between the connection and the manager's total) is
    exported at its highest value so far.

    .. versionadded:: 0.1

    Args:
        manager: The manager to read.
        worker: A ``worker`` label put on every series, to tell processes apart when each
            is scraped on its own; no label by default.
    """

    def __init__(self, manager: ConnectionManager, *, worker: str | None = None) -> None:
        self.manager = manager
        self.worker = worker
        self._highest: dict[tuple[str, str | None], float] = {}
        # prometheus_client's own HTTP server scrapes from a thread per request.
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        """The families without samples, for the registry to refuse duplicates."""
        return [self._family(family) for family in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        """Every family, with the manager's values now."""
        with self._lock:
            return list(self._collect())

    def _collect(self) -> Iterable[Metric]:
        values = read(self.manager)
        base = [] if self.worker is None else [self.worker]
        for spec in FAMILIES:
            family = self._family(spec)
            value = values.get(spec.name)
            if isinstance(family, HistogramMetricFamily):
                if isinstance(value, HistogramSnapshot):
                    family.add_metric(base, bucket_pairs(value), value.sum)
            elif isinstance(value, Mapping):
                for label, amount in sorted(value.items()):
                    family.add_metric([*base, label], self._monotonic(spec, label, amount))
            else:
                assert isinstance(value, (int, float)), spec.name  # every other family has one
                if spec.kind == "counter":
                    value = self._monotonic(spec, None, value)
                family.add_metric(base, value)
            yield family

    def _family(
        self, spec: Family
    ) -> GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily:
        labels = label_names(spec, self.worker)
        if spec.kind == "gauge":
            return GaugeMetricFamily(spec.name, spec.help, labels=labels)
        if spec.kind == "counter":
            return CounterMetricFamily(spec.name, spec.help, labels=labels)
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)

    def _monotonic(self, spec: Family, label: str | None, value: float) -> float:
        key = (spec.name, label)
        highest = max(self._highest.get(key, 0.0), value)
        self._highest[key] = highest
        return highest


def instrument(
    manager: ConnectionManager,
    registry: CollectorRegistry | None = None,
    *,
    worker: str | None = None,
    timings: bool = True,
) -> ManagerCollector:
    """Export a manager's metrics from ``registry``: turn the timings on, add a collector.

    Call it before the manager serves: only connections opened from then on are timed.
    Timings cost a clock read per fan-out and per written message; counting is free of
    per-delivery work.

    .. versionadded:: 0.1

    Args:
        manager: The manager to export.
        registry: Where to register the collector; ``prometheus_client.REGISTRY`` by
            default.
        worker: A ``worker`` label on every series (see :class:`ManagerCollector`).
        timings: Whether to turn the timings on; without them, the histograms have no
            samples.

    Returns:
        The collector, for ``registry.unregister(collector)``.

    Raises:
        PrometheusSetupError: ``registry`` already has budget_ws metrics (this manager or
            another was instrumented into it).
    """
    registry = REGISTRY if registry is None else registry
    if timings:
        manager.metrics.enable_timings()
    collector = ManagerCollector(manager, worker=worker)
    register(registry, collector)
    return collector


class _MetricsApp:
    """prometheus_client's ASGI app, which takes HTTP only, mounted anywhere."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], manager: ConnectionManager, *, multiprocess: bool
    ) -> None:
        self._app = app
        self._manager = manager
        self._check_exporter = multiprocess

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # a lifespan or WebSocket scope of a plain ASGI router
        if self._check_exporter and not exporting(self._manager):
            self._check_exporter = False  # once is enough
            logger.warning(
                "budget_ws: PROMETHEUS_MULTIPROC_DIR is set but no PrometheusExporter runs "
                "for this manager: budget_ws metrics are missing; start one in the app's "
                "lifespan (docs/how-to/metrics.md)",
                extra={"budget_ws_event": "metrics_exporter_missing"},
            )
        await self._app(scope, receive, send)


def metrics_app(
    manager: ConnectionManager,
    registry: CollectorRegistry | None = None,
    *,
    worker: str | None = None,
    timings: bool = True,
) -> ASGIApp:
    """An ASGI app serving the metrics: ``app.add_route("/metrics", metrics_app(manager))``.

    In one process, it :func:`instrument`\\ s the manager into ``registry`` and serves
    that registry. With ``PROMETHEUS_MULTIPROC_DIR`` set, it serves every worker's
    metrics, summed from the files in that directory (see :class:`WorkersCollector`): each
    worker must run a :class:`PrometheusExporter`, started in its lifespan.

    .. versionadded:: 0.1

    Args:
        manager: The manager to export.
        registry: The registry to serve: ``prometheus_client.REGISTRY`` by default in one
            process (it also has the process and Python metrics), a new one in
            multiprocess mode, where it must be one of its own.
        worker: A ``worker`` label on every series; in one process only (in multiprocess
            mode, give it to :class:`PrometheusExporter`).
        timings: Whether to turn the timings on (see :func:`instrument`); in one process
            only, like ``worker``.

    Raises:
        PrometheusSetupError: ``registry`` already has budget_ws metrics, or ``worker``
            or ``timings`` was given in multiprocess mode.
    """
    if multiprocess_dir() is None:
        registry = REGISTRY if registry is None else registry
        instrument(manager, registry, worker=worker, timings=timings)
        return _MetricsApp(make_asgi_app(registry), manager, multiprocess=False)
    if worker is not None or not timings:
        raise PrometheusSetupError(
            "in multiprocess mode each worker's exporter exports it: pass worker=... and "
            "timings=... to PrometheusExporter, not to metrics_app"
        )
    registry = CollectorRegistry() if registry is None else registry
    register(registry, WorkersCollector())
    return _MetricsApp(make_asgi_app(registry), manager, multiprocess=True)
