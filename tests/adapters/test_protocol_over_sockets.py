"""The wire protocol over real sockets, on every server ``serve`` runs: uvicorn with each of
its WebSocket implementations and budget_ws's native server.

Each test speaks ``budget-ws.v1`` with a real client (``websockets``, or a raw socket where
the client must stall or misbehave) and checks the exact frames, close codes and reasons
that ``docs/protocol.md`` and ``docs/topics/limits.md`` promise, whichever server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import uvicorn
from tests.adapters.conftest import SERVERS
from tests.support.servers import RawClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.typing import Origin, Subprotocol

from budget_ws import (
    ConnectionManager,
    Event,
    Handshake,
    HandshakeRejected,
    Heartbeat,
    Limits,
    OutboxLimits,
)
from budget_ws.adapters import WebSocketApp

pytestmark = pytest.mark.anyio

PROTOCOL = Subprotocol("budget-ws.v1")
EVENT = "test_sockets_note"


class Note(Event, name=EVENT, register=False):
    n: int
    text: str = ""


class Client:
    """A ``websockets`` client that reads the server's messages frame by frame."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.pending: deque[dict[str, Any]] = deque()

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            while not self.pending:
                message = await self.socket.recv()
                assert isinstance(message, str), f"a binary message: {message!r}"
                self.pending.extend(json.loads(line) for line in message.split("\n"))
        return self.pending.popleft()

    async def take(self, count: int) -> list[dict[str, Any]]:
        return [await self.next() for _ in range(count)]

    async def send(self, frame: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(frame))

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame and return the next one (its answer)."""
        await self.send(frame)
        return await self.next()

    async def subscribe(
        self, topic: str, request_id: int, position: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"op": "subscribe", "topic": topic, "id": request_id}
        if position is not None:
            frame["position"] = position
        subscribed = await self.request(frame)
        assert (subscribed["op"], subscribed["topic"]) == ("subscribed", topic), subscribed
        return subscribed

    async def closed(self) -> tuple[list[dict[str, Any]], Close]:
        """The frames the server still sent, and its close frame."""
        received: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                received.append(await self.next())
        assert info.value.rcvd is not None, f"no close frame: {info.value!r}"
        return received, info.value.rcvd

    async def nothing_more(self) -> None:
        assert not self.pending, self.pending
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                await self.socket.recv()


@asynccontextmanager
async def client(address: str, *, origin: str | None = None) -> AsyncIterator[Client]:
    """A protocol client, its welcome frame read."""
    async with connect(
        f"ws://{address}/ws",
        subprotocols=[PROTOCOL],
        origin=Origin(origin) if origin else None,
        ping_interval=None,
        max_size=None,
    ) as socket:
        assert socket.subprotocol == PROTOCOL
        opened = Client(socket)
        welcome = await opened.next()
        assert welcome["op"] == "welcome"
        yield opened


async def refused_status(address: str, **options: Any) -> tuple[int, str]:
    """The HTTP status and body a client that sends no Origin gets when refused."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{address}/ws", **options):
            pass
    response = info.value.response
    return response.status_code, response.body.decode()


async def refused_browser(address: str, origin: str, **options: Any) -> Close:
    """The close frame a browser (it sends Origin) gets when refused; no frame before it."""
    async with connect(f"ws://{address}/ws", origin=Origin(origin), **options) as socket:
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                message = await socket.recv()
                raise AssertionError(f"a refused browser got {message!r}")
    assert info.value.rcvd is not None
    return info.value.rcvd


