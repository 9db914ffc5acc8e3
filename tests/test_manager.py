"""ConnectionManager through its public API, with in-memory clients."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tests.support.clock import virtual_time_backends
from tests.support.tasks import running_tasks

from budget_ws import (
    BackendError,
    ClientMessage,
    CloseCode,
    ConnectionClosed,
    ConnectionIdInUse,
    ConnectionManager,
    Event,
    EventRegistry,
    EventTooLarge,
    Heartbeat,
    InvalidTopic,
    Limits,
    ManagerClosed,
    MemoryBackend,
    OutboxLimits,
    Position,
    SlowConsumerPolicy,
)
from budget_ws.client_frames import ClientFrames
from budget_ws.connection import Connection
from budget_ws.testing import MemoryClient, MemoryTransport, connect

pytestmark = pytest.mark.anyio


class FactCreated(Event, name="test_manager_fact_created"):
    id: int
    amount: Decimal
    article: str = "groceries"


class Note(Event, name="test_manager_note", register=False):
    text: str


def fact(number: int) -> FactCreated:
    return FactCreated(id=number, amount=Decimal("12.50"))


async def events(client: MemoryClient, count: int) -> list[dict[str, Any]]:
    return [await client.receive_event() for _ in range(count)]


async def closed_with(client: MemoryClient) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.receive()
    return info.value


async def test_welcome_frame_describes_heartbeat_and_limits(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        welcome = await client.receive()
    assert welcome["op"] == "welcome"
    assert welcome["protocol"] == "budget-ws.v1"
    assert welcome["heartbeat"] == {"interval": 60, "timeout": 60}
    assert welcome["limits"]["max_topics"] == 100
    assert welcome["connection_id"]


async def test_publish_reaches_every_subscriber_of_the_topic_only(
    manager: ConnectionManager,
) -> None:
    async with connect(manager) as tab1, connect(manager) as tab2, connect(manager) as other:
        for client in (tab1, tab2):
            subscribed = await client.subscribe("budget:1")
            assert subscribed["op"] == "subscribed"
            assert subscribed["recovered"] is False
            assert subscribed["position"]["offset"] == 0
        await other.subscribe("budget:2")

        first = await manager.publish(fact(1), topic="budget:1")
        second = await manager.publish(fact(2), topic="budget:1")
        assert (first.offset, second.offset) == (1, 2)
        assert first.epoch == second.epoch

        for client in (tab1, tab2):
            received = await events(client, 2)
            assert [frame["data"]["id"] for frame in received] == [1, 2]
            assert received[0] == {
                "event": "test_manager_fact_created",
                "data": {"id": 1, "amount": "12.50", "article": "groceries"},
                "topic": "budget:1",
                "offset": 1,
                "epoch": first.epoch,
            }
        await manager.publish(fact(3), topic="budget:2")
        assert (await other.receive_event())["data"]["id"] == 3


async def test_unsubscribe_stops_delivery(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.subscribe("a")
        await client.subscribe("b")
        answer = await client.unsubscribe("a")
        assert answer == {"op": "unsubscribed", "topic": "a", "id": 3}
        assert (await client.unsubscribe("never-subscribed"))["op"] == "unsubscribed"
        await manager.publish(fact(1), topic="a")
        await manager.publish(fact(2), topic="b")
        frame = await client.receive_event()
        assert (frame["topic"], frame["data"]["id"]) == ("b", 2)
        assert manager.stats().topics == 1


async def test_resume_replays_exactly_the_missed_events_then_live(
    manager: ConnectionManager,
) -> None:
    async with connect(manager) as client:
        await client.subscribe("budget:1")
        await manager.publish(fact(1), topic="budget:1")
        await client.receive_event()
        positions = dict(client.positions)
    for number in (2, 3, 4):
        await manager.publish(fact(number), topic="budget:1")
    async with connect(manager, positions=positions) as client:
        subscribed = await client.subscribe("budget:1", resume=True)
        assert subscribed["recovered"] is True
        assert subscribed["position"]["offset"] == 4
        await manager.publish(fact(5), topic="budget:1")
        received = await events(client, 4)
        assert [frame["offset"] for frame in received] == [2, 3, 4, 5]
        assert [frame["data"]["id"] for frame in received] == [2, 3, 4, 5]


async def test_resume_at_the_top_recovers_nothing_but_succeeds(
    manager: ConnectionManager,
) -> None:
    position = await manager.publish(fact(1), topic="t")
    async with connect(manager) as client:
        subscribed = await client.subscribe("t", position=position)
        assert subscribed["recovered"] is True
        await manager.publish(fact(2), topic="t")
        assert (await client.receive_event())["offset"] == 2


@pytest.mark.parametrize("reason", ["trimmed", "other epoch", "ahead", "more than max_replay"])
async def test_resume_that_history_cannot_cover_gets_no_partial_replay(reason: str) -> None:
    backend = MemoryBackend(history_size=3 if reason == "trimmed" else 1000)
    outbox = OutboxLimits(max_replay=3 if reason == "more than max_replay" else 1000)
    async with ConnectionManager(backend, outbox=outbox) as manager:
        first = await manager.publish(fact(1), topic="t")
        for number in range(2, 6):
            await manager.publish(fact(number), topic="t")
        after = {
            "trimmed": first,
            "other epoch": Position(1, "not-the-epoch"),
            "ahead": Position(99, first.epoch),
            "more than max_replay": first,
        }[reason]
        async with connect(manager) as client:
            subscribed = await client.subscribe("t", position=after)
            assert subscribed["recovered"] is False
            top = subscribed["position"]
            assert top["epoch"] == first.epoch
            live = await manager.publish(fact(100), topic="t")
            assert top["offset"] == live.offset - 1
            frame = await client.receive_event()
            assert frame["offset"] == live.offset, "no replay may come before live events"


class _PublishDuringHistory(MemoryBackend):
    """Publishes while a subscriber reads history, as another worker would."""

    def __init__(self, during: int, after: int) -> None:
        super().__init__()
        self.during = during
        self.after = after
        self.armed = False

    async def history(self, topic: str, after: Position | None, limit: int) -> Any:
        recovery = await super().history(topic, after, limit)
        if self.armed:
            self.armed = False
            for number in range(self.during):
                # Some land before the history read (duplicates of it), some after.
                await self.publish(topic, b'{"event":"x","data":{"n":%d}}' % number)
            recovery_after = await super().history(topic, after, limit)
            return recovery_after if self.after else recovery
        return recovery


@pytest.mark.parametrize("history_sees_them", [0, 1])
async def test_events_published_while_recovering_are_neither_lost_nor_duplicated(
    history_sees_them: int,
) -> None:
    backend = _PublishDuringHistory(during=3, after=history_sees_them)
    async with ConnectionManager(backend) as manager, connect(manager) as watcher:
        await watcher.subscribe("t")  # keeps the topic subscribed on the backend
        start = await manager.publish(fact(1), topic="t")
        await manager.publish(fact(2), topic="t")
        backend.armed = True
        async with connect(manager) as client:
            subscribed = await client.subscribe("t", position=start)
            assert subscribed["recovered"] is True
            await manager.publish(fact(9), topic="t")
            offsets = [frame["offset"] for frame in await events(client, 5)]
            assert offsets == [2, 3, 4, 5, 6]


async def test_send_and_broadcast_bypass_topics(manager: ConnectionManager) -> None:
    seen: list[Connection] = []

    async with connect(manager) as first, connect(manager) as second:
        await first.receive()
        await second.receive()
        seen = list(manager.connections.values())
        assert len(seen) == 2
        await manager.send(seen[0], fact(1))
        assert await manager.broadcast(fact(2)) == 2
        targets = {
            seen[0].id: first if first.welcome["connection_id"] == seen[0].id else second  # type: ignore[index]
        }
        direct = await targets[seen[0].id].receive_event()
        assert direct == {
            "event": "test_manager_fact_created",
            "data": {"id": 1, "amount": "12.50", "article": "groceries"},
        }
        for client in (first, second):
            frame = await client.receive_event()
            assert frame["data"]["id"] == 2
            assert "offset" not in frame


async def test_client_events_reach_typed_handlers() -> None:
    received: list[ClientMessage[Note]] = []
    registry = EventRegistry()
    async with ConnectionManager(registry=registry) as manager:

        @manager.on(Note)
        async def note(message: ClientMessage[Note]) -> None:
            received.append(message)
            await manager.publish(message.event, topic="room")

        async with connect(manager, principal="ann") as client:
            await client.subscribe("room")
            await client.send_event(Note(text="hello"), topic="room")
            frame = await client.receive_event()
        assert frame["data"] == {"text": "hello"}
        assert received[0].event == Note(text="hello")
        assert received[0].topic == "room"
        assert received[0].connection.principal == "ann"
        assert "test_manager_note" in registry


async def test_client_event_errors_leave_the_connection_open() -> None:
    async with ConnectionManager(registry=EventRegistry()) as manager:

        @manager.on(Note)
        async def note(message: ClientMessage[Note]) -> None:
            if message.event.text == "boom":
                raise RuntimeError("handler bug")

        async with connect(manager) as client:
            await client.receive()
            await client.send_raw('{"event": "nope", "data": {}, "id": 1}')
            unknown = await client.receive()
            assert (unknown["code"], unknown["id"]) == ("unknown_event", 1)

            await client.send_raw('{"event": "test_manager_note", "data": {"text": 5}, "id": 2}')
            invalid = await client.receive()
            assert invalid["code"] == "invalid_event"
            assert invalid["details"][0]["loc"] == ["text"]

            await client.send_raw('{"event": "test_manager_note", "data": {"text": "boom"}}')
            assert (await client.receive())["code"] == "handler_error"

            await client.send_raw(
                '{"event": "test_manager_note", "data": {"text": "x"}, "topic": "$"}'
            )
            assert (await client.receive())["code"] == "invalid_topic"

            assert (await client.subscribe("still-works"))["op"] == "subscribed"


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_authorize_is_checked_on_subscribe_and_on_publish(asynchronous: bool) -> None:
    calls: list[tuple[Any, str, str]] = []

    def allow(principal: Any, topic: str, action: str) -> bool:
        calls.append((principal, topic, action))
        return topic == f"budget:{principal}"

    async def allow_async(principal: Any, topic: str, action: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return allow(principal, topic, action)

    handled: list[Note] = []
    async with ConnectionManager(
        registry=EventRegistry(), authorize=allow_async if asynchronous else allow
    ) as manager:

        @manager.on(Note)
        async def note(message: ClientMessage[Note]) -> None:
            handled.append(message.event)

        async with connect(manager, principal=1) as client:
            await client.receive()
            assert (await client.subscribe("budget:1"))["op"] == "subscribed"
            denied = await client.subscribe("budget:2")
            assert denied["op"] == "error"
            assert denied["code"] == "forbidden"
            assert denied["topic"] == "budget:2"
            await client.send_event(Note(text="no"), topic="budget:2")
            assert (await client.receive())["code"] == "forbidden"
            await client.send_event(Note(text="yes"), topic="budget:1")
            await client.send_event(Note(text="no topic"))
            await client.subscribe("budget:1")  # a round trip: the handlers have run
    assert handled == [Note(text="yes"), Note(text="no topic")]
    assert (1, "budget:2", "subscribe") in calls
    assert (1, "budget:2", "publish") in calls


async def test_an_authorize_hook_that_raises_denies() -> None:
    def broken(principal: Any, topic: str, action: str) -> bool:
        raise RuntimeError("database down")

    async with ConnectionManager(authorize=broken) as manager, connect(manager) as client:
        assert (await client.subscribe("t"))["code"] == "forbidden"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('"just a string"', "bad_frame"),
        ("{}", "bad_frame"),
        ('{"op": "explode"}', "unknown_op"),
        ('{"op": "subscribe"}', "bad_frame"),
        ('{"op": "subscribe", "topic": 5}', "bad_frame"),
        (
            '{"op": "subscribe", "topic": "t", "position": {"offset": -1, "epoch": "e"}}',
            "bad_frame",
        ),
        ('{"op": "subscribe", "topic": "t", "position": "17"}', "bad_frame"),
        ('{"op": "subscribe", "topic": "t", "id": [1]}', "bad_frame"),
        ('{"op": "subscribe", "topic": ""}', "invalid_topic"),
        ('{"op": "subscribe", "topic": "no spaces"}', "invalid_topic"),
        ('{"op": "subscribe", "topic": "$internal"}', "invalid_topic"),
        ('{"op": "subscribe", "topic": "' + "x" * 129 + '"}', "invalid_topic"),
        ('{"event": 5}', "bad_frame"),
        ('{"event": "e", "topic": 3}', "bad_frame"),
        (b'{"op": "subscribe", "topic": "\xff"}', "bad_frame"),
        # Text no WebSocket can carry, but a custom transport or the testing client can.
        ('{"op": "subscribe", "topic": "\ud800"}', "bad_frame"),
        ("\ud800" * 20, "bad_frame"),
        ('{"op": "unsubscribe", "topic": "no spaces"}', "invalid_topic"),
        ('{"op": "unsubscribe", "topic": "' + "x" * 129 + '"}', "invalid_topic"),
    ],
)
async def test_bad_frames_get_error_frames_and_harm_nobody(
    manager: ConnectionManager, raw: str | bytes, code: str
) -> None:
    async with connect(manager) as bystander, connect(manager) as client:
        await bystander.subscribe("t")
        await client.receive()
        await client.send_raw(raw)
        error = await client.receive()
        assert error["op"] == "error"
        assert error["code"] == code
        assert error["message"]
        await manager.publish(fact(1), topic="t")
        assert (await bystander.receive_event())["data"]["id"] == 1
        assert (await client.subscribe("t"))["op"] == "subscribed"


async def test_too_many_topics(manager: ConnectionManager) -> None:
    async with ConnectionManager(limits=Limits(max_topics_per_connection=2)) as manager:
        async with connect(manager) as client:
            await client.subscribe("a")
            await client.subscribe("b")
            error = await client.subscribe("c")
            assert (error["code"], error["topic"]) == ("too_many_topics", "c")
            assert (await client.subscribe("a"))["op"] == "subscribed", "resubscribe is fine"


async def test_oversized_frame_closes_with_1009_and_others_go_on() -> None:
    async with ConnectionManager(limits=Limits(max_frame_bytes=100)) as manager:
        async with connect(manager) as bystander, connect(manager) as client:
            await bystander.subscribe("t")
            await client.send_raw('{"op": "subscribe", "topic": "' + "é" * 40 + '"}')
            closed = await closed_with(client)
            assert closed.code == CloseCode.MESSAGE_TOO_BIG
            assert "100 bytes" in closed.reason
            await manager.publish(fact(1), topic="t")
            assert (await bystander.receive_event())["offset"] == 1


@pytest.mark.parametrize("text", ["\ud800" * 40, "é" * 30 + "\udfff" * 20])
async def test_an_oversized_frame_of_lone_surrogates_closes_with_1009(text: str) -> None:
    async with ConnectionManager(limits=Limits(max_frame_bytes=100)) as manager:
        async with connect(manager) as client:
            await client.send_raw(text)
            assert (await closed_with(client)).code == CloseCode.MESSAGE_TOO_BIG


async def test_flood_over_the_rate_limit_closes_with_4029() -> None:
    limits = Limits(max_messages_per_second=5, message_burst=10)
    async with ConnectionManager(limits=limits) as manager, connect(manager) as client:
        for _ in range(30):
            await client.send_raw('{"op": "ping"}')
        closed = await closed_with(client)
        assert closed.code == CloseCode.RATE_LIMITED
        assert manager.stats().connections in (0, 1)
    assert manager.stats().connections == 0


async def test_large_frames_within_the_frame_rate_are_charged_by_bytes() -> None:
    # What a frame costs (parsing, validation) grows with its size: a client sending large
    # frames slowly enough for the frame rate is still limited.
    limits = Limits(max_frame_bytes=1_000, max_bytes_per_second=1_000, byte_burst=2_500)
    async with ConnectionManager(limits=limits) as manager:
        async with connect(manager) as bystander, connect(manager) as client:
            await bystander.subscribe("t")
            await client.receive()
            padding = "x" * 900
            for _ in range(3):
                await client.send_raw('{"op": "ping", "pad": "' + padding + '"}')
            closed = await closed_with(client)
            assert closed.code == CloseCode.RATE_LIMITED
            assert "bytes per second" in closed.reason
            await manager.publish(fact(1), topic="t")
            assert (await bystander.receive_event())["offset"] == 1


async def test_a_client_that_never_reads_is_disconnected_and_delays_nobody() -> None:
    outbox = OutboxLimits(max_messages=10, max_bytes=1_000_000)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as stalled, connect(manager) as healthy:
            await stalled.subscribe("t")
            await healthy.subscribe("t")
            with anyio.fail_after(2):
                for number in range(50):
                    await manager.publish(fact(number), topic="t")
            received = await events(healthy, 50)
            assert [frame["offset"] for frame in received] == list(range(1, 51))
            closed = await closed_with(stalled)
            assert closed.code == CloseCode.SLOW_CONSUMER
            stats = manager.stats()
            assert stats.slow_consumer_disconnects == 1
            assert stats.connections == 1


async def test_a_stalled_client_holds_at_most_its_outbox_bytes() -> None:
    outbox = OutboxLimits(max_messages=1000, max_bytes=5_000)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as stalled:
            await stalled.subscribe("t")
            connection = next(iter(manager.connections.values()))
            sizes = []
            for number in range(200):
                await manager.publish(fact(number), topic="t")
                sizes.append(connection.queued_bytes)
            assert max(sizes) <= 5_000
            assert (await closed_with(stalled)).code == CloseCode.SLOW_CONSUMER


async def test_drop_oldest_keeps_the_newest_frames() -> None:
    outbox = OutboxLimits(max_messages=3, policy=SlowConsumerPolicy.DROP_OLDEST)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as client:
            await client.subscribe("t")
            # The transport holds one message and the writer one more; the rest queue.
            for number in range(20):
                await manager.publish(fact(number), topic="t")
            offsets: list[int] = []
            while not offsets or offsets[-1] < 20:
                offsets.append((await client.receive_event())["offset"])
            assert offsets[-3:] == [18, 19, 20]
            assert offsets == sorted(offsets)
            stats = manager.stats()
            assert stats.dropped == 20 - len(offsets) > 0, "every dropped frame is counted"
            assert stats.slow_consumer_disconnects == 0


async def test_queued_frames_are_batched_into_one_message(manager: ConnectionManager) -> None:
    # The client's socket buffer holds one message, so frames queue while it is full.
    async with connect(manager, send_buffer=1) as client:
        await client.subscribe("t")
        sent_before = client.transport.messages_sent
        for number in range(10):
            await manager.publish(fact(number), topic="t")
        received = await events(client, 10)
        assert [frame["offset"] for frame in received] == list(range(1, 11))
        assert client.transport.messages_sent - sent_before < 10


async def test_heartbeat_closes_a_silent_client_with_4001() -> None:
    heartbeat = Heartbeat(interval=0.05, timeout=0.05)
    async with ConnectionManager(heartbeat=heartbeat) as manager:
        async with connect(manager) as silent, connect(manager) as alive:
            await silent.receive()
            with anyio.fail_after(3):
                async with anyio.create_task_group() as task_group:

                    async def answer_pings() -> None:
                        while True:
                            frame = await alive.receive()
                            if frame.get("op") == "ping":
                                await alive.send_raw('{"op": "pong"}')

                    task_group.start_soon(answer_pings)
                    frames = []
                    with pytest.raises(ConnectionClosed) as info:
                        while True:
                            frames.append(await silent.receive())
                    assert info.value.code == CloseCode.HEARTBEAT_TIMEOUT
                    assert {"op": "ping"} in frames
                    await anyio.sleep(0.3)  # several heartbeats later, `alive` is still open
                    assert len(manager.connections) == 1
                    task_group.cancel_scope.cancel()


async def test_client_ping_gets_a_pong(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.receive()
        await client.send_raw('{"op": "ping"}')
        assert await client.receive() == {"op": "pong"}


async def test_shutdown_drains_then_closes_every_connection_with_1012() -> None:
    manager = ConnectionManager(shutdown_timeout=5)
    async with manager, connect(manager) as first, connect(manager) as second:
        await first.subscribe("t")
        await second.subscribe("t")
        await manager.publish(fact(1), topic="t")
        await manager.aclose()
        for client in (first, second):
            assert (await client.receive_event())["offset"] == 1, "queued frames drain"
            closed = await closed_with(client)
            assert closed.code == CloseCode.SERVICE_RESTART
    assert not manager.running
    with pytest.raises(ManagerClosed):
        await manager.publish(fact(2), topic="t")


async def test_shutdown_deadline_bounds_a_stalled_client() -> None:
    async with ConnectionManager(shutdown_timeout=0.2) as manager:
        async with connect(manager, send_buffer=1) as stalled:
            await stalled.subscribe("t")
            for number in range(5):
                await manager.publish(fact(number), topic="t")
            with anyio.fail_after(3):
                await manager.aclose()
            assert manager.stats().connections == 0
            assert stalled.transport.close_code == CloseCode.SERVICE_RESTART


async def test_connections_arriving_during_shutdown_get_1012() -> None:
    manager = ConnectionManager()
    async with manager:
        pass
    async with connect(manager) as late:
        assert (await closed_with(late)).code == CloseCode.SERVICE_RESTART


async def test_manager_must_be_started() -> None:
    manager = ConnectionManager()
    with pytest.raises(ManagerClosed, match="async with"):
        await manager.publish(fact(1), topic="t")
    with pytest.raises(ManagerClosed):
        await manager.serve(MemoryClient.__new__(MemoryClient))  # type: ignore[arg-type]
    async with manager:
        with pytest.raises(ManagerClosed):
            await manager.start()


async def test_publish_rejects_bad_topics_and_non_events(manager: ConnectionManager) -> None:
    with pytest.raises(InvalidTopic):
        await manager.publish(fact(1), topic="white space")
    with pytest.raises(TypeError, match=r"budget_ws\.Event"):
        await manager.publish({"event": "x"}, topic="t")  # type: ignore[arg-type]


async def test_hooks_subscribe_server_side_and_see_disconnects() -> None:
    gone: list[str] = []
    disconnected = anyio.Event()

    async def on_connect(connection: Connection) -> None:
        await manager.subscribe(connection, f"user:{connection.principal}")

    async def on_disconnect(connection: Connection) -> None:
        gone.append(connection.id)
        disconnected.set()

    manager = ConnectionManager(on_connect=on_connect, on_disconnect=on_disconnect)
    async with manager:
        async with connect(manager, principal="ann") as client:
            await client.receive()
            subscribed = await client.receive()
            assert (subscribed["op"], subscribed["topic"]) == ("subscribed", "user:ann")
            await manager.publish(fact(1), topic="user:ann")
            assert (await client.receive_event())["topic"] == "user:ann"
            [connection] = manager.topic_connections("user:ann")
            await manager.unsubscribe(connection, "user:ann")
            assert await client.receive() == {"op": "unsubscribed", "topic": "user:ann"}
            assert manager.topic_connections("user:ann") == ()
        with anyio.fail_after(2):
            await disconnected.wait()
    assert gone == [connection.id]


async def test_a_failing_on_connect_hook_closes_with_1011() -> None:
    async def on_connect(connection: Connection) -> None:
        raise RuntimeError("bug")

    async with ConnectionManager(on_connect=on_connect) as manager, connect(manager) as client:
        assert (await closed_with(client)).code == CloseCode.INTERNAL_ERROR


async def test_stats_count_what_happened(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.subscribe("t")
        for number in range(3):
            await manager.publish(fact(number), topic="t")
        await events(client, 3)
        stats = manager.stats()
        assert stats.connections == 1
        assert stats.topics == 1
        assert stats.published == 3
        assert stats.delivered >= 5  # welcome, subscribed, three events
        assert stats.queued_frames == 0
        assert "MemoryBackend" in stats.backend
    assert manager.stats().topics == 0, "the last unsubscribe releases the topic"


async def test_connection_close_from_the_app(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.subscribe("t")
        [connection] = manager.connections.values()
        assert not connection.closed
        connection.close(4400, "bye")
        closed = await closed_with(client)
        assert (closed.code, closed.reason) == (4400, "bye")
        await connection.wait_closed()
        assert connection.close_code == 4400
        assert "Connection" in repr(connection)


async def test_bad_clients_leak_no_task() -> None:
    limits = Limits(max_frame_bytes=200, max_messages_per_second=5, message_burst=5)
    heartbeat = Heartbeat(interval=0.05, timeout=0.05)
    async with ConnectionManager(limits=limits, heartbeat=heartbeat) as manager:
        baseline = running_tasks()
        for raw in ["{bad", "[]", '{"op": "x"}', '{"op": "ping"}']:
            async with connect(manager) as client:
                await client.send_raw(raw)
                await client.receive()
        async with connect(manager) as client:
            await client.send_raw("x" * 300)
            assert (await closed_with(client)).code == CloseCode.MESSAGE_TOO_BIG
        async with connect(manager) as flooder:
            for _ in range(20):
                await flooder.send_raw('{"op": "pong"}')
            assert (await closed_with(flooder)).code == CloseCode.RATE_LIMITED
        async with connect(manager) as silent:
            assert (await closed_with(silent)).code == CloseCode.HEARTBEAT_TIMEOUT
        assert manager.stats().connections == 0
        assert running_tasks() == baseline


async def test_a_server_bug_closes_the_connection_with_1011(
    manager: ConnectionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: object, connection: Connection, frame: object) -> None:
        raise RuntimeError("bug in the manager")

    # A bug where the manager answers frames (budget_ws.client_frames).
    monkeypatch.setattr(ClientFrames, "handle", broken)
    async with connect(manager) as client:
        await client.send_raw('{"op": "subscribe", "topic": "t"}')
        assert (await closed_with(client)).code == CloseCode.INTERNAL_ERROR


async def test_connections_beyond_the_maximum_are_told_to_come_back_later() -> None:
    async with ConnectionManager(max_connections=1) as manager:
        async with connect(manager) as first:
            await first.receive()
            async with connect(manager) as second:
                closed = await closed_with(second)
                assert (closed.code, closed.reason) == (1013, "server full; try again later")
            assert (await first.subscribe("t"))["op"] == "subscribed"
        async with connect(manager) as later:
            assert (await later.receive())["op"] == "welcome"


async def test_a_client_closed_for_overflowing_recovers_everything_on_resume() -> None:
    outbox = OutboxLimits(max_messages=10)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as stalled:
            await stalled.subscribe("t")
            for number in range(1, 41):
                await manager.publish(fact(number), topic="t")
            assert (await closed_with(stalled)).code == CloseCode.SLOW_CONSUMER
            positions = dict(stalled.positions)
        async with connect(manager, positions=positions) as back:
            subscribed = await back.subscribe("t", resume=True)
            assert subscribed["recovered"] is True
            received = await events(back, 40 - positions["t"].offset)
            assert [frame["data"]["id"] for frame in received] == list(
                range(positions["t"].offset + 1, 41)
            )


async def test_drop_oldest_never_drops_answers_to_requests() -> None:
    outbox = OutboxLimits(max_messages=2, policy=SlowConsumerPolicy.DROP_OLDEST)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as client:
            await client.subscribe("a")
            for number in range(10):
                await manager.publish(fact(number), topic="a")
            answer = await client.subscribe("b")  # queued behind a full outbox
            assert answer["op"] == "subscribed"
            await client.send_raw("{oops")
            errors = []
            while not errors:
                frame = await client.receive()
                if frame.get("op") == "error":
                    errors.append(frame)
            assert errors[0]["code"] == "bad_frame"


async def test_a_client_that_piles_up_control_frames_is_closed() -> None:
    outbox = OutboxLimits(max_messages=5, max_replay=0)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as client:
            for _ in range(20):
                await client.send_raw('{"op": "ping"}')
            closed = await closed_with(client)
            assert closed.code == CloseCode.SLOW_CONSUMER
            assert manager.stats().slow_consumer_disconnects == 1


async def test_events_no_client_could_receive_are_refused(manager: ConnectionManager) -> None:
    async with ConnectionManager(outbox=OutboxLimits(max_bytes=300)) as small:
        big = FactCreated(id=1, amount=Decimal(1), article="x" * 300)
        with pytest.raises(EventTooLarge, match="max_bytes"):
            await small.publish(big, topic="t")
        with pytest.raises(EventTooLarge):
            await small.broadcast(big)
        assert small.stats().published == 0
        await small.publish(fact(1), topic="t")


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_pings_come_every_interval(anyio_backend: Any) -> None:
    heartbeat = Heartbeat(interval=20, timeout=5)
    async with ConnectionManager(heartbeat=heartbeat) as manager, connect(manager) as client:
        client.timeout = 1000
        pings: list[float] = []
        while len(pings) < 4:
            frame = await client.receive()
            if frame.get("op") == "ping":
                pings.append(anyio.current_time())
                await client.send_raw('{"op": "pong"}')
        gaps = [round(later - earlier, 3) for earlier, later in itertools.pairwise(pings)]
        assert gaps == [20, 20, 20]


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_a_silent_client_is_closed_interval_plus_timeout_after_its_last_frame(
    anyio_backend: Any,
) -> None:
    heartbeat = Heartbeat(interval=20, timeout=5)
    async with ConnectionManager(heartbeat=heartbeat) as manager, connect(manager) as client:
        client.timeout = 1000
        start = anyio.current_time()
        assert (await closed_with(client)).code == CloseCode.HEARTBEAT_TIMEOUT
        assert anyio.current_time() - start == pytest.approx(25)


class _BrokenBackend(MemoryBackend):
    async def subscribe(self, topic: str, listener: Any) -> None:
        raise ConnectionError("backend down")


async def test_backend_failures_on_subscribe(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        seen.append(connection)

    async with ConnectionManager(_BrokenBackend(), on_connect=on_connect) as manager:
        async with connect(manager) as client:
            error = await client.subscribe("t")
            assert (error["code"], error["topic"]) == ("backend_error", "t")
            assert "backend down" in error["message"]
            # A documented outage: one warning line with the cause, no traceback.
            [record] = [r for r in caplog.records if "subscribing" in r.getMessage()]
            assert record.levelname == "WARNING"
            assert record.exc_info is None
            assert "backend down" in record.getMessage()
            with pytest.raises(BackendError, match="backend down"):
                await manager.subscribe(seen[0], "t")
            assert manager.stats().topics == 0


async def test_position_lets_a_page_subscribe_from_what_it_rendered(
    manager: ConnectionManager,
) -> None:
    rendered = await manager.position("budget:1")
    assert rendered.offset == 0
    await manager.publish(fact(1), topic="budget:1")  # between render and subscribe
    assert (await manager.position("budget:1")).offset == 1
    async with connect(manager) as client:
        answer = await client.subscribe("budget:1", position=rendered)
        assert answer["recovered"] is True
        assert (await client.receive_event())["data"]["id"] == 1
    with pytest.raises(InvalidTopic):
        await manager.position("no spaces")


async def test_the_close_code_of_a_client_is_kept(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.receive()
        [connection] = manager.connections.values()
    await connection.wait_closed()
    assert connection.close_code == 1000  # MemoryClient.close() says 1000


async def test_the_managers_tasks_end_with_it() -> None:
    before = running_tasks()
    manager = ConnectionManager()
    await manager.start()
    started = running_tasks().items() - before.items()
    assert sorted(name for _, name in started) == ["budget_ws heartbeats", "budget_ws revocations"]
    async with connect(manager), connect(manager):
        pass
    await manager.aclose()
    assert running_tasks() == before


async def test_a_manager_closed_before_it_started_cannot_start() -> None:
    manager = ConnectionManager()
    assert repr(manager).startswith("<ConnectionManager new backend=MemoryBackend(")
    await manager.aclose()
    assert not manager.running
    assert repr(manager).startswith("<ConnectionManager closed")
    with pytest.raises(ManagerClosed, match="started once"):
        await manager.start()


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_shutdown_gives_stalled_clients_shutdown_timeout_then_closes_them(
    anyio_backend: Any,
) -> None:
    manager = ConnectionManager(shutdown_timeout=7)
    await manager.start()
    async with connect(manager, send_buffer=1) as stalled:
        stalled.timeout = 1000
        await stalled.subscribe("t")
        for number in range(2):  # two messages: one fills its buffer, one cannot be sent
            await manager.publish(fact(number), topic="t")
            await anyio.wait_all_tasks_blocked()
        start = anyio.current_time()
        await manager.aclose()
        assert anyio.current_time() - start == pytest.approx(7)
        assert manager.stats().connections == 0
        assert (await closed_with(stalled)).code == CloseCode.SERVICE_RESTART


async def test_a_connection_id_in_use_is_refused(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.receive()
        [taken] = manager.connections
        transport = MemoryTransport()
        with pytest.raises(ConnectionIdInUse, match="already in use"):
            await manager.serve(transport, connection_id=taken)
        transport.release()
        assert list(manager.connections) == [taken]


async def test_a_failing_on_disconnect_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def on_disconnect(connection: Connection) -> None:
        raise RuntimeError("bug in the hook")

    async with ConnectionManager(on_disconnect=on_disconnect) as manager:
        async with connect(manager) as client:
            await client.receive()
        # connect() returns once serve() has, on_disconnect included.
        assert "on_disconnect failed" in caplog.text
        assert manager.stats().connections == 0
        async with connect(manager) as again:
            assert (await again.receive())["op"] == "welcome"


async def test_unsubscribing_a_connection_from_a_topic_it_lacks_sends_nothing(
    manager: ConnectionManager,
) -> None:
    async with connect(manager) as client:
        await client.receive()
        [connection] = manager.connections.values()
        await manager.unsubscribe(connection, "never")
        await manager.subscribe(connection, "t")
        assert (await client.receive())["op"] == "subscribed", "no unsubscribed frame first"


class _NoStatus(MemoryBackend):
    status = None  # as a third-party backend without the optional status()


class _StatusFails(MemoryBackend):
    def status(self) -> dict[str, object]:
        raise RuntimeError("status broke")


async def test_stats_survive_backends_without_or_with_a_broken_status() -> None:
    async with ConnectionManager(_NoStatus()) as manager:
        assert manager.stats().backend_status == {}
    async with ConnectionManager(_StatusFails()) as manager:
        assert manager.stats().backend_status == {"error": "RuntimeError('status broke')"}


async def test_answers_never_echo_a_large_frame() -> None:
    # An answer quoting what it rejects would multiply a client's bytes in our memory.
    async with ConnectionManager(registry=EventRegistry()) as manager:

        @manager.on(Note)
        async def note(message: ClientMessage[Note]) -> None:
            pass

        async with connect(manager) as client:
            await client.receive()
            unknown_keys = {f"key{number}": number for number in range(3000)}
            raw = json.dumps({"event": "test_manager_note", "data": unknown_keys, "id": 1})
            await client.send_raw(raw)
            invalid = await client.receive()
            assert invalid["code"] == "invalid_event"
            assert "3001 errors" in invalid["message"]
            few = json.dumps({"event": "test_manager_note", "data": {"text": 1, "a": 2, "b": 3}})
            await client.send_raw(few)
            listed = await client.receive()
            assert [detail["loc"] for detail in listed["details"]] == [["text"], ["a"], ["b"]]
            for frame in (
                json.dumps({"event": "x" * 60_000, "data": {}}),
                json.dumps({"op": "subscribe", "topic": "t", "id": "i" * 60_000}),
                '{"op": "subscribe", "topic": "t", "id": ' + "9" * 5000 + "}",
                json.dumps({"op": "x" * 60_000}),
            ):
                await client.send_raw(frame)
                answer = await client.receive()
                assert answer["op"] == "error"
                assert len(json.dumps(answer)) < 1000, answer
            assert len(raw) > 40_000


async def test_answers_a_client_never_reads_are_bounded_in_bytes() -> None:
    # A client that asks and never reads: its answers pile up in the control queue,
    # which holds at most OutboxLimits.max_bytes before the connection is closed.
    limits = Limits(max_messages_per_second=10_000, message_burst=10_000)
    outbox = OutboxLimits(max_bytes=2_000, max_messages=1000)
    async with ConnectionManager(limits=limits, outbox=outbox) as manager:
        async with connect(manager, send_buffer=0) as client:
            await anyio.wait_all_tasks_blocked()
            [connection] = manager.connections.values()
            for _ in range(500):
                await client.send_raw('{"op": "subscribe", "topic": "no spaces"}')
                await anyio.wait_all_tasks_blocked()
                if connection.closed:
                    break
            assert connection.close_code == CloseCode.SLOW_CONSUMER
            assert connection.queued_bytes == 0
        assert manager.stats().slow_consumer_disconnects == 1


@pytest.mark.parametrize("how", ["broadcast", "send"])
async def test_a_burst_of_sends_larger_than_an_outbox_lets_the_writer_run(how: str) -> None:
    # send() and broadcast() never wait on a client, but they are async for a reason:
    # past half an outbox they let its writer run, as publish() does, so a burst larger
    # than an outbox reaches a healthy client instead of closing it as a slow consumer.
    async with ConnectionManager(outbox=OutboxLimits(max_messages=10)) as manager:
        async with connect(manager) as client:
            await client.receive()
            [connection] = manager.connections.values()
            for number in range(30):
                if how == "broadcast":
                    await manager.broadcast(fact(number))
                else:
                    await manager.send(connection, fact(number))
            received = [(await client.receive_event())["data"]["id"] for _ in range(30)]
            assert received == list(range(30))
            assert not connection.closed
