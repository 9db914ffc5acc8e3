"""What is particular to the Redis backend, against real Redis servers.

The shared server on 127.0.0.1:6379 serves most tests; tests that break Redis start a
server of their own on another loopback port and stop it by pid.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import anyio
import pytest
from redis import asyncio as aioredis
from tests.backends.conftest import RedisServer
from tests.support.servers import free_port

from budget_ws import (
    BackendError,
    BackendNotInstalled,
    BackendUnavailable,
    ConnectionManager,
    Event,
    InvalidBackendOption,
    Position,
    UnknownBackend,
    create_backend,
)
from budget_ws.backends.redis import SHARDED_PUBSUB, HistoryPolicy, RedisBackend
from budget_ws.testing import RecordingListener, connect

pytestmark = pytest.mark.anyio

SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio


class FactCreated(Event, name="test_redis_fact_created", register=False):
    id: int
    amount: Decimal = Decimal("1.00")


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_backend() -> AsyncIterator[RedisBackend]:
    async with RedisBackend(SHARED, key_prefix=prefix()) as backend:
        yield backend


async def test_urls_choose_the_redis_backend_with_options() -> None:
    backend = create_backend(
        "redis://127.0.0.1:6379/2?key_prefix=app&history_size=50&history_ttl=30"
        "&topic_ttl=600&operation_timeout=2&socket_timeout=3"
    )
    assert isinstance(backend, RedisBackend)
    assert backend.key_prefix == "app"
    assert backend.history_policy == HistoryPolicy(size=50, ttl=30)
    assert (backend.topic_ttl, backend.operation_timeout) == (600, 2)
    assert backend.url == "redis://127.0.0.1:6379/2"
    assert backend._connection_options == {"socket_timeout": 3.0}
    assert repr(backend) == "RedisBackend(redis://127.0.0.1:6379 server, prefix='app')"
    assert isinstance(create_backend("rediss://cache.example:6380"), RedisBackend)
    assert isinstance(create_backend("unix:///run/redis.sock"), RedisBackend)


async def test_one_round_trip_per_publish(redis_backend: RedisBackend) -> None:
    monitor = aioredis.Redis.from_url(SHARED)
    async with monitor.monitor() as stream:
        await anyio.sleep(0.05)
        await redis_backend.publish("counted", b"x")
        seen: list[str] = []
        with anyio.move_on_after(0.5):
            async for command in stream.listen():
                seen.append(command["command"])
    await monitor.aclose()
    ours = [command for command in seen if redis_backend.key_prefix in command]
    client_commands = [c for c in ours if c.split()[0].upper() in ("EVALSHA", "EVAL")]
    assert len(client_commands) == 1, ours


async def test_history_policies_per_topic_pattern() -> None:
    async with RedisBackend(
        SHARED,
        key_prefix=prefix(),
        history=HistoryPolicy(size=10),
        history_overrides={"chat:*": HistoryPolicy(size=2)},
    ) as backend:
        first = await backend.publish("chat:1", b"1")
        for number in (2, 3, 4):
            await backend.publish("chat:1", b"%d" % number)
        assert not (await backend.history("chat:1", first, 10)).recovered
        assert (await backend.history("chat:1", Position(2, first.epoch), 10)).recovered
        other = await backend.publish("budget:1", b"1")
        for number in (2, 3):
            await backend.publish("budget:1", b"%d" % number)
        assert (await backend.history("budget:1", other, 10)).recovered


async def test_expired_history_is_not_recovered() -> None:
    async with RedisBackend(
        SHARED, key_prefix=prefix(), history=HistoryPolicy(size=10, ttl=0.2)
    ) as backend:
        first = await backend.publish("t", b"1")
        await backend.publish("t", b"2")
        await anyio.sleep(0.3)
        await backend.publish("t", b"3")
        recovery = await backend.history("t", first, 10)
        assert not recovery.recovered
        assert recovery.position.offset == 3


async def test_two_workers_share_topics_through_redis() -> None:
    key_prefix = prefix()
    async with (
        ConnectionManager(RedisBackend(SHARED, key_prefix=key_prefix)) as worker_a,
        ConnectionManager(RedisBackend(SHARED, key_prefix=key_prefix)) as worker_b,
        connect(worker_a) as on_a,
        connect(worker_b) as on_b,
    ):
        await on_a.subscribe("budget:1")
        await on_b.subscribe("budget:1")
        for number in range(1, 6):
            await worker_a.publish(FactCreated(id=number), topic="budget:1")
        for client in (on_a, on_b):
            offsets = [(await client.receive_event())["offset"] for _ in range(5)]
            assert offsets == [1, 2, 3, 4, 5]
        positions = dict(on_a.positions)
    # A client of worker A reconnects to worker B and recovers what it missed.
    async with (
        ConnectionManager(RedisBackend(SHARED, key_prefix=key_prefix)) as worker_a,
        ConnectionManager(RedisBackend(SHARED, key_prefix=key_prefix)) as worker_b,
    ):
        for number in range(6, 9):
            await worker_a.publish(FactCreated(id=number), topic="budget:1")
        async with connect(worker_b, positions=positions) as moved:
            answer = await moved.subscribe("budget:1", resume=True)
            assert answer["recovered"] is True
            received = [await moved.receive_event() for _ in range(3)]
            assert [frame["data"]["id"] for frame in received] == [6, 7, 8]


async def listening_after_one_event(backend: RedisBackend) -> RecordingListener:
    """A listener on topic "t" that has received event 1."""
    listener = RecordingListener()
    await backend.subscribe("t", listener)
    await backend.publish("t", b"1")
    with anyio.fail_after(5):
        await listener.wait_for(1)
    return listener


async def test_a_broken_pubsub_connection_is_restored_and_its_gap_filled(
    redis_backend: RedisBackend,
) -> None:
    listener = await listening_after_one_event(redis_backend)
    admin = aioredis.Redis.from_url(SHARED)
    await admin.client_kill_filter(_type="pubsub", skipme=True)
    for number in (2, 3, 4):
        await redis_backend.publish("t", b"%d" % number)  # while pub/sub is down
    with anyio.fail_after(10):
        await listener.wait_for(4)
    await redis_backend.publish("t", b"5")
    with anyio.fail_after(5):
        await listener.wait_for(5)
    await admin.aclose()
    assert [payload for _, _, payload in listener.delivered] == [b"1", b"2", b"3", b"4", b"5"]
    assert [position.offset for _, position, _ in listener.delivered] == [1, 2, 3, 4, 5]
    assert listener.resyncs == []
    status = redis_backend.status()
    assert status["connected"] is True
    assert status["reconnects"] >= 1


async def test_redis_restarted_empty_means_resync_then_live_events(own_redis: RedisServer) -> None:
    listener = RecordingListener()
    async with RedisBackend(
        own_redis.url, key_prefix=prefix(), operation_timeout=1, reconnect_delay=(0.05, 0.2)
    ) as backend:
        await backend.subscribe("t", listener)
        before = await backend.publish("t", b"before")
        with anyio.fail_after(5):
            await listener.wait_for(1)
        own_redis.stop()
        with pytest.raises(BackendUnavailable):
            await backend.publish("t", b"lost")
        own_redis.start()
        with anyio.fail_after(10):
            await listener.wait_for(1, resyncs=1)  # the gap cannot be filled: resync
        after = await backend.publish("t", b"after")
        with anyio.fail_after(10):
            await listener.wait_for(2)
    assert after.epoch != before.epoch, "an empty Redis starts a new epoch"
    assert [payload for _, _, payload in listener.delivered] == [b"before", b"after"]
    [(topic, position)] = listener.resyncs
    assert topic == "t"
    assert position.epoch == after.epoch


async def test_an_unreachable_redis_fails_at_startup() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", operation_timeout=0.5)
    with pytest.raises(BackendUnavailable, match="could not connect"):
        async with ConnectionManager(backend):
            pass


async def test_redis_restarted_with_its_data_means_the_gap_is_filled(
    tmp_path: pytest.TempPathFactory,
) -> None:
    server = RedisServer()
    server.start(directory=str(tmp_path))
    listener = RecordingListener()
    other_worker = RedisBackend(server.url, key_prefix="kept", operation_timeout=1)
    try:
        async with RedisBackend(
            server.url, key_prefix="kept", operation_timeout=1, reconnect_delay=(1.0, 1.5)
        ) as backend:
            await backend.subscribe("t", listener)
            await backend.publish("t", b"1")
            with anyio.fail_after(5):
                await listener.wait_for(1)
            server.stop()
            server.start(directory=str(tmp_path))  # the append-only file brings it back
            # Another worker publishes before this one has reconnected its pub/sub.
            async with other_worker:
                for number in (2, 3):
                    await other_worker.publish("t", b"%d" % number)
            with anyio.fail_after(15):
                await listener.wait_for(3)
            await backend.publish("t", b"4")
            with anyio.fail_after(5):
                await listener.wait_for(4)
    finally:
        server.stop()
    assert [payload for _, _, payload in listener.delivered] == [b"1", b"2", b"3", b"4"]
    assert len({position.epoch for _, position, _ in listener.delivered}) == 1
    assert listener.resyncs == []


async def test_publishing_while_redis_is_down_fails_fast_and_clearly(
    own_redis: RedisServer,
) -> None:
    async with RedisBackend(own_redis.url, key_prefix=prefix(), operation_timeout=0.5) as backend:
        own_redis.stop()
        started = anyio.current_time()
        with pytest.raises(BackendUnavailable, match=r"topic 't'.*the event was not published"):
            await backend.publish("t", b"x")
        assert anyio.current_time() - started < 5
        with pytest.raises(BackendUnavailable):
            await backend.subscribe("t", RecordingListener())
        own_redis.start()


async def test_a_silent_pubsub_connection_is_detected(own_redis: RedisServer) -> None:
    listener = RecordingListener()
    async with RedisBackend(
        own_redis.url,
        key_prefix=prefix(),
        health_check_interval=0.1,
        operation_timeout=0.3,
        reconnect_delay=(0.05, 0.1),
    ) as backend:
        await backend.subscribe("t", listener)
        with own_redis.paused(), anyio.fail_after(5):
            while backend.status()["connected"]:  # noqa: ASYNC110 - polls a state
                await anyio.sleep(0.02)
        with anyio.fail_after(10):
            await backend.wait_connected()
        await backend.publish("t", b"after the pause")
        with anyio.fail_after(5):
            await listener.wait_for(1)


async def test_manager_stats_show_the_backend_status() -> None:
    async with ConnectionManager(RedisBackend(SHARED, key_prefix=prefix())) as manager:
        status = manager.stats().backend_status
        assert status["connected"] is True
        assert "RedisBackend" in manager.stats().backend


async def test_clients_are_told_to_resync_when_redis_lost_their_topic(
    own_redis: RedisServer,
) -> None:
    backend = RedisBackend(
        own_redis.url, key_prefix=prefix(), operation_timeout=1, reconnect_delay=(0.05, 0.2)
    )
    async with ConnectionManager(backend) as manager, connect(manager) as client:
        await client.subscribe("budget:1")
        await manager.publish(FactCreated(id=1), topic="budget:1")
        assert (await client.receive_event())["offset"] == 1
        own_redis.stop()
        own_redis.start()  # empty: the topic's history and epoch are gone
        client.timeout = 15
        resync = await client.receive()
        assert resync["op"] == "resync"
        assert resync["topic"] == "budget:1"
        await manager.publish(FactCreated(id=2), topic="budget:1")
        frame = await client.receive_event()
        assert frame["data"]["id"] == 2
        assert frame["epoch"] == resync["position"]["epoch"]
        assert frame["offset"] == resync["position"]["offset"] + 1


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_the_backend_says_it_needs_asyncio(anyio_backend: str) -> None:
    with pytest.raises(BackendError, match="asyncio"):
        async with RedisBackend(SHARED):
            pass


def test_bad_options_are_refused() -> None:
    with pytest.raises(UnknownBackend, match="history_size"):
        create_backend("redis://127.0.0.1:6379/0?history_size=many")
    with pytest.raises(ValueError, match="ttl"):
        HistoryPolicy(ttl=0)
    with pytest.raises(ValueError, match="size"):
        HistoryPolicy(size=-1)
    with pytest.raises(InvalidBackendOption, match="topic_ttl"):
        RedisBackend(SHARED, topic_ttl=0)
    with pytest.raises(InvalidBackendOption, match="reconnect_delay"):
        RedisBackend(SHARED, reconnect_delay=(0, 5))  # would spin without sleeping
    with pytest.raises(InvalidBackendOption, match="reconnect_delay"):
        RedisBackend(SHARED, reconnect_delay=(2, 1))
    with pytest.raises(InvalidBackendOption, match="max_connections"):
        RedisBackend(SHARED, max_connections=0)
    with pytest.raises(InvalidBackendOption, match="key_prefix"):
        RedisBackend(SHARED, key_prefix="")


def test_a_misspelt_option_is_named_at_once() -> None:
    with pytest.raises(InvalidBackendOption, match="history_sise") as caught:
        RedisBackend.from_url(f"{SHARED}?history_sise=5")
    assert "history_size" in caught.value.accepted


async def test_publishes_beyond_the_pool_wait_for_a_connection(redis_backend: RedisBackend) -> None:
    # redis-py 8's pools raise "Too many connections" past 100; a web app publishing from
    # its request handlers gets there easily.
    results = await publish_concurrently(redis_backend, 500)
    assert sorted(position.offset for position in results) == list(range(1, 501))


async def test_a_pool_of_one_serves_every_publish_in_turn() -> None:
    async with RedisBackend(SHARED, key_prefix=prefix(), max_connections=1) as backend:
        results = await publish_concurrently(backend, 50)
    assert sorted(position.offset for position in results) == list(range(1, 51))


async def test_waiting_for_a_connection_is_bounded_by_the_operation_timeout(
    own_redis: RedisServer,
) -> None:
    async with RedisBackend(
        own_redis.url, key_prefix=prefix(), operation_timeout=0.5, max_connections=1
    ) as backend:
        failures: list[BaseException] = []

        async def publish() -> None:
            try:
                await backend.publish("t", b"x")
            except BackendUnavailable as exc:
                failures.append(exc)

        with own_redis.paused(), anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                for _ in range(3):
                    task_group.start_soon(publish)
    assert len(failures) == 3


async def publish_concurrently(backend: RedisBackend, count: int) -> list[Position]:
    results: list[Position] = []

    async def publish() -> None:
        results.append(await backend.publish("crowded", b"x"))

    async with anyio.create_task_group() as task_group:
        for _ in range(count):
            task_group.start_soon(publish)
    return results


async def test_an_offset_jump_in_live_pubsub_is_filled_from_the_stream(
    redis_backend: RedisBackend,
) -> None:
    listener = await listening_after_one_event(redis_backend)
    # Event 2 reaches the stream but its pub/sub message is lost, as on a flaky link.
    meta, log, _ = redis_backend._keys("t")
    admin = aioredis.Redis.from_url(SHARED)
    offset = await admin.hincrby(meta, "o", 1)
    await admin.xadd(log, {"t": int(time.time() * 1000), "p": b"2"}, id=f"{offset}-1")
    await admin.aclose()
    await redis_backend.publish("t", b"3")
    with anyio.fail_after(5):
        await listener.wait_for(3)
    assert [payload for _, _, payload in listener.delivered] == [b"1", b"2", b"3"]
    assert listener.resyncs == []


async def test_a_publish_to_a_silent_redis_times_out(own_redis: RedisServer) -> None:
    async with RedisBackend(own_redis.url, key_prefix=prefix(), operation_timeout=0.5) as backend:
        with (
            own_redis.paused(),
            pytest.raises(BackendUnavailable, match=r"did not answer within 0\.5 s"),
        ):
            await backend.publish("t", b"x")


# A cluster needs sharded pub/sub, which redis-py has on asyncio from 8.0 on. Each
# dependency resolution CI runs checks what holds for it: the cluster itself, or that it
# is refused at once with what to install.
if SHARDED_PUBSUB:

    async def test_a_cluster_spreads_topics_over_nodes_and_recovers(redis_cluster: str) -> None:
        key_prefix = prefix()
        topics = [f"budget:{number}" for number in range(12)]
        options = {"cluster": True, "key_prefix": key_prefix}
        async with (
            ConnectionManager(RedisBackend(redis_cluster, **options)) as a,
            ConnectionManager(RedisBackend(redis_cluster, **options)) as b,
        ):
            backend = b.backend
            assert isinstance(backend, RedisBackend)
            nodes = {backend._shard_key(backend._keys(topic)[2]) for topic in topics}
            assert len(nodes) == 3, "the topics' hash tags land on every master"
            async with connect(b) as client:
                for topic in topics:
                    assert (await client.subscribe(topic))["op"] == "subscribed"
                for number, topic in enumerate(topics):
                    await a.publish(FactCreated(id=number), topic=topic)
                received = {}
                for _ in topics:
                    frame = await client.receive_event()
                    received[frame["topic"]] = frame["data"]["id"]
                assert received == {topic: number for number, topic in enumerate(topics)}
                positions = dict(client.positions)
            for number, topic in enumerate(topics):
                await a.publish(FactCreated(id=100 + number), topic=topic)
            async with connect(b, positions=positions) as back:
                for topic in topics:
                    answer = await back.subscribe(topic, resume=True)
                    assert answer["recovered"] is True
                replayed = {(await back.receive_event())["data"]["id"] for _ in topics}
                assert replayed == {100 + number for number in range(len(topics))}
            assert backend.status()["connected"] is True

    async def test_a_cluster_waits_for_connections_too(redis_cluster: str) -> None:
        async with RedisBackend(redis_cluster, key_prefix=prefix(), cluster=True) as backend:
            results = await publish_concurrently(backend, 500)
        assert sorted(position.offset for position in results) == list(range(1, 501))

else:

    async def test_a_cluster_says_which_redis_py_it_needs() -> None:
        with pytest.raises(BackendNotInstalled, match=r"redis-py has from 8\.0 on"):
            async with RedisBackend(SHARED, cluster=True):
                pass


async def test_clients_resuming_during_a_live_stream_get_each_event_once() -> None:
    # Pub/sub lags behind a read of the stream: an event the resume replayed may still be
    # on its way live. Many resumes under a steady stream make that window show.
    key_prefix = prefix()
    topic = "budget:1"
    async with (
        ConnectionManager(RedisBackend(SHARED, key_prefix=key_prefix)) as publisher,
        ConnectionManager(RedisBackend(SHARED, key_prefix=key_prefix)) as worker,
    ):
        published = await publisher.publish(FactCreated(id=0), topic=topic)
        stop = anyio.Event()

        async def stream() -> None:
            number = 0
            while not stop.is_set() and number < 20_000:
                number += 1
                await publisher.publish(FactCreated(id=number), topic=topic)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stream)
            for _ in range(200):
                top = await worker.position(topic)
                resume_from = Position(max(top.offset - 5, 0), published.epoch)
                async with connect(worker) as client:
                    answer = await client.subscribe(topic, position=resume_from)
                    assert answer["recovered"] is True
                    offsets = [(await client.receive_event())["offset"] for _ in range(20)]
                expected = list(range(resume_from.offset + 1, resume_from.offset + 21))
                assert offsets == expected, "each event once, in order, after a resume"
            stop.set()


async def test_opening_an_open_backend_is_refused_clearly() -> None:
    async with RedisBackend(SHARED, key_prefix=prefix()) as backend:
        with pytest.raises(BackendError, match="already open"):
            await backend.__aenter__()
