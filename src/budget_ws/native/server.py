"""The native server: budget_ws connections served without the ASGI send path."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING

from ..admission import Gatekeeper
from ..compat import Compatibility
from ..handshake import Authenticate
from ..manager import ConnectionManager
from ._transport import Endpoint, NativeTransport

if TYPE_CHECKING:
    from ..adapters.asgi import WebSocketApp

__all__ = ["NativeServer"]


class NativeServer:
    """A WebSocket server of its own for a :class:`~budget_ws.ConnectionManager`.

    The same manager, hooks, protocol, limits and answers as the ASGI adapters, with each
    event framed once and its bytes written to every subscriber: in a steady stream a
    delivery costs about one socket write. Runs on asyncio (uvloop too), on a port of its
    own, beside the web app in its process or alone (``python -m budget_ws serve``).

    Args:
        app: The manager to serve, or a :class:`~budget_ws.adapters.WebSocketApp` whose
            manager and handshake settings to use (the keyword arguments below are then
            not allowed).
        host: The address to listen on.
        port: The port; 0 picks a free one (see :attr:`port`).
        path: The request path clients connect to; another path is answered 404.
            ``None`` accepts any path.
        authenticate: As for :class:`~budget_ws.adapters.WebSocketApp`.
        allowed_origins: As for :class:`~budget_ws.adapters.WebSocketApp`.
        require_subprotocol: As for :class:`~budget_ws.adapters.WebSocketApp`.
        compatibility: As for :class:`~budget_ws.adapters.WebSocketApp`.
        reuse_port: Set ``SO_REUSEPORT``, so that several processes (uvicorn's workers,
            several ``python -m budget_ws serve``) share the port and the kernel spreads
            connections among them.
        handshake_timeout: Seconds a client has to send its opening request.
        max_handshake_bytes: Size of the opening request at most; a larger one is
            answered 431.
        backlog: Connections waiting to be accepted at most (``listen()``).
        ssl: Serve ``wss://`` with this context; behind a proxy that terminates TLS,
            leave it out.
        forwarded_allow_ips: Peers trusted to say who their client was: from one of
            these, ``Handshake.client`` comes from ``X-Forwarded-For`` and the scheme
            from ``X-Forwarded-Proto``, as uvicorn's ``--forwarded-allow-ips`` does
            (the same default: the loopback addresses); ``["*"]`` trusts every peer.
    """

    def __init__(
        self,
        app: ConnectionManager | WebSocketApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str | None = "/ws",
        authenticate: Authenticate | None = None,
        allowed_origins: Sequence[str] | None = None,
        require_subprotocol: bool = True,
        compatibility: Compatibility | None = None,
        reuse_port: bool = False,
        handshake_timeout: float = 10.0,
        max_handshake_bytes: int = 16 * 1024,
        backlog: int = 2048,
        ssl: SSLContext | None = None,
        forwarded_allow_ips: Sequence[str] = ("127.0.0.1", "::1"),
    ) -> None:
        if isinstance(app, ConnectionManager):
            gatekeeper = Gatekeeper(
                app,
                authenticate=authenticate,
                allowed_origins=allowed_origins,
                require_subprotocol=require_subprotocol,
                compatibility=compatibility,
            )
        else:
            if (
                authenticate is not None
                or allowed_origins is not None
                or not require_subprotocol
                or compatibility is not None
            ):
                raise TypeError(
                    "NativeServer(web_socket_app) takes its handshake settings from the "
                    "WebSocketApp; pass a ConnectionManager to give them here"
                )
            gatekeeper = app.gatekeeper
        if handshake_timeout <= 0 or max_handshake_bytes <= 0:
            raise ValueError("handshake_timeout and max_handshake_bytes must be positive")
        self.manager = gatekeeper.manager
        self.host = host
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.ssl = ssl
        self._port = port
        self._endpoint = Endpoint(
            gatekeeper,
            path,
            handshake_timeout,
            max_handshake_bytes,
            frozenset(forwarded_allow_ips),
            "wss" if ssl is not None else "ws",
        )
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port the server listens on: the one picked for ``port=0`` once started,
        which a restart of the same server listens on again."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/path`` of the server (``wss://`` with ``ssl``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self._endpoint.scheme}://{host}:{self.port}{self._endpoint.path or '/'}"

    async def start(self) -> None:
        """Start listening. The manager must be running to serve the clients."""
        if self._server is not None:
            raise RuntimeError("the NativeServer is already started")
        if self.reuse_port and not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover
            raise RuntimeError("reuse_port needs SO_REUSEPORT, which this system lacks")
        loop = asyncio.get_running_loop()
        endpoint = self._endpoint
        self._server = await loop.create_server(
            lambda: NativeTransport(endpoint),
            self.host,
            self._port,
            reuse_port=self.reuse_port or None,
            backlog=self.backlog,
            ssl=self.ssl,
        )
        if not self._port and self._server.sockets:  # picked for port=0; kept for a restart
            self._port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening; the manager's shutdown closes the clients (1012).

        Connections that have not sent their opening request are dropped. A handshake
        under way ends as the manager says: served while it runs, closed with 1012 once
        it has shut down.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()  # and it may start again, on the same port
            self._endpoint.drop_waiting()

    async def serve_forever(self) -> None:
        """Start if needed, and serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await asyncio.Future()
        finally:
            await self.aclose()

    async def __aenter__(self) -> NativeServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
