"""One client's connection to the native server (``NativeTransport``): frames that break
RFC 6455, the closing handshake either way, pings, messages of every length, and a socket
read no further while the connection is busy with what came.

The answers are those of ``docs/topics/limits.md`` ("The opening handshake on the native
server"); the raw frames are written here by hand, as a broken or hostile client would.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from tests.support.servers import RawClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from budget_ws import ClientMessage, ConnectionManager, Event, Limits, OutboxLimits
from budget_ws.native import NativeServer
from budget_ws.protocol import encode_client_event

pytestmark = pytest.mark.anyio

PROTOCOL = Subprotocol("budget-ws.v1")


class Big(Event, name="test_native_transport_big", register=False):
    text: str


class Hold(Event, name="test_native_transport_hold", register=False):
    pass


@asynccontextmanager
async def served(manager: ConnectionManager) -> AsyncIterator[NativeServer]:
    async with manager, NativeServer(manager) as server:
        yield server


def client_frame(first_byte: int, payload: bytes, *, masked: bool = True) -> bytes:
    """A client frame written out: ``first_byte`` holds FIN, RSV1-3 and the opcode."""
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = struct.pack("!BB", first_byte, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first_byte, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first_byte, mask_bit | 127, length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


TEXT, CONT, PING = 0x1, 0x0, 0x9
FIN, RSV1 = 0x80, 0x40


@pytest.mark.parametrize(
    "data",
    [
        client_frame(FIN | TEXT, b'{"op": "ping"}', masked=False),
        client_frame(FIN | RSV1 | TEXT, b'{"op": "ping"}'),
        client_frame(FIN | PING, b"x" * 126),
        client_frame(FIN | CONT, b'{"op": "ping"}'),
        client_frame(TEXT, b'{"op": ') + client_frame(FIN | TEXT, b'"ping"}'),
        client_frame(FIN | 0x3, b"reserved opcode"),
    ],
    ids=[
        "unmasked",
        "reserved-bit",
        "long-control-frame",
        "continuation-without-start",
        "new-message-inside-a-fragmented-one",
        "reserved-opcode",
    ],
)
async def test_a_frame_that_breaks_rfc_6455_closes_with_1002(data: bytes) -> None:
    manager = ConnectionManager()
    async with served(manager) as server:
        raw = await RawClient.open(server.url)
        try:
            await raw.read_messages(1)  # welcome
            [connection] = manager.connections.values()
            await raw.send_raw(client_frame(FIN | TEXT, b'{"op": "ping"}'))
            await raw.read_messages(2)
            assert json.loads(raw.messages[1]) == {"op": "pong"}
            await raw.send_raw(data)
            close = await raw.read_until_closed()
        finally:
            raw.close()
        with anyio.fail_after(5):
            await connection.wait_closed()
    assert close.code == 1002
    assert raw.messages[2:] == []
    assert manager.metrics.closes == {1002: 1}


async def test_a_client_s_close_is_answered_and_its_code_recorded() -> None:
    manager = ConnectionManager()
    async with served(manager) as server:
        async with connect(server.url, subprotocols=[PROTOCOL], ping_interval=None) as ws:
            await ws.recv()
            [connection] = manager.connections.values()
            await ws.close(4321, "bye")
            # The server answered with the same code: a clean closing handshake.
            assert ws.protocol.close_rcvd is not None
            assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4321, "bye")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        with anyio.fail_after(5):
            await connection.wait_closed()
        assert connection.close_code == 4321
    assert manager.metrics.closes == {4321: 1}


async def test_the_handshake_completes_while_an_on_connect_hook_awaits() -> None:
    # The response waits for the welcome, to leave in the same write, but only until the
    # end of that turn of the event loop: a hook that awaits must not hold up the opening
    # handshake (the client's own timeout runs on it).
    hook_entered, release = anyio.Event(), anyio.Event()

    async def on_connect(connection: object) -> None:
        hook_entered.set()
        await release.wait()

    manager = ConnectionManager(on_connect=on_connect)
    async with served(manager) as server:
        with anyio.fail_after(5):
            async with connect(server.url, subprotocols=[PROTOCOL], ping_interval=None) as ws:
                await hook_entered.wait()
                assert ws.subprotocol == PROTOCOL  # open, while the hook still waits
                release.set()
                assert json.loads(await ws.recv())["op"] == "welcome"


async def test_a_client_that_vanishes_without_a_close_frame_ends_with_1006() -> None:
    manager = ConnectionManager()
    async with served(manager) as server:
        raw = await RawClient.open(server.url)
        await raw.read_messages(1)
        [connection] = manager.connections.values()
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # a reset, as from a crashed client
        with anyio.fail_after(5):
            await connection.wait_closed()
        assert connection.close_code == 1006
        assert manager.stats().connections == 0


async def test_the_server_s_close_comes_with_its_code_then_the_tcp_close() -> None:
    manager = ConnectionManager()
    async with served(manager) as server:
        raw = await RawClient.open(server.url)
        try:
            await raw.read_messages(1)
            [connection] = manager.connections.values()
            connection.close(1000, "done here")
            close = await raw.read_until_closed()
            assert (close.code, close.reason) == (1000, "done here")
            assert await raw.read_until_eof() == b""
        finally:
            raw.close()
        with anyio.fail_after(5):
            await connection.wait_closed()


async def test_websocket_pings_are_answered_with_pongs() -> None:
    manager = ConnectionManager()
    async with served(manager) as server:
        async with connect(server.url, subprotocols=[PROTOCOL], ping_interval=None) as ws:
            await ws.recv()
            with anyio.fail_after(5):
                latency = await (await ws.ping(b"are you there"))
            assert latency >= 0
            await ws.send('{"op": "ping"}')
            assert json.loads(str(await ws.recv())) == {"op": "pong"}


@pytest.mark.parametrize("length", [125, 126, 65535, 65536, 300_000])
async def test_messages_of_every_length_are_framed_right(length: int) -> None:
    # The three length encodings of RFC 6455 5.2 and their edges: the event's message is
    # exactly ``length`` bytes long.
    manager = ConnectionManager()
    async with served(manager) as server:
        raw = await RawClient.open(server.url)
        try:
            await raw.send_text('{"op": "subscribe", "topic": "t", "id": 1}')
            await raw.read_messages(2)
            epoch = json.loads(raw.messages[1])["position"]["epoch"]
            bare = {"event": Big.event_name, "data": {"text": ""}, "topic": "t", "offset": 1}
            overhead = len(json.dumps({**bare, "epoch": epoch}, separators=(",", ":")))
            text = "a" * (length - overhead)
            await manager.publish(Big(text=text), topic="t")
            await raw.read_messages(3, within=10)
        finally:
            raw.close()
    assert len(raw.messages[2].encode()) == length
    assert json.loads(raw.messages[2])["data"]["text"] == text
    [frame] = raw.frames[2:]
    assert frame.fin


async def test_the_socket_is_read_no_further_while_the_connection_is_busy() -> None:
    # 16 messages wait at most; then TCP slows the client down instead of the server
    # buffering whatever it sends.
    limits = Limits(
        max_messages_per_second=1_000_000,
        message_burst=1_000_000,
        max_bytes_per_second=1e9,
        byte_burst=1_000_000_000,
    )
    manager = ConnectionManager(limits=limits)
    holding, release = anyio.Event(), anyio.Event()

    @manager.on(Hold)
    async def hold(message: ClientMessage[Hold]) -> None:
        holding.set()
        await release.wait()

    frame = client_frame(FIN | TEXT, json.dumps({"op": "ping", "pad": "x" * 1000}).encode())
    total = 4000  # about 4 MB
    async with served(manager) as server:
        raw = await RawClient.open(server.url)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        try:
            await raw.read_messages(1)
            await raw.send_raw(client_frame(FIN | TEXT, encode_client_event(Hold(), None).encode()))
            with anyio.fail_after(5):
                await holding.wait()
            sent = 0
            data = frame * total
            # Write what the socket takes without waiting, until it takes nothing more
            # for a while: the server stopped reading.
            idle = 0
            while sent < len(data) and idle < 5:
                try:
                    written = raw.sock.send(data[sent : sent + 65536])
                except BlockingIOError:
                    idle += 1
                    await anyio.sleep(0.05)
                    continue
                sent += written
                idle = 0
            assert sent < total * len(frame) // 2, f"the server read {sent} bytes while busy"
            release.set()
            # Once free, the connection handles every message that waited, in order.
            loop = asyncio.get_running_loop()
            with anyio.fail_after(20):
                await loop.sock_sendall(raw.sock, data[sent:])
            pongs = 0
            with anyio.fail_after(20):
                while pongs < total:
                    assert await raw.read_some()
                    pongs = sum(message.count("\n") + 1 for message in raw.messages[1:])
            assert {line for m in raw.messages[1:] for line in m.split("\n")} == {'{"op":"pong"}'}
        finally:
            raw.close()


class Numbered(Event, name="test_native_transport_numbered", register=False):
    number: int
    pad: str


def _numbers(messages: list[str]) -> list[int]:
    frames = [json.loads(line) for message in messages for line in message.split("\n")]
    return [f["data"]["number"] for f in frames if f.get("event") == Numbered.event_name]


async def _stalled_subscriber(server: NativeServer) -> RawClient:
    """A subscriber with a tiny receive buffer that reads nothing until told to."""
    raw = await RawClient.open(server.url, receive_buffer=4096)
    await raw.read_messages(1)  # welcome
    await raw.send_text('{"op": "subscribe", "topic": "t", "id": 1}')
    await raw.read_messages(2)  # subscribed
    return raw


async def _flood(manager: ConnectionManager, count: int) -> None:
    """``count`` events of 2 KB, one per loop turn: a steady stream the socket cannot take."""
    for number in range(count):
        await manager.publish(Numbered(number=number, pad="x" * 2000), topic="t")
        await asyncio.sleep(0)


async def test_a_client_that_falls_behind_then_reads_gets_every_event_in_order() -> None:
    # The socket fills, the writer takes over and waits for it to drain, and the frames
    # that queued meanwhile leave joined; nothing is lost, nothing comes twice.
    manager = ConnectionManager(outbox=OutboxLimits(max_messages=10_000, max_bytes=64 * 2**20))
    async with served(manager) as server:
        raw = await _stalled_subscriber(server)
        try:
            await _flood(manager, 3000)
            [connection] = manager.connections.values()
            assert connection.queued_frames > 0  # they wait in the outbox, not the transport
            with anyio.fail_after(30):
                while len(_numbers(raw.messages[2:])) < 3000:
                    assert await raw.read_some()
            assert _numbers(raw.messages[2:]) == list(range(3000))
            assert len(raw.messages) - 2 < 3000  # some left joined
        finally:
            raw.sock.close()


async def test_a_client_gone_while_its_writer_waits_for_the_socket_ends_its_connection() -> None:
    manager = ConnectionManager(outbox=OutboxLimits(max_messages=10_000, max_bytes=64 * 2**20))
    async with served(manager) as server:
        raw = await _stalled_subscriber(server)
        await _flood(manager, 1500)
        [connection] = manager.connections.values()
        # Gone without a word: a reset, as a crashed client's kernel sends it.
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.sock.close()
        with anyio.fail_after(5):
            await connection.wait_closed()
        assert connection.close_code == 1006


def _opening_request(extra: str = "") -> bytes:
    """A valid opening request from a bare socket, written out."""
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: budget-ws.v1\r\n{extra}\r\n"
    ).encode()


async def test_a_client_that_never_answers_the_close_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("budget_ws.connection.CLOSE_TIMEOUT", 0.2)
    manager = ConnectionManager()
    async with served(manager) as server:
        # A bare socket: it reads what comes and answers nothing, not even a close frame.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(_opening_request())
            with anyio.fail_after(5):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
                while not manager.connections:
                    await reader.read(1)  # the welcome, a byte at a time
            [connection] = manager.connections.values()
            connection.close(4444, "bye")
            with anyio.fail_after(3):
                await connection.wait_closed()
            assert connection.close_code == 4444
            # The close frame came, then the end of the TCP connection, unanswered.
            with anyio.fail_after(3):
                rest = await reader.read()
            assert rest.endswith(b"\x88\x05\x11\x5cbye")  # close 4444 "bye", then EOF
        finally:
            writer.close()


async def test_a_refused_browser_that_never_answers_the_close_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("budget_ws.connection.CLOSE_TIMEOUT", 0.2)
    manager = ConnectionManager()
    async with served(manager) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(_opening_request("Origin: https://elsewhere.example\r\n"))
            with anyio.fail_after(3):
                received = await reader.read()  # 101, close 1008, then the end: unanswered
            assert received.startswith(b"HTTP/1.1 101")
            assert b"\x88" in received
            assert b"not allowed" in received
        finally:
            writer.close()
        assert manager.metrics.handshake_refusals["origin"] == 1
