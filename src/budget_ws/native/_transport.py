"""One client's TCP connection to the native server, as a :class:`~budget_ws.Transport`.

``websockets``' sans-I/O ``ServerProtocol`` parses the opening request and the client's
frames, answers pings and runs the closing handshake; messages to the client are framed
here (:func:`~budget_ws.wire.text_frame`) and written straight to the socket, so that a
fan-out frames an event once for every subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from .. import connection
from ..admission import Gatekeeper, Refusal
from ..errors import ConnectionClosed
from ..flush import Flusher
from ..handshake import Handshake
from ..protocol import SUBPROTOCOL, close_reason
from ..wire import text_frame

__all__ = ["Endpoint", "NativeTransport"]

logger = logging.getLogger("budget_ws.native")
"""Lines about the native server; the table is in ``docs/reference/logging.md``."""

_UPGRADE_BODY = "This endpoint speaks WebSocket (subprotocol budget-ws.v1) only."
_HIGH_WATER = 64 * 1024
"""Bytes waiting in the transport's buffer at most before its writes pause (then the
connection's frames wait in its outbox)."""
_MAX_LINE = 8192
"""Bytes of one line of the opening request at most (as ``websockets`` bounds them)."""
_MAX_HEADERS = 128
"""Headers of the opening request at most (as ``websockets`` bounds them)."""
_INBOX_PAUSE = 16
"""Client messages waiting for the reader at most before the socket stops being read."""


@dataclass(eq=False)
class Endpoint:
    """What every connection of one native server shares."""

    gatekeeper: Gatekeeper
    path: str | None
    handshake_timeout: float
    max_handshake_bytes: int
    forwarded_allow_ips: frozenset[str] = frozenset()
    scheme: str = "ws"
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """The connections' tasks (handshake, then serving), kept until they end."""
    waiting: set[NativeTransport] = field(default_factory=set)
    """Connections whose opening request has not come yet: the server drops them when it
    stops listening, as nobody else would (the manager does not know them)."""

    def drop_waiting(self) -> None:
        for transport in list(self.waiting):
            transport.abort()


