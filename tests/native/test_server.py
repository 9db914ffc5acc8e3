"""``NativeServer``: its port and URL, what it answers that no ASGI server does for it, its
life (start, aclose, several servers on one port), and the flush path that writes events.

What it shares with the ASGI adapters (handshake checks, the protocol, limits, close codes)
runs on it in ``tests/adapters`` (the ``native`` parameter of ``serve``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from tests.support.servers import RawClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.typing import Subprotocol

from budget_ws import (
    ConnectionManager,
    Event,
    Handshake,
    HandshakeRejected,
    OutboxLimits,
)
from budget_ws.adapters import WebSocketApp
from budget_ws.compat import Compatibility
from budget_ws.native import NativeServer

pytestmark = pytest.mark.anyio

PROTOCOL = Subprotocol("budget-ws.v1")


class Tick(Event, name="test_native_server_tick", register=False):
    n: int
    text: str = ""


@asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[ConnectionManager, NativeServer]]:
    """A running manager (``manager_options``) and a native server of it."""
    manager = ConnectionManager(**options.pop("manager_options", {}))
    async with manager, NativeServer(manager, **options) as server:
        yield manager, server


@asynccontextmanager
async def protocol_client(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(
        url, subprotocols=[PROTOCOL], ping_interval=None, max_size=None, open_timeout=5
    ) as ws:
        welcome = json.loads(str(await ws.recv()))
        assert welcome["op"] == "welcome"
        yield ws


async def subscribe(ws: ClientConnection, topic: str = "t") -> None:
    await ws.send(json.dumps({"op": "subscribe", "topic": topic, "id": 1}))
    with anyio.fail_after(5):
        subscribed = json.loads(str(await ws.recv()))
    assert (subscribed["op"], subscribed["topic"]) == ("subscribed", topic)


async def read_frames(ws: ClientConnection, count: int) -> tuple[list[dict[str, Any]], int]:
    """``count`` frames, and the number of messages they came in."""
    received: list[dict[str, Any]] = []
    messages = 0
    with anyio.fail_after(10):
        while len(received) < count:
            message = await ws.recv()
            messages += 1
            received.extend(json.loads(line) for line in str(message).split("\n"))
    assert len(received) == count, f"{len(received) - count} frames too many"
    return received, messages


async def nothing_more(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.2):
            await ws.recv()


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as info:
        with anyio.fail_after(5):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, "no close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def upgrade_request(port: int, path: str = "/ws", extra: str = "") -> bytes:
    """A valid opening request, written out."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: budget-ws.v1\r\n"
        f"{extra}\r\n"
    ).encode()


async def exchange(port: int, *pieces: bytes) -> bytes:
    """Send ``pieces`` (one write each) on a new TCP connection; return the status line and
    headers of the answer (or all the server sent, if it closed without a whole head)."""
    raw = await RawClient.connect(f"ws://127.0.0.1:{port}/ws")
    try:
        for piece in pieces:
            await raw.send_raw(piece)
        received = b""
        loop = asyncio.get_running_loop()
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in received:
                data = await loop.sock_recv(raw.sock, 65536)
                if not data:
                    break
                received += data
        return received.partition(b"\r\n\r\n")[0]
    finally:
        raw.close()


def status(head: bytes) -> int:
    assert head.startswith(b"HTTP/1.1 "), head[:100]
    return int(head.split(b" ", 2)[1])


# The port and the URL ---------------------------------------------------------------------


async def test_port_zero_takes_a_free_port_that_port_and_url_name() -> None:
    manager = ConnectionManager()
    server = NativeServer(manager, port=0)
    assert server.port == 0
    assert server.url == "ws://127.0.0.1:0/ws"
    async with manager, server:
        assert server.port > 0
        assert server.url == f"ws://127.0.0.1:{server.port}/ws"
        async with protocol_client(server.url):
            assert len(manager.connections) == 1
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()


def test_the_url_brackets_an_ipv6_host_and_names_the_path() -> None:
    manager = ConnectionManager()
    assert NativeServer(manager, host="::1", port=8123).url == "ws://[::1]:8123/ws"
    assert NativeServer(manager, port=8123, path="/live/ws").url == "ws://127.0.0.1:8123/live/ws"
    assert NativeServer(manager, port=8123, path=None).url == "ws://127.0.0.1:8123/"


