"""Prometheus metrics of a :class:`~budget_ws.ConnectionManager`.

Needs ``prometheus-client`` (``pip install 'budget-ws[prometheus]'``); the core never
imports it. Every metric and what it means is in ``docs/reference/metrics.md``.

One process: ``app.add_route("/metrics", metrics_app(manager))``. A collector reads the
manager's counters when Prometheus scrapes; nothing runs per delivery but the clock read
the timings cost.

Several worker processes (``uvicorn --workers N`` with ``PROMETHEUS_MULTIPROC_DIR`` set):
a collector would report only the worker that happens to answer the scrape. Each worker
runs a :class:`PrometheusExporter` in its lifespan, which copies its manager's counters,
once a second, into prometheus_client's own metric objects, whose values live in files in
that directory; :func:`metrics_app` then serves every worker's values, summed.
"""

try:
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budget_ws.prometheus needs prometheus-client: pip install 'budget-ws[prometheus]'"
    ) from exc

from ..errors import PrometheusSetupError
from ._collector import ManagerCollector, instrument, metrics_app
from ._workers import PrometheusExporter, WorkersCollector, multiprocess_registry

__all__ = [
    "ManagerCollector",
    "PrometheusExporter",
    "PrometheusSetupError",
    "WorkersCollector",
    "instrument",
    "metrics_app",
    "multiprocess_registry",
]
