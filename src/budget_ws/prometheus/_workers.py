"""Multiprocess mode: each worker's exporter, and the collector that sums the workers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from types import TracebackType

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .._runtime import BackgroundTask
from ..errors import PrometheusSetupError
from ..manager import ConnectionManager
from ..metrics import HistogramSnapshot
from ._families import (
    FAMILIES,
    HISTOGRAM_PARTS,
    Family,
    bucket_pairs,
    label_names,
    le_label,
    read,
    register,
)

logger = logging.getLogger("budget_ws.prometheus")


def multiprocess_dir() -> str | None:
    """The directory prometheus_client's multiprocess mode uses, if it is on."""
    return (
        os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112 - its deprecated name
        or None
    )


class WorkersCollector(Collector):
    """Every worker's metrics, summed, with budget_ws's histograms typed back.

    prometheus_client's ``MultiProcessCollector`` reads every metric in the
    multiprocess directory (your app's own too). The :class:`PrometheusExporter` writes
    each budget_ws histogram as three gauges (``_bucket`` with ``le``, ``_sum`` and
    ``_count``, summed across workers): prometheus_client's ``Histogram`` can only observe
    values one at a time, and the manager keeps bucket counts, not values. This collector
    exports those three as one histogram, with the same series. Read through a plain
    ``MultiProcessCollector``, they stay gauges with the same names and labels, which
    ``histogram_quantile()`` takes all the same.

    .. versionadded:: 0.1

    Args:
        path: The multiprocess directory; ``$PROMETHEUS_MULTIPROC_DIR`` by default.

    Raises:
        ValueError: No such directory.
    """

    def __init__(self, path: str | None = None) -> None:
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        """The merged metrics of every worker."""
        merged: Iterable[Metric] = self._files.collect()  # type: ignore[no-untyped-call]
        families = {family.name: family for family in merged}
        for spec in FAMILIES:
            if spec.kind != "histogram":
                continue
            parts = [families.get(spec.name + suffix) for suffix in HISTOGRAM_PARTS]
            if not all(part is not None and part.type == "gauge" for part in parts):
                continue
            bucket, total, _ = parts
            assert bucket is not None
            assert total is not None
            for suffix in HISTOGRAM_PARTS:
                del families[spec.name + suffix]
            yield _as_histogram(spec, bucket, total)
        yield from families.values()


