"""budget_ws.prometheus over a real manager and in-memory clients, on asyncio and trio.

Each test has a registry of its own and reads it as Prometheus would: the text exposition,
parsed by prometheus_client's parser.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from budget_ws import (
    BackendUnavailable,
    ConnectionClosed,
    ConnectionManager,
    Event,
    Heartbeat,
    MemoryBackend,
    OutboxLimits,
    Position,
    SlowConsumerPolicy,
    Stats,
)
from budget_ws.prometheus import (
    ManagerCollector,
    PrometheusExporter,
    PrometheusSetupError,
    instrument,
    metrics_app,
)
from budget_ws.testing import MemoryClient, connect

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reference" / "metrics.md"


class Tick(Event, name="test_prometheus_tick", register=False):
    number: int


class Scrape:
    """One scrape in the text format, parsed: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Scrape:
        return cls(generate_latest(registry).decode())

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; a missing sample fails the test, naming what there is."""
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no {name}{labels}; have {self.named(name)}"
        return self.samples[key]

    def named(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample of that name, by its labels."""
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's ``(le, cumulative count)`` pairs, in order of ``le``."""
        pairs = [
            (float(dict(key)["le"]), value)
            for key, value in self.named(f"{name}_bucket").items()
            if {k: v for k, v in key if k != "le"} == labels
        ]
        return sorted(pairs)


async def settled() -> None:
    """Let every task run until all wait: writers have counted what clients received."""
    await anyio.wait_all_tasks_blocked()


async def frames(client: MemoryClient, count: int) -> list[dict[str, Any]]:
    return [await client.receive() for _ in range(count)]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_values_follow_publishes_and_deliveries(registry: CollectorRegistry) -> None:
    manager = ConnectionManager(MemoryBackend(), heartbeat=Heartbeat(interval=60, timeout=60))
    instrument(manager, registry)
    async with manager:
        async with connect(manager) as first, connect(manager) as second:
            await first.subscribe("t")
            await second.subscribe("t")
            await second.subscribe("u")
            for number in range(5):
                await manager.publish(Tick(number=number), topic="t")
            for client in (first, second):
                assert [(await client.receive_event())["data"]["number"] for _ in range(5)] == [
                    0,
                    1,
                    2,
                    3,
                    4,
                ]
            await settled()
            live = Scrape.of(registry)
        await settled()
        after = Scrape.of(registry)

    assert live("budget_ws_connections") == 2
    assert live("budget_ws_topics") == 2
    assert live("budget_ws_subscriptions") == 3  # first: t; second: t and u
    assert live("budget_ws_connections_opened_total") == 2
    assert live("budget_ws_events_published_total") == 5
    # welcome + subscribed + 5 events, and one more subscribed for `second`
    assert live("budget_ws_frames_sent_total") == 7 + 8
    assert live("budget_ws_outbox_queued_frames") == 0
    assert live("budget_ws_outbox_queued_bytes") == 0
    assert live("budget_ws_backend_connected") == 1
    # One observation per live event frame written: 5 events x 2 clients.
    assert live("budget_ws_delivery_latency_seconds_count") == 10
    assert live("budget_ws_delivery_latency_seconds_bucket", le="+Inf") == 10
    assert 0 <= live("budget_ws_delivery_latency_seconds_sum") < 10
    assert live("budget_ws_publish_latency_seconds_count") == 5
    fill = live.buckets("budget_ws_outbox_fill_bytes")
    assert fill[-1] == (float("inf"), live("budget_ws_outbox_fill_bytes_count"))
    assert [count for _, count in fill] == sorted(count for _, count in fill)  # cumulative
    assert live.named("budget_ws_connections_closed_total") == {}
    assert live.types["budget_ws_delivery_latency_seconds"] == "histogram"
    assert live.types["budget_ws_frames_sent"] == "counter"

    assert after("budget_ws_connections") == 0
    assert after("budget_ws_topics") == 0
    assert after("budget_ws_subscriptions") == 0
    assert after("budget_ws_connections_closed_total", code="1000") == 2


async def stall(manager: ConnectionManager, client: MemoryClient) -> None:
    """Publish until the manager closes ``client``, which reads nothing, as a slow consumer."""
    (connection,) = manager.connections.values()
    for number in range(10):
        await manager.publish(Tick(number=number), topic="t")
    with anyio.fail_after(5):
        await connection.wait_closed()


