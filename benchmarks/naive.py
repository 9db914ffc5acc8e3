"""The naive broadcaster budget_ws replaces, written the way the original app did it.

A dict of connections, and a broadcast that awaits ``send_json`` for each client in turn,
encoding the same event to JSON once per client. Kept faithful on purpose, bugs included
(a client that leaves while a broadcast is running changes the dict being iterated), so
that the benchmark compares against what actually ran.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from budget_ws import ConnectionClosed

__all__ = ["NaiveConnectionManager", "TextTransport", "WebSocket"]


class TextTransport(Protocol):
    """The part of an accepted WebSocket that the naive manager uses."""

    async def send_text(self, text: str) -> None:
        """Send one text message."""

    async def receive(self) -> str | bytes:
        """Wait for the next message; raises ``ConnectionClosed`` when the client left."""


class WebSocket:
    """Starlette's ``WebSocket``, reduced to the two calls the original app made.

    Args:
        transport: Where the text goes.
    """

    __slots__ = ("transport",)

    def __init__(self, transport: TextTransport) -> None:
        self.transport = transport

    async def send_json(self, data: Any) -> None:
        """Encode ``data`` and send it, as ``starlette.websockets.WebSocket.send_json`` does."""
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        await self.transport.send_text(text)

    async def receive_text(self) -> str:
        """Wait for the next text message from the client."""
        message = await self.transport.receive()
        return message if isinstance(message, str) else message.decode()


class NaiveConnectionManager:
    """The original app's ``ConnectionManager``: one await per recipient, JSON per recipient."""

    def __init__(self) -> None:
        self.active: dict[str, WebSocket] = {}
        """The connected clients, by id."""

    def connect(self, client_id: str, websocket: WebSocket) -> None:
        """Remember an accepted WebSocket."""
        self.active[client_id] = websocket

    def disconnect(self, client_id: str) -> None:
        """Forget a WebSocket."""
        self.active.pop(client_id, None)

    async def broadcast(self, name: str, data: dict[str, Any]) -> None:
        """Send an event to every client, one after the other."""
        for ws in self.active.values():
            await ws.send_json({"event": name, "data": data})

    async def serve(self, client_id: str, transport: TextTransport) -> None:
        """The original WebSocket endpoint: register, then read until the client leaves."""
        websocket = WebSocket(transport)
        self.connect(client_id, websocket)
        try:
            while True:
                await websocket.receive_text()
        except ConnectionClosed:
            pass
        finally:
            self.disconnect(client_id)
