"""Admitting a WebSocket: the checks before accepting it and the hand-over to the manager.

Every server in front of a :class:`~budget_ws.ConnectionManager` (the ASGI adapter, the
native server) runs the same checks in the same order and refuses with the same answers;
each only translates the request into a :class:`~budget_ws.Handshake` and the answer into
its own messages.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .compat import Compatibility, CompatTransport
from .connection import Transport
from .errors import ManagerClosed
from .handshake import Authenticate, Handshake, HandshakeRejected, origin_allowed
from .limits import validate_topic
from .manager import ConnectionManager
from .protocol import SUBPROTOCOL, CloseCode, excerpt

__all__ = ["Admission", "Gatekeeper", "Refusal"]

logger = logging.getLogger("budget_ws.adapters")
"""Lines about handshakes; the table is in ``docs/reference/logging.md``."""

_REASON_CHARS = 80
"""Characters of a refusal's reason at most in a log line."""


@dataclass(frozen=True)
class Admission:
    """A handshake that passed every check."""

    principal: Any
    """What ``authenticate`` returned (None without it)."""
    subprotocol: str | None
    """The subprotocol to accept with: ``budget-ws.v1`` when the client offered it."""
    compat_topics: tuple[str, ...] | None
    """For a client served in compatibility mode, the topics its hook chose."""


@dataclass(frozen=True)
class Refusal:
    """A handshake refused by one of the checks."""

    check: str
    """Which check refused: ``subprotocol``, ``origin``, ``authentication`` or ``topics``."""
    rejection: HandshakeRejected
    subprotocol: str | None
    """The subprotocol to accept with when the refusal is a close code."""
    browser: bool
    """Whether the client is a browser (it sent ``Origin``), which never sees an HTTP
    status, only a close code."""


class Gatekeeper:
    """The handshake checks and the hand-over of an accepted WebSocket to the manager.

    Args:
        manager: The manager that serves accepted connections.
        authenticate: ``authenticate(handshake) -> principal``, may be async; refuses by
            raising :class:`~budget_ws.HandshakeRejected`.
        allowed_origins: See :func:`~budget_ws.origin_allowed`.
        require_subprotocol: Refuse clients that do not offer ``budget-ws.v1``.
        compatibility: Serve clients that do not offer it the original app's way.
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

    async def check(self, handshake: Handshake) -> Admission | Refusal:
        """Run the checks in order: subprotocol, origin, authentication, topics."""
        offered = SUBPROTOCOL in handshake.subprotocols
        subprotocol = SUBPROTOCOL if offered else None
        compat_topics: tuple[str, ...] | None = None
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
            return Refusal(check, rejection, subprotocol, handshake.origin is not None)
        return Admission(principal, subprotocol, compat_topics)

    def refused(self, handshake: Handshake, refusal: Refusal, answer: str) -> None:
        """Count and log a refusal, answered ``"http"`` (a status) or ``"close"``."""
        self.manager.metrics.handshake_refusals[refusal.check] += 1
        rejection = refusal.rejection
        client = _address(handshake)
        reason = excerpt(rejection.reason, _REASON_CHARS)
        code = rejection.status if answer == "http" else rejection.close_code
        # One INFO line, no traceback: refusing a client is what the checks are for.
        logger.info(
            "budget_ws: handshake from %s refused (%s): %s %r",
            client or "an unknown address",
            refusal.check,
            code,
            reason,
            extra={
                "budget_ws_event": "handshake_refused",
                "budget_ws_refusal": refusal.check,
                "budget_ws_answer": answer,
                "budget_ws_status": rejection.status,
                "budget_ws_close_code": rejection.close_code,
                "budget_ws_reason": reason,
                "budget_ws_client": client,
                "budget_ws_path": handshake.path,
            },
        )

    async def serve(self, transport: Transport, admission: Admission) -> None:
        """Serve an accepted WebSocket until it closes."""
        manager = self.manager
        try:
            if admission.compat_topics is None:
                await manager.serve(transport, principal=admission.principal)
            else:
                assert self.compatibility is not None
                transport = CompatTransport(transport, positions=self.compatibility.positions)
                await manager.serve(
                    transport,
                    principal=admission.principal,
                    topics=admission.compat_topics,
                    answers_pings=False,
                    one_frame_per_message=True,
                )
        except ManagerClosed:
            manager.metrics.handshake_refusals["not_running"] += 1
            logger.error(
                "budget_ws: the ConnectionManager is not running; start it in the app's "
                "lifespan (see budget_ws.adapters.starlette.lifespan)",
                extra={"budget_ws_event": "manager_not_running"},
            )
            await transport.close(CloseCode.INTERNAL_ERROR, "server not ready")

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


def _address(handshake: Handshake) -> str | None:
    """``host:port`` of the client as the server saw it, for a log line."""
    if handshake.client is None:
        return None
    host, port = handshake.client
    return f"{host}:{port}"
