"""The Python client against a real server: uvicorn on 127.0.0.1 with a ConnectionManager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import pytest
from tests.client.app import REGISTRY, TOKEN, Note, Tick, authenticate_token, running, wait_until

from budget_ws import (
    Action,
    ClientClosed,
    ClientMessage,
    Connection,
    ConnectionManager,
    Event,
    HandshakeRefused,
    Heartbeat,
    InvalidLimit,
    InvalidURL,
    Limits,
    SubscriptionRefused,
)
from budget_ws.client import Client, EventReceived, Resync, connect
from budget_ws.server_frames import (
    ErrorFrame,
)

pytestmark = pytest.mark.anyio

FAST = {"registry": REGISTRY, "min_delay": 0.02, "max_delay": 0.1}


def new_topic() -> str:
    return f"t:{uuid.uuid4().hex[:10]}"


async def next_item(iterator: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(iterator.__anext__(), timeout)


def deny_secret(principal: Any, topic: str, action: Action) -> bool:
    return not topic.startswith("secret")


@pytest.fixture
def manager() -> ConnectionManager:
    """Not started: ``running()`` starts it with the server (shadows the root fixture)."""
    return ConnectionManager(
        registry=REGISTRY,
        authorize=deny_secret,
        heartbeat=Heartbeat(interval=5, timeout=5),
        limits=Limits(max_topics_per_connection=3),
        shutdown_timeout=1,
    )


async def test_a_subscription_yields_typed_events_in_order(manager: ConnectionManager) -> None:
    topic = new_topic()
    async with running(manager) as server, connect(server.url, **FAST) as client:
        assert client.connected
        assert client.connection_id in manager.connections
        async with client.subscribe(topic) as subscription:
            assert subscription.position is not None
            assert subscription.position.offset == 0
            for n in (1, 2, 3):
                await manager.publish(Tick(n=n), topic=topic)
            items = [await next_item(subscription) for _ in range(3)]
        assert [item.event for item in items] == [Tick(n=1), Tick(n=2), Tick(n=3)]
        assert [item.position.offset for item in items] == [1, 2, 3]
        assert {(item.name, item.topic) for item in items} == {("client_test_tick", topic)}
        assert items[0].data == {"n": 1}
        assert subscription.position == items[-1].position
        assert client.positions == {}  # left with the block
        assert repr(subscription).startswith("<Subscription")
        assert "open" in repr(client)


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"cookies": {"session": TOKEN}},
        {"query": {"token": TOKEN}},
    ],
    ids=["header", "cookie", "query"],
)
async def test_it_authenticates_as_the_server_hooks_expect(
    manager: ConnectionManager, credentials: dict[str, Any]
) -> None:
    async with (
        running(manager, authenticate=authenticate_token) as server,
        connect(server.url, **FAST, **credentials) as client,
    ):
        connection = manager.connections[client.connection_id or ""]
        how = {"headers": "header", "cookies": "cookie", "query": "query"}
        assert connection.principal == how[next(iter(credentials))]


async def test_a_refused_handshake_is_final_and_typed(manager: ConnectionManager) -> None:
    async with running(manager, authenticate=authenticate_token) as server:
        client = connect(server.url, **FAST, query={"token": "wrong"})
        with pytest.raises(HandshakeRefused) as refused:
            await asyncio.wait_for(client.__aenter__(), 5)
        assert refused.value.status == 403
        assert refused.value.body == "bad token"
        assert refused.value.code is None
        assert "HTTP 403" in str(refused.value)
        with pytest.raises(HandshakeRefused):
            await client.subscribe("t")


@pytest.mark.parametrize(
    ("topic", "code"),
    [("secret:1", "forbidden"), ("not a topic!", "invalid_topic")],
)
async def test_a_refused_subscribe_raises_a_typed_error(
    manager: ConnectionManager, topic: str, code: str
) -> None:
    async with running(manager) as server, connect(server.url, **FAST) as client:
        with pytest.raises(SubscriptionRefused) as refused:
            async with client.subscribe(topic):
                pytest.fail("subscribed")
        assert (refused.value.code, refused.value.topic) == (code, topic)
        with pytest.raises(SubscriptionRefused):
            await client.subscribe(topic)
        # The client stays usable.
        fine = new_topic()
        await client.subscribe(fine)
        await manager.publish(Tick(n=1), topic=fine)
        item = await next_item(client)
        assert item.event == Tick(n=1)


async def test_too_many_topics(manager: ConnectionManager) -> None:
    async with running(manager) as server, connect(server.url, **FAST) as client:
        for _ in range(3):
            await client.subscribe(new_topic())
        with pytest.raises(SubscriptionRefused, match="too_many_topics"):
            await client.subscribe(new_topic())


async def test_send_reaches_a_server_handler_and_errors_reach_on_error(
    manager: ConnectionManager,
) -> None:
    received: list[tuple[Note, str | None]] = []

    @manager.on(Note)
    async def note_added(message: ClientMessage[Note]) -> None:
        received.append((message.event, message.topic))

    class Unhandled(Event, name="client_test_unhandled", register=False):
        pass

    errors: list[ErrorFrame] = []
    async with running(manager) as server, connect(server.url, **FAST) as client:

        @client.on_error
        async def on_error(frame: ErrorFrame) -> None:
            errors.append(frame)

        await client.send(Note(text="hi"), topic="room:1")
        await client.send(Note(text="no topic"))
        await client.send(Unhandled(), id="u1")
        await client.send(Note(text="denied"), topic="secret:1", id="s1")
        await wait_until(lambda: len(received) == 2 and len(errors) == 2)
    assert received == [(Note(text="hi"), "room:1"), (Note(text="no topic"), None)]
    assert [(error.code, error.id) for error in errors] == [
        ("unknown_event", "u1"),
        ("forbidden", "s1"),
    ]


async def test_errors_without_a_handler_are_logged(
    manager: ConnectionManager, caplog: pytest.LogCaptureFixture
) -> None:
    class Unhandled(Event, name="client_test_unhandled_logged", register=False):
        pass

    async with running(manager) as server, connect(server.url, **FAST) as client:
        with caplog.at_level(logging.WARNING, "budget_ws.client"):
            await client.send(Unhandled(), id="x")
            await wait_until(lambda: "unknown_event" in caplog.text)


async def test_routing_subscription_then_handlers_then_the_client_stream(
    manager: ConnectionManager,
) -> None:
    iterated, handled, other = new_topic(), new_topic(), new_topic()
    seen: list[tuple[str, int]] = []
    async with running(manager) as server, connect(server.url, **FAST) as client:

        @client.on(Tick)
        async def on_tick(item: EventReceived) -> None:
            assert isinstance(item.event, Tick)
            seen.append(("handler", item.event.n))
            if item.event.n == 2:
                raise RuntimeError("a failing handler does not stop the next items")

        @client.on("client_test_note")
        async def on_note(item: EventReceived) -> None:
            seen.append(("note", 0))

        await client.subscribe(handled)
        async with client.subscribe(iterated) as subscription:
            await manager.publish(Tick(n=1), topic=iterated)
            await manager.publish(Tick(n=2), topic=handled)
            await manager.publish(Tick(n=3), topic=handled)
            await manager.publish(Note(text="x"), topic=handled)
            item = await next_item(subscription)
            assert item.event == Tick(n=1)
            await wait_until(lambda: len(seen) == 3)
            assert seen == [("handler", 2), ("handler", 3), ("note", 0)]
        # No subscription, no handler: the client's own stream.
        client.registry = REGISTRY
        await manager.broadcast(Tick(n=4))  # no topic: handlers
        await wait_until(lambda: len(seen) == 4)
        await client.subscribe(other)

        class Other(Event, name="client_test_other", register=False):
            x: int

        await manager.publish(Other(x=1), topic=other)
        item = await next_item(client)
        assert (item.name, item.data, item.event, item.topic) == (
            "client_test_other",
            {"x": 1},
            None,
            other,
        )


async def test_a_second_subscription_takes_over_the_topic(manager: ConnectionManager) -> None:
    topic = new_topic()
    async with running(manager) as server, connect(server.url, **FAST) as client:
        first = client.subscribe(topic)
        await first.__aenter__()
        await manager.publish(Tick(n=1), topic=topic)
        await manager.publish(Tick(n=2), topic=topic)
        assert (await next_item(first)).event == Tick(n=1)
        await wait_until(lambda: offset(client, topic) == 2)
        async with client.subscribe(topic) as second:
            with pytest.raises(StopAsyncIteration):
                await next_item(first)
            await first.aclose()  # taken over: does not unsubscribe
            await manager.publish(Tick(n=3), topic=topic)
            items = [await next_item(second) for _ in range(2)]
            assert [item.event.n for item in items] == [2, 3]
            with pytest.raises(TypeError):
                await second.__aenter__()


def offset(client: Client, topic: str) -> int | None:
    position = client.positions.get(topic)
    return position.offset if position else None


async def test_the_heartbeat_is_answered() -> None:
    manager = ConnectionManager(registry=REGISTRY, heartbeat=Heartbeat(interval=0.1, timeout=0.1))
    async with running(manager) as server, connect(server.url, **FAST) as client:
        first = client.connection_id
        await asyncio.sleep(0.8)  # eight pings: an unanswered one closes with 4001
        assert client.connection_id == first
        assert client.connected


async def test_a_final_close_ends_iterators_with_a_typed_error(
    manager: ConnectionManager,
) -> None:
    topic = new_topic()
    async with running(manager) as server:
        async with connect(server.url, **FAST) as client:
            async with client.subscribe(topic) as subscription:
                await manager.publish(Tick(n=1), topic=topic)
                await wait_until(lambda: len(subscription._buffer) == 1)
                for connection in manager.connections.values():
                    connection.close(4003, "go away")
                assert (await next_item(subscription)).event == Tick(n=1)  # what came before
                with pytest.raises(ClientClosed) as closed:
                    await next_item(subscription)
                assert (closed.value.code, closed.value.reason) == (4003, "go away")
                with pytest.raises(ClientClosed):
                    await next_item(client)
                with pytest.raises(ClientClosed):
                    await client.send(Note(text="x"))
        assert not client.connected


async def test_a_final_close_nobody_saw_is_raised_when_leaving(
    manager: ConnectionManager,
) -> None:
    async with running(manager) as server:
        with pytest.raises(ClientClosed, match="1008"):
            async with connect(server.url, **FAST) as client:
                for connection in manager.connections.values():
                    connection.close(1008, "policy")
                await wait_until(lambda: not client.connected)
        # Seen already: leaving does not raise it again.
        async with connect(server.url, **FAST) as client:
            for connection in manager.connections.values():
                connection.close(1000, "bye")
            with pytest.raises(ClientClosed):
                await next_item(client)


async def test_a_restarting_server_is_resumed_without_loss(manager: ConnectionManager) -> None:
    topic = new_topic()
    async with running(manager) as server, connect(server.url, **FAST) as client:
        async with client.subscribe(topic) as subscription:
            await manager.publish(Tick(n=1), topic=topic)
            assert (await next_item(subscription)).event == Tick(n=1)
            first = client.connection_id
            for connection in manager.connections.values():
                connection.close(1012, "restart")
            for n in (2, 3):
                await manager.publish(Tick(n=n), topic=topic)
            items = [await next_item(subscription) for _ in range(2)]
            assert [item.event.n for item in items] == [2, 3]
            assert client.connection_id != first


async def test_server_side_subscriptions_are_tracked_and_not_sent_again() -> None:
    news = new_topic()
    subscribe_on_connect = True

    async def on_connect(connection: Connection) -> None:
        if subscribe_on_connect:
            await manager.subscribe(connection, news)

    manager = ConnectionManager(registry=REGISTRY, on_connect=on_connect)
    async with running(manager) as server, connect(server.url, **FAST) as client:
        await wait_until(lambda: bool(list(manager.topic_connections(news))))
        await manager.publish(Tick(n=1), topic=news)
        item = await next_item(client)
        assert (item.topic, item.position.offset) == (news, 1)
        first = client.connection_id
        subscribe_on_connect = False
        for connection in manager.connections.values():
            connection.close(1012, "restart")
        await wait_until(lambda: client.connected and client.connection_id != first)
        await asyncio.sleep(0.1)
        assert not list(manager.topic_connections(news))  # the client did not subscribe


async def test_a_server_side_subscription_after_missed_events_is_a_gap() -> None:
    news = new_topic()

    async def on_connect(connection: Connection) -> None:
        await manager.subscribe(connection, news)

    manager = ConnectionManager(registry=REGISTRY, on_connect=on_connect)
    async with running(manager) as server, connect(server.url, **FAST) as client:
        resyncs: list[Resync] = []

        @client.on_resync
        async def on_resync(item: Resync) -> None:
            resyncs.append(item)

        await wait_until(lambda: bool(list(manager.topic_connections(news))))
        await manager.publish(Tick(n=1), topic=news)
        assert (await next_item(client)).position.offset == 1
        for connection in manager.connections.values():
            connection.close(1012, "restart")
        # Before the client can be back: missed, and the server subscribes it afresh.
        await manager.publish(Tick(n=2), topic=news)
        await wait_until(lambda: len(resyncs) == 1)
        assert (resyncs[0].why, resyncs[0].position.offset) == ("gap", 2)
        await manager.publish(Tick(n=3), topic=news)
        assert (await next_item(client)).position.offset == 3


async def test_a_server_unsubscribe_ends_the_subscription(manager: ConnectionManager) -> None:
    topic = new_topic()
    async with running(manager) as server, connect(server.url, **FAST) as client:
        async with client.subscribe(topic) as subscription:
            await manager.publish(Tick(n=1), topic=topic)
            await wait_until(lambda: client.positions.get(topic) is not None)
            for connection in manager.connections.values():
                await manager.unsubscribe(connection, topic)
            assert (await next_item(subscription)).event == Tick(n=1)
            with pytest.raises(StopAsyncIteration):
                await next_item(subscription)
        assert topic not in client.positions


async def test_unsubscribe_and_close(manager: ConnectionManager) -> None:
    topic = new_topic()
    async with running(manager) as server:
        client = connect(server.url, **FAST)
        with pytest.raises(ClientClosed, match="not started"):
            await client.subscribe(topic)
        async with client:
            with pytest.raises(ClientClosed, match="started once"):
                await client.start()
            await client.subscribe(topic)
            await wait_until(lambda: bool(list(manager.topic_connections(topic))))
            await client.unsubscribe(topic)
            await wait_until(lambda: not list(manager.topic_connections(topic)))
            waiting = asyncio.create_task(next_item(client, 10))
            await asyncio.sleep(0.01)
            await client.aclose()
            with pytest.raises(StopAsyncIteration):
                await waiting
            with pytest.raises(ClientClosed, match="was closed"):
                await client.subscribe(topic)
            await client.aclose()
        await wait_until(lambda: not manager.connections)


async def test_a_client_with_no_server_gives_up_after_max_attempts() -> None:
    client = Client("ws://127.0.0.1:9/ws", min_delay=0.01, max_delay=0.02, max_attempts=3)
    with pytest.raises(ClientClosed, match="gave up after 3 attempts"):
        await asyncio.wait_for(client.start(), 5)


@pytest.mark.parametrize(
    "options",
    [
        {"buffer_size": 0},
        {"open_timeout": 0},
        {"close_timeout": -1},
        {"heartbeat_slack": -1},
        {"max_attempts": 0},
        {"min_delay": 0},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidLimit):
        Client("ws://127.0.0.1/ws", **options)


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(InvalidURL):
        connect("ftp://127.0.0.1/ws")


async def test_closing_while_frames_keep_arriving_ends_at_once(
    manager: ConnectionManager,
) -> None:
    # asyncio.wait_for() before Python 3.12 returns a message that arrives as its task is
    # cancelled and loses the cancellation: aclose() then waited for the heartbeat's
    # silence bound (a Ctrl-C of `tail` hung). Frames arriving all the time make that
    # moment likely; each close must still end within a second.
    topic = new_topic()
    async with running(manager) as server:

        async def publish_steadily() -> None:
            for n in range(100_000):
                await server.manager.publish(Tick(n=n), topic=topic)
                await asyncio.sleep(0)

        publisher = asyncio.create_task(publish_steadily())
        try:
            for attempt in range(30):
                client = connect(server.url, **FAST)

                @client.on(Tick)
                async def ignore(item: EventReceived) -> None:
                    pass

                await client.start()
                await client.subscribe(topic)
                await asyncio.sleep(0.002 * (attempt % 5))
                async with asyncio.timeout(1):
                    await client.aclose()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
