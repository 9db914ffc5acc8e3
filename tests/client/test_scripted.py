"""The client against a scripted server: bad frames, refusals, duplicates, gaps, retries.

A bare ``websockets`` server plays each frame the test decides, including ones a budget_ws
server never sends. Whatever it sends, the client raises a typed error or carries on; it
never crashes with a raw exception and never hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.client.app import REGISTRY, Peer, ScriptedServer, Tick, wait_until
from websockets.datastructures import Headers
from websockets.http11 import Response

from budget_ws import ClientClosed, Position, ServerProtocolError, SubscriptionRefused
from budget_ws.client import Client, EventReceived, Resync, connect
from budget_ws.protocol import encode_event, encode_ping, position_frame

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"registry": REGISTRY, "min_delay": 0.01, "max_delay": 0.05}


def tick(topic: str, offset: int, epoch: str = "e") -> str:
    return position_frame(encode_event(Tick(n=offset)), topic, Position(offset, epoch))


async def next_item(iterator: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(iterator.__anext__(), timeout)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer() as running:
        yield running


async def start(server: ScriptedServer, **options: Any) -> tuple[Client, Peer]:
    """A started client and the server's side of its connection."""
    client = connect(server.url, **{**FAST, **options})
    starting = asyncio.create_task(client.start())
    peer = await server.accept()
    await peer.welcome()
    await asyncio.wait_for(starting, 5)
    return client, peer


async def subscribed(
    client: Client, peer: Peer, topic: str, position: Position, recovered: bool = False
) -> None:
    """``await client.subscribe(topic)``, answered by ``peer``."""
    subscribing = asyncio.ensure_future(client.subscribe(topic))
    request = await peer.receive()
    assert request["op"] == "subscribe"
    await peer.subscribed(request, position, recovered)
    await asyncio.wait_for(subscribing, 5)


