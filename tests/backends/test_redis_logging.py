"""What the Redis backend logs when its server fails, comes back, or loses a topic's state.

Each test breaks a Redis server of its own (or keys of its own prefix on the shared one)
and checks the lines ``docs/reference/logging.md`` promises: logger, level,
``budget_ws_event`` and fields, and a traceback only for what is not an outage.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest
from redis import asyncio as aioredis
from tests.backends.conftest import RedisServer

from budget_ws.backends.redis import RedisBackend
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio

SHARED = "redis://127.0.0.1:6379/0"
LOGGER = "budget_ws.backend.redis"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class Lines(logging.Handler):
    """The backend's log lines, with a way to wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "budget_ws_event", None) == event]

    async def wait_for(
        self, event: str, where: Callable[[logging.LogRecord], bool] = lambda _: True
    ) -> logging.LogRecord:
        with anyio.fail_after(10):
            while True:
                found = [record for record in self.of(event) if where(record)]
                if found:
                    return found[0]
                await self._changed.wait()


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
    for record in handler.records:
        assert record.name == LOGGER
        assert all(key.startswith("budget_ws_") for key in _extra(record)), record.getMessage()


def _extra(record: logging.LogRecord) -> set[str]:
    standard = vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", (), None))
    return set(vars(record)) - set(standard) - {"message", "asctime"}


async def test_a_lost_connection_is_a_warning_and_its_return_says_what_was_filled(
    own_redis: RedisServer, lines: Lines
) -> None:
    quiet, busy = RecordingListener(), RecordingListener()
    async with RedisBackend(
        own_redis.url, key_prefix=prefix(), reconnect_delay=(0.3, 0.4)
    ) as backend:
        await backend.subscribe("quiet", quiet)
        await backend.subscribe("busy", busy)
        await backend.publish("busy", b"1")
        with anyio.fail_after(5):
            await busy.wait_for(1)
        admin = aioredis.Redis.from_url(own_redis.url)
        await admin.client_kill_filter(_type="pubsub", skipme=True)
        await admin.aclose()
        lost = await lines.wait_for("pubsub_lost")
        for number in (2, 3):  # while the pub/sub connection is down
            await backend.publish("busy", b"%d" % number)
        restored = await lines.wait_for("pubsub_restored")
        with anyio.fail_after(5):
            await busy.wait_for(3)
    address = f"127.0.0.1:{own_redis.port}"
    assert (lost.levelno, lost.exc_info) == (logging.WARNING, None)
    assert lost.budget_ws_address == address
    assert lost.budget_ws_error.startswith(f"{address}: redis.ConnectionError")
    assert lost.budget_ws_topics == 2
    assert lost.getMessage() == f"budget_ws: Redis pub/sub connection lost: {lost.budget_ws_error}"
    assert (restored.levelno, restored.exc_info) == (logging.INFO, None)
    assert restored.budget_ws_address == address
    assert restored.budget_ws_attempts == 1
    assert restored.budget_ws_outage_seconds >= 0.3
    assert (restored.budget_ws_topics, restored.budget_ws_topics_filled) == (2, 1)
    assert restored.budget_ws_events_recovered == 2
    assert (restored.budget_ws_topics_current, restored.budget_ws_topics_resynced) == (1, 0)
    assert restored.budget_ws_resynced_topic_names == []
    assert "topics: 1 filled from history (2 events), 0 told to resync" in restored.getMessage()


async def test_a_redis_back_empty_is_counted_as_resync_after_each_failed_attempt(
    own_redis: RedisServer, lines: Lines
) -> None:
    listener = RecordingListener()
    async with RedisBackend(
        own_redis.url, key_prefix=prefix(), operation_timeout=1, reconnect_delay=(0.05, 0.1)
    ) as backend:
        await backend.subscribe("t", listener)
        await backend.publish("t", b"before")
        own_redis.stop()
        await lines.wait_for("pubsub_reconnect_failed", lambda r: r.budget_ws_attempt >= 2)
        own_redis.start()  # empty: the topic's epoch and history are gone
        restored = await lines.wait_for("pubsub_restored")
        with anyio.fail_after(5):
            await listener.wait_for(1, resyncs=1)
    [lost] = lines.of("pubsub_lost")
    assert (lost.levelno, lost.exc_info) == (logging.WARNING, None)
    failures = lines.of("pubsub_reconnect_failed")
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in failures)
    assert all("redis.ConnectionError" in r.budget_ws_error for r in failures)
    assert [r.budget_ws_attempt for r in failures] == list(range(1, len(failures) + 1))
    assert restored.budget_ws_attempts == len(failures) + 1
    assert restored.budget_ws_outage_seconds > 0
    assert (restored.budget_ws_topics_resynced, restored.budget_ws_resynced_topic_names) == (
        1,
        ["t"],
    )
    assert (restored.budget_ws_topics_filled, restored.budget_ws_events_recovered) == (0, 0)
    assert lines.of("pubsub_failed") == []