@pytest.mark.parametrize(
    "options",
    [
        {"authenticate": lambda handshake: None},
        {"allowed_origins": ["https://app.example"]},
        {"require_subprotocol": False},
        {"compatibility": Compatibility(topics=lambda handshake, principal: ["t"])},
    ],
    ids=["authenticate", "allowed_origins", "require_subprotocol", "compatibility"],
)
def test_a_web_socket_app_with_handshake_keywords_is_a_type_error(
    options: dict[str, Any],
) -> None:
    app = WebSocketApp(ConnectionManager())
    with pytest.raises(TypeError, match="takes its handshake settings from the WebSocketApp"):
        NativeServer(app, **options)


@pytest.mark.parametrize(
    "options", [{"handshake_timeout": 0}, {"max_handshake_bytes": 0}, {"handshake_timeout": -1}]
)
def test_handshake_bounds_must_be_positive(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        NativeServer(ConnectionManager(), **options)


async def test_a_web_socket_app_s_settings_apply() -> None:
    def authenticate(handshake: Handshake) -> str:
        if handshake.query.get("token") != "t0k":
            raise HandshakeRejected("log in first", status=401, close_code=4003)
        return "ann"

    manager = ConnectionManager()
    app = WebSocketApp(manager, authenticate=authenticate, allowed_origins=["https://a.example"])
    async with manager, NativeServer(app) as server:
        assert server.manager is manager
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url, subprotocols=[PROTOCOL]):
                pass
        assert info.value.response.status_code == 401
        async with protocol_client(server.url + "?token=t0k"):
            [connection] = manager.connections.values()
            assert connection.principal == "ann"
    assert manager.metrics.handshake_refusals == {"authentication": 1}


# Answers of its own: path, plain HTTP, the opening request's bounds ------------------------


async def test_another_path_gets_404_and_path_none_takes_any() -> None:
    async with served() as (manager, server):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{server.port}/other", subprotocols=[PROTOCOL]):
                pass
        assert info.value.response.status_code == 404
        assert info.value.response.body == b"not found\n"
        async with protocol_client(server.url + "?tab=2"):  # a query is not part of the path
            pass
    async with served(path=None) as (manager, server):
        async with protocol_client(f"ws://127.0.0.1:{server.port}/any/where?x=1"):
            assert len(manager.connections) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_plain_http_gets_426(method: str) -> None:
    async with served() as (manager, server):
        async with httpx.AsyncClient(trust_env=False) as http:
            body = b'{"a": 1}' if method == "POST" else None
            url = f"http://127.0.0.1:{server.port}/ws"
            response = await http.request(method, url, content=body)
    assert response.status_code == 426
    assert response.headers["upgrade"].lower() == "websocket"
    assert "upgrade" in {t.strip().lower() for t in response.headers["connection"].split(",")}
    if method != "HEAD":
        assert "budget-ws.v1" in response.text
    assert manager.metrics.connections_opened == 0


async def test_a_request_target_that_names_no_path_is_refused_not_left_hanging() -> None:
    async with served() as (manager, server):
        port = server.port
        opening = upgrade_request(port).replace(b"GET /ws ", b"GET http://[ ", 1)
        assert status(await exchange(port, opening)) == 400
        post = b"POST http://[ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        assert status(await exchange(port, post)) == 404
        # A request line that arrives in pieces is read whole before it is judged.
        post = b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        assert status(await exchange(port, post[:3], post[3:9], post[9:])) == 426
    assert manager.metrics.connections_opened == 0


async def test_an_opening_request_over_max_handshake_bytes_gets_431() -> None:
    async with served(max_handshake_bytes=1024) as (manager, server):
        port = server.port
        bare = len(upgrade_request(port, extra="X-Pad: \r\n"))
        exact = upgrade_request(port, extra="X-Pad: " + "a" * (1024 - bare) + "\r\n")
        assert len(exact) == 1024
        assert status(await exchange(port, exact)) == 101
        over = upgrade_request(port, extra="X-Pad: " + "a" * (1025 - bare) + "\r\n")
        assert status(await exchange(port, over)) == 431
        # Counted over the whole request, however it arrives.
        pieces = [over[i : i + 100] for i in range(0, len(over), 100)]
        assert status(await exchange(port, *pieces)) == 431
    assert manager.metrics.connections_opened == 1


