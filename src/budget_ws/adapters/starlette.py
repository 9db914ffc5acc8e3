"""Starlette: a WebSocket route, the client asset route, health routes and a lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from starlette.routing import Mount, Route, WebSocketRoute
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budget_ws.adapters.starlette needs Starlette: pip install 'budget-ws[starlette]'"
    ) from exc

from ..compat import Compatibility
from ..handshake import Authenticate
from ..manager import ConnectionManager
from .asgi import WebSocketApp
from .assets import ClientAssets
from .health import HealthApp

__all__ = ["STATE_KEY", "client_route", "health_routes", "lifespan", "websocket_route"]

STATE_KEY = "budget_ws_manager"
"""The lifespan state key under which the running manager is shared with requests."""


def websocket_route(
    manager: ConnectionManager,
    path: str = "/ws",
    *,
    authenticate: Authenticate | None = None,
    allowed_origins: Sequence[str] | None = None,
    require_subprotocol: bool = True,
    compatibility: Compatibility | None = None,
    name: str | None = "budget_ws",
) -> WebSocketRoute:
    """A route that serves WebSocket clients at ``path`` (see :class:`WebSocketApp`)."""
    app = WebSocketApp(
        manager,
        authenticate=authenticate,
        allowed_origins=allowed_origins,
        require_subprotocol=require_subprotocol,
        compatibility=compatibility,
    )
    return WebSocketRoute(path, app, name=name)


def client_route(path: str = "/budget-ws", *, name: str | None = "budget_ws_client") -> Mount:
    """A mount serving the browser client: ``{path}/budget-ws.js`` and ``.d.ts``."""
    return Mount(path, app=ClientAssets(), name=name)


def health_routes(
    manager: ConnectionManager,
    ready_path: str = "/health/ready",
    live_path: str = "/health/live",
) -> list[Route]:
    """A readiness and a liveness route, each a :class:`~budget_ws.adapters.HealthApp`.

    ``GET`` or ``HEAD`` ``ready_path`` answers 200 while the manager runs, is not
    draining and its backend is connected, else 503; ``live_path`` answers 503 only once
    the manager is closed. Add them to the app's routes:
    ``Starlette(routes=[*health_routes(manager), ...])``.

    .. versionadded:: 0.1
    """
    # Routes, not Mounts: FastAPI's include_router() of older releases copies no mounts.
    return [
        Route(ready_path, HealthApp(manager, check="ready"), name="budget_ws_ready"),
        Route(live_path, HealthApp(manager, check="live"), name="budget_ws_live"),
    ]


def lifespan(
    manager: ConnectionManager,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that runs the manager for as long as the app runs.

    Pass it as ``Starlette(lifespan=lifespan(manager))``. At shutdown every connection is
    closed with 1012 so clients reconnect to another worker. The manager is also put in
    the lifespan state, where ``request.state.budget_ws_manager`` finds it.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[dict[str, Any]]:
        async with manager:
            yield {STATE_KEY: manager}

    return run