class _ServerProtocol(ServerProtocol):
    """``websockets``' protocol, closing an oversized message with budget_ws's reason."""

    def __init__(self, max_frame_bytes: int) -> None:
        super().__init__(max_size=max_frame_bytes)
        self.max_frame_bytes = max_frame_bytes
        self.too_big = False
        """Set when a client message over the limit failed the connection."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == 1009:
            reason = f"frame larger than {self.max_frame_bytes} bytes"
            self.too_big = True
        super().fail(code, reason)


class NativeTransport(asyncio.Protocol):
    """An asyncio protocol that is also the connection's
    :class:`~budget_ws.connection.DirectTransport`."""

    __slots__ = (
        "_drain",
        "_ended",
        "_endpoint",
        "_fragments",
        "_fragments_text",
        "_handshake_bytes",
        "_head",
        "_held",
        "_inbox",
        "_lost",
        "_open",
        "_paused",
        "_reading_paused",
        "_receiver",
        "_timer",
        "_transport",
        "_ws",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        limits = endpoint.gatekeeper.manager.limits
        self._ws = _ServerProtocol(limits.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._open = False
        """Accepted and no close frame sent or received: messages may be written."""
        self._handshake_bytes = 0
        self._head: bytes | None = b""
        """The opening request's bytes until its head is complete, then None."""
        self._timer: asyncio.TimerHandle | None = None
        self._inbox: list[str | bytes] | None = None
        self._receiver: asyncio.Future[str | bytes] | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._drain: asyncio.Future[None] | None = None
        self._held: bytes | None = None
        """The opening handshake's response while it waits for the welcome, so that
        both leave in one write."""
        self._paused = False
        self._reading_paused = False
        self._lost: asyncio.Future[None] | None = None
        """Done when the TCP connection is gone; made by :meth:`close`, which waits on it."""
        self._ended: ConnectionClosed | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = transport = cast(asyncio.Transport, transport)
        # Paused past 64 KiB waiting in the transport's buffer: beyond that, what a client
        # does not read waits in its outbox, which is bounded and joins frames (see
        # DirectTransport). A lower mark (nothing buffered at all) cost uvloop twice the
        # CPU in bursts of large events, measured with benchmarks/peers.py --loop uvloop.
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._endpoint.handshake_timeout, self._handshake_timed_out)
        self._endpoint.waiting.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        if ws.state is State.CONNECTING:
            self._handshake_bytes += len(data)
            if self._handshake_bytes > self._endpoint.max_handshake_bytes:
                self._refuse_http(431, "request header fields too large")
                return
            if self._head is not None and self._screen(data):
                return
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._request(event)
        if ws.too_big:
            ws.too_big = False
            self._log_too_big()
        self._write_pending()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._write_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self._endpoint.waiting.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ws = self._ws
        # The code of the closing handshake: the client's, or the one sent to it when
        # the protocol failed its frames (1002, 1007, 1009); 1006 without one.
        close = ws.close_rcvd or ws.close_sent
        if close is not None:
            ended = ConnectionClosed(close.code, close.reason)
        else:
            ended = ConnectionClosed(1006, "connection lost")
        self._end(ended)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionClosed(1006, "connection lost"))
            self._drain.exception()  # nobody may be waiting any more; never "unretrieved"
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    # Transport (what the manager's connection calls)

    async def send_text(self, text: str) -> None:
        if not self.write_now(text_frame(text)):
            await self.drained()

    def write_now(self, wire: bytes) -> bool:
        # _open is false whenever the transport is missing or closing.
        if not self._open:
            raise ConnectionClosed(1006, "the WebSocket is closed")
        transport = self._transport
        assert transport is not None
        if self._held is not None:
            wire = self._held + wire
            self._held = None
        transport.write(wire)
        return not self._paused

    async def drained(self) -> None:
        if not self._paused:
            return
        drain = self._drain
        if drain is None:
            drain = self._drain = asyncio.get_running_loop().create_future()
        await drain

    async def receive(self) -> str | bytes:
        while True:
            inbox = self._inbox
            if inbox:
                message = inbox.pop(0)
                if self._reading_paused and len(inbox) < _INBOX_PAUSE // 2:
                    self._reading_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                return message
            if self._ended is not None:
                raise self._ended
            receiver: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
            self._receiver = receiver
            try:
                return await receiver
            finally:
                self._receiver = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        # Not closing yet, so not lost yet: connection_lost() will resolve this.
        lost = self._lost
        if lost is None:
            lost = self._lost = asyncio.get_running_loop().create_future()
        ws = self._ws
        if ws.state is State.OPEN:
            self._open = False
            ws.send_close(code, close_reason(reason))
            self._write_pending()
        try:
            # The client answers with its close frame, and the socket is closed then.
            await asyncio.shield(lost)
        finally:
            if not transport.is_closing() or not lost.done():
                transport.abort()

    # Internals

    def _end(self, ended: ConnectionClosed) -> None:
        if self._ended is None:
            self._ended = ended
        receiver = self._receiver
        if receiver is not None and not receiver.done():
            receiver.set_exception(self._ended)

    def _deliver(self, message: str | bytes) -> None:
        receiver = self._receiver
        if receiver is not None and not receiver.done() and not self._inbox:
            receiver.set_result(message)
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = []
        inbox.append(message)
        if len(inbox) >= _INBOX_PAUSE and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()

    def _message(self, data: bytes, text: bool) -> None:
        if not text:
            self._deliver(data)
            return
        try:
            self._deliver(data.decode())
        except UnicodeDecodeError:
            self._open = False
            self._ws.fail(1007, "invalid UTF-8 in a text message")

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragments_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            assert fragments is not None  # websockets fails a continuation without a start
            fragments.append(bytes(frame.data))
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._fragments_text)
        elif opcode is Opcode.CLOSE:
            self._open = False
            received = self._ws.close_rcvd
            code = received.code if received is not None else 1005
            self._end(ConnectionClosed(code, received.reason if received else ""))

    def flush(self, wires: dict[str, bytes]) -> None:
        """Write the held response (the flusher calls this at the end of the turn in
        which it was held): the welcome did not come in that turn."""
        held = self._held
        self._held = None
        transport = self._transport
        if held is not None and transport is not None and not transport.is_closing():
            transport.write(held)

    def _write_pending(self) -> None:
        transport = self._transport
        assert transport is not None  # called from the transport's callbacks
        if self._held is not None:
            self.flush({})
        ws = self._ws
        for data in ws.data_to_send():
            if data:
                transport.write(data)
            else:
                # End of stream: the closing handshake is over (or the protocol failed the
                # connection), and the server closes the TCP connection first (RFC 6455
                # 7.1.1). After a close frame of its own, it waits for the client's.
                self._open = False
                transport.close()

    def _log_too_big(self) -> None:
        # The parser refuses the message before budget_ws's connection sees it: the
        # connection's frame_too_big line, with the client's address for its id.
        limit = self._ws.max_frame_bytes
        assert self._transport is not None  # called from data_received
        client = _peer(self._transport)
        logger.info(
            "budget_ws: connection from %s closed with 1009: frame larger than %d bytes",
            client,
            limit,
            extra={
                "budget_ws_event": "frame_too_big",
                "budget_ws_client": client,
                "budget_ws_close_code": 1009,
                "budget_ws_limit": "Limits.max_frame_bytes",
                "budget_ws_limit_value": limit,
            },
        )

    def _screen(self, data: bytes) -> bool:
        """Answer an opening request that cannot open a WebSocket; True when answered.

        Checked here, before ``websockets``' parser (which refuses some of these without
        an answer, depending on its version): a request line over 8 KiB gets 414, a
        header line over 8 KiB or more than 128 headers 431, and a method other than GET
        (RFC 6455 4.1) is a plain HTTP request, answered 426 on the server's path (404
        elsewhere) before its body, as the ASGI adapter answers it.
        """
        assert self._head is not None
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            self._head = None  # complete: the parser takes it from here
            lines, partial = head[:end].split(b"\r\n"), b""
        else:
            self._head = head
            *lines, partial = head.split(b"\r\n")
        if not lines:  # the request line is still coming
            if len(partial) > _MAX_LINE:
                self._refuse_http(414, "request line too long")
                return True
            return False
        if len(lines[0]) > _MAX_LINE:
            self._refuse_http(414, "request line too long")
            return True
        if self._not_get(lines[0]):
            return True
        if len(partial) > _MAX_LINE or any(len(line) > _MAX_LINE for line in lines[1:]):
            self._refuse_http(431, "header line too long")
            return True
        if len(lines) - 1 > _MAX_HEADERS:
            self._refuse_http(431, "too many headers")
            return True
        return False

    def _not_get(self, request_line: bytes) -> bool:
        """Answer a request line whose method is not GET; True when answered."""
        method, _, rest = request_line.partition(b" ")
        if method == b"GET" or not rest:
            return False
        target = rest.partition(b" ")[0].decode("latin-1")
        path = self._endpoint.path
        try:
            elsewhere = path is not None and urlsplit(target).path != path
        except ValueError:  # "http://[": no path of ours
            elsewhere = True
        if elsewhere:
            self._refuse_http(404, "not found")
        else:
            self._refuse_http(426, _UPGRADE_BODY, upgrade=True)
        return True

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self._transport is not None:
            self._transport.abort()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._ws.state is State.CONNECTING and self._transport is not None:
            client = _peer(self._transport)
            logger.info(
                "budget_ws: handshake from %s timed out",
                client,
                extra={
                    "budget_ws_event": "handshake_timeout",
                    "budget_ws_client": client,
                    "budget_ws_limit_value": self._endpoint.handshake_timeout,
                },
            )
            self._transport.abort()

    def _refuse_http(self, status: int, text: str, *, upgrade: bool = False) -> None:
        ws = self._ws
        response = ws.reject(status, text + "\n")
        if upgrade:
            response.headers["Upgrade"] = "websocket"
            response.headers["Connection"] = "Upgrade"
        ws.send_response(response)
        self._write_pending()
        if self._transport is not None:
            self._transport.close()

    def _request(self, request: Request) -> None:
        self._endpoint.waiting.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = asyncio.get_running_loop().create_task(self._admit(request))
        tasks = self._endpoint.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _admit(self, request: Request) -> None:
        """Check the opening request, answer it, and serve the WebSocket it opened."""
        endpoint = self._endpoint
        transport = self._transport
        assert transport is not None
        try:
            split = urlsplit(request.path)
        except ValueError:  # a target such as "http://[" names no path
            self._refuse_http(400, "malformed request target")
            return
        if endpoint.path is not None and split.path != endpoint.path:
            self._refuse_http(404, "not found")
            return
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            self._refuse_http(426, _UPGRADE_BODY, upgrade=True)
            return
        handshake = _handshake(request, split.path, split.query, transport, endpoint)
        ws = self._ws
        ws.available_subprotocols = (
            [SUBPROTOCOL] if SUBPROTOCOL in handshake.subprotocols else None  # type: ignore[list-item]
        )
        response = ws.accept(request)
        if response.status_code != 101:  # not a valid opening handshake
            ws.send_response(response)
            self._write_pending()
            return
        gatekeeper = endpoint.gatekeeper
        verdict = await gatekeeper.check(handshake)
        if transport.is_closing():
            return
        if isinstance(verdict, Refusal):
            rejection = verdict.rejection
            if verdict.browser:
                # A browser sees no status, only a close code; see the ASGI adapter.
                ws.send_response(response)
                ws.send_close(rejection.close_code, close_reason(rejection.reason))
                self._write_pending()
                # It answers with its close frame; one that does not is dropped.
                self._timer = asyncio.get_running_loop().call_later(
                    connection.CLOSE_TIMEOUT, self.abort
                )
                answer = "close"
            else:
                self._refuse_http(rejection.status, rejection.reason)
                answer = "http"
            gatekeeper.refused(handshake, verdict, answer)
            return
        ws.send_response(response)
        # Held for the welcome, written in the same turn: one write (a send on the
        # socket) less per connect; the flusher writes it at the end of the turn if the
        # welcome did not come (a hook awaited something, or the manager refused).
        self._held = b"".join(ws.data_to_send())
        Flusher.of_running_loop().mark(self)
        self._open = ws.state is State.OPEN
        # websockets' parser keeps the request for the connection's life: its headers
        # (~2.5 KiB) are not needed any more.
        request.headers.clear()
        del request, response, handshake
        await gatekeeper.serve(self, verdict)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "an unknown address"


