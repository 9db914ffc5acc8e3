"""The Redis backend behind Sentinel, against a master, a replica and three Sentinels of
the test's own (tests/support/sentinel.py), through failovers mid-stream."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
import redis
from tests.support.sentinel import SentinelGroup, sentinel_group
from tests.support.servers import free_port

from budget_ws import BackendUnavailable, Position, create_backend
from budget_ws.backends.redis import RedisBackend
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio

# Fast enough to follow a failover within a test: a ping and a question to the Sentinels
# every 0.2 s, a publish that waits for its replica for at most 1 s.
FAST = "health_check_interval=0.2&operation_timeout=2&reconnect_delay=0.05,0.2"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path) as started:
        yield started


def url(group: SentinelGroup, *options: str) -> str:
    return group.url("&".join([f"key_prefix=test-{uuid.uuid4().hex[:12]}", FAST, *options]))


class OrderedListener(RecordingListener):
    """A recording listener that also keeps deliveries and resyncs in one sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Position, bytes]] = []

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        self.log.append(("event", position, payload))
        super().deliver(topic, position, payload)

    def resync(self, topic: str, position: Position) -> None:
        self.log.append(("resync", position, b""))
        super().resync(topic, position)


@dataclass
class Publisher:
    """Publishes numbered events at a steady pace, keeping what became of each."""

    published: dict[bytes, Position] = field(default_factory=dict)
    """Events ``publish()`` returned for, with their positions."""
    unknown: set[bytes] = field(default_factory=set)
    """Events it raised ``BackendUnavailable`` for: published or not, nobody knows."""
    failed_at: list[float] = field(default_factory=list)

    async def run(self, backend: RedisBackend, topic: str, count: int) -> None:
        for number in range(count):
            payload = b"event-%d" % number
            try:
                self.published[payload] = await backend.publish(topic, payload)
            except BackendUnavailable:
                self.unknown.add(payload)
                self.failed_at.append(time.monotonic())
            await anyio.sleep(0.01)


def check_delivery(listener: OrderedListener, publisher: Publisher) -> None:
    """Every event returned by publish() delivered once, in offset order, or a resync told.

    Deliveries follow each other offset by offset within an epoch, and after a resync go
    on from its position: nothing is skipped without a resync, nothing comes twice.
    """
    payloads = [payload for kind, _, payload in listener.log if kind == "event"]
    assert set(payloads) <= set(publisher.published) | publisher.unknown
    since_resync: set[bytes] = set()
    for kind, _, payload in listener.log:
        if kind == "resync":
            since_resync = set()  # the listener starts over: what follows may come again
            continue
        assert payload not in since_resync, f"{payload!r} delivered twice without a resync"
        since_resync.add(payload)
    previous: Position | None = None
    for kind, position, payload in listener.log:
        if kind == "event" and previous is not None:
            assert position == Position(previous.offset + 1, previous.epoch), (
                f"{payload!r} at {position} after {previous} without a resync"
            )
        if kind == "event" and payload in publisher.published:
            assert publisher.published[payload] == position
        previous = position
    last_resync = next(
        (position for kind, position, _ in reversed(listener.log) if kind == "resync"), None
    )
    expected = [
        payload
        for payload, position in publisher.published.items()
        if last_resync is None
        or (position.epoch == last_resync.epoch and position.offset > last_resync.offset)
    ]
    assert expected, "nothing was published after the last resync"
    missing = set(expected) - set(payloads)
    assert not missing, f"published, never delivered, no resync: {sorted(missing)}"


async def wait_delivered(listener: OrderedListener, publisher: Publisher) -> None:
    """Wait until the last event publish() returned for is delivered."""
    last = publisher.published[max(publisher.published, key=lambda p: int(p.split(b"-")[1]))]
    with anyio.fail_after(10):
        while last not in (position for _, position, _ in listener.delivered):
            await listener.wait_for(len(listener.delivered) + 1)


async def stream_through(
    group: SentinelGroup, backend: RedisBackend, lose_master: Callable[[], int], count: int
) -> Publisher:
    """Publish ``count`` events to ``t`` while ``lose_master`` takes the master away.

    Returns once the Sentinels named another master and the subscriber got every
    published event, checked by :func:`check_delivery`.
    """
    listener = OrderedListener()
    await backend.subscribe("t", listener)
    publisher = Publisher()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(publisher.run, backend, "t", count)
        await anyio.sleep(0.5)
        old = await anyio.to_thread.run_sync(lose_master)
        await anyio.to_thread.run_sync(group.wait_master_moved, old)
    await wait_delivered(listener, publisher)
    check_delivery(listener, publisher)
    return publisher


