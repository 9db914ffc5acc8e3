"""Test your app's events and handlers without a server or a socket.

::

    from budget_ws.testing import connect

    async with ConnectionManager() as manager, connect(manager) as client:
        await client.subscribe("budget:42")
        await manager.publish(FactCreated(id=1, amount=5), topic="budget:42")
        frame = await client.receive_event()
        assert frame["event"] == "budget_fact_created"
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import ConnectionClosed
from .events import Event
from .manager import ConnectionManager
from .position import Position
from .protocol import (
    decode_server_message,
    encode_client_event,
    encode_subscribe,
    encode_unsubscribe,
)

__all__ = ["MemoryClient", "MemoryTransport", "RecordingListener", "connect"]


class MemoryTransport:
    """The server's side of an in-memory WebSocket; the client's side is :class:`MemoryClient`.

    Args:
        send_buffer: Messages the server may send before the client reads them; once
            full, the server's ``send_text`` waits, like a socket whose buffer is full.
            Unlimited by default.
    """

    def __init__(self, send_buffer: float = math.inf) -> None:
        self._to_client_send: MemoryObjectSendStream[str]
        self.to_client: MemoryObjectReceiveStream[str]
        self._to_client_send, self.to_client = anyio.create_memory_object_stream(send_buffer)
        self.to_server: MemoryObjectSendStream[str | bytes | None]
        self._to_server_receive: MemoryObjectReceiveStream[str | bytes | None]
        self.to_server, self._to_server_receive = anyio.create_memory_object_stream(math.inf)
        self.close_code: int | None = None
        """The code the server closed with, once it has."""
        self.close_reason = ""
        self.messages_sent = 0
        """WebSocket messages the server has sent."""

    async def send_text(self, text: str) -> None:
        if self.close_code is not None:
            raise ConnectionClosed(self.close_code, self.close_reason)
        try:
            await self._to_client_send.send(text)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise ConnectionClosed(1006, "client went away") from None
        self.messages_sent += 1

    async def receive(self) -> str | bytes:
        try:
            message = await self._to_server_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ConnectionClosed(1006, "client went away") from None
        if message is None:
            raise ConnectionClosed(1000, "client closed")
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        # The client reads what was sent before the close, then sees the end.
        self._to_client_send.close()

    def release(self) -> None:
        """Free both directions of the in-memory stream once nobody uses them."""
        for stream in (
            self._to_client_send,
            self.to_client,
            self.to_server,
            self._to_server_receive,
        ):
            stream.close()


class MemoryClient:
    """A budget-ws client over a :class:`MemoryTransport`, speaking the wire protocol.

    Like the browser client, it remembers per topic the position of the last event it
    received, so a new client can resume where an old one stopped.
    """

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.positions: dict[str, Position] = {}
        """Position of the last event received, per topic."""
        self.welcome: dict[str, Any] | None = None
        """The welcome frame, once received."""
        self.timeout = 5.0
        """Seconds :meth:`receive` waits before raising ``TimeoutError`` (never hang a test)."""
        self._pending: deque[dict[str, Any]] = deque()
        self._request_ids = 0

    async def send_raw(self, message: str | bytes) -> None:
        """Send a message as is (for testing how the server handles bad input)."""
        await self.transport.to_server.send(message)

    async def receive(self) -> dict[str, Any]:
        """Return the next frame from the server.

        Raises:
            ConnectionClosed: The server closed the connection; ``code`` and ``reason``
                say how.
            TimeoutError: Nothing arrived within :attr:`timeout` seconds.
        """
        return self._process(await self._next_frame())

    async def _next_frame(self) -> dict[str, Any]:
        if not self._pending:
            with anyio.fail_after(self.timeout):
                try:
                    message = await self.transport.to_client.receive()
                except anyio.EndOfStream:
                    transport = self.transport
                    raise ConnectionClosed(transport.close_code, transport.close_reason) from None
            self._pending.extend(decode_server_message(message))
        return self._pending.popleft()

    def _process(self, frame: dict[str, Any]) -> dict[str, Any]:
        # Positions advance only when a frame is handed to the caller, as in an app that
        # records what it has rendered.
        if "event" in frame and "topic" in frame:
            self.positions[frame["topic"]] = Position(frame["offset"], frame["epoch"])
        elif frame.get("op") == "subscribed":
            position = frame["position"]
            if not frame["recovered"]:
                self.positions[frame["topic"]] = Position(position["offset"], position["epoch"])
        elif frame.get("op") == "welcome":
            self.welcome = frame
        return frame

    async def receive_event(self) -> dict[str, Any]:
        """Return the next event frame, skipping control frames such as pings."""
        while True:
            frame = await self.receive()
            if "event" in frame:
                return frame

    async def subscribe(
        self,
        topic: str,
        *,
        position: Position | None = None,
        resume: bool = False,
        presence: bool = False,
    ) -> dict[str, Any]:
        """Subscribe and return the server's answer (``subscribed`` or ``error``).

        Frames that arrive before the answer are kept for :meth:`receive`.

        Args:
            topic: The topic.
            position: Resume after this position.
            resume: Resume after the last position this client saw on the topic.
            presence: Also ask for the topic's ``presence`` frames.
        """
        if resume and position is None:
            position = self.positions.get(topic)
        self._request_ids += 1
        request_id = self._request_ids
        await self.send_raw(encode_subscribe(topic, position, request_id, presence=presence))
        return await self._answer(request_id)

    async def unsubscribe(self, topic: str) -> dict[str, Any]:
        """Unsubscribe and return the server's answer."""
        self._request_ids += 1
        request_id = self._request_ids
        await self.send_raw(encode_unsubscribe(topic, request_id))
        return await self._answer(request_id)

    async def send_event(self, event: Event, *, topic: str | None = None) -> None:
        """Send an event to the server."""
        await self.send_raw(encode_client_event(event, topic))

    async def _answer(self, request_id: int) -> dict[str, Any]:
        held: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self._next_frame()
                if frame.get("id") == request_id and "op" in frame:
                    return self._process(frame)
                held.append(frame)
        finally:
            self._pending.extendleft(reversed(held))

    async def close(self) -> None:
        """Leave, as a browser closing the tab would."""
        await self.transport.to_server.send(None)


