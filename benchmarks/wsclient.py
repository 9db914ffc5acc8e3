"""A minimal WebSocket client for the benchmarks' load generators.

The benchmarks measure servers, so the clients must cost as little CPU as possible: on a
2-core machine every microsecond a client spends decoding is a microsecond the server
under test does not get, and it shows up as the server's latency. The ``websockets``
library spends roughly 20 µs of Python per received message (frame objects, a receive
queue, a future per ``recv()``); this client parses frames straight out of
``asyncio.Protocol.data_received`` and calls back with each message's payload, with no
task, future or object per message.

It speaks just what the benchmarks need (RFC 6455): the opening handshake (with an
optional subprotocol), unmasked server frames of any length including fragmented
messages, masked client frames, answers to pings and to the closing handshake, and, when
asked, per-message deflate for what the server sends (RFC 7692; the client's own frames
stay uncompressed, which the extension allows). No TLS. It is a measuring tool, not part
of budget_ws.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import time
import zlib
from collections.abc import Callable, Coroutine
from typing import Any, cast

__all__ = ["HandshakeFailed", "Receiver", "connect", "encode_frame"]

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

OnMessage = Callable[[bytes, int], None]
"""Called with a whole message's payload and the ``time.time_ns()`` of its arrival."""


class HandshakeFailed(Exception):
    """The server answered the opening handshake with something other than 101."""


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 section 5.2), FIN set."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    if not payload:
        return header + key
    repeated = (key * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return header + key + masked.to_bytes(length, "big")


class Receiver(asyncio.Protocol):
    """One client connection: handshake, then a callback per received message."""

    def __init__(self, host: str, port: int, path: str, subprotocol: str | None,
                 on_message: OnMessage, deflate: bool = False) -> None:  # fmt: skip
        self._request = _handshake_request(host, port, path, subprotocol, deflate)
        self._inflater: Any = None  # set when the server accepts per-message deflate
        self._compressed = False
        self._on_message = on_message
        self._buffer = b""
        self._upgraded = False
        self._fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        """Resolves with the close code the server sent (None: the connection dropped)."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.bytes_received = 0
        """Bytes read from the socket, handshake included: what a stalled client had held."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not an asyncio.Transport instance on uvloop, so a cast.
        stream = cast(asyncio.Transport, transport)
        self.transport = stream
        stream.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.bytes_received += len(data)
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            status = buffer[: buffer.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self._fail(HandshakeFailed(status.decode("latin-1")))
                return
            self._upgraded = True
            if b"permessage-deflate" in buffer[:end].lower():
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            buffer = buffer[end + 4 :]
            if not self.opened.done():
                self.opened.set_result(None)
        position = 0
        size = len(buffer)
        while size - position >= 2:
            first = buffer[position]
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if size - start < 2:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            position = end
            opcode = first & 0x0F
            payload = buffer[start:end]
            if opcode in (OP_TEXT, OP_BINARY):
                if first & 0x80:
                    if first & 0x40:  # RSV1: compressed
                        payload = self._inflate(payload)
                    self._on_message(payload, now)
                else:
                    self._fragments = [payload]
                    self._compressed = bool(first & 0x40)
            elif opcode == OP_CONTINUATION:
                self._fragments.append(payload)
                if first & 0x80:
                    message = b"".join(self._fragments)
                    self._fragments = []
                    if self._compressed:
                        message = self._inflate(message)
                    self._on_message(message, now)
            elif opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
                self.send_frame(OP_CLOSE, payload[:2])
                assert self.transport is not None
                self.transport.close()
        self._buffer = buffer[position:] if position < size else b""

    def _inflate(self, payload: bytes) -> bytes:
        data: bytes = self._inflater.decompress(payload + b"\x00\x00\xff\xff")
        return data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # Sending

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload))

    def close(self, code: int = 1000) -> None:
        self.send_frame(OP_CLOSE, code.to_bytes(2, "big"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        assert self.transport is not None
        self.transport.abort()


def _handshake_request(host: str, port: int, path: str, subprotocol: str | None,
                       deflate: bool) -> bytes:  # fmt: skip
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(host: str, port: int, path: str, on_message: OnMessage, *,
                  subprotocol: str | None = None, receive_buffer: int | None = None,
                  deflate: bool = False, timeout: float = 60.0) -> Receiver:  # fmt: skip
    """Open a connection and complete the opening handshake.

    ``receive_buffer`` sets ``SO_RCVBUF`` before connecting (a stalled client's small
    window), and such a client should then ``transport.pause_reading()``.
    """
    loop = asyncio.get_running_loop()
    sock = None
    if receive_buffer is not None:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, protocol = await loop.create_connection(
            lambda: Receiver(host, port, path, subprotocol, on_message, deflate), sock=sock
        )
    else:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: Receiver(host, port, path, subprotocol, on_message, deflate), host, port
            ),
            timeout,
        )
    await asyncio.wait_for(protocol.opened, timeout)
    return protocol


def run_client(main: Coroutine[Any, Any, None]) -> None:
    """Run a client process's ``main``: with as many sockets as the hard limit allows, and
    on uvloop when the bench extra installed it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # the bench extra: a cheaper loop for the clients, never the servers
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