async def test_closes_are_counted_by_code_and_slow_consumers_apart(
    registry: CollectorRegistry,
) -> None:
    manager = ConnectionManager(MemoryBackend(), outbox=OutboxLimits(max_messages=2))
    instrument(manager, registry)
    async with manager:
        async with connect(manager) as leaving:
            await leaving.subscribe("t")
        async with connect(manager, send_buffer=0) as stalled:
            await stalled.subscribe("t")
            await stall(manager, stalled)
    scrape = Scrape.of(registry)
    assert scrape.named("budget_ws_connections_closed_total") == {
        frozenset({("code", "1000")}): 1,
        frozenset({("code", "4000")}): 1,
    }
    assert scrape("budget_ws_slow_consumer_disconnects_total") == 1
    assert scrape("budget_ws_heartbeat_timeouts_total") == 0
    assert scrape("budget_ws_connections_opened_total") == 2
    assert scrape("budget_ws_frames_dropped_total") == 0


async def test_dropped_frames_count_while_the_connection_lives(
    registry: CollectorRegistry,
) -> None:
    limits = OutboxLimits(max_messages=2, policy=SlowConsumerPolicy.DROP_OLDEST)
    manager = ConnectionManager(MemoryBackend(), outbox=limits)
    instrument(manager, registry)
    async with manager, connect(manager, send_buffer=0) as stalled:
        await stalled.subscribe("t")
        for number in range(10):
            await manager.publish(Tick(number=number), topic="t")
        await settled()
        scrape = Scrape.of(registry)
        dropped = scrape("budget_ws_frames_dropped_total")
        # The writer holds one message, the outbox two frames: the rest were dropped.
        assert 5 <= dropped < 10
        assert scrape("budget_ws_outbox_queued_frames") == 2
        assert scrape("budget_ws_outbox_queued_bytes") > 0
        assert scrape("budget_ws_slow_consumer_disconnects_total") == 0
    assert Scrape.of(registry)("budget_ws_frames_dropped_total") == dropped


async def test_heartbeat_timeouts_are_closes_with_4001(registry: CollectorRegistry) -> None:
    manager = ConnectionManager(MemoryBackend(), heartbeat=Heartbeat(interval=0.05, timeout=0.05))
    instrument(manager, registry)
    async with manager, connect(manager) as silent:
        with anyio.fail_after(5), pytest.raises(ConnectionClosed):
            while True:
                await silent.receive()
    scrape = Scrape.of(registry)
    assert scrape("budget_ws_heartbeat_timeouts_total") == 1
    assert scrape("budget_ws_connections_closed_total", code="4001") == 1


async def test_refusals_and_rejected_frames_are_counted_by_their_label(
    registry: CollectorRegistry,
) -> None:
    def authorize(principal: Any, topic: str, action: str) -> bool:
        return topic != "secret"

    manager = ConnectionManager(MemoryBackend(), authorize=authorize, max_connections=1)
    instrument(manager, registry)
    async with manager:
        async with connect(manager) as client:
            await client.receive()  # welcome
            async with connect(manager) as refused:
                with pytest.raises(ConnectionClosed):
                    await refused.receive()
            await client.send_raw("{not json")
            await client.send_raw('{"op":"subscribe","topic":"secret","id":1}')
            await client.send_raw('{"op":"subscribe","topic":"no spaces","id":2}')
            await client.send_raw('{"op":"subscribe","topic":"also no spaces","id":3}')
            codes = [frame["code"] for frame in await frames(client, 4)]
            assert codes == ["bad_frame", "forbidden", "invalid_topic", "invalid_topic"]
            scrape = Scrape.of(registry)
    assert scrape.named("budget_ws_handshake_refusals_total") == {
        frozenset({("reason", "max_connections")}): 1
    }
    assert scrape.named("budget_ws_frames_rejected_total") == {
        frozenset({("code", "bad_frame")}): 1,
        frozenset({("code", "forbidden")}): 1,
        frozenset({("code", "invalid_topic")}): 2,
    }
    assert scrape("budget_ws_connections_closed_total", code="1013") == 1
    assert scrape("budget_ws_connections_opened_total") == 1


class FailingBackend(MemoryBackend):
    async def publish(self, topic: str, payload: bytes) -> Position:
        raise BackendUnavailable("the test's backend is down")


async def test_failed_publishes_are_counted_apart(registry: CollectorRegistry) -> None:
    manager = ConnectionManager(FailingBackend())
    instrument(manager, registry)
    async with manager:
        for _ in range(2):
            with pytest.raises(BackendUnavailable):
                await manager.publish(Tick(number=1), topic="t")
    scrape = Scrape.of(registry)
    assert scrape("budget_ws_publish_failures_total") == 2
    assert scrape("budget_ws_events_published_total") == 0
    assert scrape("budget_ws_publish_latency_seconds_count") == 0


