"""The topic router: one backend subscription per topic, whatever the local subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from budget_ws import Limits, MemoryBackend, OutboxLimits, Position
from budget_ws.backends import Recovery
from budget_ws.connection import Connection
from budget_ws.testing import MemoryTransport
from budget_ws.topics import TopicRouter

pytestmark = pytest.mark.anyio


class SpyBackend(MemoryBackend):
    """Counts (un)subscriptions; ``subscribe``, ``history`` or ``unsubscribe`` wait at a
    gate when told."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribes = 0
        self.unsubscribes = 0
        self.gate: anyio.Event | None = None
        self.gated = ""
        self.at_gate = anyio.Event()

    async def _wait_if_gated(self, method: str) -> None:
        if self.gate is not None and self.gated == method:
            self.at_gate.set()
            await self.gate.wait()

    async def subscribe(self, topic: str, listener: Any) -> None:
        self.subscribes += 1
        await self._wait_if_gated("subscribe")
        await super().subscribe(topic, listener)

    async def unsubscribe(self, topic: str, listener: Any) -> None:
        self.unsubscribes += 1
        await self._wait_if_gated("unsubscribe")
        await super().unsubscribe(topic, listener)

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        await self._wait_if_gated("history")
        return await super().history(topic, after, limit)

    def close_gate(self, method: str) -> None:
        self.gate, self.gated, self.at_gate = anyio.Event(), method, anyio.Event()


@pytest.fixture
async def backend() -> AsyncIterator[SpyBackend]:
    async with SpyBackend() as opened:
        yield opened


@pytest.fixture
def new_connection() -> Iterator[Callable[[], Connection]]:
    """Makes connections that are not served: what the router queues stays in the outbox."""
    transports: list[MemoryTransport] = []

    def make() -> Connection:
        transports.append(MemoryTransport())
        return Connection(transports[-1], limits=Limits(), outbox_limits=OutboxLimits())

    yield make
    for transport in transports:
        transport.release()


async def test_one_backend_subscription_per_topic(
    backend: SpyBackend, new_connection: Callable[[], Connection]
) -> None:
    router = TopicRouter(backend, max_replay=100)
    first, second = new_connection(), new_connection()
    await router.attach(first, "t", None)
    await router.attach(second, "t", None)
    assert backend.subscribes == 1
    assert set(router.connections("t")) == {first, second}
    await router.detach(first, "t")
    assert backend.unsubscribes == 0, "the topic stays subscribed for the other connection"
    assert router.connections("t") == (second,)
    await router.detach(second, "t")
    assert backend.unsubscribes == 1
    assert router.connections("t") == ()
    assert len(router) == 0


async def test_a_subscriber_arriving_while_the_topic_is_released_subscribes_again(
    backend: SpyBackend, new_connection: Callable[[], Connection]
) -> None:
    router = TopicRouter(backend, max_replay=100)
    leaving, arriving, stranger = new_connection(), new_connection(), new_connection()
    await router.attach(leaving, "t", None)
    backend.close_gate("unsubscribe")
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(router.detach, leaving, "t")
        await backend.at_gate.wait()  # the backend is unsubscribing, holding the topic
        task_group.start_soon(router.attach, arriving, "t", None)
        # A release that starts now must notice the newcomer once it gets the lock.
        task_group.start_soon(router.detach, stranger, "t")
        await anyio.wait_all_tasks_blocked()
        assert router.connections("t") == ()
        assert backend.gate is not None
        backend.gate.set()
    assert (backend.subscribes, backend.unsubscribes) == (2, 1)
    assert router.connections("t") == (arriving,)
    queued = arriving.queued_frames
    await backend.publish("t", b'{"event":"e","data":{}}')
    assert arriving.queued_frames == queued + 1, "events reach the newcomer"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # its scheduling is first in, first out
async def test_a_subscriber_of_a_subscribed_topic_does_not_queue_behind_others(
    backend: SpyBackend, new_connection: Callable[[], Connection]
) -> None:
    """A connect storm: subscribers that came while the topic was being subscribed take its
    lock in turn, and one arriving then must not wait behind them (it did, and so did
    every subscriber after it, one loop turn each)."""
    router = TopicRouter(backend, max_replay=100)
    first = new_connection()
    backend.close_gate("subscribe")
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(router.attach, first, "t", None)
        await backend.at_gate.wait()
        for _ in range(5):
            task_group.start_soon(router.attach, new_connection(), "t", None)
        await anyio.wait_all_tasks_blocked()  # waiting for the topic's lock
        assert backend.gate is not None
        backend.gate.set()
        for _ in range(100):
            if first in router.connections("t"):
                break
            await anyio.lowlevel.checkpoint()
        waited = []
        for _ in range(5):
            late = new_connection()
            task_group.start_soon(router.attach, late, "t", None)
            await anyio.lowlevel.checkpoint()  # one turn: the attach ran without waiting
            waited.append(late not in router.connections("t"))
    assert waited == [False] * 5
    assert backend.subscribes == 1
    assert len(router.connections("t")) == 11


async def test_a_connection_closed_while_history_is_read_is_not_subscribed(
    backend: SpyBackend, new_connection: Callable[[], Connection]
) -> None:
    router = TopicRouter(backend, max_replay=100)
    connection = new_connection()
    backend.close_gate("history")
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(router.attach, connection, "t", None)
        await backend.at_gate.wait()
        connection.close(4400, "gone")
        assert backend.gate is not None
        backend.gate.set()
    assert "t" not in connection.topics
    assert router.connections("t") == ()
    assert len(router) == 0
    assert backend.unsubscribes == 1, "the subscription made for it is dropped"


async def test_events_and_resyncs_reach_only_local_subscribers(
    backend: SpyBackend, new_connection: Callable[[], Connection]
) -> None:
    router = TopicRouter(backend, max_replay=100)
    connection = new_connection()
    await router.attach(connection, "t", None)
    queued = connection.queued_frames
    router.deliver("elsewhere", Position(1, "e"), b'{"event":"e","data":{}}')
    router.resync("elsewhere", Position(1, "e"))
    assert connection.queued_frames == queued
    router.deliver("t", Position(1, "e"), b'{"event":"e","data":{}}')
    router.resync("t", Position(1, "e"))
    assert connection.queued_frames == queued + 2
    await router.detach(connection, "t")
    await router.detach(connection, "t")  # twice, or never subscribed: nothing happens
    assert backend.unsubscribes == 1


class _UnsubscribeFails(MemoryBackend):
    async def unsubscribe(self, topic: str, listener: Any) -> None:
        raise ConnectionError("backend down")


async def test_a_failed_backend_unsubscribe_is_logged_and_the_topic_released(
    new_connection: Callable[[], Connection], caplog: pytest.LogCaptureFixture
) -> None:
    async with _UnsubscribeFails() as backend:
        router = TopicRouter(backend, max_replay=100)
        connection = new_connection()
        await router.attach(connection, "t", None)
        await router.detach(connection, "t")
        assert len(router) == 0
        await router.attach(connection, "t", None)  # and it can be subscribed again
        assert router.connections("t") == (connection,)
    assert "unsubscribing 't' from the backend failed" in caplog.text
