"""Reconnecting: server restarts (Redis recovers, memory resyncs), dead links, random drops.

Every test runs real uvicorn servers on 127.0.0.1; the Redis tests use the Redis server on
127.0.0.1:6379 under a key prefix of their own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.client.app import REGISTRY, Tick, running, wait_until
from tests.support.proxy import Proxy

from budget_ws import ConnectionManager, Heartbeat, MemoryBackend, OutboxLimits, Position
from budget_ws.client import EventReceived, Item, Resync, Subscription, connect

pytestmark = pytest.mark.anyio

REDIS = "redis://127.0.0.1:6379/0"
FAST = {"registry": REGISTRY, "min_delay": 0.02, "max_delay": 0.1}


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis backend URL with a key prefix of the test's own."""
    prefix = f"test-client-{uuid.uuid4().hex[:12]}"
    yield f"{REDIS}?key_prefix={prefix}&history_size=1000"
    with redis.Redis.from_url(REDIS) as admin:
        keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            admin.delete(*keys)


async def collect(subscription: Subscription, items: list[Item]) -> None:
    async for item in subscription:
        items.append(item)


def events(items: list[Item]) -> list[int]:
    return [item.event.n for item in items if isinstance(item, EventReceived)]  # type: ignore[union-attr]


async def test_a_server_restart_on_redis_recovers_every_missed_event(redis_url: str) -> None:
    topic = f"budget:{uuid.uuid4().hex[:8]}"
    items: list[Item] = []
    async with AsyncExitStack() as stack:
        first = ConnectionManager(redis_url, registry=REGISTRY, shutdown_timeout=1)
        async with running(first) as server:
            port = server.port
            client = await stack.enter_async_context(connect(server.url, **FAST))
            subscription = await stack.enter_async_context(client.subscribe(topic))
            reader = asyncio.create_task(collect(subscription, items))
            for n in (1, 2, 3):
                await first.publish(Tick(n=n), topic=topic)
            await wait_until(lambda: len(items) == 3)
        # The server is down (it closed with 1012); the client keeps trying.
        assert not client.connected
        async with ConnectionManager(redis_url, registry=REGISTRY) as publisher:
            for n in (4, 5, 6):  # published while no server runs: only Redis has them
                await publisher.publish(Tick(n=n), topic=topic)
        second = ConnectionManager(redis_url, registry=REGISTRY, shutdown_timeout=1)
        async with running(second, port=port):
            await wait_until(lambda: len(items) == 6)
            await second.publish(Tick(n=7), topic=topic)
            await wait_until(lambda: len(items) == 7)
        reader.cancel()
    assert events(items) == [1, 2, 3, 4, 5, 6, 7]
    assert [item.position.offset for item in items if item.position] == [1, 2, 3, 4, 5, 6, 7]
    assert not [item for item in items if isinstance(item, Resync)]


async def test_a_server_restart_on_memory_reports_a_resync() -> None:
    topic = "budget:1"
    items: list[Item] = []
    async with AsyncExitStack() as stack:
        first = ConnectionManager(MemoryBackend(), registry=REGISTRY, shutdown_timeout=1)
        async with running(first) as server:
            port = server.port
            client = await stack.enter_async_context(connect(server.url, **FAST))
            subscription = await stack.enter_async_context(client.subscribe(topic))
            reader = asyncio.create_task(collect(subscription, items))
            await first.publish(Tick(n=1), topic=topic)
            await wait_until(lambda: len(items) == 1)
        second = ConnectionManager(MemoryBackend(), registry=REGISTRY, shutdown_timeout=1)
        async with running(second, port=port):
            await wait_until(lambda: len(items) == 2)
            await second.publish(Tick(n=2), topic=topic)
            await wait_until(lambda: len(items) == 3)
            new_epoch = (await second.position(topic)).epoch
        reader.cancel()
    tick, resync, after = items
    assert isinstance(resync, Resync)
    assert resync.why == "not_recovered"
    assert resync.position == Position(0, new_epoch)
    assert isinstance(after, EventReceived)
    assert after.position == Position(1, new_epoch)
    assert isinstance(tick, EventReceived)
    assert tick.position is not None
    assert tick.position.epoch != new_epoch