class StatusBackend(MemoryBackend):
    """A memory backend that reports whatever status the test sets."""

    def __init__(self, status: Mapping[str, Any] | Exception) -> None:
        super().__init__()
        self.reported = status

    def status(self) -> dict[str, Any]:
        if isinstance(self.reported, Exception):
            raise self.reported
        return dict(self.reported)


@pytest.mark.parametrize(
    ("status", "connected", "reconnects", "gaps", "recovered"),
    [
        ({"connected": True, "reconnects": 3, "gaps_filled": 2, "events_recovered": 7}, 1, 3, 2, 7),
        ({"connected": False, "reconnects": 4}, 0, 4, 0, 0),
        ({"topics": 2}, 1, 0, 0, 0),  # says nothing of a connection: connected, as health
        ({"reconnects": "many", "gaps_filled": True}, 1, 0, 0, 0),  # not numbers: ignored
        (RuntimeError("broken"), 0, 0, 0, 0),
    ],
    ids=["redis-like", "disconnected", "no-connected-key", "not-numbers", "status-raises"],
)
def test_the_backend_status_becomes_a_gauge_and_counters(
    registry: CollectorRegistry,
    status: Mapping[str, Any] | Exception,
    connected: int,
    reconnects: int,
    gaps: int,
    recovered: int,
) -> None:
    instrument(ConnectionManager(StatusBackend(status)), registry)
    scrape = Scrape.of(registry)
    assert scrape("budget_ws_backend_connected") == connected
    assert scrape("budget_ws_backend_reconnects_total") == reconnects
    assert scrape("budget_ws_backend_gaps_filled_total") == gaps
    assert scrape("budget_ws_backend_events_recovered_total") == recovered


def test_counters_never_go_down(registry: CollectorRegistry) -> None:
    backend = StatusBackend({"connected": True, "reconnects": 5})
    instrument(ConnectionManager(backend), registry)
    assert Scrape.of(registry)("budget_ws_backend_reconnects_total") == 5
    backend.reported = {"connected": True, "reconnects": 3}
    assert Scrape.of(registry)("budget_ws_backend_reconnects_total") == 5
    backend.reported = {"connected": True, "reconnects": 6}
    assert Scrape.of(registry)("budget_ws_backend_reconnects_total") == 6


def test_a_registry_takes_one_manager_once(registry: CollectorRegistry) -> None:
    manager = ConnectionManager()
    collector = instrument(manager, registry)
    with pytest.raises(PrometheusSetupError, match="already has budget_ws metrics"):
        instrument(manager, registry)
    with pytest.raises(PrometheusSetupError, match="a registry of its own"):
        instrument(ConnectionManager(), registry, worker="other")
    with pytest.raises(PrometheusSetupError):
        metrics_app(manager, registry)
    # Never a duplicated series: the registry still has the one collector's.
    scrape = Scrape.of(registry)
    assert scrape("budget_ws_connections_opened_total") == 0
    assert len(scrape.named("budget_ws_connections")) == 1
    instrument(manager, CollectorRegistry())  # another registry is another matter
    registry.unregister(collector)
    instrument(manager, registry)


async def test_the_worker_label_is_on_every_series_and_no_other_unbounded_one(
    registry: CollectorRegistry,
) -> None:
    manager = ConnectionManager(MemoryBackend(), outbox=OutboxLimits(max_messages=2))
    instrument(manager, registry, worker="web-1")
    async with manager:
        async with connect(manager) as client:
            await client.subscribe("budget:1")
            await client.subscribe("budget:2")
            await client.send_raw("{not json")
            await manager.publish(Tick(number=1), topic="budget:1")
            await client.receive_event()
        async with connect(manager, send_buffer=0) as stalled:
            await stalled.subscribe("t")
            await stall(manager, stalled)
        scrape = Scrape.of(registry)
    assert len(scrape.samples) > 60
    for (name, labels), _ in scrape.samples.items():
        keys = dict(labels)
        assert keys.pop("worker") == "web-1", name
        assert set(keys) <= {"code", "reason", "le"}, name
    assert not re.search(r"budget:\d|principal|connection_id", scrape.text)
    assert scrape("budget_ws_connections_closed_total", worker="web-1", code="4000") == 1
    assert scrape("budget_ws_frames_rejected_total", worker="web-1", code="bad_frame") == 1
    assert scrape("budget_ws_delivery_latency_seconds_count", worker="web-1") == 1


