"""The Redis backend when the network or the server fails: lost replies, lost servers,
and closing it from wherever the application happens to be."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import anyio
import pytest
from anyio.abc import SocketStream, TaskStatus
from redis import asyncio as aioredis
from tests.backends.conftest import RedisServer
from tests.support.servers import free_port

from budget_ws import BackendError, BackendUnavailable
from budget_ws.backends.redis import RedisBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class ReplyDropper:
    """A TCP proxy to a Redis server that can lose the reply to a script call.

    Armed, it forwards the next script call (EVALSHA/EVAL) to the server, so the script
    runs, then closes the client's connection instead of forwarding the reply: the
    client cannot know whether its command ran.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.armed = 0
        self.dropped = 0

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        lose_reply = False
        async with client, await anyio.connect_tcp("127.0.0.1", self.upstream_port) as server:
            async with anyio.create_task_group() as task_group:

                async def requests() -> None:
                    nonlocal lose_reply
                    async for chunk in client:
                        if self.armed and b"EVAL" in chunk:  # EVALSHA too
                            self.armed -= 1
                            lose_reply = True
                        await server.send(chunk)
                    task_group.cancel_scope.cancel()

                async def replies() -> None:
                    async for chunk in server:
                        if lose_reply:
                            self.dropped += 1
                            break
                        await client.send(chunk)
                    task_group.cancel_scope.cancel()

                task_group.start_soon(requests)
                task_group.start_soon(replies)


async def stream_of(server_url: str, key_prefix: str, topic: str) -> list[tuple[int, bytes]]:
    admin = aioredis.Redis.from_url(server_url)
    entries = await admin.xrange(f"{key_prefix}:{{{topic}}}:log")
    await admin.aclose()
    return [(int(entry_id.split(b"-")[0]), fields[b"p"]) for entry_id, fields in entries]


async def test_a_publish_whose_reply_is_lost_is_not_published_twice(
    own_redis: RedisServer,
) -> None:
    key_prefix = prefix()
    proxy = ReplyDropper(own_redis.port)
    async with anyio.create_task_group() as task_group:
        await task_group.start(proxy.serve)
        async with RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0", key_prefix=key_prefix, operation_timeout=2
        ) as backend:
            await backend.publish("t", b"1")  # the server has the script from here on
            proxy.armed = 1
            # Neither redis-py (redis-py 8 retries by default) nor the backend may send
            # it again: the script ran, only its reply is gone.
            with pytest.raises(BackendUnavailable, match="may or may not have been published"):
                await backend.publish("t", b"2")
            assert proxy.dropped == 1
            third = await backend.publish("t", b"3")
        task_group.cancel_scope.cancel()
    assert await stream_of(own_redis.url, key_prefix, "t") == [(1, b"1"), (2, b"2"), (3, b"3")]
    assert third.offset == 3


async def test_a_history_read_whose_reply_is_lost_is_read_again(own_redis: RedisServer) -> None:
    proxy = ReplyDropper(own_redis.port)
    async with anyio.create_task_group() as task_group:
        await task_group.start(proxy.serve)
        async with RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0", key_prefix=prefix(), operation_timeout=2
        ) as backend:
            first = await backend.publish("t", b"1")
            await backend.publish("t", b"2")
            proxy.armed = 1
            recovery = await backend.history("t", first, 10)  # reading twice is harmless
            assert proxy.dropped == 1
        task_group.cancel_scope.cancel()
    assert recovery.recovered
    assert [payload for _, payload in recovery.items] == [b"2"]


async def test_aclose_works_from_any_task_any_number_of_times(own_redis: RedisServer) -> None:
    backend = RedisBackend(own_redis.url, key_prefix=prefix(), operation_timeout=1)
    await backend.aclose()  # never opened: nothing to do
    await backend.__aenter__()
    await backend.publish("t", b"1")
    async with anyio.create_task_group() as task_group:
        # Another task than the one that opened it, as a lifespan's shutdown may be.
        task_group.start_soon(backend.aclose)
    assert backend.status()["connected"] is False
    await backend.aclose()
    with pytest.raises(BackendError, match="not open"):
        await backend.publish("t", b"2")
    async with backend:  # it can be opened again, and closed from another task again
        await backend.publish("t", b"3")
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(backend.aclose)


async def test_aclose_after_a_failed_start() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", operation_timeout=0.3)
    with pytest.raises(BackendUnavailable, match=r"Connection refused|111"):
        await backend.__aenter__()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(backend.aclose)
    await backend.aclose()


class Waiting(logging.Handler):
    """Sets an event once a record matching ``wanted`` is logged."""

    def __init__(self, wanted: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__(logging.DEBUG)
        self.wanted = wanted
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.wanted(record):
            self.seen.set()


async def test_a_lost_server_is_logged_as_one_line_naming_the_cause(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="budget_ws")
    lost = Waiting(lambda record: record.levelno == logging.WARNING)
    retried = Waiting(lambda record: "reconnect failed" in record.getMessage())
    logger = logging.getLogger("budget_ws")
    logger.addHandler(lost)
    logger.addHandler(retried)
    try:
        async with RedisBackend(
            own_redis.url, key_prefix=prefix(), reconnect_delay=(0.05, 0.1)
        ) as backend:
            own_redis.stop()
            with anyio.fail_after(10):
                await lost.seen.wait()
                await retried.seen.wait()
            assert backend.status()["connected"] is False
    finally:
        logger.removeHandler(lost)
        logger.removeHandler(retried)
    address = f"127.0.0.1:{own_redis.port}"
    records = [record for record in caplog.records if record.name == "budget_ws.backend.redis"]
    [warning] = [record for record in records if record.levelno >= logging.WARNING]
    assert warning.getMessage().startswith("budget_ws: Redis pub/sub connection lost: " + address)
    assert "redis.ConnectionError" in warning.getMessage()
    assert "Group" not in warning.getMessage()
    assert warning.exc_info is None
    failure = next(record for record in records if "reconnect failed" in record.getMessage())
    assert failure.levelno == logging.DEBUG
    assert address in failure.getMessage()
    assert "redis.ConnectionError" in failure.getMessage()
    assert "111" in failure.getMessage()  # errno: connection refused
    assert "Group" not in failure.getMessage()