async def test_publish_subscribe_and_history_through_sentinel(group: SentinelGroup) -> None:
    async with create_backend(url(group, "wait_replicas=1")) as backend:
        assert isinstance(backend, RedisBackend)
        assert repr(backend).startswith("RedisBackend(redis+sentinel://127.0.0.1:")
        listener = RecordingListener()
        await backend.subscribe("t", listener)
        first = await backend.publish("t", b"1")
        await backend.publish("t", b"2")
        with anyio.fail_after(5):
            await listener.wait_for(2)
        assert [payload for _, _, payload in listener.delivered] == [b"1", b"2"]
        recovery = await backend.history("t", first, 10)
        assert recovery.recovered
        assert [payload for _, payload in recovery.items] == [b"2"]
        # Acknowledged by a replica: one holds the event before publish() returns.
        lengths = set()
        for port in group.data_ports:
            with redis.Redis(port=port) as node:
                lengths.add(node.xlen(f"{backend.key_prefix}:{{t}}:log"))
        assert 2 in lengths - {0}
        assert backend.status()["connected"] is True
        await backend.unsubscribe("t", listener)
        await backend.publish("t", b"3")
        with anyio.fail_after(5):
            await backend.subscribe("t", listener)
        assert len(listener.delivered) == 2


async def test_a_publish_fewer_replicas_acknowledge_than_asked_fails_clearly(
    group: SentinelGroup,
) -> None:
    async with create_backend(url(group, "wait_replicas=3")) as backend:
        listener = RecordingListener()
        await backend.subscribe("t", listener)
        with pytest.raises(BackendUnavailable, match="only 2 of 3 replicas acknowledged"):
            await backend.publish("t", b"1")
        with anyio.fail_after(5):
            await listener.wait_for(1)  # it was published: the master ran it


@pytest.mark.parametrize("wait_replicas", [1, 0])
async def test_sentinel_failover_mid_stream_delivers_every_event_or_resyncs(
    group: SentinelGroup, wait_replicas: int
) -> None:
    async with create_backend(url(group, f"wait_replicas={wait_replicas}")) as backend:
        assert isinstance(backend, RedisBackend)
        publisher = await stream_through(group, backend, group.failover, 200)
        if publisher.failed_at:  # while the old master had no replica to acknowledge
            assert publisher.failed_at[-1] - publisher.failed_at[0] < 10
        assert b"event-199" in publisher.published


async def test_a_killed_master_mid_stream_delivers_every_event_or_resyncs(
    group: SentinelGroup,
) -> None:
    async with create_backend(url(group, "wait_replicas=1")) as backend:
        assert isinstance(backend, RedisBackend)
        publisher = await stream_through(group, backend, group.kill_master, 300)
        # Publishes failed while no master was up, for a bounded time, then succeeded.
        assert publisher.failed_at
        assert publisher.failed_at[-1] - publisher.failed_at[0] < 10
        assert f"event-{299}".encode() in publisher.published
        assert backend.status()["connected"] is True


async def test_the_pubsub_connection_leaves_a_demoted_master(group: SentinelGroup) -> None:
    """Redis keeps a demoted master's pub/sub clients: the health check must notice."""
    name = f"budget-ws-{uuid.uuid4().hex[:8]}"
    async with create_backend(url(group, f"client_name={name}")) as backend:
        listener = RecordingListener()
        await backend.subscribe("t", listener)
        old = await anyio.to_thread.run_sync(group.failover)
        new = await anyio.to_thread.run_sync(group.wait_master_moved, old)
        with anyio.fail_after(10):
            await wait_reconnected(backend)
        assert name in pubsub_clients(new)
        assert name not in pubsub_clients(old)
        await backend.publish("t", b"after")
        with anyio.fail_after(5):
            await listener.wait_for(1)
        assert listener.delivered[-1][2] == b"after"


async def wait_reconnected(backend: RedisBackend) -> None:
    """Wait until the backend's pub/sub connection broke and is up again."""
    while backend.status()["reconnects"] == 0:  # noqa: ASYNC110 - polled, as a probe does
        await anyio.sleep(0.05)
    await backend.wait_connected()


def pubsub_clients(port: int) -> set[str]:
    with redis.Redis(port=port, decode_responses=True) as admin:
        return {client["name"] for client in admin.client_list(_type="pubsub")}


class Unanswered(logging.Handler):
    """Counts the health checks that asked the Sentinels in vain."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.changed = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "budget_ws_event", None) == "sentinel_unanswered":
            self.count += 1
            self.changed.set()


async def test_sentinels_that_do_not_answer_leave_a_healthy_master_in_use(
    group: SentinelGroup,
) -> None:
    unanswered = Unanswered()
    logger = logging.getLogger("budget_ws.backend.redis")
    logger.addHandler(unanswered)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with create_backend(url(group)) as backend:
            listener = RecordingListener()
            await backend.subscribe("t", listener)
            for port in group.sentinel_ports:
                group.kill(port)
            with anyio.fail_after(5):
                while unanswered.count < 3:  # three health checks, each in vain
                    await unanswered.changed.wait()
                    unanswered.changed = anyio.Event()
            status = backend.status()
            assert (status["connected"], status["reconnects"]) == (True, 0)
            await backend.publish("t", b"still")  # a pooled connection to the master
            with anyio.fail_after(5):
                await listener.wait_for(1)
    finally:
        logger.removeHandler(unanswered)
        logger.setLevel(level)


@pytest.mark.parametrize("scheme", ["redis+sentinel", "rediss+sentinel"])
async def test_no_sentinel_answering_at_startup_fails_fast(scheme: str) -> None:
    sentinels = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    backend = create_backend(f"{scheme}://{sentinels}/nowhere?operation_timeout=0.5")
    with pytest.raises(BackendUnavailable, match="No master found for 'nowhere'"):
        await backend.__aenter__()
