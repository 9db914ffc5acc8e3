"""Metrics: the histograms, and what a manager counts, through its public API."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from budget_ws import (
    BackendUnavailable,
    ConnectionClosed,
    ConnectionManager,
    Event,
    InvalidMetric,
    Limits,
    Listener,
    MemoryBackend,
    OutboxLimits,
    Position,
)
from budget_ws.metrics import Histogram, Metrics
from budget_ws.testing import MemoryClient, connect

pytestmark = pytest.mark.anyio

BOUNDS = (0.001, 0.01, 0.1, 1.0)


class Tick(Event, name="test_metrics_tick", register=False):
    number: int


def test_a_value_on_a_bound_counts_in_that_bucket_as_le_says() -> None:
    histogram = Histogram(BOUNDS)
    for value in (0.0, 0.001, 0.0011, 1.0, 7.0):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.bounds == BOUNDS
    assert snapshot.cumulative == (2, 3, 3, 4, 5)
    assert snapshot.count == 5
    assert snapshot.sum == pytest.approx(8.0021)


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0)])
def test_bounds_must_be_distinct_and_ascending(bounds: tuple[float, ...]) -> None:
    with pytest.raises(InvalidMetric, match="distinct and ascending"):
        Histogram(bounds)


def test_timings_are_off_until_enabled_and_enabling_twice_keeps_them() -> None:
    metrics = Metrics()
    assert not metrics.timed
    assert metrics.delivery_latency is None
    metrics.enable_timings(latency_buckets=(0.5, 1.0))
    histogram = metrics.delivery_latency
    assert histogram is not None
    assert histogram.bounds == (0.5, 1.0)
    histogram.observe(0.2)
    metrics.enable_timings()
    assert metrics.delivery_latency is histogram
    assert metrics.timed


async def read_events(client: MemoryClient, count: int) -> list[dict[str, Any]]:
    return [await client.receive_event() for _ in range(count)]


async def test_a_timed_manager_counts_one_latency_per_live_event_it_writes() -> None:
    async with ConnectionManager(MemoryBackend()) as manager:
        manager.metrics.enable_timings()
        async with connect(manager) as first, connect(manager) as second:
            await first.subscribe("t")
            await second.subscribe("t")
            await manager.send(next(iter(manager.connections.values())), Tick(number=-1))
            for number in range(5):
                await manager.publish(Tick(number=number), topic="t")
            await read_events(first, 5)
            await read_events(second, 5)
            await anyio.wait_all_tasks_blocked()
            metrics = manager.metrics
            assert metrics.delivery_latency is not None
            assert metrics.publish_latency is not None
            assert metrics.outbox_fill is not None
            latency = metrics.delivery_latency.snapshot()
            # Live frames only: the welcome, the subscribed answers are not timed; the
            # event sent with send() went through the outbox as a live frame too.
            assert latency.count == 11
            assert 0 <= latency.sum < 11 * 5.0
            assert metrics.publish_latency.snapshot().count == 5
            # The five events were published while no writer ran: each client got them
            # in one message, a backlog, which the fill counts with what waited then.
            fill = metrics.outbox_fill.snapshot()
            assert fill.count == 2
            assert fill.sum > 10 * len('{"event":"test_metrics_tick","data":{"number":0}}')
            assert metrics.published == 5
            # One by one, each event leaves alone: timed, but no backlog to count.
            for number in range(5, 8):
                await manager.publish(Tick(number=number), topic="t")
                await read_events(first, 1)
                await read_events(second, 1)
            await anyio.wait_all_tasks_blocked()
            assert metrics.delivery_latency.snapshot().count == 17
            assert metrics.outbox_fill.snapshot().count == 2


async def test_an_untimed_manager_measures_nothing() -> None:
    async with ConnectionManager(MemoryBackend()) as manager:
        async with connect(manager) as client:
            await client.subscribe("t")
            await manager.publish(Tick(number=1), topic="t")
            await client.receive_event()
        assert manager.metrics.delivery_latency is None
        assert manager.metrics.published == 1
        assert manager.metrics.delivered >= 3  # welcome, subscribed, the event


async def test_closes_are_counted_by_code_and_opens_by_connection() -> None:
    limits = OutboxLimits(max_messages=2)
    async with ConnectionManager(MemoryBackend(), outbox=limits) as manager:
        async with connect(manager) as leaving:
            await leaving.subscribe("t")
        async with connect(manager, send_buffer=0) as stalled:
            await stalled.subscribe("t")
            (connection,) = manager.connections.values()
            for number in range(5):
                await manager.publish(Tick(number=number), topic="t")
            with anyio.fail_after(5):
                await connection.wait_closed()
        metrics = manager.metrics
        assert metrics.connections_opened == 2
        assert metrics.closes[1000] == 1  # the client left
        assert metrics.closes[4000] == 1
        assert metrics.slow_consumers == 1
        assert metrics.heartbeat_timeouts == 0


async def test_rejected_frames_are_counted_by_their_error_code() -> None:
    def authorize(principal: Any, topic: str, action: str) -> bool:
        return topic != "secret"

    async with ConnectionManager(MemoryBackend(), authorize=authorize) as manager:
        async with connect(manager) as client:
            await client.receive()  # welcome
            await client.send_raw("{not json")
            await client.send_raw('{"op":"subscribe","topic":"secret","id":1}')
            await client.send_raw('{"op":"subscribe","topic":"no spaces","id":2}')
            await client.send_raw('{"op":"event","event":"nobody_handles_it","data":{}}')
            codes = [(await client.receive())["code"] for _ in range(4)]
        assert codes == ["bad_frame", "forbidden", "invalid_topic", "unknown_event"]
        assert dict(manager.metrics.frames_rejected) == dict.fromkeys(codes, 1)


async def test_a_full_manager_counts_its_refusals() -> None:
    async with ConnectionManager(MemoryBackend(), max_connections=1) as manager:
        async with connect(manager) as first:
            await first.receive()
            async with connect(manager) as second:
                with pytest.raises(ConnectionClosed):
                    await second.receive()
        assert manager.metrics.handshake_refusals == {"max_connections": 1}
        assert manager.metrics.closes[1013] == 1
        assert manager.metrics.connections_opened == 1


class FailingBackend(MemoryBackend):
    async def publish(self, topic: str, payload: bytes) -> Position:
        raise BackendUnavailable("the test's backend is down")


async def test_publish_failures_are_counted_and_raised() -> None:
    async with ConnectionManager(FailingBackend()) as manager:
        manager.metrics.enable_timings()
        with pytest.raises(BackendUnavailable):
            await manager.publish(Tick(number=1), topic="t")
        assert manager.metrics.publish_failures == 1
        assert manager.metrics.published == 0
        assert manager.metrics.publish_latency is not None
        assert manager.metrics.publish_latency.snapshot().count == 0


class LosingBackend(MemoryBackend):
    """Keeps its listeners, to tell them events were lost as a backend after an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Listener] = []

    async def subscribe(self, topic: str, listener: Listener) -> None:
        self.listeners.append(listener)
        await super().subscribe(topic, listener)


