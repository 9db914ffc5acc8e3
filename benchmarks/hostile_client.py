"""The hostile clients of ``benchmarks/hostile.py``: they send costly frames, never read.

Run by the driver as ``python -m benchmarks.hostile_client --url ws://... --count 3``; a
person never needs to. Each of ``--count`` connections is a raw socket with a small
``SO_RCVBUF`` that completes the opening handshake (``budget-ws.v1``) and then never
reads: whatever the server answers stays in the server, or in the two sockets' buffers.
On ``go`` from stdin each sends ``--frame-bytes`` client event frames
(``{"event": "note", "data": {...}}`` with ``--keys`` unknown keys: every one is a
validation error) at ``--rate`` frames per second for ``--duration`` seconds, paced, never
catching up in bursts. A connection the server closed (TCP no longer established, which
the socket state shows without reading, or a send that fails) is read to its end for the
server's close frame, then replaced by a new one, at most ``--max-connects`` times per
client in all. When the time is up every connection still open is read for what is
already there (bounded: ``--read-seconds``, ``--read-bytes``), then reset.

It prints ``{"ready": N}`` once connected, then one JSON line with, per client and per
connection it opened, the frames it sent whole, how it ended (``closed`` by the server,
``reset``, ``open`` at the end, ``refused``), the close code and reason the server sent
(``null``: none found), and the bytes it read afterwards. It is a measuring tool, not
part of budget_ws; it connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks.wsclient import OP_CLOSE, OP_TEXT, encode_frame

__all__ = ["Attempt", "hostile_frame", "main"]

SUBPROTOCOL = "budget-ws.v1"
TCP_ESTABLISHED = 1
"""``tcpi_state`` of an established connection (``linux/tcp_states.h``)."""


@dataclass
class Attempt:
    """One connection a hostile client opened."""

    frames_sent: int = 0
    """Event frames written whole into the socket."""
    ended: str = "open"
    """``closed`` (the server closed the TCP connection), ``reset`` (a send failed),
    ``open`` (still open when the time was up), ``refused`` (no handshake)."""
    close_code: int | None = None
    """The code of the close frame the server sent, if it could be read (None: none)."""
    close_reason: str = ""
    bytes_read: int = 0
    """Bytes read after the connection ended or the time was up (frames the server had
    sent that were still in the sockets' buffers), handshake response excluded."""
    errors_read: int = 0
    """Error frames among them: the frames the server answered (those it read after
    closing, it discards), as far as the bounded read got."""
    seconds: float = 0.0
    """From the handshake to the end of the connection (or of the time)."""


@dataclass
class Client:
    index: int
    attempts: list[Attempt] = field(default_factory=list)


def hostile_frame(frame_bytes: int, keys: int) -> bytes:
    """A ``note`` event frame of about ``frame_bytes`` of JSON whose data has ``keys``
    unknown keys (and none of the two the event requires)."""
    overhead = len('{"event":"note","data":{}}')
    per_key = max(11, (frame_bytes - overhead) // max(1, keys))
    pad = "x" * (per_key - 11)  # '"k00000":"' + pad + '",' is per_key characters
    data = ",".join(f'"k{i:05d}":"{pad}"' for i in range(keys))
    return f'{{"event":"note","data":{{{data}}}}}'.encode()


def _handshake(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    ).encode()


def _established(sock: socket.socket) -> bool:
    """Whether TCP is still established, learnt without reading (``TCP_INFO``)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_ESTABLISHED
    except OSError:
        return False


def _read_frames(data: bytes) -> tuple[int, tuple[int, str] | None]:
    """The error frames in ``data`` (server frames, unmasked) before the first close
    frame, and that close frame's code and reason (None: none yet)."""
    errors = 0
    position = 0
    while len(data) - position >= 2:
        first, length = data[position], data[position + 1] & 0x7F
        start = position + 2
        if length == 126:
            length = int.from_bytes(data[start : start + 2], "big")
            start += 2
        elif length == 127:
            length = int.from_bytes(data[start : start + 8], "big")
            start += 8
        end = start + length
        if end > len(data):
            break
        if first & 0x0F == OP_CLOSE:
            payload = data[start:end]
            code = int.from_bytes(payload[:2], "big") if payload else 1005
            return errors, (code, payload[2:].decode("utf-8", "replace"))
        errors += b'"op":"error"' in data[start : min(end, start + 64)]
        position = end
    return errors, None


class Hostile:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        url = urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.path = url.path or "/"
        text = hostile_frame(args.frame_bytes, args.keys)
        self.frame = encode_frame(OP_TEXT, text)  # one mask for every frame: enough here
        self.frame_length = len(text)
        self.clients = [Client(index) for index in range(args.count)]

    async def open(self) -> tuple[socket.socket, bytes]:
        """A connected socket past the handshake, and what came after the response."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.args.receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), 10)
            await loop.sock_sendall(sock, _handshake(self.host, self.port, self.path))
            response = b""
            while b"\r\n\r\n" not in response:  # the handshake is the one thing read
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                response += chunk
        except BaseException:
            sock.close()
            raise
        head, _, rest = response.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0] + b" ":
            sock.close()
            raise ConnectionError(head.split(b"\r\n")[0].decode("latin-1"))
        return sock, rest

    async def read_out(self, sock: socket.socket, attempt: Attempt, held: bytes) -> None:
        """Read what the socket holds, bounded, and find the server's close frame."""
        loop = asyncio.get_running_loop()
        data = bytearray(held)
        deadline = time.monotonic() + self.args.read_seconds
        while len(data) < self.args.read_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), min(remaining, 1))
            except (OSError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            if b"\x88" in chunk and _read_frames(bytes(data))[1]:
                break
        attempt.bytes_read = len(data) - len(held)
        attempt.errors_read, found = _read_frames(bytes(data))
        if found:
            attempt.close_code, attempt.close_reason = found

    async def run_client(self, client: Client, first: tuple[socket.socket, bytes],
                         stop_at: float) -> None:  # fmt: skip
        loop = asyncio.get_running_loop()
        interval = 1 / self.args.rate
        opened: tuple[socket.socket, bytes] | None = first
        while len(client.attempts) < self.args.max_connects and time.monotonic() < stop_at:
            attempt = Attempt()
            client.attempts.append(attempt)
            try:
                sock, held = opened or await self.open()
            except (OSError, TimeoutError, ConnectionError):
                attempt.ended = "refused"
                await asyncio.sleep(interval)
                continue
            opened = None
            began = time.monotonic()
            due = began
            try:
                while (now := time.monotonic()) < stop_at:
                    if not _established(sock):
                        attempt.ended = "closed"
                        break
                    if due > now:
                        await asyncio.sleep(min(due - now, stop_at - now))
                        continue
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, self.frame),
                                               max(0.001, stop_at - now))  # fmt: skip
                    except TimeoutError:
                        break  # the server stopped reading us: the time ran out meanwhile
                    except OSError:
                        attempt.ended = "reset"
                        break
                    attempt.frames_sent += 1
                    due = max(due + interval, time.monotonic() - interval)  # no catching up
                attempt.seconds = round(time.monotonic() - began, 3)
                await self.read_out(sock, attempt, held)
            finally:
                # With unread data in its buffer the socket is reset on close: the server
                # learns at once, and frees what it held for this connection.
                sock.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Every client's first connection is open before the driver starts its clock.
        first = [await self.open() for _ in self.clients]
        _report({"ready": len(self.clients)})
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        line = (await reader.readline()).decode().strip()
        if line != "go":
            for sock, _ in first:
                sock.close()
            return
        stop_at = time.monotonic() + self.args.duration
        pairs = zip(self.clients, first, strict=True)
        await asyncio.gather(
            *(self.run_client(client, opened, stop_at) for client, opened in pairs)
        )
        _report({
            "frame_bytes": self.frame_length,
            "clients": [
                {"index": client.index, "connects": len(client.attempts),
                 "frames_sent": sum(a.frames_sent for a in client.attempts),
                 "attempts": [asdict(attempt) for attempt in client.attempts]}
                for client in self.clients
            ],
        })  # fmt: skip
        with contextlib.suppress(ValueError):
            await reader.read()  # until the driver closes stdin


def _report(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile_client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--rate", type=float, default=25.0, help="frames/s per client")
    parser.add_argument("--frame-bytes", type=int, default=60_000)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-connects", type=int, default=20,
                        help="connections per client in all, the first included")  # fmt: skip
    parser.add_argument("--receive-buffer", type=int, default=4096)
    parser.add_argument("--read-seconds", type=float, default=2.0)
    parser.add_argument("--read-bytes", type=int, default=8 << 20)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if urlsplit(args.url).hostname != "127.0.0.1":
        raise SystemExit("hostile clients connect to 127.0.0.1 only")
    asyncio.run(Hostile(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
