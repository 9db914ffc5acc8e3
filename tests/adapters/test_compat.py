"""Compatibility mode over real sockets: uvicorn (both WebSocket implementations) and
clients that connect the way the original family-budget page does, without the subprotocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from tests.adapters.conftest import WS_IMPLEMENTATIONS
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from budget_ws import (
    CloseCode,
    ConnectionManager,
    Event,
    Handshake,
    HandshakeRejected,
    Heartbeat,
    OutboxLimits,
)
from budget_ws.adapters import WebSocketApp
from budget_ws.adapters import fastapi as fastapi_adapter
from budget_ws.adapters import starlette as starlette_adapter
from budget_ws.compat import Compatibility, CompatTransport
from budget_ws.tracing import OpenTelemetryTracer

pytestmark = pytest.mark.anyio

PROTOCOL = Subprotocol("budget-ws.v1")
EVENT = "test_adapters_compat_fact_created"


class FactCreated(Event, name=EVENT, register=False):
    id: int
    amount: Decimal
    note: str = ""


def fact(number: int, note: str = "") -> FactCreated:
    return FactCreated(id=number, amount=Decimal("12.50"), note=note)


def original(number: int, note: str = "") -> dict[str, Any]:
    """What the original page expects for ``fact(number)``: event and data, nothing else."""
    return {"event": EVENT, "data": {"id": number, "amount": "12.50", "note": note}}


def budget_one(handshake: Handshake, principal: Any) -> list[str]:
    return ["budget:1"]


def compat_app(
    manager: ConnectionManager,
    topics: Callable[[Handshake, Any], Any] = budget_one,
    **options: Any,
) -> WebSocketApp:
    return WebSocketApp(manager, compatibility=Compatibility(topics=topics), **options)


async def original_message(socket: ClientConnection) -> dict[str, Any]:
    """The next message, which must be one JSON object, as ``JSON.parse`` in the page needs."""
    with anyio.fail_after(5):
        message = await socket.recv()
    assert isinstance(message, str)
    assert "\n" not in message, f"frames joined in one message: {message[:200]!r}"
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    return decoded


async def original_messages(socket: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [await original_message(socket) for _ in range(count)]


async def nothing_more(socket: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.2):
            await socket.recv()


async def frames(socket: ClientConnection, count: int) -> list[dict[str, Any]]:
    """Protocol frames, for clients that offer ``budget-ws.v1``."""
    received: list[dict[str, Any]] = []
    with anyio.fail_after(5):
        while len(received) < count:
            message = await socket.recv()
            received.extend(json.loads(line) for line in str(message).split("\n"))
    return received


async def connections(
    manager: ConnectionManager, count: int, topics: Iterable[str] = ("budget:1",)
) -> None:
    """Wait until the manager serves ``count`` connections, its compat ones subscribed.

    A compat connection is registered before its topics are subscribed server-side, and
    an event published in between would not reach it.
    """
    wanted = set(topics)
    for _ in range(500):
        served = list(manager.connections.values())
        if len(served) == count and all(
            wanted <= connection.topics
            for connection in served
            if isinstance(connection.transport, CompatTransport)
        ):
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"{len(manager.connections)} connections, expected {count}")


async def refused_browser(address: str, path: str = "/ws") -> Close:
    """The close frame a same-origin page without the subprotocol gets when refused."""
    async with connect(f"ws://{address}{path}", origin=Origin(f"http://{address}")) as socket:
        assert socket.subprotocol is None
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                await socket.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd


async def refused_status(address: str, path: str = "/ws") -> tuple[int, str]:
    """The HTTP status and body a client without the subprotocol (and no Origin) gets."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{address}{path}"):
            pass
    response = info.value.response
    return response.status_code, response.body.decode().strip()


# Serving the original client -----------------------------------------------------------