BAD_FRAMES = [
    "not json",
    "[1, 2]",
    '{"neither": 1}',
    '{"op": "subscribed", "topic": "t", "position": {"offset": "x", "epoch": "e"}, '
    '"recovered": false}',
    '{"event": "client_test_tick", "data": {"n": 1}, "topic": "t", "offset": true, "epoch": "e"}',
    '{"op": "error", "code": 400, "message": "m"}',
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_a_bad_frame_closes_with_1002_and_raises_a_typed_error(
    server: ScriptedServer, frame: str
) -> None:
    client, peer = await start(server)
    async with client:
        await peer.send(encode_ping(), frame)
        assert await peer.receive() == {"op": "pong"}  # the frames before it count
        with pytest.raises(ServerProtocolError) as raised:
            await next_item(client)
        assert raised.value.code == 1002
        assert await peer.close_code() == 1002
        with pytest.raises(ServerProtocolError):
            await client.subscribe("t")
    await asyncio.sleep(0.05)
    assert server._peers.empty()  # a server that breaks the protocol is not retried


async def test_a_first_frame_that_is_not_welcome_is_a_protocol_error(
    server: ScriptedServer,
) -> None:
    client = connect(server.url, **FAST)
    starting = asyncio.create_task(client.start())
    peer = await server.accept()
    await peer.send(tick("t", 1))
    with pytest.raises(ServerProtocolError, match="welcome"):
        await asyncio.wait_for(starting, 5)
    assert await peer.close_code() == 1002


async def test_a_server_without_the_subprotocol_is_refused() -> None:
    async with ScriptedServer(subprotocol=False) as server:
        client = connect(server.url, **FAST)
        with pytest.raises(ServerProtocolError, match=r"budget-ws\.v1"):
            await asyncio.wait_for(client.start(), 5)


async def test_frames_share_a_message_and_pings_are_answered(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        await subscribed(client, peer, "t", Position(0, "e"))
        await peer.send(
            tick("t", 1), encode_ping(), '{"op":"pong"}', '{"op":"later"}', tick("t", 2)
        )
        assert await peer.receive() == {"op": "pong"}
        assert [(await next_item(client)).position.offset for _ in range(2)] == [1, 2]


async def test_duplicates_are_dropped_and_gaps_reported_in_order(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t").__aenter__())
        request = await peer.receive()
        await peer.subscribed(request, Position(0, "e"))
        subscription = await asyncio.wait_for(subscribing, 5)
        await peer.send(
            tick("t", 1), tick("t", 2), tick("t", 2), tick("t", 1), tick("t", 4), tick("t", 2, "f")
        )
        items = [await next_item(subscription) for _ in range(6)]
        await subscription.aclose()
    assert [(type(item).__name__, item.position.offset) for item in items] == [
        ("EventReceived", 1),
        ("EventReceived", 2),
        ("Resync", 3),
        ("EventReceived", 4),
        ("Resync", 1),
        ("EventReceived", 2),
    ]
    assert {item.why for item in items if isinstance(item, Resync)} == {"gap"}
    assert subscription.position == Position(2, "f")


async def test_events_of_topics_not_held_are_dropped(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        await peer.send(tick("other", 1))
        await subscribed(client, peer, "t", Position(0, "e"))
        await peer.send(
            tick("other", 2), tick("t", 1), '{"event":"client_test_tick","data":{"n":9}}'
        )
        first = await next_item(client)
        assert (first.topic, first.position.offset) == ("t", 1)
        untargeted = await next_item(client)
        assert (untargeted.topic, untargeted.position, untargeted.event) == (None, None, Tick(n=9))


async def test_a_resync_frame_and_a_resume_that_was_not_recovered(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t", position=Position(7, "old")))
        request = await peer.receive()
        assert request["position"] == {"offset": 7, "epoch": "old"}
        await peer.subscribed(request, Position(20, "new"), recovered=False)
        await asyncio.wait_for(subscribing, 5)
        await peer.send('{"op":"resync","topic":"t","position":{"offset":30,"epoch":"new"}}')
        await peer.send(tick("t", 31, "new"))
        items = [await next_item(client) for _ in range(3)]
    assert items[:2] == [
        Resync("t", Position(20, "new"), "not_recovered"),
        Resync("t", Position(30, "new"), "server"),
    ]
    assert items[2].position == Position(31, "new")


async def test_a_reconnect_resubscribes_with_the_last_position(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        await subscribed(client, peer, "t", Position(0, "e"))
        await peer.send(tick("t", 1), tick("t", 2))
        await wait_until(lambda: client.positions.get("t") == Position(2, "e"))
        await peer.close(1012, "restart")
        peer = await server.accept()
        await peer.welcome()
        request = await peer.receive()
        assert (request["topic"], request["position"]) == ("t", {"offset": 2, "epoch": "e"})
        await peer.subscribed(request, Position(3, "e"), recovered=True)
        await peer.send(tick("t", 3))
        assert [(await next_item(client)).position.offset for _ in range(3)] == [1, 2, 3]


async def test_a_backend_error_is_retried_after_a_random_delay(server: ScriptedServer) -> None:
    client, peer = await start(server, max_delay=0.05)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        request = await peer.receive()
        await peer.send(
            {"op": "error", "code": "backend_error", "message": "later", "id": request["id"]}
        )
        retried = await peer.receive()
        assert retried["topic"] == "t"
        assert retried["id"] != request["id"]
        await peer.subscribed(retried, Position(0, "e"))
        await asyncio.wait_for(subscribing, 5)


async def test_answers_to_superseded_requests_are_ignored(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        first = asyncio.ensure_future(client.subscribe("t"))
        old = await peer.receive()
        second = asyncio.ensure_future(client.subscribe("t", position=Position(5, "e")))
        new = await peer.receive()
        assert new["position"] == {"offset": 5, "epoch": "e"}
        await peer.subscribed(old, Position(9, "e"))  # superseded: ignored
        await peer.send({"op": "error", "code": "forbidden", "message": "m", "id": old["id"]})
        await asyncio.sleep(0.05)
        assert not first.done()
        await peer.subscribed(new, Position(6, "e"), recovered=True)
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert client.positions["t"] == Position(5, "e")


async def test_an_unsubscribed_answer_keeps_a_topic_subscribed_again(
    server: ScriptedServer,
) -> None:
    client, peer = await start(server)
    async with client:
        await subscribed(client, peer, "t", Position(0, "e"))
        await client.unsubscribe("t")
        leave = await peer.receive()
        assert leave["op"] == "unsubscribe"
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        request = await peer.receive()
        await peer.send({"op": "unsubscribed", "topic": "t", "id": leave["id"]})
        await peer.subscribed(request, Position(4, "e"))
        await asyncio.wait_for(subscribing, 5)
        await peer.send(tick("t", 5))
        assert (await next_item(client)).position.offset == 5


async def test_a_cancelled_subscribe_leaves_the_topic(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        entering = asyncio.ensure_future(client.subscribe("t").__aenter__())
        request = await peer.receive()
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        assert await peer.receive() == {"op": "unsubscribe", "topic": "t", "id": request["id"] + 1}
        awaiting = asyncio.ensure_future(client.subscribe("u"))
        await peer.receive()
        awaiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiting


async def test_a_subscribe_waiting_when_the_server_unsubscribes_is_refused(
    server: ScriptedServer,
) -> None:
    client, peer = await start(server)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        await peer.receive()
        await peer.send({"op": "unsubscribed", "topic": "t"})
        with pytest.raises(SubscriptionRefused, match="unsubscribed"):
            await asyncio.wait_for(subscribing, 5)


async def test_a_silent_server_is_left_with_4001(server: ScriptedServer) -> None:
    client = connect(server.url, heartbeat_slack=0.1, **FAST)
    starting = asyncio.create_task(client.start())
    peer = await server.accept()
    await peer.welcome(interval=0.1, timeout=0.2)  # then nothing, not even a ping
    await asyncio.wait_for(starting, 5)
    async with client:
        assert await peer.close_code(timeout=2) == 4001
        again = await server.accept(timeout=2)
        await again.welcome()
        await wait_until(lambda: client.connected)


async def test_handshake_statuses_worth_retrying_are_retried() -> None:
    refusals = [503, 429]

    def process_request(connection: Any, request: Any) -> Response | None:
        if refusals:
            status = refusals.pop(0)
            return Response(status, "no", Headers(), b"later")
        return None

    async with ScriptedServer(process_request=process_request) as server:
        client, _ = await start(server)
        async with client:
            assert client.connected
        assert refusals == []


async def test_a_server_that_closes_before_its_welcome_counts_as_a_failed_attempt(
    server: ScriptedServer,
) -> None:
    client = connect(server.url, max_attempts=2, **FAST)
    starting = asyncio.create_task(client.start())
    for _ in range(2):
        peer = await server.accept()
        await peer.close(1011, "broken")
    with pytest.raises(ClientClosed, match="gave up after 2 attempts"):
        await asyncio.wait_for(starting, 5)


async def test_send_waits_for_a_connection(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        await peer.close(1012, "restart")
        await wait_until(lambda: not client.connected)
        sending = asyncio.create_task(client.send(Tick(n=1), topic="t"))
        await asyncio.sleep(0.02)
        assert not sending.done()
        peer = await server.accept()
        await peer.welcome()
        assert await peer.receive() == {"event": "client_test_tick", "data": {"n": 1}, "topic": "t"}
        await asyncio.wait_for(sending, 5)


async def test_an_event_that_fails_validation_has_no_typed_event(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = await start(server)
    async with client:
        with caplog.at_level(logging.WARNING, "budget_ws.client"):
            await peer.send('{"event":"client_test_tick","data":{"n":"many"}}')
            item = await next_item(client)
        assert isinstance(item, EventReceived)
        assert (item.event, item.data) == (None, {"n": "many"})
        assert "client_test_tick" in caplog.text


async def test_aclose_from_a_handler(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:

        @client.on(Tick)
        async def stop(item: EventReceived) -> None:
            await client.aclose()

        await peer.send('{"event":"client_test_tick","data":{"n":1}}')
        assert await peer.close_code() == 1000
        await wait_until(lambda: not client.connected)
    with pytest.raises(StopAsyncIteration):
        await next_item(client)


async def test_a_subscribe_while_reconnecting_is_sent_on_the_welcome(
    server: ScriptedServer,
) -> None:
    client, peer = await start(server)
    async with client:
        await peer.close(1012, "restart")
        await wait_until(lambda: not client.connected)
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        peer = await server.accept()
        await asyncio.sleep(0.02)
        assert not subscribing.done()
        await peer.welcome()
        request = await peer.receive()
        assert request["topic"] == "t"
        await peer.subscribed(request, Position(0, "e"))
        await asyncio.wait_for(subscribing, 5)


async def test_a_subscribe_waiting_when_the_client_closes_raises(server: ScriptedServer) -> None:
    client, peer = await start(server)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        await peer.receive()
        await peer.close(4003, "forbidden")
        with pytest.raises(ClientClosed) as closed:
            await asyncio.wait_for(subscribing, 5)
        assert closed.value.code == 4003
    client, peer = await start(server)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        await peer.receive()
        await client.aclose()
        with pytest.raises(ClientClosed, match="was closed"):
            await asyncio.wait_for(subscribing, 5)


async def test_a_failure_of_the_client_itself_surfaces_instead_of_hanging(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = await start(server)

    async def broken(*args: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(client, "_handle", broken)
    with caplog.at_level(logging.ERROR, "budget_ws.client"):
        await peer.send(encode_ping())
        with pytest.raises(ZeroDivisionError):
            await next_item(client)
    assert "the connection loop failed" in caplog.text
    with pytest.raises(ZeroDivisionError):
        async with client:
            pass
