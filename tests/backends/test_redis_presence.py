"""Signals and presence on Redis when it fails: restarts, lost connections, failovers.

The contract itself is in test_presence_contract.py; here is what is particular to Redis.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import anyio
import pytest
from redis import asyncio as aioredis
from tests.backends.conftest import RedisServer
from tests.support.sentinel import sentinel_group
from tests.support.signals import Signals

from budget_ws import BackendError, BackendUnavailable, create_backend
from budget_ws.backends import PresenceRow
from budget_ws.backends._redis_presence import SWEEP_ROWS
from budget_ws.backends.redis import SHARDED_PUBSUB, RedisBackend

pytestmark = pytest.mark.anyio

SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def quick(url: str, key_prefix: str, *, cluster: bool = False) -> RedisBackend:
    """A backend that gives up and reconnects quickly, for a server the test breaks."""
    return RedisBackend(
        url,
        key_prefix=key_prefix,
        cluster=cluster,
        operation_timeout=1.0,
        reconnect_delay=(0.05, 0.2),
    )


async def probe_until_heard(sender: RedisBackend, signals: Signals, name: bytes) -> None:
    """Signal until ``signals`` hears one: the listener subscribes again on its own time."""
    with anyio.fail_after(15):
        for number in range(10_000):
            probe = b"%s-%d" % (name, number)
            await sender.signal(probe)
            with anyio.move_on_after(0.05):
                await signals.wait_for_payload(probe)
            if probe in signals.received:
                return


async def wait_reconnected(backend: RedisBackend, reconnects: int) -> None:
    with anyio.fail_after(15):
        while backend.status()["reconnects"] <= reconnects:  # noqa: ASYNC110 - polls a state
            await anyio.sleep(0.02)
        await backend.wait_connected()


async def test_a_restarted_redis_lost_the_rows_and_signals_go_on(own_redis: RedisServer) -> None:
    signals = Signals()
    row = PresenceRow("t", "w1", "alice", 1)
    async with quick(own_redis.url, prefix()) as backend:
        await backend.listen_signals(signals)
        assert await backend.presence_write("w1", 1, 30, [row], replace=False) is False
        assert await backend.presence_write("w1", 2, 30, [], replace=False) is True
        await backend.signal(b"before")
        await signals.wait_for_payload(b"before")
        reconnects = backend.status()["reconnects"]
        own_redis.stop()
        failing = r"Redis failed for (presence of worker 'w1'|presence of topic 't'|a signal)"
        with pytest.raises(BackendUnavailable, match=failing):
            await backend.presence_write("w1", 3, 30, [], replace=False)
        with pytest.raises(BackendUnavailable, match=failing):
            await backend.presence_read("t")
        with pytest.raises(BackendUnavailable, match=failing):
            await backend.presence_forget("w1")
        with pytest.raises(BackendUnavailable, match=failing):
            await backend.signal(b"lost")
        own_redis.start()  # empty
        await wait_reconnected(backend, reconnects)
        # The rows are gone: the worker is told, and writes its whole state again.
        assert list((await backend.presence_read("t")).rows) == []
        assert await backend.presence_write("w1", 4, 30, [row], replace=True) is False
        assert list((await backend.presence_read("t")).rows) == [row]
        # The supervisor subscribed the signal channel again.
        await probe_until_heard(backend, signals, b"after")
    assert b"lost" not in signals.received


async def test_a_signal_sent_while_the_listener_reconnects_comes_at_most_once(
    own_redis: RedisServer,
) -> None:
    key_prefix = prefix()
    signals = Signals()
    async with (
        quick(own_redis.url, key_prefix) as sender,
        quick(own_redis.url, key_prefix) as listening,
    ):
        await listening.listen_signals(signals)
        admin = aioredis.Redis.from_url(own_redis.url)
        sent: list[bytes] = []

        async def stream() -> None:
            for number in range(100):
                sent.append(b"%d" % number)
                await sender.signal(sent[-1])
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stream)
            await anyio.sleep(0.1)
            await admin.client_kill_filter(_type="pubsub", skipme=True)
        await admin.aclose()
        await wait_reconnected(listening, 0)
        await probe_until_heard(sender, signals, b"after")
    streamed = [payload for payload in signals.received if payload.isdigit()]
    assert len(streamed) == len(set(streamed)), "a signal came twice"
    assert streamed == sorted(streamed, key=int), "signals came out of order"
    assert set(streamed) <= set(sent)


async def test_a_silent_redis_times_out_clearly(own_redis: RedisServer) -> None:
    async with RedisBackend(own_redis.url, key_prefix=prefix(), operation_timeout=0.3) as backend:
        with own_redis.paused():
            with pytest.raises(BackendUnavailable, match="may or may not have been stored"):
                await backend.presence_write("w1", 1, 30, [], replace=False)
            with pytest.raises(BackendUnavailable, match=r"did not answer.*topic 't'"):
                await backend.presence_read("t")
            with pytest.raises(BackendUnavailable, match="signal may or may not have been sent"):
                await backend.signal(b"x")


async def test_a_closed_backend_refuses_signals_and_presence() -> None:
    backend = RedisBackend(SHARED, key_prefix=prefix())
    with pytest.raises(BackendError, match="not open"):
        await backend.listen_signals(Signals())
    with pytest.raises(BackendError, match="not open"):
        await backend.signal(b"x")
    with pytest.raises(BackendError, match="not open"):
        await backend.presence_read("t")


async def test_listening_to_signals_while_redis_is_away_fails_and_can_be_tried_again(
    own_redis: RedisServer,
) -> None:
    signals = Signals()
    async with quick(own_redis.url, prefix()) as backend:
        own_redis.stop()
        with pytest.raises(BackendUnavailable, match="signal subscription"):
            await backend.listen_signals(signals)
        own_redis.start()
        await wait_reconnected(backend, 0)
        await backend.listen_signals(signals)
        await backend.signal(b"heard")
        await signals.wait_for_payload(b"heard")


async def test_a_failing_signal_listener_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(payload: bytes) -> None:
        raise RuntimeError("a bug")

    signals = Signals()
    async with RedisBackend(SHARED, key_prefix=prefix()) as backend:
        await backend.listen_signals(broken)
        await backend.listen_signals(signals)
        await backend.signal(b"x")
        await signals.wait_for_payload(b"x")
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert getattr(record, "budget_ws_event", None) == "listener_failed"


async def test_one_round_trip_per_call_and_nothing_left_behind() -> None:
    rows = [PresenceRow(f"t{number}", "w1", "alice", 1) for number in range(5)]

    async def every_call(backend: RedisBackend) -> None:
        await backend.presence_write("w1", 1, 30, rows, replace=True)
        await backend.presence_read("t1")
        await backend.presence_forget("w1")
        await backend.signal(b"x")

    async with RedisBackend(SHARED, key_prefix=prefix()) as backend:
        await every_call(backend)  # the server has the scripts from here on
        monitor = aioredis.Redis.from_url(SHARED)
        async with monitor.monitor() as stream:
            await anyio.sleep(0.05)
            await every_call(backend)
            seen: list[str] = []
            with anyio.move_on_after(0.5):
                async for command in stream.listen():
                    seen.append(command["command"])
        await monitor.aclose()
        ours = [command for command in seen if backend.key_prefix in command]
        calls = [c for c in ours if c.split()[0].upper() in ("EVALSHA", "EVAL")]
        assert len(calls) == 4, ours
        admin = aioredis.Redis.from_url(SHARED)
        left = [key async for key in admin.scan_iter(f"{backend.key_prefix}:*")]
        await admin.aclose()
        assert left == []


async def test_the_sweep_deletes_a_dead_worker_in_bounded_steps() -> None:
    key_prefix = prefix()
    async with RedisBackend(SHARED, key_prefix=key_prefix) as backend:
        rows = [PresenceRow(f"t{number % 7}", "dead", f"u{number}", 1) for number in range(1500)]
        await backend.presence_write("dead", 1, 0.2, rows, replace=False)
        await anyio.sleep(0.3)
        admin = aioredis.Redis.from_url(SHARED)
        index = f"{key_prefix}:{{~presence}}:worker:dead"
        workers = f"{key_prefix}:{{~presence}}:workers"
        await backend.presence_write("alive", 1, 30, [], replace=False)
        assert await admin.scard(index) == 1500 - SWEEP_ROWS
        assert await admin.zscore(workers, "dead") is not None  # not done with it yet
        await backend.presence_write("alive", 2, 30, [], replace=False)
        assert await admin.scard(index) == 0
        assert await admin.zrange(workers, 0, -1) == [b"alive"]
        left = {key async for key in admin.scan_iter(f"{key_prefix}:*")}
        await admin.aclose()
        assert left == {workers.encode(), f"{key_prefix}:{{~presence}}:seqs".encode()}
        await backend.presence_forget("alive")


async def test_signals_and_presence_follow_a_sentinel_failover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Signals heard before a failover are no topic's: the new master is checked by topics."""
    with sentinel_group(tmp_path) as group:
        url = group.url(
            f"key_prefix={prefix()}&health_check_interval=0.2&operation_timeout=2"
            "&reconnect_delay=0.05,0.2"
        )
        async with create_backend(url) as opened:
            assert isinstance(opened, RedisBackend)
            backend = opened
            signals = Signals()
            await backend.listen_signals(signals)
            await backend.signal(b"before")  # no spaces: not a topic's message
            await signals.wait_for_payload(b"before")
            assert await backend.presence_write("w1", 1, 30, [], replace=False) is False
            old = await anyio.to_thread.run_sync(group.failover)
            await anyio.to_thread.run_sync(group.wait_master_moved, old)
            await wait_reconnected(backend, 0)
            await probe_until_heard(backend, signals, b"after")
            row = PresenceRow("t", "w1", "alice", 1)
            await backend.presence_write("w1", 2, 30, [row], replace=True)
            assert list((await backend.presence_read("t")).rows) == [row]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# A cluster needs redis-py 8 (test_redis checks the refusal on older ones).
if SHARDED_PUBSUB:

    async def test_a_cluster_subscribes_signals_again_after_losing_its_nodes(
        redis_cluster: str,
    ) -> None:
        key_prefix = prefix()
        signals = Signals()
        async with (
            quick(redis_cluster, key_prefix, cluster=True) as sender,
            quick(redis_cluster, key_prefix, cluster=True) as listening,
        ):
            await listening.listen_signals(signals)
            await sender.signal(b"before")
            await signals.wait_for_payload(b"before")
            for node in listening._client.get_primaries():
                admin = aioredis.Redis(host=node.host, port=node.port)
                await admin.client_kill_filter(_type="pubsub", skipme=True)
                await admin.aclose()
            await wait_reconnected(listening, 0)
            await probe_until_heard(sender, signals, b"after")
            row = PresenceRow("t", "w1", "alice", 1)
            await sender.presence_write("w1", 1, 30, [row], replace=False)
            assert list((await listening.presence_read("t")).rows) == [row]
            await sender.presence_forget("w1")