async def test_a_dead_link_is_left_within_the_heartbeat_bound() -> None:
    interval = timeout = slack = 0.5
    topic = "budget:1"
    items: list[Item] = []
    manager = ConnectionManager(
        registry=REGISTRY,
        heartbeat=Heartbeat(interval=interval, timeout=timeout),
        shutdown_timeout=1,
    )
    async with (
        running(manager) as server,
        Proxy(server.port) as proxy,
        connect(f"ws://127.0.0.1:{proxy.port}/ws", heartbeat_slack=slack, **FAST) as client,
        client.subscribe(topic) as subscription,
    ):
        reader = asyncio.create_task(collect(subscription, items))
        await manager.publish(Tick(n=1), topic=topic)
        await wait_until(lambda: len(items) == 1)
        first = client.connection_id
        proxy.stall()  # traffic vanishes both ways; nothing closes
        stalled_at = time.monotonic()
        await manager.publish(Tick(n=2), topic=topic)  # lost on the dead link
        await wait_until(lambda: len(items) == 2, timeout=10)
        elapsed = time.monotonic() - stalled_at
        reader.cancel()
    bound = max(interval, timeout) + slack
    # Detected after at most `bound` of silence, then a backoff of at most 0.02 s and a
    # handshake; well under a second more.
    assert elapsed < bound + 1.0, elapsed
    assert client.connection_id != first
    assert proxy.connections == 2
    assert events(items) == [1, 2]


async def test_a_stalled_reader_is_closed_by_the_server_and_resumes_without_loss() -> None:
    # The app stops reading: the client's buffer fills, its reader waits, pings go
    # unanswered and the server closes it (4001). Reading again, the app gets everything.
    topic = "budget:1"
    manager = ConnectionManager(
        registry=REGISTRY,
        heartbeat=Heartbeat(interval=0.1, timeout=0.1),
        outbox=OutboxLimits(max_messages=4),
        shutdown_timeout=1,
    )
    async with (
        running(manager) as server,
        connect(server.url, buffer_size=2, **FAST) as client,
        client.subscribe(topic) as subscription,
    ):
        first = client.connection_id
        for n in range(1, 31):
            await manager.publish(Tick(n=n), topic=topic)
            await asyncio.sleep(0.005)
        await wait_until(lambda: first not in manager.connections)
        items: list[Item] = []
        reader = asyncio.create_task(collect(subscription, items))
        await wait_until(lambda: len(items) == 30, timeout=10)
        reader.cancel()
    assert events(items) == list(range(1, 31))
    assert client.connection_id != first


# Random disconnects while events stream: the proxy resets every connection at random
# points, the client reconnects and resumes. With a history of 3 events some gaps cannot
# be recovered: they must show as a Resync, never as a silent jump.
plans = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=6),  # events published
        st.sampled_from([0.0, 0.0, 0.002, 0.02]),  # pause
        st.booleans(),  # then reset the connections
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=plans, history_size=st.sampled_from([3, 1000]))
async def test_random_disconnects_never_duplicate_or_reorder(
    plan: list[tuple[int, float, bool]], history_size: int
) -> None:
    topic = "budget:1"
    manager = ConnectionManager(
        MemoryBackend(history_size=history_size), registry=REGISTRY, shutdown_timeout=1
    )
    items: list[Item] = []
    published = 0
    async with (
        running(manager) as server,
        Proxy(server.port) as proxy,
        connect(
            f"ws://127.0.0.1:{proxy.port}/ws", registry=REGISTRY, min_delay=0.01, max_delay=0.05
        ) as client,
        client.subscribe(topic) as subscription,
    ):
        start = subscription.position
        reader = asyncio.create_task(collect(subscription, items))
        for count, pause, reset in plan:
            for _ in range(count):
                published += 1
                await manager.publish(Tick(n=published), topic=topic)
            if pause:
                await asyncio.sleep(pause)
            if reset:
                proxy.kill()
        published += 1
        last = await manager.publish(Tick(n=published), topic=topic)
        await wait_until(lambda: bool(items) and items[-1].position == last, timeout=10)
        reader.cancel()
    event(f"history {history_size}: {sum(isinstance(item, Resync) for item in items)} resyncs")
    cursor = start
    assert cursor is not None
    for item in items:
        assert item.position is not None
        if isinstance(item, Resync):
            assert item.position.offset >= cursor.offset
        else:
            # Each event follows the previous item exactly: no duplicate, no reordering,
            # and any jump was announced by a Resync.
            assert item.position == Position(cursor.offset + 1, cursor.epoch), items
        cursor = item.position
    if history_size == 1000:
        assert events(items) == list(range(1, published + 1))