@pytest.mark.parametrize(
    ("extra", "path", "expected"),
    [
        ("", "/ws?q=" + "a" * 9000, 414),
        ("X-Long: " + "a" * 9000 + "\r\n", "/ws", 431),
        ("".join(f"X-H{i}: v\r\n" for i in range(130)), "/ws", 431),
        ("", "/ws", 101),
    ],
    ids=["request-line", "header-line", "headers", "fine"],
)
async def test_the_opening_request_s_lines_are_bounded(
    extra: str, path: str, expected: int
) -> None:
    async with served(max_handshake_bytes=64 * 1024) as (_, server):
        request = upgrade_request(server.port, path=path, extra=extra)
        assert status(await exchange(server.port, request)) == expected


async def test_a_websocket_request_without_a_key_gets_400() -> None:
    async with served() as (manager, server):
        request = upgrade_request(server.port).replace(
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""
        )
        assert status(await exchange(server.port, request)) == 400
    assert manager.metrics.connections_opened == 0


async def test_bytes_that_are_not_http_are_closed_without_an_answer() -> None:
    async with served() as (manager, server):
        tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
        assert await exchange(server.port, tls_hello) == b""
        assert await exchange(server.port, b"HELLO\r\n\r\n") == b""
    assert manager.metrics.connections_opened == 0


async def test_a_client_that_sends_nothing_is_dropped_after_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="budget_ws"):
        async with served(handshake_timeout=0.3) as (manager, server):
            silent = await RawClient.connect(server.url)
            partial = await RawClient.connect(server.url)
            try:
                await partial.send_raw(upgrade_request(server.port)[:40])
                async with protocol_client(server.url) as ws:  # in time: served
                    started = anyio.current_time()
                    assert await silent.read_until_eof(within=3) == b""
                    assert await partial.read_until_eof(within=3) == b""
                    assert anyio.current_time() - started < 2
                    await ws.send('{"op": "ping"}')
                    assert json.loads(str(await ws.recv())) == {"op": "pong"}
            finally:
                silent.close()
                partial.close()
    timeouts = [
        r for r in caplog.records if getattr(r, "budget_ws_event", "") == "handshake_timeout"
    ]
    assert len(timeouts) == 2
    assert all(record.budget_ws_limit_value == 0.3 for record in timeouts)  # type: ignore[attr-defined]
    assert manager.metrics.connections_opened == 1


# Life: start, aclose, serve_forever, several servers on one port ------------------------


async def test_aclose_stops_listening_and_clients_stay_until_the_manager_closes_them() -> None:
    manager = ConnectionManager()
    async with manager:
        server = NativeServer(manager)
        await server.start()
        url = server.url
        async with protocol_client(url) as ws:
            await subscribe(ws)
            await server.aclose()
            with pytest.raises(ConnectionRefusedError):
                async with connect(url, subprotocols=[PROTOCOL], open_timeout=2):
                    pass
            await manager.publish(Tick(n=1), topic="t")  # still served
            [event], _ = await read_frames(ws, 1)
            assert event["data"] == {"n": 1, "text": ""}
            await manager.aclose()
            assert await close_of(ws) == (1012, "server shutting down")


async def test_a_closed_server_starts_again_on_the_same_port() -> None:
    async with served() as (manager, server):
        port = server.port
        await server.aclose()
        with pytest.raises(ConnectionRefusedError):
            async with connect(server.url, subprotocols=[PROTOCOL], open_timeout=2):
                pass
        await server.start()
        assert server.port == port
        async with protocol_client(server.url):
            assert len(manager.connections) == 1


@pytest.mark.parametrize("started", [True, False], ids=["started", "not-started"])
async def test_serve_forever_serves_until_cancelled(started: bool) -> None:
    manager = ConnectionManager()
    async with manager:
        server = NativeServer(manager)
        if started:
            await server.start()
        task = asyncio.get_running_loop().create_task(server.serve_forever())
        for _ in range(500):  # listening within 5 s (serve_forever starts it otherwise)
            if server.port:
                break
            await asyncio.sleep(0.01)
        async with protocol_client(server.url):
            pass
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionRefusedError):
            async with connect(server.url, subprotocols=[PROTOCOL], open_timeout=2):
                pass


