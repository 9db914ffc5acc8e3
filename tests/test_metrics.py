"""Metrics: the histograms, and what a manager counts, through its public API."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import anyio
import pytest

from budget_ws import (
    BackendUnavailable,
    ConnectionClosed,
    ConnectionManager,
    Event,
    Heartbeat,
    InvalidMetric,
    Limits,
    Listener,
    MemoryBackend,
    OutboxLimits,
    Position,
)
from budget_ws.backends.redis import RedisBackend
from budget_ws.metrics import PENDING_LIMIT, Histogram, HistogramSnapshot, Metrics
from budget_ws.propagation import attach_context, publish_time, split_context
from budget_ws.protocol import encode_event
from budget_ws.testing import MemoryClient, RecordingListener, connect

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
QUIET = Heartbeat(interval=60, timeout=60)  # no ping lands between the frames a test reads

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


def test_a_value_observed_several_times_counts_that_many_times() -> None:
    histogram = Histogram(BOUNDS)
    histogram.observe_times(0.005, 3)
    histogram.observe(0.005)
    assert histogram.counts == [0, 4, 0, 0, 0]
    assert histogram.sum == pytest.approx(0.02)
    assert histogram.pending == histogram.weighted == []  # reading counted them


def test_counting_from_another_thread_loses_and_repeats_nothing() -> None:
    """An exporter may scrape from a thread of its own while the event loop observes."""
    histogram = Histogram(BOUNDS)
    stop = threading.Event()
    snapshots: list[HistogramSnapshot] = []

    def scrape() -> None:
        while not stop.is_set():
            snapshots.append(histogram.snapshot())

    scraper = threading.Thread(target=scrape)
    scraper.start()
    observe = histogram.pending.append  # as a writer keeps it
    try:
        for number in range(200_000):
            observe(0.0005 if number % 2 else 0.5)
            if number % 1000 == 0:
                histogram.observe_times(7.0, 2)
    finally:
        stop.set()
        scraper.join()
    assert len(snapshots) > 1  # the two threads did overlap
    assert histogram.snapshot().cumulative == (100_000, 100_000, 100_000, 200_000, 200_400)
    counts = [snapshot.count for snapshot in snapshots]
    assert counts == sorted(counts)  # never counted back


def test_settling_counts_what_waits_once_many_are_pending() -> None:
    metrics = Metrics()
    metrics.enable_timings()
    latency = metrics.delivery_latency
    assert latency is not None
    for _ in range(PENDING_LIMIT - 1):
        latency.observe(0.002)
    metrics.settle()
    assert len(latency.pending) == PENDING_LIMIT - 1  # not yet: sorting a few is dear
    latency.observe(0.002)
    metrics.settle()
    assert latency.pending == []
    assert latency.snapshot().count == PENDING_LIMIT


async def test_what_writers_leave_uncounted_stays_bounded_without_a_scrape() -> None:
    async with ConnectionManager(MemoryBackend(), heartbeat=QUIET) as manager:
        manager.metrics.enable_timings()
        latency = manager.metrics.delivery_latency
        assert latency is not None
        async with connect(manager) as client:
            await client.subscribe("t")
            for number in range(2 * PENDING_LIMIT):
                await manager.publish(Tick(number=number), topic="t")
                await client.receive_event()
            assert len(latency.pending) <= PENDING_LIMIT
            assert latency.snapshot().count == 2 * PENDING_LIMIT


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


# Publish-to-write latency: from the publish() call, on whichever worker made it.


async def written_latency(manager: ConnectionManager) -> HistogramSnapshot:
    """The delivery latency once every writer has done its counting."""
    await anyio.wait_all_tasks_blocked()
    assert manager.metrics.delivery_latency is not None
    return manager.metrics.delivery_latency.snapshot()


class NetworkedBackend(MemoryBackend):
    """The memory backend as the manager sees a networked one: not ``in_process``."""

    in_process = False


async def test_a_timed_publisher_stamps_its_events_and_an_untimed_one_does_not() -> None:
    listener = RecordingListener()
    async with ConnectionManager(NetworkedBackend()) as manager:
        await manager.backend.subscribe("t", listener)
        await manager.publish(Tick(number=1), topic="t")
        manager.metrics.enable_timings()
        before = publish_time()
        await manager.publish(Tick(number=2), topic="t")
        after = publish_time()
    (_, _, untimed), (_, _, timed) = listener.delivered
    assert untimed == encode_event(Tick(number=1))  # not a byte more
    payload, traceparent, published = split_context(timed)
    assert (payload, traceparent) == (encode_event(Tick(number=2)), None)
    assert published is not None
    assert before <= published <= after


async def test_an_in_process_backend_carries_no_stamp() -> None:
    """It fans out inside ``publish()``: the fan-out's time is the publish time."""
    listener = RecordingListener()
    async with ConnectionManager(MemoryBackend(), heartbeat=QUIET) as manager:
        manager.metrics.enable_timings()
        await manager.backend.subscribe("t", listener)
        async with connect(manager) as client:
            await client.subscribe("t")
            await manager.publish(Tick(number=1), topic="t")
            await client.receive_event()
            await anyio.wait_all_tasks_blocked()
        latency = manager.metrics.delivery_latency
        assert latency is not None
        assert latency.snapshot().count == 1
    ((_, _, stored),) = listener.delivered
    assert stored == encode_event(Tick(number=1))