def padded_ping(size: int, fill: str = "é") -> str:
    """A ping frame of exactly ``size`` bytes of UTF-8, padded with ``fill``."""
    head, tail = '{"op": "ping", "pad": "', '"}'
    room = size - len(head) - len(tail)
    width = len(fill.encode())
    text = head + fill * (room // width) + "a" * (room % width) + tail
    assert len(text.encode()) == size
    return text


# Handshake refusals ---------------------------------------------------------------------


async def test_a_client_without_the_subprotocol_gets_400_and_a_browser_1002(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        assert await refused_status(address) == (400, "subprotocol budget-ws.v1 required\n")
        other = [Subprotocol("chat")]
        assert await refused_status(address, subprotocols=other) == (
            400,
            "subprotocol budget-ws.v1 required\n",
        )
        close = await refused_browser(address, f"http://{address}")
        assert (close.code, close.reason) == (1002, "subprotocol budget-ws.v1 required")
        assert manager.metrics.handshake_refusals == {"subprotocol": 3}
        assert manager.metrics.connections_opened == 0


async def test_a_page_of_another_origin_is_closed_with_1008(serve: Any) -> None:
    manager = ConnectionManager()
    app = WebSocketApp(manager, allowed_origins=["https://app.example"])
    async with serve(app) as address:
        close = await refused_browser(address, "https://evil.example", subprotocols=[PROTOCOL])
        assert (close.code, close.reason) == (1008, "origin https://evil.example not allowed")
        async with client(address, origin="https://app.example") as allowed:
            assert await allowed.request({"op": "ping"}) == {"op": "pong"}
        assert manager.metrics.handshake_refusals == {"origin": 1}
        assert manager.metrics.connections_opened == 1


async def test_authenticate_refuses_with_its_status_or_its_close_code(serve: Any) -> None:
    async def authenticate(handshake: Handshake) -> str:
        token = handshake.query.get("token")
        if token != "secret":
            raise HandshakeRejected("bad token", status=401, close_code=4003)
        return "ann"

    manager = ConnectionManager()
    async with serve(WebSocketApp(manager, authenticate=authenticate)) as address:
        assert await refused_status(address, subprotocols=[PROTOCOL]) == (401, "bad token\n")
        close = await refused_browser(address, f"http://{address}", subprotocols=[PROTOCOL])
        assert (close.code, close.reason) == (4003, "bad token")
        async with connect(
            f"ws://{address}/ws?token=secret", subprotocols=[PROTOCOL], ping_interval=None
        ) as socket:
            welcome = json.loads(str(await socket.recv()))
            assert welcome["op"] == "welcome"
            [connection] = manager.connections.values()
            assert connection.principal == "ann"
        assert manager.metrics.handshake_refusals == {"authentication": 2}


async def test_a_full_server_closes_with_1013_before_the_welcome(serve: Any) -> None:
    manager = ConnectionManager(max_connections=1)
    async with serve(WebSocketApp(manager)) as address:
        async with client(address):
            async with connect(
                f"ws://{address}/ws", subprotocols=[PROTOCOL], ping_interval=None
            ) as socket:
                with pytest.raises(ConnectionClosed) as info:
                    with anyio.fail_after(5):
                        message = await socket.recv()
                        raise AssertionError(f"a refused client got {message!r}")
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (
                1013,
                "server full; try again later",
            )


# Limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "binary", "fragmented", "huge"])
async def test_a_frame_over_max_frame_bytes_is_closed_with_1009(serve: Any, kind: str) -> None:
    manager = ConnectionManager(limits=Limits(max_frame_bytes=1000))
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            # Exactly the limit, in bytes of UTF-8 (500 two-byte characters): served.
            largest = padded_ping(1000)
            if kind in ("text", "huge"):
                await socket.socket.send(largest)
            elif kind == "binary":
                await socket.socket.send(largest.encode())
            else:
                await socket.socket.send([largest[:300], largest[300:600], largest[600:]])
            assert await socket.next() == {"op": "pong"}
            # One byte more: closed, whatever came before in the same message. A huge one
            # is refused while it still arrives, and the client still gets the close frame.
            larger = padded_ping(4_000_000 if kind == "huge" else 1001, fill="a")
            with contextlib.suppress(ConnectionClosed):  # closed while it still sends
                if kind in ("text", "huge"):
                    await socket.socket.send(larger)
                elif kind == "binary":
                    await socket.socket.send(larger.encode())
                else:  # each fragment well under the limit, the message over it
                    await socket.socket.send([larger[:400], larger[400:800], larger[800:]])
            received, close = await socket.closed()
    assert received == []
    assert (close.code, close.reason) == (1009, "frame larger than 1000 bytes")
    assert manager.metrics.closes == {1009: 1}


async def test_a_frame_over_max_frame_bytes_is_logged_as_frame_too_big(
    serve: Any, ws_implementation: str, caplog: pytest.LogCaptureFixture
) -> None:
    # docs/reference/logging.md: one INFO line, budget_ws_event "frame_too_big"; the native
    # server's parser refuses the message before the connection sees it, and names the
    # client by its address instead of the connection's id and the frame's size.
    manager = ConnectionManager(limits=Limits(max_frame_bytes=1000))
    with caplog.at_level(logging.INFO, logger="budget_ws"):
        async with serve(WebSocketApp(manager)) as address:
            async with client(address) as socket:
                [connection] = manager.connections.values()
                port = socket.socket.local_address[1]
                await socket.socket.send(padded_ping(1001))
                _, close = await socket.closed()
    assert close.code == 1009
    [record] = [r for r in caplog.records if getattr(r, "budget_ws_event", None) == "frame_too_big"]
    fields = {name: value for name, value in vars(record).items() if name.startswith("budget_ws")}
    expected: dict[str, Any] = {
        "budget_ws_event": "frame_too_big",
        "budget_ws_close_code": 1009,
        "budget_ws_limit": "Limits.max_frame_bytes",
        "budget_ws_limit_value": 1000,
    }
    if ws_implementation == "native":
        expected["budget_ws_client"] = f"127.0.0.1:{port}"
    else:
        expected["budget_ws_connection_id"] = connection.id
        expected["budget_ws_frame_bytes"] = 1001
    assert record.levelno == logging.INFO
    assert fields == expected


async def test_more_frames_than_the_rate_allows_close_with_4029(serve: Any) -> None:
    manager = ConnectionManager(limits=Limits(max_messages_per_second=2, message_burst=5))
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            for _ in range(6):  # the burst and one more, back to back
                await socket.send({"op": "ping"})
            received, close = await socket.closed()
    # The pongs still queued when the limit closed the connection are discarded.
    assert len(received) <= 5
    assert all(frame == {"op": "pong"} for frame in received), received
    assert (close.code, close.reason) == (4029, "more than 2 frames per second")
    assert manager.metrics.closes == {4029: 1}


async def test_more_bytes_than_the_rate_allows_close_with_4029(serve: Any) -> None:
    limits = Limits(max_frame_bytes=1000, max_bytes_per_second=1000, byte_burst=2000)
    manager = ConnectionManager(limits=limits)
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            for _ in range(3):  # within the frame rate, over the byte burst
                await socket.socket.send(padded_ping(1000, fill="a"))
            received, close = await socket.closed()
    assert all(frame == {"op": "pong"} for frame in received), received
    assert (close.code, close.reason) == (4029, "more than 1000 bytes per second")


async def test_a_topic_beyond_max_topics_gets_too_many_topics(serve: Any) -> None:
    manager = ConnectionManager(limits=Limits(max_topics_per_connection=2))
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            await socket.subscribe("a", 1)
            await socket.subscribe("b", 2)
            assert await socket.request({"op": "subscribe", "topic": "c", "id": 3}) == {
                "op": "error",
                "code": "too_many_topics",
                "message": "a connection may hold 2 topics",
                "id": 3,
                "topic": "c",
            }
            await socket.subscribe("a", 4)  # held already: does not count
            assert await socket.request({"op": "unsubscribe", "topic": "b", "id": 5}) == {
                "op": "unsubscribed",
                "topic": "b",
                "id": 5,
            }
            await socket.subscribe("c", 6)
            [connection] = manager.connections.values()
            assert connection.topics == {"a", "c"}


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("my budget", "topic name 'my budget' may only use letters, digits and _ . : @ / = + -"),
        ("price$", "topic name 'price$' may only use letters, digits and _ . : @ / = + -"),
        ("x" * 13, "topic name is longer than 12 characters"),
        ("", "topic name must be a non-empty string"),
    ],
    ids=["space", "dollar", "too-long", "empty"],
)
async def test_a_bad_topic_name_gets_invalid_topic(serve: Any, topic: str, message: str) -> None:
    manager = ConnectionManager(limits=Limits(max_topic_length=12))
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            # The error does not echo the bad name in a "topic" field.
            assert await socket.request({"op": "subscribe", "topic": topic, "id": 1}) == {
                "op": "error",
                "code": "invalid_topic",
                "message": message,
                "id": 1,
            }
            assert await socket.request({"op": "unsubscribe", "topic": topic, "id": 2}) == {
                "op": "error",
                "code": "invalid_topic",
                "message": message,
                "id": 2,
            }
            await socket.subscribe("x" * 12, 3)
            assert manager.metrics.frames_rejected == {"invalid_topic": 2}


