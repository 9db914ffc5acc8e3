"""Compatibility mode: serve pages written before budget_ws, unchanged.

The app budget_ws grew out of kept a dict of WebSockets and sent every client one
``{"event": ..., "data": ...}`` object per message. Its pages connect without the
``budget-ws.v1`` subprotocol, never subscribe, parse each message as one JSON object and
never answer a ping. An endpoint given a :class:`Compatibility` serves such clients:
the app's hook chooses their topics, and :class:`CompatTransport` turns what the manager
sends into what they expect. Clients that do offer the subprotocol on the same endpoint
are served as usual.

What these clients give up is listed in ``docs/how-to/migrate.md``: no recovery of
missed events, no ``resync`` notice, no backpressure signal but the close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .connection import Transport
from .handshake import Handshake
from .protocol import FRAME_SEPARATOR, control_op, without_position

__all__ = ["CompatTransport", "Compatibility", "TopicsHook"]

TopicsHook = Callable[[Handshake, Any], "Iterable[str] | Awaitable[Iterable[str]]"]
"""``topics(handshake, principal) -> topics``: may be async; raise
:class:`~budget_ws.HandshakeRejected` to refuse the connection."""

# Answers to what the client itself sent; every other control frame means nothing to it.
_PASSED_OPS = frozenset({"error", "pong"})


@dataclass(frozen=True)
class Compatibility:
    """Serve clients that connect without the ``budget-ws.v1`` subprotocol.

    Opt-in, per endpoint (``WebSocketApp``, ``websocket_route``, ``create_router``).
    Such a client is authenticated and origin-checked like any other, subscribed
    server-side to the topics ``topics`` returns (``authorize`` is not asked: the hook
    decides), and sent one event per WebSocket message in the original
    ``{"event", "data"}`` shape. It is not required to answer pings: the WebSocket
    server's own protocol-level ping checks the link (uvicorn: ``--ws-ping-interval`` and
    ``--ws-ping-timeout``, 20 s each by default). Its outbox is bounded as usual, and it is
    closed with 4000 when it falls behind.

    Args:
        topics: ``topics(handshake, principal)`` returns the topics to subscribe the
            connection to (an iterable of names; a lone string is one topic), chosen
            from its path, query, cookies or principal. It may be async, and refuses the
            connection by raising :class:`~budget_ws.HandshakeRejected`; any other
            error, or an invalid topic name, refuses it with 1011 and a logged trace.
        positions: Also send each event's ``topic``, ``offset`` and ``epoch`` fields.
    """

    topics: TopicsHook
    positions: bool = False


class CompatTransport:
    """Wraps an accepted transport for a client that predates the protocol.

    Splits each message the manager writes into its frames and sends every event frame
    as a message of its own, without its position unless asked. Of the control frames,
    only answers to the client's own frames (``error``, ``pong``) pass.
    """

    __slots__ = ("_positions", "_transport")

    def __init__(self, transport: Transport, *, positions: bool = False) -> None:
        self._transport = transport
        self._positions = positions

    async def send_text(self, text: str) -> None:
        send = self._transport.send_text
        for frame in text.split(FRAME_SEPARATOR):
            if not frame:
                continue
            op = control_op(frame)
            if op is None:
                await send(frame if self._positions else without_position(frame))
            elif op in _PASSED_OPS:
                await send(frame)

    async def receive(self) -> str | bytes:
        return await self._transport.receive()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._transport.close(code, reason)