async def test_a_handshake_finished_after_shutdown_is_closed_with_1012() -> None:
    checking, release = anyio.Event(), anyio.Event()

    async def authenticate(handshake: Handshake) -> str:
        checking.set()
        await release.wait()
        return "late"

    manager = ConnectionManager()
    async with manager:
        server = NativeServer(manager, authenticate=authenticate)
        await server.start()
        async with anyio.create_task_group() as tasks:

            async def late_client() -> None:
                async with connect(server.url, subprotocols=[PROTOCOL], ping_interval=None) as ws:
                    assert await close_of(ws) == (1012, "server shutting down")

            tasks.start_soon(late_client)
            with anyio.fail_after(5):
                await checking.wait()
            await server.aclose()
            await manager.aclose()
            release.set()
    assert manager.metrics.connections_opened == 0


async def test_a_client_gone_while_authenticate_runs_is_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    checking, release = anyio.Event(), anyio.Event()

    async def authenticate(handshake: Handshake) -> str:
        checking.set()
        await release.wait()
        return "gone"

    manager = ConnectionManager()
    with caplog.at_level(logging.INFO, logger="budget_ws"):
        async with manager, NativeServer(manager, authenticate=authenticate) as server:
            raw = await RawClient.connect(server.url)
            await raw.send_raw(upgrade_request(server.port))
            with anyio.fail_after(5):
                await checking.wait()
            raw.close()
            await anyio.sleep(0.1)  # the server sees the connection end
            release.set()
            async with protocol_client(server.url):
                pass  # the next one is served; authenticate let it through at once
    assert manager.metrics.connections_opened == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_two_servers_share_a_port_with_reuse_port() -> None:
    first_manager, second_manager = ConnectionManager(), ConnectionManager()
    async with (
        first_manager,
        second_manager,
        NativeServer(first_manager, reuse_port=True) as first,
    ):
        with pytest.raises(OSError, match="address already in use"):  # without SO_REUSEPORT
            async with NativeServer(second_manager, port=first.port):
                pass
        async with NativeServer(second_manager, port=first.port, reuse_port=True) as second:
            assert second.port == first.port
            async with anyio.create_task_group() as tasks:
                done = anyio.Event()
                opened = 0

                async def hold() -> None:
                    nonlocal opened
                    async with protocol_client(first.url):
                        opened += 1
                        if opened == 40:
                            done.set()
                        await done.wait()

                for _ in range(40):
                    tasks.start_soon(hold)
                with anyio.fail_after(10):
                    await done.wait()
                    # The kernel spread the connections over both listening sockets.
                    counts = (len(first_manager.connections), len(second_manager.connections))
            assert sum(counts) == 40
            assert min(counts) > 0, counts


# The flush path: events written for many clients from one callback per loop turn ---------


async def test_many_events_to_many_clients_arrive_in_order_exactly_once() -> None:
    async with served() as (manager, server):
        async with anyio.create_task_group() as tasks:
            results: dict[int, list[int]] = {}
            ready = anyio.Event()
            subscribed = 0
            clients, events = 30, 200

            async def client(number: int) -> None:
                nonlocal subscribed
                async with protocol_client(server.url) as ws:
                    await subscribe(ws, "budget:1")
                    subscribed += 1
                    if subscribed == clients:
                        ready.set()
                    received, _ = await read_frames(ws, events)
                    results[number] = [frame["offset"] for frame in received]
                    assert {frame["topic"] for frame in received} == {"budget:1"}
                    await nothing_more(ws)

            for number in range(clients):
                tasks.start_soon(client, number)
            with anyio.fail_after(10):
                await ready.wait()
            delivered = manager.metrics.delivered
            for n in range(1, events + 1):
                await manager.publish(Tick(n=n), topic="budget:1")
                if n % 7 == 0:
                    await asyncio.sleep(0)  # some events alone in their turn, some together
        expected = list(range(1, events + 1))
        assert results == dict.fromkeys(range(clients), expected)
        assert manager.metrics.delivered - delivered == clients * events
        assert manager.stats().delivered == manager.metrics.delivered