@asynccontextmanager
async def connect(
    manager: ConnectionManager,
    *,
    principal: Any = None,
    send_buffer: float = math.inf,
    positions: dict[str, Position] | None = None,
) -> AsyncIterator[MemoryClient]:
    """Connect an in-memory client to a running manager for the duration of the block.

    Args:
        manager: A started :class:`~budget_ws.ConnectionManager`.
        principal: Passed to ``authorize`` as the client's identity.
        send_buffer: See :class:`MemoryTransport`.
        positions: Positions to resume from (e.g. an earlier client's ``positions``).
    """
    transport = MemoryTransport(send_buffer)
    client = MemoryClient(transport)
    if positions:
        client.positions.update(positions)
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(_serve, manager, transport, principal)
            try:
                yield client
            finally:
                if transport.close_code is None:
                    await client.close()
    finally:
        transport.release()


async def _serve(manager: ConnectionManager, transport: MemoryTransport, principal: Any) -> None:
    await manager.serve(transport, principal=principal)


class RecordingListener:
    """A backend :class:`~budget_ws.Listener` that keeps what it is given.

    For testing a backend, including one of your own, without a manager.
    """

    def __init__(self) -> None:
        self.delivered: list[tuple[str, Position, bytes]] = []
        """``(topic, position, payload)`` of every delivery, in order."""
        self.resyncs: list[tuple[str, Position]] = []
        """``(topic, position)`` of every resync notice, in order."""
        self._changed = anyio.Event()

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        self.delivered.append((topic, position, payload))
        self._changed.set()

    def resync(self, topic: str, position: Position) -> None:
        self.resyncs.append((topic, position))
        self._changed.set()

    async def wait_for(self, deliveries: int, *, resyncs: int = 0) -> None:
        """Wait until at least this many deliveries and resync notices have arrived."""
        while len(self.delivered) < deliveries or len(self.resyncs) < resyncs:
            await self._changed.wait()
            self._changed = anyio.Event()
