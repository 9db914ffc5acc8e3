"""Recovery as a property: any interleaving of publishes, reads and reconnects."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budget_ws import ConnectionManager, Event, MemoryBackend, Position
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
    ),
    max_size=40,
)


class Model:
    """A client app that renders every fact of its two budgets, through reconnects."""

    def __init__(self, manager: ConnectionManager, history_size: int) -> None:
        self.manager = manager
        self.history_size = history_size
        self.published: dict[str, list[int]] = {topic: [] for topic in TOPICS}
        self.shown: dict[str, list[int]] = {topic: [] for topic in TOPICS}
        self.unread = 0
        self.next_id = 0
        self.stack = AsyncExitStack()
        self.client: MemoryClient | None = None
        self.positions: dict[str, Position] = {}

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
            if resume_from is None:
                assert answer["recovered"] is False
                continue
            missed = top - resume_from.offset
            assert answer["recovered"] is (missed <= self.history_size)
            if answer["recovered"]:
                self.unread += missed
            else:
                # No partial replay: the app reloads the topic's state instead.
                self.shown[topic] = list(self.published[topic])

    async def disconnect(self) -> None:
        assert self.client is not None
        self.positions = dict(self.client.positions)
        await self.stack.aclose()
        self.client = None
        self.unread = 0

    async def publish(self, topic: str) -> None:
        self.next_id += 1
        await self.manager.publish(FactUpdated(id=self.next_id), topic=topic)
        self.published[topic].append(self.next_id)
        if self.client is not None:
            self.unread += 1

    async def read(self, count: int) -> None:
        assert self.client is not None
        for _ in range(min(count, self.unread)):
            frame: dict[str, Any] = await self.client.receive_event()
            topic = frame["topic"]
            shown = self.shown[topic]
            assert frame["offset"] == len(shown) + 1, "no gap, no duplicate, in order"
            shown.append(frame["data"]["id"])
            self.unread -= 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=operations, history_size=st.sampled_from([2, 1000]))
async def test_reconnecting_clients_end_with_exactly_the_published_sequence(
    steps: list[tuple[str, str]], history_size: int
) -> None:
    async with ConnectionManager(MemoryBackend(history_size=history_size)) as manager:
        model = Model(manager, history_size)
        await model.connect()
        for operation, argument in steps:
            if operation == "publish":
                await model.publish(argument)
            elif operation == "read":
                await model.read(int(argument))
            elif operation == "reconnect":
                await model.disconnect()
                await model.connect()
            else:
                await model.disconnect()
                await model.publish(argument)
                await model.connect()
        await model.read(model.unread)
        await model.disconnect()
    assert model.shown == model.published