async def test_latency_counts_from_the_publish_time_the_event_carries() -> None:
    async with ConnectionManager(MemoryBackend(), heartbeat=QUIET) as manager:
        manager.metrics.enable_timings()
        async with connect(manager) as client:
            await client.subscribe("t")
            # Published two seconds ago by another worker, as its stamp says.
            two_seconds_ago = publish_time() - 2_000_000
            await manager.backend.publish(
                "t", attach_context(encode_event(Tick(number=1)), published=two_seconds_ago)
            )
            frame = await client.receive_event()
            latency = await written_latency(manager)
    assert frame == {
        "event": "test_metrics_tick",
        "data": {"number": 1},
        "topic": "t",
        "offset": 1,
        "epoch": frame["epoch"],
    }
    assert latency.count == 1
    assert 2.0 <= latency.sum < 2.5
    assert latency.cumulative[latency.bounds.index(1.0)] == 0  # nothing at 1 s or less


async def test_a_stamp_from_a_clock_ahead_counts_as_no_transit_not_a_negative_one() -> None:
    async with ConnectionManager(MemoryBackend(), heartbeat=QUIET) as manager:
        manager.metrics.enable_timings()
        async with connect(manager) as client:
            await client.subscribe("t")
            a_minute_ahead = publish_time() + 60_000_000
            await manager.backend.publish(
                "t", attach_context(encode_event(Tick(number=1)), published=a_minute_ahead)
            )
            await client.receive_event()
            latency = await written_latency(manager)
    assert latency.count == 1
    assert 0 <= latency.sum < 0.5


async def test_an_event_without_a_stamp_counts_from_its_fan_out() -> None:
    async with ConnectionManager(MemoryBackend(), heartbeat=QUIET) as manager:
        manager.metrics.enable_timings()
        async with connect(manager) as client:
            await client.subscribe("t")
            # Written by another program, or a publisher that measures no timings.
            await manager.backend.publish("t", encode_event(Tick(number=1)))
            # Foreign metadata: no usable publish time, and nothing for the client.
            malformed = encode_event(Tick(number=2))[:-1] + b',"budget_ws":"ts=-2000000"}'
            await manager.backend.publish("t", malformed)
            frames = [await client.receive_event() for _ in range(2)]
            latency = await written_latency(manager)
    assert [frame["data"] for frame in frames] == [{"number": 1}, {"number": 2}]
    assert all("budget_ws" not in frame for frame in frames)
    assert latency.count == 2
    assert 0 <= latency.sum < 1.0


class SlowHop:
    """Delivers after a pause, as a pub/sub hop under load would, and notes when the
    router behind it fanned the event out."""

    def __init__(self, listener: Listener, pause: float) -> None:
        self.listener = listener
        self.pause = pause
        self.fanned_out: list[float] = []

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        time.sleep(self.pause)  # blocks the loop: nothing else of the worker runs meanwhile
        self.fanned_out.append(time.perf_counter())
        self.listener.deliver(topic, position, payload)

    def resync(self, topic: str, position: Position) -> None:
        self.listener.resync(topic, position)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlowHop) and other.listener == self.listener

    def __hash__(self) -> int:
        return hash(self.listener)


class SlowHopBackend(RedisBackend):
    """Worker B's Redis backend, whose pub/sub deliveries take a measurable while."""

    def __init__(self, *args: Any, pause: float, **options: Any) -> None:
        super().__init__(*args, **options)
        self.hops: list[SlowHop] = []
        self.pause = pause

    async def subscribe(self, topic: str, listener: Listener) -> None:
        hop = SlowHop(listener, self.pause)
        self.hops.append(hop)
        await super().subscribe(topic, hop)

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        await super().unsubscribe(topic, SlowHop(listener, self.pause))


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py's client is asyncio-only
async def test_latency_on_another_worker_counts_from_the_publish_call(
    anyio_backend: str, key_prefix: str
) -> None:
    topic = f"budget:{uuid.uuid4().hex[:8]}"
    pause = 0.2
    backend_b = SlowHopBackend(REDIS_URL, key_prefix=key_prefix, pause=pause)
    async with (
        ConnectionManager(
            RedisBackend(REDIS_URL, key_prefix=key_prefix), heartbeat=QUIET
        ) as worker_a,
        ConnectionManager(backend_b, heartbeat=QUIET) as worker_b,
    ):
        worker_a.metrics.enable_timings()
        worker_b.metrics.enable_timings()
        async with connect(worker_b) as client:
            await client.subscribe(topic)
            called = time.perf_counter()
            await worker_a.publish(Tick(number=1), topic=topic)
            frame = await client.receive_event()
            received = time.perf_counter()
            latency = await written_latency(worker_b)
    assert frame["data"] == {"number": 1}
    assert "budget_ws" not in frame
    (hop,) = backend_b.hops
    (fanned_out,) = hop.fanned_out
    # B's histogram counts the frame, from A's publish() on: the Redis round trip, the
    # pub/sub hop and B's pause included, which B's own fan-out time would leave out.
    assert latency.count == 1
    assert latency.sum >= fanned_out - called - 0.002  # wall and performance clocks
    assert latency.sum >= pause
    assert latency.sum <= received - called + 0.002
    assert worker_a.metrics.delivery_latency is not None
    assert worker_a.metrics.delivery_latency.snapshot().count == 0  # no subscriber on A