async def test_a_client_without_the_subprotocol_gets_original_events_one_per_message(
    serve: Any,
) -> None:
    manager = ConnectionManager()
    async with serve(compat_app(manager)) as address:
        async with connect(f"ws://{address}/ws") as socket:
            assert socket.subprotocol is None
            await connections(manager, 1)
            [connection] = manager.connections.values()
            assert connection.topics == {"budget:1"}
            await manager.publish(fact(1), topic="budget:1")
            await manager.publish(fact(99), topic="budget:2")
            await manager.publish(fact(2), topic="budget:1")
            await manager.send(connection, fact(3))
            await manager.broadcast(fact(4))
            # No welcome, no subscribed, no position: what the original server sent.
            assert await original_messages(socket, 4) == [original(n) for n in (1, 2, 3, 4)]
            await nothing_more(socket)


async def test_a_client_offering_only_other_subprotocols_is_served_in_compatibility_mode(
    serve: Any,
) -> None:
    manager = ConnectionManager()
    async with serve(compat_app(manager)) as address:
        async with connect(f"ws://{address}/ws", subprotocols=[Subprotocol("other")]) as socket:
            assert socket.subprotocol is None
            await connections(manager, 1)
            await manager.publish(fact(1), topic="budget:1")
            assert await original_message(socket) == original(1)


async def test_a_graceful_shutdown_drains_a_compat_client_and_closes_it_with_1012(
    serve: Any,
) -> None:
    manager = ConnectionManager()
    async with serve(compat_app(manager)) as address:
        async with connect(f"ws://{address}/ws") as socket:
            await connections(manager, 1)
            for number in (1, 2, 3):
                await manager.publish(fact(number), topic="budget:1")
            await manager.aclose()
            assert await original_messages(socket, 3) == [original(n) for n in (1, 2, 3)]
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await socket.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.SERVICE_RESTART


async def test_a_compat_client_of_a_manager_that_never_started_is_closed_with_1011(
    serve: Any,
) -> None:
    manager = ConnectionManager()
    async with serve(compat_app(manager), lifespan="off") as address:
        async with connect(f"ws://{address}/ws") as socket:
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await socket.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1011, "server not ready")


