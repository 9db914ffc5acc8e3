"""Recovery as a property: any interleaving of publishes, reads, reconnects and live
messages that arrive late, after the history read that already covered them (as Redis
pub/sub lags behind a read of the stream)."""

from __future__ import annotations

from collections import deque
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typing_extensions import Self

from budget_ws import ConnectionManager, Event, Listener, MemoryBackend, Position, Recovery
from budget_ws.testing import MemoryClient, connect

pytestmark = pytest.mark.anyio

TOPICS = ("budget:1", "budget:2")


class FactUpdated(Event, name="test_recovery_fact_updated", register=False):
    id: int


operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(TOPICS)),
        st.tuples(st.just("read"), st.integers(0, 4)),
        st.tuples(st.just("reconnect"), st.just("")),
        st.tuples(st.just("publish while away"), st.sampled_from(TOPICS)),
        st.tuples(st.just("arrive"), st.integers(1, 4)),
    ),
    max_size=40,
)


class LaggingBackend:
    """The memory backend, with live messages held in flight until :meth:`arrive`.

    History is up to date at once, live delivery comes later: the order in which Redis
    answers a stream read before the pub/sub message of the same event arrives.
    """

    def __init__(self, history_size: int) -> None:
        self.inner = MemoryBackend(history_size=history_size)
        self.in_flight: deque[tuple[Listener, str, Position, bytes]] = deque()
        self._proxies: dict[Listener, _InFlight] = {}

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def status(self) -> dict[str, object]:
        return self.inner.status()

    async def publish(self, topic: str, payload: bytes) -> Position:
        return await self.inner.publish(topic, payload)

    async def subscribe(self, topic: str, listener: Listener) -> None:
        proxy = self._proxies.setdefault(listener, _InFlight(self, listener))
        await self.inner.subscribe(topic, proxy)

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        await self.inner.unsubscribe(topic, self._proxies[listener])

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        return await self.inner.history(topic, after, limit)

    def arrive(self, count: int) -> list[tuple[str, Position]]:
        """Deliver the ``count`` oldest live messages in flight; return what arrived."""
        arrived = []
        for _ in range(min(count, len(self.in_flight))):
            listener, topic, position, payload = self.in_flight.popleft()
            listener.deliver(topic, position, payload)
            arrived.append((topic, position))
        return arrived


class _InFlight:
    def __init__(self, backend: LaggingBackend, listener: Listener) -> None:
        self.backend = backend
        self.listener = listener

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        self.backend.in_flight.append((self.listener, topic, position, payload))

    def resync(self, topic: str, position: Position) -> None:
        self.listener.resync(topic, position)


class Model:
    """A client app that renders every fact of its two budgets, through reconnects."""

    def __init__(self, manager: ConnectionManager, backend: LaggingBackend) -> None:
        self.manager = manager
        self.backend = backend
        self.history_size = backend.inner.history_size
        self.published: dict[str, list[int]] = {topic: [] for topic in TOPICS}
        self.shown: dict[str, list[int]] = {topic: [] for topic in TOPICS}
        # The highest offset of each topic sent to the current client: by the replay on
        # subscribing, then by live messages as they arrive.
        self.sent: dict[str, int] = {}
        self.next_id = 0
        self.stack = AsyncExitStack()
        self.client: MemoryClient | None = None
        self.positions: dict[str, Position] = {}

    @property
    def unread(self) -> int:
        return sum(self.sent[topic] - len(self.shown[topic]) for topic in self.sent)

    async def connect(self) -> None:
        self.client = await self.stack.enter_async_context(
            connect(self.manager, positions=self.positions)
        )
        for topic in TOPICS:
            resume_from = self.positions.get(topic)
            answer = await self.client.subscribe(topic, position=resume_from)
            assert answer["op"] == "subscribed"
            top = answer["position"]["offset"]
            assert top == len(self.published[topic])
            self.sent[topic] = top
            if resume_from is None:
                assert answer["recovered"] is False
                continue
            missed = top - resume_from.offset
            assert answer["recovered"] is (missed <= self.history_size)
            if not answer["recovered"]:
                # No partial replay: the app reloads the topic's state instead.
                self.shown[topic] = list(self.published[topic])

    async def disconnect(self) -> None:
        assert self.client is not None
        self.positions = dict(self.client.positions)
        await self.stack.aclose()
        self.client = None
        self.sent = {}

    async def publish(self, topic: str) -> None:
        self.next_id += 1
        await self.manager.publish(FactUpdated(id=self.next_id), topic=topic)
        self.published[topic].append(self.next_id)

    def arrive(self, count: int) -> None:
        for topic, position in self.backend.arrive(count):
            if topic in self.sent:
                self.sent[topic] = max(self.sent[topic], position.offset)

    async def read(self, count: int) -> None:
        assert self.client is not None
        for _ in range(min(count, self.unread)):
            frame: dict[str, Any] = await self.client.receive_event()
            topic = frame["topic"]
            shown = self.shown[topic]
            assert frame["offset"] == len(shown) + 1, "no gap, no duplicate, in order"
            shown.append(frame["data"]["id"])

    async def read_to_the_end(self) -> None:
        """Read everything due, then check that nothing else comes (a trailing repeat)."""
        self.arrive(len(self.backend.in_flight))
        await self.read(self.unread)
        assert self.client is not None
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.01):
            extra = await self.client.receive_event()
            pytest.fail(f"an event nobody published again: {extra}")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=operations, history_size=st.sampled_from([2, 1000]))
async def test_reconnecting_clients_end_with_exactly_the_published_sequence(
    steps: list[tuple[str, Any]], history_size: int
) -> None:
    backend = LaggingBackend(history_size)
    async with ConnectionManager(backend) as manager:
        model = Model(manager, backend)
        await model.connect()
        for operation, argument in steps:
            if operation == "publish":
                await model.publish(argument)
            elif operation == "read":
                await model.read(argument)
            elif operation == "arrive":
                model.arrive(argument)
            elif operation == "reconnect":
                await model.disconnect()
                await model.connect()
            else:
                await model.disconnect()
                await model.publish(argument)
                await model.connect()
        await model.read_to_the_end()
        await model.disconnect()
    assert model.shown == model.published