# Malformed input -------------------------------------------------------------------------


async def test_malformed_frames_get_error_frames_and_the_connection_stays(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            ws = socket.socket
            await ws.send("not json")
            error = await socket.next()
            assert (error["op"], error["code"]) == ("error", "bad_frame")
            assert error["message"].startswith("frame is not valid JSON: ")
            await ws.send("[1, 2]")
            assert await socket.next() == {
                "op": "error",
                "code": "bad_frame",
                "message": "frame must be a JSON object",
            }
            await ws.send('{"op": "publish", "id": 4}')
            assert await socket.next() == {
                "op": "error",
                "code": "unknown_op",
                "message": "unknown op 'publish'",
                "id": 4,
            }
            await ws.send(b"\x00\xff garbage")  # a binary frame that is not JSON
            error = await socket.next()
            assert (error["op"], error["code"]) == ("error", "bad_frame")
            # A binary frame holding UTF-8 JSON is a frame like any other.
            await ws.send(b'{"op": "subscribe", "topic": "t", "id": 9}')
            subscribed = await socket.next()
            assert (subscribed["op"], subscribed["id"]) == ("subscribed", 9)
            assert await socket.request({"op": "ping"}) == {"op": "pong"}
    assert manager.metrics.frames_rejected == {"bad_frame": 3, "unknown_op": 1}


async def test_a_fragmented_message_is_reassembled(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            ws = socket.socket
            await ws.send(['{"op": "subscribe", ', '"topic": "budget:1", ', '"id": 1}'])
            subscribed = await socket.next()
            assert (subscribed["op"], subscribed["id"]) == ("subscribed", 1)
            # A two-byte character split between two fragments is still valid UTF-8.
            await ws.send([b'{"op": "ping", "pad": "\xc3', b'\xa9"}'], text=True)
            assert await socket.next() == {"op": "pong"}
            await ws.send([b'{"op": "unsubscribe", ', b'"topic": "budget:1", "id": 2}'])
            assert await socket.next() == {"op": "unsubscribed", "topic": "budget:1", "id": 2}


# uvicorn's wsproto implementation ends such a connection without a close frame (the client
# sees 1006); the test after these checks what it does do.
UTF8_CLOSE_FRAME = ["websockets-sansio", "native"]


@pytest.mark.parametrize("ws_implementation", UTF8_CLOSE_FRAME)
@pytest.mark.parametrize(
    "payload",
    [b'{"op": "ping", "pad": "\xff"}', b'{"op": "ping", "pad": "\xed\xa0\x80"}'],
    ids=["invalid-byte", "surrogate"],
)
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(serve: Any, payload: bytes) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            assert await socket.request({"op": "ping"}) == {"op": "pong"}
            await socket.socket.send(payload, text=True)
            received, close = await socket.closed()
    assert received == []
    assert close.code == 1007
    assert manager.metrics.closes == {1007: 1}


@pytest.mark.parametrize("ws_implementation", UTF8_CLOSE_FRAME)
async def test_invalid_utf8_across_fragments_closes_with_1007(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            await socket.socket.send([b'{"op": "ping", "pad": "\xc3', b'("}'], text=True)
            received, close = await socket.closed()
    assert received == []
    assert close.code == 1007
    assert manager.metrics.closes == {1007: 1}


@pytest.mark.parametrize("ws_implementation", ["wsproto"])
async def test_invalid_utf8_ends_the_connection_on_wsproto_too(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as socket:
            [connection] = manager.connections.values()
            await socket.socket.send(b'{"op": "ping", "pad": "\xff"}', text=True)
            with pytest.raises(ConnectionClosed):
                with anyio.fail_after(5):
                    await socket.socket.recv()
        with anyio.fail_after(5):
            await connection.wait_closed()
    assert manager.metrics.closes == {1007: 1}


# Heartbeat -------------------------------------------------------------------------------


async def test_a_client_that_never_answers_pings_is_closed_with_4001(serve: Any) -> None:
    manager = ConnectionManager(heartbeat=Heartbeat(interval=0.2, timeout=0.3))
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as silent, client(address) as lively:
            pings = 0

            async def answer() -> None:
                nonlocal pings
                while True:
                    frame = await lively.next()
                    assert frame == {"op": "ping"}, frame
                    pings += 1
                    await lively.send({"op": "pong"})

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(answer)
                with anyio.fail_after(3):
                    received, close = await silent.closed()
                tasks.cancel_scope.cancel()
            await lively.send({"op": "pong"})  # for a ping read as the task was cancelled
            assert received, "no ping before the close"
            assert all(frame == {"op": "ping"} for frame in received), received
            assert (close.code, close.reason) == (4001, "no pong within 0.3 s")
            assert pings >= 1
            # The client that answers stays, past the silent one's deadline.
            lively.pending.clear()
            with anyio.fail_after(2):
                while True:
                    frame = await lively.next()
                    await lively.send({"op": "pong"})
                    if frame == {"op": "ping"}:
                        break
            assert len(manager.connections) == 1
    assert manager.metrics.closes[4001] == 1


async def test_the_welcome_frame_tells_the_heartbeat_and_the_limits(serve: Any) -> None:
    manager = ConnectionManager(
        heartbeat=Heartbeat(interval=7.5, timeout=3),
        limits=Limits(max_frame_bytes=2048, max_topics_per_connection=5, max_topic_length=64),
    )
    async with serve(WebSocketApp(manager)) as address:
        async with connect(
            f"ws://{address}/ws", subprotocols=[PROTOCOL], ping_interval=None
        ) as socket:
            welcome = json.loads(str(await socket.recv()))
    assert welcome["protocol"] == "budget-ws.v1"
    assert welcome["heartbeat"] == {"interval": 7.5, "timeout": 3}
    assert welcome["limits"] == {
        "max_frame_bytes": 2048,
        "max_messages_per_second": 50.0,
        "max_topics": 5,
        "max_topic_length": 64,
    }


# Recovery --------------------------------------------------------------------------------


async def test_a_client_that_resumes_gets_what_it_missed_in_order_exactly_once(
    serve: Any,
) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as first:
            subscribed = await first.subscribe("budget:1", 1)
            assert subscribed["recovered"] is False
            assert subscribed["position"]["offset"] == 0
            for n in (1, 2, 3):
                await manager.publish(Note(n=n), topic="budget:1")
            events = await first.take(3)
            assert [(e["event"], e["data"]["n"], e["offset"]) for e in events] == [
                (EVENT, 1, 1),
                (EVENT, 2, 2),
                (EVENT, 3, 3),
            ]
            last = {"offset": events[-1]["offset"], "epoch": events[-1]["epoch"]}
        for n in (4, 5, 6):  # while the client is away
            await manager.publish(Note(n=n), topic="budget:1")
        async with client(address) as second:
            resumed = await second.subscribe("budget:1", 1, position=last)
            assert resumed == {
                "op": "subscribed",
                "topic": "budget:1",
                "id": 1,
                "position": {"offset": 6, "epoch": last["epoch"]},
                "recovered": True,
            }
            replayed = await second.take(3)
            assert [(e["data"]["n"], e["offset"], e["epoch"]) for e in replayed] == [
                (n, n, last["epoch"]) for n in (4, 5, 6)
            ]
            await manager.publish(Note(n=7), topic="budget:1")
            live = await second.next()
            assert (live["data"]["n"], live["offset"]) == (7, 7)
            await second.nothing_more()


async def test_events_published_while_a_client_resumes_arrive_once_in_order(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        for n in range(1, 51):
            await manager.publish(Note(n=n), topic="budget:1")
        epoch = (await manager.publish(Note(n=51), topic="budget:1")).epoch
        async with client(address) as socket:

            async def publish() -> None:
                for n in range(52, 301):
                    await manager.publish(Note(n=n), topic="budget:1")
                    if n % 10 == 0:
                        await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(publish)
                subscribed = await socket.subscribe(
                    "budget:1", 1, position={"offset": 20, "epoch": epoch}
                )
            assert subscribed["recovered"] is True
            offsets = [frame["offset"] for frame in await socket.take(300 - 20)]
            assert offsets == list(range(21, 301))
            await socket.nothing_more()


# Slow consumers --------------------------------------------------------------------------


# The outbox bounds a stalled client only where the server's send waits for the socket:
# uvicorn's websockets-sansio implementation does from 0.53 (see test_compat.py).
UVICORN = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
SEND_WAITS = [name for name in SERVERS if name != "websockets-sansio" or UVICORN >= (0, 53)]


@pytest.mark.parametrize("ws_implementation", SEND_WAITS)
async def test_a_client_that_stops_reading_is_closed_with_4000_and_the_others_get_every_event(
    serve: Any,
) -> None:
    manager = ConnectionManager(outbox=OutboxLimits(max_messages=50))
    text = "x" * 4000  # a few KB per event, so socket buffers fill in a few hundred
    async with serve(WebSocketApp(manager)) as address:
        stalled = await RawClient.open(f"ws://{address}/ws", receive_buffer=4096)
        try:
            await stalled.send_text('{"op": "subscribe", "topic": "t", "id": 1}')
            await stalled.read_messages(2)  # welcome, subscribed
            async with client(address) as one, client(address) as two:
                await one.subscribe("t", 1)
                await two.subscribe("t", 1)
                received: dict[Client, list[int]] = {one: [], two: []}
                progress = asyncio.Event()

                async def read(healthy: Client) -> None:
                    while True:
                        frame = await healthy.next()
                        received[healthy].append(frame["data"]["n"])
                        progress.set()

                async def caught_up(count: int) -> None:
                    while min(len(numbers) for numbers in received.values()) < count:
                        progress.clear()
                        await progress.wait()

                published = 0
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(read, one)
                    tasks.start_soon(read, two)
                    with anyio.fail_after(20):
                        while manager.stats().slow_consumer_disconnects == 0:
                            assert published < 10_000, "the stalled client was never closed"
                            published += 1
                            await manager.publish(Note(n=published, text=text), topic="t")
                            await caught_up(published - 5)  # paced by the healthy ones
                        for n in range(published + 1, published + 21):  # and after it
                            await manager.publish(Note(n=n, text=text), topic="t")
                        published += 20
                        await caught_up(published)
                    tasks.cancel_scope.cancel()
                expected = list(range(1, published + 1))
                assert received == {one: expected, two: expected}
            close = await stalled.read_until_closed()
            # Its answer to the close was sent; the server ends the TCP connection then.
            # Leaving before that would shut uvicorn down mid-handshake, which uvicorn
            # 0.35's wsproto implementation fails on (it sends a second close).
            await stalled.read_until_eof()
        finally:
            stalled.close()
    assert (close.code, close.reason) == (4000, "slow consumer: outbox full; reconnect and resume")
    # What the stalled client got before the close: events in order, no gap, then nothing.
    frames = [json.loads(line) for message in stalled.messages[2:] for line in message.split("\n")]
    numbers = [frame["data"]["n"] for frame in frames]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) < published - 20
    assert manager.metrics.slow_consumers == 1


# Graceful shutdown -----------------------------------------------------------------------


async def test_a_graceful_shutdown_sends_what_is_queued_then_closes_everyone_with_1012(
    serve: Any,
) -> None:
    manager = ConnectionManager(shutdown_timeout=5)
    async with serve(WebSocketApp(manager)) as address:
        async with client(address) as a, client(address) as b, client(address) as c:
            for socket in (a, b, c):
                await socket.subscribe("t", 1)
            for n in (1, 2, 3):
                await manager.publish(Note(n=n), topic="t")
            await manager.aclose()
            for socket in (a, b, c):
                received, close = await socket.closed()
                assert [frame["data"]["n"] for frame in received] == [1, 2, 3]
                assert (close.code, close.reason) == (1012, "server shutting down")
    assert manager.metrics.closes == {1012: 3}