async def test_a_burst_arrives_as_one_message_per_event(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(compat_app(manager)) as address:
        async with (
            connect(f"ws://{address}/ws") as original_client,
            connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as protocol_client,
        ):
            await frames(protocol_client, 1)
            await protocol_client.send('{"op": "subscribe", "topic": "budget:1", "id": 1}')
            await frames(protocol_client, 1)
            await connections(manager, 2)
            for number in range(1, 201):
                await manager.publish(fact(number), topic="budget:1")
            assert await original_messages(original_client, 200) == [
                original(n) for n in range(1, 201)
            ]
            # The same burst left joined for a protocol client: the split was needed.
            messages = 0
            received: list[dict[str, Any]] = []
            with anyio.fail_after(5):
                while len(received) < 200:
                    received.extend(
                        json.loads(line) for line in str(await protocol_client.recv()).split("\n")
                    )
                    messages += 1
            assert [frame["offset"] for frame in received] == list(range(1, 201))
            assert messages < 200
            await nothing_more(original_client)


async def test_a_client_offering_the_subprotocol_is_served_as_usual(serve: Any) -> None:
    calls: list[Handshake] = []

    def topics(handshake: Handshake, principal: Any) -> list[str]:
        calls.append(handshake)
        return ["budget:1"]

    manager = ConnectionManager()
    async with serve(compat_app(manager, topics)) as address:
        async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:
            assert socket.subprotocol == PROTOCOL
            [welcome] = await frames(socket, 1)
            assert welcome["op"] == "welcome"
            [connection] = manager.connections.values()
            assert connection.topics == set(), "not subscribed server-side"
            await socket.send('{"op": "subscribe", "topic": "budget:1", "id": 1}')
            [subscribed] = await frames(socket, 1)
            assert (subscribed["op"], subscribed["id"]) == ("subscribed", 1)
            position = await manager.publish(fact(1), topic="budget:1")
            [event] = await frames(socket, 1)
            assert event == {
                **original(1),
                "topic": "budget:1",
                "offset": position.offset,
                "epoch": position.epoch,
            }
    assert calls == []


async def test_positions_are_sent_when_asked(serve: Any) -> None:
    manager = ConnectionManager()
    app = WebSocketApp(manager, compatibility=Compatibility(topics=budget_one, positions=True))
    async with serve(app) as address:
        async with connect(f"ws://{address}/ws") as socket:
            await connections(manager, 1)
            position = await manager.publish(fact(1), topic="budget:1")
            assert await original_message(socket) == {
                **original(1),
                "topic": "budget:1",
                "offset": 1,
                "epoch": position.epoch,
            }


@pytest.mark.parametrize("positions", [False, True])
async def test_a_manager_passing_trace_contexts_keeps_the_original_shape(
    serve: Any, positions: bool
) -> None:
    provider = TracerProvider()
    tracer = OpenTelemetryTracer(provider, context_to_clients=True)
    manager = ConnectionManager(tracer=tracer)
    app = WebSocketApp(manager, compatibility=Compatibility(topics=budget_one, positions=positions))
    try:
        async with serve(app) as address:
            async with connect(f"ws://{address}/ws") as socket:
                await connections(manager, 1)
                position = await manager.publish(fact(1), topic="budget:1")
                received = await original_message(socket)
    finally:
        provider.shutdown()
    if not positions:
        assert received == original(1)  # neither the position nor the trace context
        return
    traceparent = received.pop("traceparent")
    assert received == {**original(1), "topic": "budget:1", "offset": 1, "epoch": position.epoch}
    assert len(traceparent) == 55


def _starlette(manager: ConnectionManager, compatibility: Compatibility) -> Any:
    return Starlette(
        routes=[starlette_adapter.websocket_route(manager, "/ws", compatibility=compatibility)],
        lifespan=starlette_adapter.lifespan(manager),
    )


def _fastapi(manager: ConnectionManager, compatibility: Compatibility) -> Any:
    app = FastAPI(lifespan=fastapi_adapter.lifespan(manager))
    app.include_router(fastapi_adapter.create_router(manager, compatibility=compatibility))
    return app


@pytest.mark.parametrize("make_app", [_starlette, _fastapi], ids=["starlette", "fastapi"])
async def test_starlette_and_fastapi_routes_take_compatibility(
    serve: Any, make_app: Callable[[ConnectionManager, Compatibility], Any]
) -> None:
    manager = ConnectionManager()
    async with serve(make_app(manager, Compatibility(topics=budget_one))) as address:
        async with connect(f"ws://{address}/ws") as socket:
            await connections(manager, 1)
            await manager.publish(fact(1), topic="budget:1")
            assert await original_message(socket) == original(1)


# The topics hook --------------------------------------------------------------------------


def _sync_topics(handshake: Handshake, principal: Any) -> Iterable[str]:
    page = handshake.path.rsplit("/", 1)[-1]
    return (
        topic
        for topic in (f"budget:{handshake.query['budget']}", f"user:{principal}", f"page:{page}")
    )


async def _async_topics(handshake: Handshake, principal: Any) -> Iterable[str]:
    await anyio.lowlevel.checkpoint()
    return list(_sync_topics(handshake, principal))


@pytest.mark.parametrize("hook", [_sync_topics, _async_topics], ids=["sync", "async"])
async def test_the_hook_chooses_topics_from_path_query_cookie_and_principal(
    serve: Any, hook: Callable[[Handshake, Any], Any]
) -> None:
    def authenticate(handshake: Handshake) -> str:
        return handshake.cookies["session"]

    manager = ConnectionManager()
    async with serve(compat_app(manager, hook, authenticate=authenticate)) as address:
        async with connect(
            f"ws://{address}/ws/family?budget=7",
            additional_headers={"Cookie": "session=ann"},
        ) as socket:
            await connections(manager, 1, ["budget:7", "user:ann", "page:family"])
            [connection] = manager.connections.values()
            assert connection.principal == "ann"
            assert connection.topics == {"budget:7", "user:ann", "page:family"}
            for number, topic in enumerate(["budget:7", "budget:8", "user:ann", "page:family"]):
                await manager.publish(fact(number, topic), topic=topic)
            received = await original_messages(socket, 3)
            assert [frame["data"]["note"] for frame in received] == [
                "budget:7",
                "user:ann",
                "page:family",
            ]
            await nothing_more(socket)


async def test_a_hook_may_return_one_topic_as_a_string(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(compat_app(manager, lambda handshake, principal: "budget:1")) as address:
        async with connect(f"ws://{address}/ws"):
            await connections(manager, 1)
            [connection] = manager.connections.values()
            assert connection.topics == {"budget:1"}


async def test_a_hook_that_refuses_gets_the_rejection_s_status_or_close_code(
    serve: Any,
) -> None:
    def topics(handshake: Handshake, principal: Any) -> list[str]:
        raise HandshakeRejected("no such budget", status=404, close_code=4003)

    manager = ConnectionManager()
    async with serve(compat_app(manager, topics)) as address:
        assert await refused_status(address) == (404, "no such budget")
        close = await refused_browser(address)
        assert (close.code, close.reason) == (4003, "no such budget")
    assert manager.stats().connections == 0


def _raises(handshake: Handshake, principal: Any) -> list[str]:
    raise RuntimeError("database down")


@pytest.mark.parametrize(
    "hook",
    [
        _raises,
        lambda handshake, principal: ["budget 1"],
        lambda handshake, principal: ["budget:1", "x" * 129],
        lambda handshake, principal: [""],
        lambda handshake, principal: None,
        lambda handshake, principal: [1],
    ],
    ids=["raises", "space", "too-long", "empty", "none", "not-a-string"],
)
async def test_a_hook_that_fails_or_chooses_an_invalid_topic_refuses_with_1011(
    serve: Any, hook: Callable[[Handshake, Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    manager = ConnectionManager()
    with caplog.at_level(logging.ERROR, logger="budget_ws"):
        async with serve(compat_app(manager, hook)) as address:
            assert await refused_status(address) == (500, "server error choosing topics")
            close = await refused_browser(address)
            assert (close.code, close.reason) == (1011, "server error choosing topics")
    assert manager.stats().connections == 0
    failures = [r for r in caplog.records if "compatibility topics hook failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(record.exc_info for record in failures)


async def test_origin_and_authenticate_are_checked_before_the_hook(serve: Any) -> None:
    calls: list[Handshake] = []

    def topics(handshake: Handshake, principal: Any) -> list[str]:
        calls.append(handshake)
        return ["budget:1"]

    def authenticate(handshake: Handshake) -> str:
        if handshake.cookies.get("session") != "ann":
            raise HandshakeRejected("log in first", close_code=4003)
        return "ann"

    manager = ConnectionManager()
    async with serve(compat_app(manager, topics, authenticate=authenticate)) as address:
        async with connect(
            f"ws://{address}/ws",
            origin=Origin("http://evil.example"),
            additional_headers={"Cookie": "session=ann"},
        ) as socket:
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await socket.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.POLICY_VIOLATION
        assert await refused_status(address) == (403, "log in first")
        close = await refused_browser(address)
        assert (close.code, close.reason) == (4003, "log in first")
        assert calls == []
    assert manager.stats().connections == 0


async def test_without_compatibility_the_subprotocol_is_still_required(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        assert await refused_status(address) == (400, "subprotocol budget-ws.v1 required")
        close = await refused_browser(address)
        assert (close.code, close.reason) == (1002, "subprotocol budget-ws.v1 required")
    lenient = ConnectionManager()
    async with serve(WebSocketApp(lenient, require_subprotocol=False)) as address:
        # Accepted and served as a protocol client: welcome first, no subscription.
        async with connect(f"ws://{address}/ws") as socket:
            [welcome] = await frames(socket, 1)
            assert welcome["op"] == "welcome"
            [connection] = lenient.connections.values()
            assert connection.topics == set()


class StalledClient:
    """A client that completes the handshake without the subprotocol, then never reads.

    Its socket is a raw one with a tiny receive buffer, so the server's writes really
    block; ``websockets``' sans-I/O protocol reads what came once the test looks.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, address: str) -> StalledClient:
        host, port = address.split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        with anyio.fail_after(5):
            await loop.sock_connect(sock, (host, int(port)))
        protocol = ClientProtocol(parse_uri(f"ws://{address}/ws"), max_size=None)
        protocol.send_request(protocol.connect())
        client = cls(sock, protocol)
        await client._flush()
        with anyio.fail_after(5):
            while protocol.state is State.CONNECTING:
                data = await loop.sock_recv(sock, 4096)
                assert data, "the server closed during the handshake"
                protocol.receive_data(data)
        assert protocol.state is State.OPEN
        assert protocol.handshake_exc is None
        return client

    async def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def read_until_closed(self) -> Close:
        """Read everything the server sent, up to its close frame."""
        loop = asyncio.get_running_loop()
        with anyio.fail_after(10):
            while self.protocol.close_rcvd is None:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    self.protocol.receive_eof()
                    break
                self.protocol.receive_data(data)
                self.frames.extend(
                    event for event in self.protocol.events_received() if isinstance(event, Frame)
                )
        assert self.protocol.close_rcvd is not None, "the server sent no close frame"
        return self.protocol.close_rcvd

    def close(self) -> None:
        self.sock.close()


# Heartbeats ------------------------------------------------------------------------------


async def test_a_compat_client_is_never_closed_for_not_answering_pings(serve: Any) -> None:
    manager = ConnectionManager(heartbeat=Heartbeat(interval=0.3, timeout=0.3))
    async with serve(compat_app(manager)) as address:
        async with (
            connect(f"ws://{address}/ws") as original_client,
            connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as protocol_client,
        ):
            await connections(manager, 2)
            # A protocol client that reads but never answers is closed with 4001...
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(3):
                    while True:
                        await protocol_client.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.HEARTBEAT_TIMEOUT
            # ...while the original client, just as silent, stays and keeps receiving.
            for number in range(1, 13):
                await manager.publish(fact(number), topic="budget:1")
                assert await original_message(original_client) == original(number)
                await anyio.sleep(0.25)
            assert original_client.state is State.OPEN
            assert len(manager.connections) == 1


# Slow consumers -------------------------------------------------------------------------


# The outbox bounds a stalled client only where the server's send waits for the socket:
# uvicorn's websockets-sansio implementation does from 0.53; before, its send never
# blocks, and a stalled client's frames pile up inside uvicorn instead (docs/how-to/migrate.md).
UVICORN = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
SEND_WAITS = [ws for ws in WS_IMPLEMENTATIONS if ws != "websockets-sansio" or UVICORN >= (0, 53)]


@pytest.mark.parametrize("ws_implementation", SEND_WAITS)
async def test_a_stalled_compat_client_is_closed_with_4000_and_a_healthy_one_gets_everything(
    serve: Any,
) -> None:
    manager = ConnectionManager(outbox=OutboxLimits(max_messages=50))
    note = "x" * 4000  # a few KB per event, so socket buffers fill in a few hundred
    async with serve(compat_app(manager)) as address:
        stalled = await StalledClient.open(address)
        try:
            async with connect(f"ws://{address}/ws", max_size=None) as healthy:
                await connections(manager, 2)
                received: list[dict[str, Any]] = []
                changed = asyncio.Event()

                async def read_healthy() -> None:
                    try:
                        while True:
                            received.append(await original_message(healthy))
                            changed.set()
                    finally:
                        changed.set()

                async def healthy_has(count: int) -> None:
                    while len(received) < count:
                        if reader.done():
                            reader.result()  # its failure, if it failed
                            raise AssertionError("the healthy client stopped reading")
                        changed.clear()
                        await changed.wait()

                reader = asyncio.create_task(read_healthy())
                published = 0
                try:
                    with anyio.fail_after(20):
                        while manager.stats().slow_consumer_disconnects == 0:
                            assert published < 2000, "the stalled client was never closed"
                            published += 1
                            await manager.publish(fact(published, note), topic="budget:1")
                            # Paced by the healthy client: it never falls behind by much.
                            await healthy_has(published - 5)
                        await healthy_has(published)
                finally:
                    reader.cancel()
                assert received == [original(n, note) for n in range(1, published + 1)]
                assert manager.stats().slow_consumer_disconnects == 1
            close = await stalled.read_until_closed()
            assert close.code == CloseCode.SLOW_CONSUMER
            # What it did get before the stall: whole original events, in order.
            got = [
                json.loads(bytes(frame.data))
                for frame in stalled.frames
                if frame.opcode is Opcode.TEXT
            ]
            assert got == [original(n, note) for n in range(1, len(got) + 1)]
            assert len(got) < published
        finally:
            stalled.close()
        await connections(manager, 0)