async def test_a_burst_leaves_as_one_message_of_frames_joined_with_line_feeds() -> None:
    async with served() as (manager, server):
        raw = await RawClient.open(server.url)
        try:
            await raw.send_text('{"op": "subscribe", "topic": "t", "id": 1}')
            await raw.read_messages(2)  # welcome, subscribed
            delivered = manager.metrics.delivered
            for n in range(1, 51):  # the memory backend's publish does not yield: one turn
                await manager.publish(Tick(n=n), topic="t")
            with anyio.fail_after(5):
                while sum(m.count("\n") + 1 for m in raw.messages[2:]) < 50:
                    assert await raw.read_some()
        finally:
            raw.close()
    messages = raw.messages[2:]
    frames = [json.loads(line) for message in messages for line in message.split("\n")]
    assert [frame["data"]["n"] for frame in frames] == list(range(1, 51))
    assert len(messages) < 50
    assert any("\n" in message for message in messages)
    # Each message is one whole text frame on the wire.
    data_frames = raw.frames[2:]
    assert len(data_frames) == len(messages)
    assert all(f.opcode is Opcode.TEXT and f.fin for f in data_frames)
    assert manager.metrics.delivered - delivered == 50


async def test_a_client_that_stops_reading_is_closed_with_4000_and_the_others_get_everything() -> (
    None
):
    options = {"outbox": OutboxLimits(max_messages=50)}
    async with served(manager_options=options) as (manager, server):
        stalled = await RawClient.open(server.url, receive_buffer=4096)
        try:
            await stalled.send_text('{"op": "subscribe", "topic": "t", "id": 1}')
            await stalled.read_messages(2)
            async with protocol_client(server.url) as healthy:
                await subscribe(healthy)
                [stalled_connection] = [
                    c for c in manager.connections.values() if c.id in stalled.messages[0]
                ]
                text = "x" * 4000
                received: list[int] = []
                waited_in_outbox = False
                with anyio.fail_after(20):
                    n = 0
                    while not stalled_connection.closed:
                        assert n < 10_000, "the stalled client was never closed"
                        n += 1
                        await manager.publish(Tick(n=n, text=text), topic="t")
                        # One event per turn at most, paced by the healthy client.
                        frames, _ = await read_frames(healthy, 1)
                        received.extend(frame["data"]["n"] for frame in frames)
                        # Once the socket is full, frames wait in the outbox (the writer
                        # task has the job back) instead of piling up in the socket's.
                        waited_in_outbox = waited_in_outbox or manager.stats().queued_frames > 0
                    for m in range(n + 1, n + 11):
                        await manager.publish(Tick(n=m, text=text), topic="t")
                    frames, _ = await read_frames(healthy, 10)
                    received.extend(frame["data"]["n"] for frame in frames)
                assert received == list(range(1, n + 11))
                assert waited_in_outbox, "the frames never waited in the outbox"
            close = await stalled.read_until_closed()
        finally:
            stalled.close()
    assert (close.code, close.reason) == (4000, "slow consumer: outbox full; reconnect and resume")
    frames = [json.loads(line) for message in stalled.messages[2:] for line in message.split("\n")]
    got = [frame["data"]["n"] for frame in frames]
    assert got == list(range(1, len(got) + 1))
    assert manager.metrics.slow_consumers == 1
    assert manager.metrics.closes[4000] == 1


async def test_a_connection_whose_task_is_cancelled_is_closed_with_1012() -> None:
    # The native counterpart of a server going down without a graceful shutdown: what
    # asyncio.run() does to the tasks left when its main one ends.
    async with served() as (manager, server):
        before = asyncio.all_tasks()
        async with protocol_client(server.url) as ws:
            [task] = [
                t
                for t in asyncio.all_tasks() - before
                if getattr(t.get_coro(), "__qualname__", "").endswith("_admit")
            ]
            task.cancel()
            assert await close_of(ws) == (1012, "connection ended by the server")
    assert manager.metrics.closes == {1012: 1}