def _handshake(
    request: Request,
    path: str,
    query: str,
    transport: asyncio.BaseTransport,
    endpoint: Endpoint,
) -> Handshake:
    """The opening request as the ASGI adapter describes it (with an ASGI-like scope)."""
    raw: list[tuple[bytes, bytes]] = []
    headers: dict[str, str] = {}
    for name, value in request.headers.raw_items():
        name = name.lower()
        encoded = value.encode("latin-1", "replace")
        raw.append((name.encode("latin-1"), encoded))
        if not value.isascii():  # as the ASGI adapter reads it back: latin-1, "?" for more
            value = encoded.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    offered = request.headers.get_all("Sec-WebSocket-Protocol")
    subprotocols = [item.strip() for value in offered for item in value.split(",") if item.strip()]
    peer = transport.get_extra_info("peername")
    client = (str(peer[0]), int(peer[1])) if peer else None
    scheme = endpoint.scheme
    trusted = endpoint.forwarded_allow_ips
    if client is not None and (client[0] in trusted or "*" in trusted):
        # A proxy we trust says who its client was, and whether it spoke TLS to it.
        forwarded = [
            host.strip()
            for value in request.headers.get_all("X-Forwarded-For")
            for host in value.split(",")
            if host.strip()
        ]
        untrusted = [host for host in forwarded if host not in trusted]
        if untrusted:
            client = (untrusted[-1], 0)
        proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if proto in ("https", "wss"):
            scheme = "wss"
        elif proto in ("http", "ws"):
            scheme = "ws"
    query_string = query.encode("latin-1", "replace")
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": path,
        "query_string": query_string,
        "headers": raw,
        "client": client,
        "subprotocols": subprotocols,
        "scheme": scheme,
    }
    return Handshake.of_request(
        path=path,
        headers=headers,
        query_string=query_string.decode("latin-1"),
        client=client,
        subprotocols=tuple(subprotocols),
        scheme=scheme,
        scope=scope,
    )
