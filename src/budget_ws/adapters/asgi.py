"""Plain ASGI: a WebSocket endpoint for any ASGI framework or server, no dependency.

The Starlette and FastAPI adapters mount this same app; the logic lives in the core.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from ..compat import Compatibility, CompatTransport
from ..connection import Transport
from ..errors import ConnectionClosed, ManagerClosed
from ..handshake import Authenticate, Handshake, HandshakeRejected, origin_allowed
from ..limits import validate_topic
from ..manager import ConnectionManager
from ..protocol import SUBPROTOCOL, CloseCode, close_reason, excerpt

__all__ = ["ASGITransport", "WebSocketApp"]

logger = logging.getLogger("budget_ws.adapters")
"""Lines about handshakes; the table is in ``docs/reference/logging.md``."""

_REASON_CHARS = 80
"""Characters of a refusal's reason at most in a log line."""

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
        self.manager = manager
        self.authenticate = authenticate
        self.allowed_origins = allowed_origins
        self.require_subprotocol = require_subprotocol
        self.compatibility = compatibility

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # The handshake is checked in a call of its own so that none of it (every
            # header, decoded) stays referenced while the connection is served.
            accepted, principal, compat_topics = await self._accept(scope, receive, send)
            if not accepted:
                return
            transport: Transport = ASGITransport(receive, send)
            try:
                if compat_topics is None:
                    await self.manager.serve(transport, principal=principal)
                else:
                    assert self.compatibility is not None
                    transport = CompatTransport(transport, positions=self.compatibility.positions)
                    await self.manager.serve(
                        transport,
                        principal=principal,
                        topics=compat_topics,
                        answers_pings=False,
                        one_frame_per_message=True,
                    )
            except ManagerClosed:
                self.manager.metrics.handshake_refusals["not_running"] += 1
                logger.error(
                    "budget_ws: the ConnectionManager is not running; start it in the app's "
                    "lifespan (see budget_ws.adapters.starlette.lifespan)",
                    extra={"budget_ws_event": "manager_not_running"},
                )
                await transport.close(CloseCode.INTERNAL_ERROR, "server not ready")
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

    async def _accept(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[bool, Any, tuple[str, ...] | None]:
        """Check the handshake; accept it or refuse.

        Returns:
            Whether it was accepted, the principal, and for a client served in
            compatibility mode the topics its hook chose (None for any other client).
        """
        message = await receive()
        if message["type"] != "websocket.connect":
            return False, None, None
        handshake = Handshake.from_asgi(scope)
        offered = SUBPROTOCOL in handshake.subprotocols
        compat_topics: tuple[str, ...] | None = None
        # What was being checked when a HandshakeRejected came: the refusal's kind.
        check = "subprotocol"
        try:
            if self.require_subprotocol and not offered and self.compatibility is None:
                raise HandshakeRejected(
                    f"subprotocol {SUBPROTOCOL} required", status=400, close_code=1002
                )
            check = "origin"
            if not origin_allowed(handshake, self.allowed_origins):
                raise HandshakeRejected(f"origin {excerpt(handshake.origin or '')} not allowed")
            check = "authentication"
            principal = await self._authenticate(handshake)
            if not offered and self.compatibility is not None:
                check = "topics"
                compat_topics = await self._compat_topics(handshake, principal)
        except HandshakeRejected as rejection:
            answer = await self._refuse(
                scope, send, rejection, offered, handshake.origin is not None
            )
            _log_refusal(handshake, check, rejection, answer)
            self.manager.metrics.handshake_refusals[check] += 1
            return False, None, None
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL if offered else None})
        return True, principal, compat_topics

    async def _compat_topics(self, handshake: Handshake, principal: Any) -> tuple[str, ...]:
        """The topics the compatibility hook chooses for a client, each checked."""
        assert self.compatibility is not None
        try:
            chosen = self.compatibility.topics(handshake, principal)
            if inspect.isawaitable(chosen):
                chosen = await chosen
            topics = (chosen,) if isinstance(chosen, str) else tuple(chosen)
            for topic in topics:
                validate_topic(topic, self.manager.limits.max_topic_length)
        except HandshakeRejected:
            raise
        except Exception:
            logger.exception(
                "the compatibility topics hook failed for %s",
                handshake.client,
                extra={
                    "budget_ws_event": "topics_hook_failed",
                    "budget_ws_client": _address(handshake),
                    "budget_ws_path": handshake.path,
                },
            )
            raise HandshakeRejected(
                "server error choosing topics", status=500, close_code=CloseCode.INTERNAL_ERROR
            ) from None
        return topics

    async def _authenticate(self, handshake: Handshake) -> Any:
        if self.authenticate is None:
            return None
        try:
            principal = self.authenticate(handshake)
            if inspect.isawaitable(principal):
                principal = await principal
        except HandshakeRejected:
            raise
        except Exception:
            logger.exception(
                "authenticate failed for %s",
                handshake.client,
                extra={
                    "budget_ws_event": "authenticate_failed",
                    "budget_ws_client": _address(handshake),
                    "budget_ws_path": handshake.path,
                },
            )
            raise HandshakeRejected("authentication failed") from None
        return principal

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        rejection: HandshakeRejected,
        offered: bool,
        browser: bool,
    ) -> str:
        """Refuse the handshake; return how: ``"http"`` (a status) or ``"close"``."""
        # A browser never sees the status of a refused handshake, only a 1006 it cannot
        # tell from an outage, so its client would retry forever. Browsers (which always
        # send Origin) get the WebSocket accepted and closed with a code that says stop.
        if not browser and "websocket.http.response" in scope.get("extensions", {}):
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
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL if offered else None})
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


def _address(handshake: Handshake) -> str | None:
    """``host:port`` of the client as the server saw it, for a log line."""
    if handshake.client is None:
        return None
    host, port = handshake.client
    return f"{host}:{port}"


def _log_refusal(
    handshake: Handshake, check: str, rejection: HandshakeRejected, answer: str
) -> None:
    """One INFO line, no traceback: refusing a client is what the checks are for."""
    client = _address(handshake)
    reason = excerpt(rejection.reason, _REASON_CHARS)
    code = rejection.status if answer == "http" else rejection.close_code
    logger.info(
        "budget_ws: handshake from %s refused (%s): %s %r",
        client or "an unknown address",
        check,
        code,
        reason,
        extra={
            "budget_ws_event": "handshake_refused",
            "budget_ws_refusal": check,
            "budget_ws_answer": answer,
            "budget_ws_status": rejection.status,
            "budget_ws_close_code": rejection.close_code,
            "budget_ws_reason": reason,
            "budget_ws_client": client,
            "budget_ws_path": handshake.path,
        },
    )
