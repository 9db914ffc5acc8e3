"""Plain ASGI: readiness and liveness endpoints for an orchestrator, no dependency."""

from __future__ import annotations

import json
from typing import Literal

from ..health import check_health
from ..manager import ConnectionManager
from .asgi import Receive, Scope, Send

__all__ = ["HealthApp"]

Check = Literal["ready", "live"]


class HealthApp:
    """An ASGI app answering a health probe: 200 when the check passes, else 503.

    ``GET`` and ``HEAD`` only (other methods get 405). The JSON body is
    :meth:`Health.as_dict() <budget_ws.Health.as_dict>`: both verdicts, the reasons the
    manager is not ready, its state, counts and the backend's description and status,
    never a password. Responses are ``Cache-Control: no-store``. Mount it at the path the
    probe calls, one app per check; the manager must be started elsewhere (the app's
    lifespan).

    .. versionadded:: 0.1

    Args:
        manager: The manager to check (see :func:`~budget_ws.check_health`).
        check: ``"ready"``: 503 while the manager is not started, draining or closed, or
            its backend is disconnected (take the process out of the load balancer).
            ``"live"``: 503 only once the manager is closed (restart the process).

    Raises:
        ValueError: ``check`` is neither ``"ready"`` nor ``"live"``.
    """

    def __init__(self, manager: ConnectionManager, *, check: Check = "ready") -> None:
        if check not in ("ready", "live"):
            raise ValueError(f'HealthApp(check=...) takes "ready" or "live", not {check!r}')
        self.manager = manager
        self.check: Check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"allow", b"GET, HEAD"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"use GET\n"})
            return
        health = check_health(self.manager)
        passed = health.ready if self.check == "ready" else health.live
        # default=str: a third-party backend's status may hold values JSON cannot encode.
        body = json.dumps(health.as_dict(), default=str, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200 if passed else 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