def test_instrumenting_turns_the_timings_on(registry: CollectorRegistry) -> None:
    manager = ConnectionManager()
    assert not manager.metrics.timed
    instrument(manager, registry)
    assert manager.metrics.timed
    assert Scrape.of(registry)("budget_ws_delivery_latency_seconds_count") == 0


def test_timings_can_be_left_off(registry: CollectorRegistry) -> None:
    manager = ConnectionManager()
    instrument(manager, registry, timings=False)
    copied = CollectorRegistry()
    PrometheusExporter(manager, copied, timings=False).sync()
    assert not manager.metrics.timed
    assert Scrape.of(registry).named("budget_ws_delivery_latency_seconds_count") == {}
    # The exporter's gauges exist from the start, at 0.
    assert Scrape.of(copied)("budget_ws_delivery_latency_seconds_count") == 0
    assert Scrape.of(copied)("budget_ws_connections_opened_total") == 0


def test_an_untimed_manager_exports_empty_histograms(registry: CollectorRegistry) -> None:
    registry.register(ManagerCollector(ConnectionManager()))
    scrape = Scrape.of(registry)
    assert scrape.types["budget_ws_delivery_latency_seconds"] == "histogram"
    assert scrape.named("budget_ws_delivery_latency_seconds_count") == {}
    assert scrape("budget_ws_connections") == 0


def test_the_reference_describes_every_metric(registry: CollectorRegistry) -> None:
    instrument(ConnectionManager(), registry)
    reference = DOCS.read_text(encoding="utf-8")
    scrape = Scrape.of(registry)
    for name, kind in scrape.types.items():
        exported = f"{name}_total" if kind == "counter" else name
        assert f"`{exported}`" in reference, exported
        assert re.search(rf"\| `{exported}` \| {kind} \|", reference), f"{exported} is a {kind}"


async def test_the_exporter_copies_what_the_collector_reads() -> None:
    collected, copied = CollectorRegistry(), CollectorRegistry()
    manager = ConnectionManager(
        MemoryBackend(), max_connections=2, heartbeat=Heartbeat(interval=60, timeout=60)
    )
    instrument(manager, collected, worker="w")
    exporter = PrometheusExporter(manager, copied, worker="w")
    async with manager, connect(manager) as client:
        await client.subscribe("t")
        async with connect(manager) as other:
            await other.receive()
            async with connect(manager) as refused:
                with pytest.raises(ConnectionClosed):
                    await refused.receive()
        for rounds in range(2):  # the second copy adds only what changed since the first
            for number in range(3):
                await manager.publish(Tick(number=number), topic="t")
                await client.receive_event()
            await client.send_raw("{not json")
            await client.receive()
            await settled()
            exporter.sync()
            expected, got = Scrape.of(collected), Scrape.of(copied)
            for (name, labels), value in expected.samples.items():
                # Histograms are copied as three gauges of the same names (see the docs).
                assert got.samples.get((name, labels)) == pytest.approx(value), (name, rounds)
    assert got("budget_ws_events_published_total", worker="w") == 6
    assert got.types["budget_ws_delivery_latency_seconds_bucket"] == "gauge"
    assert got("budget_ws_handshake_refusals_total", worker="w", reason="max_connections") == 1


async def test_the_exporter_copies_every_interval_until_closed() -> None:
    copied = CollectorRegistry()
    async with ConnectionManager(MemoryBackend()) as manager:
        async with PrometheusExporter(manager, copied, interval=0.01) as exporter:
            with pytest.raises(PrometheusSetupError, match="runs already"):
                exporter.start()
            await manager.publish(Tick(number=1), topic="t")
            with anyio.fail_after(5):
                while Scrape.of(copied)("budget_ws_events_published_total") != 1:  # noqa: ASYNC110 - the exporter's task copies
                    await anyio.sleep(0.01)
            await manager.publish(Tick(number=2), topic="t")
        # Leaving copies a last time; in one process the gauges keep their values.
        assert Scrape.of(copied)("budget_ws_events_published_total") == 2
        assert Scrape.of(copied)("budget_ws_backend_connected") == 1
        await exporter.aclose()  # closing twice does nothing
        await manager.publish(Tick(number=3), topic="t")
        await anyio.sleep(0.05)
        assert Scrape.of(copied)("budget_ws_events_published_total") == 2


class FlakyManager(ConnectionManager):
    """A manager whose stats() fails while ``broken`` is set, as a bug would."""

    broken = False

    def stats(self) -> Stats:
        if self.broken:
            raise RuntimeError("the test broke stats()")
        return super().stats()


