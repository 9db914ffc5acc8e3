"""A server for the client's tests: a manager behind Starlette and real uvicorn.

``async with running(manager) as server:`` serves ``manager`` on 127.0.0.1 until the block
ends; ``running(manager, port=server.port)`` serves another one on the same port, as a
restarted server would. :class:`ScriptedServer` is a bare ``websockets`` server the test
drives frame by frame, to play a server that misbehaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from tests.support.servers import bound_port, running_uvicorn
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websocket_serve
from websockets.typing import Subprotocol

from budget_ws import (
    SUBPROTOCOL,
    ConnectionManager,
    Event,
    EventRegistry,
    Handshake,
    HandshakeRejected,
    Position,
)
from budget_ws.adapters.starlette import lifespan, websocket_route
from budget_ws.protocol import encode_subscribed, encode_welcome


class Tick(Event, name="client_test_tick", register=False):
    """What the tests publish: ``n`` counts from 1."""

    n: int


class Note(Event, name="client_test_note", register=False):
    """What clients send."""

    text: str


REGISTRY = EventRegistry([Tick, Note])

TOKEN = "let-me-in"


def authenticate_token(handshake: Handshake) -> str:
    """Accepts a bearer header, a ``session`` cookie or a ``token`` query parameter."""
    if handshake.headers.get("authorization") == f"Bearer {TOKEN}":
        return "header"
    if handshake.cookies.get("session") == TOKEN:
        return "cookie"
    if handshake.query.get("token") == TOKEN:
        return "query"
    raise HandshakeRejected("bad token", status=403)


@dataclass
class Server:
    manager: ConnectionManager
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@asynccontextmanager
async def running(
    manager: ConnectionManager,
    *,
    port: int = 0,
    authenticate: object = None,
    allowed_origins: Sequence[str] | None = None,
) -> AsyncIterator[Server]:
    """Serve ``manager`` with uvicorn on 127.0.0.1 (a free port unless ``port``)."""
    app = Starlette(
        routes=[
            websocket_route(
                manager,
                "/ws",
                authenticate=authenticate,  # type: ignore[arg-type]
                allowed_origins=allowed_origins,
            )
        ],
        lifespan=lifespan(manager),
    )
    async with running_uvicorn(
        app, port=port, ws="websockets-sansio", timeout_graceful_shutdown=2
    ) as server:
        yield Server(manager, bound_port(server))


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.01)


class Peer:
    """The server's side of one connection to a :class:`ScriptedServer`."""

    def __init__(self, websocket: ServerConnection) -> None:
        self.websocket = websocket

    async def send(self, *frames: str | dict[str, Any]) -> None:
        """Send frames in one message, as the server joins queued frames."""
        lines = [frame if isinstance(frame, str) else json.dumps(frame) for frame in frames]
        await self.websocket.send("\n".join(lines))

    async def welcome(self, interval: float = 20.0, timeout: float = 20.0) -> None:
        await self.send(encode_welcome(f"peer-{id(self)}", interval, timeout, {}))

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        """The client's next frame."""
        async with asyncio.timeout(timeout):
            frame: dict[str, Any] = json.loads(await self.websocket.recv())
        return frame

    async def subscribed(
        self, request: dict[str, Any], position: Position, recovered: bool = False
    ) -> None:
        """Answer a subscribe request."""
        await self.send(encode_subscribed(request["topic"], position, recovered, request["id"]))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.websocket.close(code, reason)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """The code the client closed with, once it has."""
        async with asyncio.timeout(timeout):
            await self.websocket.wait_closed()
        return self.websocket.close_code


class ScriptedServer:
    """A ``websockets`` server on 127.0.0.1 that the test drives frame by frame.

    ``async with ScriptedServer() as server:`` then ``peer = await server.accept()`` for
    each connection the client opens.
    """

    def __init__(self, subprotocol: bool = True, process_request: Any = None) -> None:
        self.subprotocol = subprotocol
        self.process_request = process_request
        self.port = 0
        self._peers: asyncio.Queue[Peer] = asyncio.Queue()
        self._server: WebSocketServer | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await websocket_serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol(SUBPROTOCOL)] if self.subprotocol else None,
            ping_interval=None,
            close_timeout=1,
            process_request=self.process_request,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def accept(self, timeout: float = 5.0) -> Peer:
        async with asyncio.timeout(timeout):
            return await self._peers.get()

    async def _handle(self, websocket: ServerConnection) -> None:
        await self._peers.put(Peer(websocket))
        await websocket.wait_closed()
