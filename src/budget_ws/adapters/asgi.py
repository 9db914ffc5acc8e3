"""Plain ASGI: a WebSocket endpoint for any ASGI framework or server, no dependency.

The Starlette and FastAPI adapters mount this same app; the logic lives in the core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from ..admission import Admission, Gatekeeper, Refusal
from ..compat import Compatibility
from ..errors import ConnectionClosed
from ..handshake import Authenticate, Handshake
from ..manager import ConnectionManager
from ..protocol import close_reason

__all__ = ["ASGITransport", "WebSocketApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ASGITransport:
    """An accepted ASGI WebSocket as a :class:`~budget_ws.Transport`."""

    __slots__ = ("_receive", "_send")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send

    async def send_text(self, text: str) -> None:
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError as exc:  # uvicorn's ClientDisconnected, a reset socket...
            raise ConnectionClosed(1006, str(exc)) from None
        except RuntimeError as exc:
            # The server closed the WebSocket itself (uvicorn's keepalive timeout) and
            # refuses to send after its close: the connection is gone all the same.
            raise ConnectionClosed(1006, str(exc)) from None

    async def receive(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                return str(text)
            return bytes(message.get("bytes") or b"")
        raise ConnectionClosed(message.get("code", 1005), message.get("reason") or "")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(OSError, RuntimeError):  # already closed by the client
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class WebSocketApp:
    """An ASGI app that checks the handshake and hands the WebSocket to a manager.

    Mount it at the path clients connect to. Used as the top-level app, it also runs the
    manager in the ASGI lifespan; mounted inside a framework, start the manager in that
    framework's lifespan instead.

    Args:
        manager: The manager that serves accepted connections.
        authenticate: ``authenticate(handshake) -> principal`` runs before the WebSocket
            is accepted; it may be async and refuses by raising
            :class:`~budget_ws.HandshakeRejected`. The principal is passed to
            ``authorize``. Without it, every client is anonymous (principal ``None``).
        allowed_origins: Origins whose pages may connect: ``None`` (the default) allows
            the same origin only, ``["*"]`` any; see :func:`~budget_ws.origin_allowed`.
        require_subprotocol: Refuse clients that do not offer ``budget-ws.v1``.
        compatibility: Serve clients that do not offer ``budget-ws.v1`` the way the
            original app did, instead of refusing them (see
            :class:`~budget_ws.compat.Compatibility`); clients that offer it are served
            as usual.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        authenticate: Authenticate | None = None,
        allowed_origins: Sequence[str] | None = None,
        require_subprotocol: bool = True,
        compatibility: Compatibility | None = None,
    ) -> None:
        self.gatekeeper = Gatekeeper(
            manager,
            authenticate=authenticate,
            allowed_origins=allowed_origins,
            require_subprotocol=require_subprotocol,
            compatibility=compatibility,
        )

    @property
    def manager(self) -> ConnectionManager:
        """The manager that serves accepted connections."""
        return self.gatekeeper.manager

    @property
    def authenticate(self) -> Authenticate | None:
        return self.gatekeeper.authenticate

    @property
    def allowed_origins(self) -> Sequence[str] | None:
        return self.gatekeeper.allowed_origins

    @property
    def require_subprotocol(self) -> bool:
        return self.gatekeeper.require_subprotocol

    @property
    def compatibility(self) -> Compatibility | None:
        return self.gatekeeper.compatibility

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # The handshake is checked in a call of its own so that none of it (every
            # header, decoded) stays referenced while the connection is served.
            admission = await self._accept(scope, receive, send)
            if admission is not None:
                await self.gatekeeper.serve(ASGITransport(receive, send), admission)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            body = b"This endpoint speaks WebSocket (subprotocol budget-ws.v1) only.\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 426,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"upgrade", b"websocket"),
                        (b"connection", b"upgrade"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    async def _accept(self, scope: Scope, receive: Receive, send: Send) -> Admission | None:
        """Check the handshake; accept it (returning the admission) or refuse."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        handshake = Handshake.from_asgi(scope)
        verdict = await self.gatekeeper.check(handshake)
        if isinstance(verdict, Refusal):
            answer = await self._refuse(scope, send, verdict)
            self.gatekeeper.refused(handshake, verdict, answer)
            return None
        await send({"type": "websocket.accept", "subprotocol": verdict.subprotocol})
        return verdict

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> str:
        """Refuse the handshake; return how: ``"http"`` (a status) or ``"close"``."""
        rejection = refusal.rejection
        # A browser never sees the status of a refused handshake, only a 1006 it cannot
        # tell from an outage, so its client would retry forever. Browsers (which always
        # send Origin) get the WebSocket accepted and closed with a code that says stop.
        if not refusal.browser and "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": rejection.status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send(
                {
                    "type": "websocket.http.response.body",
                    "body": rejection.reason.encode() + b"\n",
                }
            )
            return "http"
        await send({"type": "websocket.accept", "subprotocol": refusal.subprotocol})
        reason = close_reason(rejection.reason)
        await send({"type": "websocket.close", "code": rejection.close_code, "reason": reason})
        return "close"

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self.manager.start()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.manager.aclose()
        await send({"type": "lifespan.shutdown.complete"})