async def test_a_failing_copy_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = StatusBackend({"connected": True, "reconnects": 1})
    copied = CollectorRegistry()
    manager = FlakyManager(backend)
    async with manager, PrometheusExporter(manager, copied, interval=0.01):
        backend.reported = {"connected": True, "reconnects": 2}
        manager.broken = True
        with anyio.fail_after(5):
            while not caplog.records:  # noqa: ASYNC110 - the exporter's own task logs
                await anyio.sleep(0.01)
        manager.broken = False
        with anyio.fail_after(5):
            while Scrape.of(copied)("budget_ws_backend_reconnects_total") != 2:  # noqa: ASYNC110 - the exporter's task copies
                await anyio.sleep(0.01)
    record = caplog.records[0]
    assert record.levelno == logging.ERROR
    assert record.name == "budget_ws.prometheus"
    assert record.exc_info is not None
    assert record.budget_ws_event == "metrics_sync_failed"  # type: ignore[attr-defined]


def test_the_exporter_refuses_setups_that_would_export_wrong_values(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    manager = ConnectionManager()
    with pytest.raises(PrometheusSetupError, match="set PROMETHEUS_MULTIPROC_DIR"):
        PrometheusExporter(manager)
    with pytest.raises(PrometheusSetupError, match="interval must be > 0"):
        PrometheusExporter(manager, registry, interval=0)
    instrument(manager, registry)
    with pytest.raises(PrometheusSetupError, match="already has budget_ws metrics"):
        PrometheusExporter(manager, registry)
    # A clash half-way: what it registered before is taken back out.
    own = CollectorRegistry()
    Counter("budget_ws_resyncs", "The app's own, by chance.", registry=own)
    with pytest.raises(PrometheusSetupError, match="budget_ws_resyncs"):
        PrometheusExporter(manager, own)
    assert "budget_ws_resyncs" in Scrape.of(own).types
    assert "budget_ws_connections" not in Scrape.of(own).types


async def asgi_get(app: Any, path: str = "/") -> tuple[int, str]:
    """Call an ASGI app with one GET request; its status and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
    await app(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent)
    return sent[0]["status"], body.decode()


async def test_metrics_app_serves_its_registry_and_ignores_other_scopes(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    manager = ConnectionManager()
    app = metrics_app(manager, registry, worker="w")
    assert manager.metrics.timed
    status, body = await asgi_get(app)
    assert status == 200
    assert Scrape(body)("budget_ws_connections", worker="w") == 0

    async def nothing() -> dict[str, Any]:
        raise AssertionError("a lifespan scope is not the metrics app's")

    async def send(message: Any) -> None:
        raise AssertionError("a lifespan scope is not the metrics app's")

    await app({"type": "lifespan"}, nothing, send)


async def test_in_multiprocess_mode_the_app_serves_the_directory_and_wants_an_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Metric values are in memory all the same: prometheus_client chose at import time.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    manager = ConnectionManager(MemoryBackend())
    for options in ({"worker": "w"}, {"timings": False}):
        with pytest.raises(PrometheusSetupError, match=r"pass worker=\.\.\. and timings="):
            metrics_app(manager, **options)
    app = metrics_app(manager)
    for _ in range(2):
        status, body = await asgi_get(app)
        assert status == 200
        assert "budget_ws" not in body  # nothing in the directory yet
    [warning] = caplog.records  # once, not per scrape
    assert warning.levelno == logging.WARNING
    assert "no PrometheusExporter runs for this manager" in warning.getMessage()
    assert warning.budget_ws_event == "metrics_exporter_missing"  # type: ignore[attr-defined]

    caplog.clear()
    app = metrics_app(manager)
    async with manager, PrometheusExporter(manager):
        await asgi_get(app)
    assert caplog.records == []


async def test_in_multiprocess_mode_an_exporter_leaves_the_gauges_neutral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    copied = CollectorRegistry()
    manager = ConnectionManager(StatusBackend({"connected": False, "reconnects": 1}))
    async with manager, PrometheusExporter(manager, copied) as exporter:
        with pytest.raises(PrometheusSetupError, match="run one per process"):
            PrometheusExporter(manager, CollectorRegistry()).start()
        async with connect(manager) as client:
            await client.subscribe("t")
            exporter.sync()
            running = Scrape.of(copied)
    assert running("budget_ws_connections") == 1
    assert running("budget_ws_backend_connected") == 0
    left = Scrape.of(copied)
    # What a worker that left adds to the sum (0) and to the minimum (1): nothing.
    assert left("budget_ws_connections") == 0
    assert left("budget_ws_topics") == 0
    assert left("budget_ws_backend_connected") == 1
    assert left("budget_ws_connections_opened_total") == 1
    assert left("budget_ws_backend_reconnects_total") == 1