def _as_histogram(spec: Family, bucket: Metric, total: Metric) -> HistogramMetricFamily:
    """One histogram from its ``_bucket`` and ``_sum`` gauges (``_count`` is +Inf's)."""
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for sample in bucket.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        buckets.setdefault(labels, []).append((float(sample.labels["le"]), sample.value))
    sums = {tuple(sorted(sample.labels.items())): sample.value for sample in total.samples}
    names = sorted({name for labels in buckets for name, _ in labels})
    family = HistogramMetricFamily(spec.name, spec.help, labels=names)
    for labels, pairs in sorted(buckets.items()):
        pairs.sort()
        values = dict(labels)
        family.add_metric(
            [values[name] for name in names],
            [(le_label(bound), count) for bound, count in pairs],
            sums.get(labels, 0.0),
        )
    return family


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A new registry with a :class:`WorkersCollector`: what a scrape serves in
    multiprocess mode (e.g. ``generate_latest(multiprocess_registry())``).

    .. versionadded:: 0.1

    Args:
        path: The multiprocess directory; ``$PROMETHEUS_MULTIPROC_DIR`` by default.
    """
    registry = CollectorRegistry()
    registry.register(WorkersCollector(path))
    return registry


_exporters: set[PrometheusExporter] = set()
"""The exporters running in this process."""


def exporting(manager: ConnectionManager) -> bool:
    return any(exporter.manager is manager for exporter in _exporters)


class PrometheusExporter:
    """Copies a manager's metrics into prometheus_client's metric objects, every second.

    For several worker processes (``uvicorn --workers N``) with ``PROMETHEUS_MULTIPROC_DIR``
    set: those objects keep their values in files in that directory, which
    :func:`metrics_app` (or :class:`WorkersCollector`) sums across workers. Run one per
    worker in the app's lifespan, started before the manager and stopped after it, so
    that its last copy counts the connections the shutdown closed::

        @asynccontextmanager
        async def lifespan(app):
            async with PrometheusExporter(manager), manager:
                yield {STATE_KEY: manager}

    Counters and histograms add what changed since the last copy, so a worker that exits
    keeps its share of the totals. Gauges are summed across live workers, except
    ``budget_ws_backend_connected``, their minimum (0 when any worker has lost its
    backend). On leaving, the exporter copies once more and sets its gauges to what
    leaves the others' aggregate unchanged (0, and 1 for ``backend_connected``). A worker
    that crashes leaves its last gauge values in the directory: empty it when the server
    starts, as prometheus_client asks.

    Scraped values lag the manager by up to ``interval`` seconds. Histograms are exported
    as gauges (see :class:`WorkersCollector`).

    .. versionadded:: 0.1

    Args:
        manager: The manager to export.
        registry: Where to register the metric objects: none by default, for their values
            reach the scrape through the files. Give one to use the exporter without
            multiprocess mode (a single process does better with :func:`metrics_app`).
        worker: A ``worker`` label on every series; none by default.
        interval: Seconds between copies.
        timings: Whether to turn the timings on (see :func:`instrument`).

    Raises:
        PrometheusSetupError: Neither ``PROMETHEUS_MULTIPROC_DIR`` nor a ``registry`` was
            given, ``registry`` already has budget_ws metrics, or ``interval`` is not
            positive.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        registry: CollectorRegistry | None = None,
        *,
        worker: str | None = None,
        interval: float = 1.0,
        timings: bool = True,
    ) -> None:
        if not interval > 0:
            raise PrometheusSetupError(f"interval must be > 0 seconds, not {interval!r}")
        self._multiprocess = multiprocess_dir() is not None
        if registry is None and not self._multiprocess:
            raise PrometheusSetupError(
                "PrometheusExporter writes to prometheus_client's multiprocess files: set "
                "PROMETHEUS_MULTIPROC_DIR, or pass a registry; in a single process, "
                "metrics_app(manager) alone does better"
            )
        self.manager = manager
        self.registry = registry
        self.worker = worker
        self.interval = interval
        if timings:
            manager.metrics.enable_timings()
        self._base: tuple[str, ...] = () if worker is None else (worker,)
        self._metrics: dict[str, Counter | Gauge] = {}
        self._copied: dict[tuple[str, tuple[str, ...]], float] = {}
        self._task = BackgroundTask(self._run, "budget_ws prometheus exporter")
        self._running = False
        for spec in FAMILIES:
            labels = label_names(spec, worker)
            if spec.kind == "gauge":
                self._metrics[spec.name] = Gauge(
                    spec.name, spec.help, labels, registry=None, multiprocess_mode=spec.aggregate
                )
            elif spec.kind == "counter":
                self._metrics[spec.name] = Counter(spec.name, spec.help, labels, registry=None)
            else:
                # Summed across workers, dead ones included, as counters are.
                for suffix in HISTOGRAM_PARTS:
                    names = [*labels, "le"] if suffix == "_bucket" else labels
                    self._metrics[spec.name + suffix] = Gauge(
                        spec.name + suffix, spec.help, names, registry=None, multiprocess_mode="sum"
                    )
        if registry is not None:
            self._register(registry)

    def _register(self, registry: CollectorRegistry) -> None:
        done: list[Collector] = []
        try:
            for collector in self._metrics.values():
                register(registry, collector)
                done.append(collector)
        except PrometheusSetupError:
            for registered in done:
                registry.unregister(registered)
            raise

    async def __aenter__(self) -> PrometheusExporter:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Copy now, then every ``interval`` seconds; call it from inside the event loop.

        Raises:
            PrometheusSetupError: It runs already, or, in multiprocess mode, another
                exporter runs in this process (their values would overwrite each other).
        """
        if self._running:
            raise PrometheusSetupError("this PrometheusExporter runs already")
        if self._multiprocess and _exporters:
            raise PrometheusSetupError(
                "another PrometheusExporter runs in this process: in multiprocess mode, "
                "run one per process"
            )
        self.sync()
        _exporters.add(self)
        self._running = True
        self._task.start()

    async def aclose(self) -> None:
        """Stop copying; copy a last time, and take this worker out of the gauges."""
        if not self._running:
            return
        self._running = False
        _exporters.discard(self)
        await self._task.stop()
        self._sync_logged()
        if self._multiprocess:
            for spec in FAMILIES:
                if spec.kind == "gauge":
                    self._gauge(spec.name).set(1 if spec.aggregate == "livemin" else 0)

    def sync(self) -> None:
        """Copy the manager's metrics now (the exporter's task calls it every interval)."""
        values = read(self.manager)
        base = self._base
        for spec in FAMILIES:
            value = values.get(spec.name)
            if value is None:
                continue
            if isinstance(value, HistogramSnapshot):
                for le, count in bucket_pairs(value):
                    self._add(spec.name + "_bucket", (*base, le), count)
                self._add(spec.name + "_sum", base, value.sum)
                self._add(spec.name + "_count", base, value.count)
            elif isinstance(value, Mapping):
                for label, amount in value.items():
                    self._add(spec.name, (*base, label), amount)
            elif spec.kind == "gauge":
                self._gauge(spec.name).set(value)
            else:
                self._add(spec.name, base, value)

    def _add(self, name: str, labels: tuple[str, ...], value: float) -> None:
        """Add what a counter gained since the last copy; it never goes down."""
        key = (name, labels)
        copied = self._copied.get(key)
        if copied is None:
            self._child(name, labels)  # the series exists from the first copy on, at 0
            copied = self._copied[key] = 0.0
        if value > copied:
            self._child(name, labels).inc(value - copied)
            self._copied[key] = value

    def _child(self, name: str, labels: tuple[str, ...]) -> Counter | Gauge:
        metric = self._metrics[name]
        return metric.labels(*labels) if labels else metric

    def _gauge(self, name: str) -> Gauge:
        gauge = self._child(name, self._base)
        assert isinstance(gauge, Gauge)
        return gauge

    async def _run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            self._sync_logged()

    def _sync_logged(self) -> None:
        try:
            self.sync()
        except Exception:  # a bug: say so, and keep copying
            logger.exception(
                "budget_ws: copying metrics failed",
                extra={"budget_ws_event": "metrics_sync_failed"},
            )