async def test_resyncs_told_to_subscribers_are_counted() -> None:
    backend = LosingBackend()
    async with ConnectionManager(backend) as manager:
        async with connect(manager) as client:
            await client.subscribe("t")
            backend.listeners[0].resync("t", Position(7, "lost"))
            with anyio.fail_after(5):
                while (await client.receive())["op"] != "resync":
                    pass
        assert manager.metrics.resyncs == 1


async def test_limits_that_close_count_as_closes_not_rejections() -> None:
    async with ConnectionManager(MemoryBackend(), limits=Limits(max_frame_bytes=64)) as manager:
        async with connect(manager) as client:
            await client.receive()
            await client.send_raw("x" * 65)
            with pytest.raises(ConnectionClosed):
                await client.receive()
        assert manager.metrics.closes[1009] == 1
        assert not manager.metrics.frames_rejected


def test_quantiles_interpolate_inside_buckets_as_promql_does() -> None:
    histogram = Histogram(BOUNDS)
    assert histogram.snapshot().quantile(0.5) is None
    for value in [0.0005] * 50 + [0.005] * 40 + [0.05] * 9 + [5.0]:
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.quantile(0.5) == pytest.approx(0.001)  # the top of the first bucket
    assert snapshot.quantile(0.25) == pytest.approx(0.0005)  # halfway into it
    assert snapshot.quantile(0.9) == pytest.approx(0.01)
    assert snapshot.quantile(0.95) == pytest.approx(0.01 + 0.09 * 5 / 9)
    assert snapshot.quantile(1.0) == 1.0  # in +Inf: the last bound
    with pytest.raises(InvalidMetric, match="between 0 and 1"):
        snapshot.quantile(1.5)


def test_a_snapshot_since_an_earlier_one_holds_what_came_between() -> None:
    histogram = Histogram(BOUNDS)
    histogram.observe(0.5)
    earlier = histogram.snapshot()
    histogram.observe(0.005)
    histogram.observe(2.0)
    window = histogram.snapshot().since(earlier)
    assert window.cumulative == (0, 1, 1, 1, 2)
    assert window.sum == pytest.approx(2.005)
    with pytest.raises(InvalidMetric, match="different bounds"):
        window.since(Histogram((1.0,)).snapshot())
