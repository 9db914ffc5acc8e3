"""The metric families budget_ws exports, and a manager's values for them.

Both the scrape-time collector (``_collector``) and the multiprocess exporter
(``_workers``) export these families, with the values read here from the manager.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..errors import PrometheusSetupError
from ..manager import ConnectionManager
from ..metrics import HistogramSnapshot

le_label = cast(Callable[[float], str], floatToGoString)
"""An ``le`` label value, spelled as prometheus_client spells it (and merges by)."""


Kind = Literal["gauge", "counter", "histogram"]
Aggregate = Literal["livesum", "livemin"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as both the collector and the exporter export it."""

    name: str
    """Its name; a counter's without ``_total`` (prometheus_client appends it)."""
    kind: Kind
    help: str
    label: str | None = None
    """Its one label besides ``worker``, if any: a bounded set of values."""
    aggregate: Aggregate = "livesum"
    """How workers' values of a gauge combine in multiprocess mode."""


FAMILIES: tuple[Family, ...] = (
    Family("budget_ws_connections", "gauge", "Connections being served now."),
    Family("budget_ws_topics", "gauge", "Topics with at least one local subscriber."),
    Family(
        "budget_ws_subscriptions",
        "gauge",
        "Subscriptions of the connections being served (one per connection and topic).",
    ),
    Family("budget_ws_outbox_queued_frames", "gauge", "Frames waiting in all outboxes."),
    Family("budget_ws_outbox_queued_bytes", "gauge", "Size of the frames waiting in all outboxes."),
    Family(
        "budget_ws_backend_connected",
        "gauge",
        "1 while the backend is connected (Redis pub/sub up), else 0.",
        aggregate="livemin",
    ),
    Family("budget_ws_connections_opened", "counter", "Connections the manager started serving."),
    Family(
        "budget_ws_connections_closed", "counter", "Connections that ended, by close code.", "code"
    ),
    Family(
        "budget_ws_handshake_refusals",
        "counter",
        "Clients refused before they were served, by the check that refused them.",
        "reason",
    ),
    Family(
        "budget_ws_frames_rejected",
        "counter",
        "Client frames answered with an error frame, by error code.",
        "code",
    ),
    Family("budget_ws_events_published", "counter", "Events published through this manager."),
    Family(
        "budget_ws_publish_failures",
        "counter",
        "publish() calls that failed because the backend did (BackendError).",
    ),
    Family(
        "budget_ws_frames_sent",
        "counter",
        "Frames written to clients: events, replays and control frames.",
    ),
    Family("budget_ws_frames_dropped", "counter", "Frames discarded by the drop-oldest policy."),
    Family(
        "budget_ws_slow_consumer_disconnects",
        "counter",
        "Connections closed with 4000 because their outbox overflowed.",
    ),
    Family(
        "budget_ws_heartbeat_timeouts",
        "counter",
        "Connections closed with 4001 because they did not answer a ping in time.",
    ),
    Family(
        "budget_ws_resyncs",
        "counter",
        "Times a topic's local subscribers were told to resync (events were lost).",
    ),
    Family(
        "budget_ws_backend_reconnects",
        "counter",
        "Times the backend's pub/sub connection broke or failed to connect.",
    ),
    Family(
        "budget_ws_backend_gaps_filled",
        "counter",
        "Times the backend filled in a topic's missed events from its history.",
    ),
    Family(
        "budget_ws_backend_events_recovered",
        "counter",
        "Events the backend filled those gaps with.",
    ),
    Family(
        "budget_ws_delivery_latency_seconds",
        "histogram",
        "Seconds from an event's publish() call, on any worker, to its write to the client.",
    ),
    Family(
        "budget_ws_publish_latency_seconds",
        "histogram",
        "Seconds publish() waited for the backend.",
    ),
    Family(
        "budget_ws_outbox_fill_bytes",
        "histogram",
        "Bytes queued in a connection's outbox when its writer takes several event frames at once.",
    ),
)

HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")
"""What a histogram is made of, as gauges, in multiprocess mode."""

Reading = Mapping[str, float | Mapping[str, float] | HistogramSnapshot]


def read(manager: ConnectionManager) -> Reading:
    """Every family's value now, by name: a number, numbers by label, or a histogram."""
    metrics = manager.metrics
    stats = manager.stats()
    status = stats.backend_status
    values: dict[str, float | Mapping[str, float] | HistogramSnapshot] = {
        "budget_ws_connections": stats.connections,
        "budget_ws_topics": stats.topics,
        "budget_ws_subscriptions": stats.subscriptions,
        "budget_ws_outbox_queued_frames": stats.queued_frames,
        "budget_ws_outbox_queued_bytes": stats.queued_bytes,
        "budget_ws_backend_connected": 1.0 if _connected(status) else 0.0,
        "budget_ws_connections_opened": metrics.connections_opened,
        # dict() copies a Counter in one step, safe from a scrape in another thread.
        "budget_ws_connections_closed": {str(k): v for k, v in dict(metrics.closes).items()},
        "budget_ws_handshake_refusals": dict(metrics.handshake_refusals),
        "budget_ws_frames_rejected": dict(metrics.frames_rejected),
        "budget_ws_events_published": metrics.published,
        "budget_ws_publish_failures": metrics.publish_failures,
        "budget_ws_frames_sent": metrics.delivered,
        "budget_ws_frames_dropped": stats.dropped,
        "budget_ws_slow_consumer_disconnects": metrics.slow_consumers,
        "budget_ws_heartbeat_timeouts": metrics.heartbeat_timeouts,
        "budget_ws_resyncs": metrics.resyncs,
        "budget_ws_backend_reconnects": _number(status, "reconnects"),
        "budget_ws_backend_gaps_filled": _number(status, "gaps_filled"),
        "budget_ws_backend_events_recovered": _number(status, "events_recovered"),
    }
    for name, histogram in (
        ("budget_ws_delivery_latency_seconds", metrics.delivery_latency),
        ("budget_ws_publish_latency_seconds", metrics.publish_latency),
        ("budget_ws_outbox_fill_bytes", metrics.outbox_fill),
    ):
        if histogram is not None:
            values[name] = histogram.snapshot()
    return values


def _connected(status: Mapping[str, object]) -> bool:
    # As check_health() decides readiness: a backend that reports no status is connected,
    # one whose status() raised (the manager reports {"error": ...}) is not.
    if "connected" in status:
        return bool(status["connected"])
    return status.keys() != {"error"}


def _number(status: Mapping[str, object], key: str) -> float:
    """A counter the backend reports, or 0 for a backend that does not (memory)."""
    value = status.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def bucket_pairs(snapshot: HistogramSnapshot) -> list[tuple[str, float]]:
    """``(le, cumulative count)`` pairs, ``+Inf`` last, ``le`` spelled as prometheus_client does."""
    pairs = [
        (le_label(bound), float(count))
        for bound, count in zip(snapshot.bounds, snapshot.cumulative, strict=False)
    ]
    pairs.append(("+Inf", float(snapshot.count)))
    return pairs


def label_names(family: Family, worker: str | None) -> list[str]:
    names = [] if worker is None else ["worker"]
    if family.label is not None:
        names.append(family.label)
    return names


def register(registry: CollectorRegistry, collector: Collector) -> None:
    try:
        registry.register(collector)
    except ValueError as exc:  # prometheus_client's DuplicateTimeseries
        raise PrometheusSetupError(
            f"this registry already has budget_ws metrics ({exc}): instrument a manager "
            "once per registry, and give each manager of a process a registry of its own"
        ) from exc