async def test_a_silent_server_is_named_by_its_address_never_its_url(
    own_redis: RedisServer, lines: Lines
) -> None:
    async with RedisBackend(
        own_redis.url.replace("redis://", "redis://:@"),  # credentials in the URL
        key_prefix=prefix(),
        health_check_interval=0.1,
        operation_timeout=0.3,
        reconnect_delay=(0.05, 0.1),
    ):
        with own_redis.paused():
            lost = await lines.wait_for("pubsub_lost")
        await lines.wait_for("pubsub_restored")
    assert (lost.levelno, lost.exc_info) == (logging.WARNING, None)
    assert lost.budget_ws_error == (
        f"127.0.0.1:{own_redis.port}: budget_ws.DeadConnection: no pong from "
        f"127.0.0.1:{own_redis.port}"
    )


async def test_a_failure_that_is_not_an_outage_keeps_its_traceback(lines: Lines) -> None:
    key_prefix = prefix()
    listener = RecordingListener()
    async with RedisBackend(SHARED, key_prefix=key_prefix, reconnect_delay=(0.05, 0.1)) as backend:
        await backend.subscribe("t", listener)
        admin = aioredis.Redis.from_url(SHARED)
        await admin.publish(f"{key_prefix}:{{t}}", b"garbage")  # not "offset epoch payload"
        await admin.aclose()
        failed = await lines.wait_for("pubsub_failed")
        await lines.wait_for("pubsub_restored")
        await backend.publish("t", b"after")
        with anyio.fail_after(5):
            await listener.wait_for(1)
    assert failed.levelno == logging.ERROR
    assert failed.exc_info is not None
    assert "ValueError" in failed.budget_ws_error
    assert lines.of("pubsub_lost") == [], "one line for one failure"


async def test_a_gap_in_live_events_filled_from_history_is_a_debug_line(lines: Lines) -> None:
    key_prefix = prefix()
    listener = RecordingListener()
    async with RedisBackend(SHARED, key_prefix=key_prefix) as backend:
        await backend.subscribe("t", listener)
        await backend.publish("t", b"1")
        with anyio.fail_after(5):
            await listener.wait_for(1)
        # Event 2 reaches the stream but its pub/sub message is lost.
        admin = aioredis.Redis.from_url(SHARED)
        offset = await admin.hincrby(f"{key_prefix}:{{t}}:meta", "o", 1)
        await admin.xadd(
            f"{key_prefix}:{{t}}:log", {"t": int(time.time() * 1000), "p": b"2"}, id=f"{offset}-1"
        )
        await admin.aclose()
        await backend.publish("t", b"3")
        filled = await lines.wait_for("gap_filled")
    assert (filled.levelno, filled.exc_info) == (logging.DEBUG, None)
    # Events 2 and 3 from the stream (the live copy of 3, held meanwhile, is dropped).
    assert (filled.budget_ws_topic, filled.budget_ws_events_recovered) == ("t", 2)
    assert [payload for _, _, payload in listener.delivered] == [b"1", b"2", b"3"]
    assert lines.of("topic_resync") == []


@pytest.mark.parametrize("lost", ["meta", "event"])
async def test_a_topic_redis_lost_while_connected_is_a_resync_warning(
    lines: Lines, lost: str
) -> None:
    key_prefix = prefix()
    listener = RecordingListener()
    meta = f"{key_prefix}:{{t}}:meta"
    async with RedisBackend(SHARED, key_prefix=key_prefix) as backend:
        await backend.subscribe("t", listener)
        await backend.publish("t", b"1")
        with anyio.fail_after(5):
            await listener.wait_for(1)
        admin = aioredis.Redis.from_url(SHARED)
        if lost == "meta":
            await admin.delete(meta)  # evicted: the topic starts over with a new epoch
        else:
            await admin.hincrby(meta, "o", 1)  # event 2 never reached the stream
        await admin.aclose()
        await backend.publish("t", b"3")
        resync = await lines.wait_for("topic_resync")
        with anyio.fail_after(5):
            await listener.wait_for(1, resyncs=1)
    assert (resync.levelno, resync.exc_info) == (logging.WARNING, None)
    assert resync.budget_ws_topic == "t"
    assert resync.budget_ws_cause == ("new_epoch" if lost == "meta" else "history_short")
