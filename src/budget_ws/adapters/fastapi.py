"""FastAPI: a router with the WebSocket and client routes, health probes, a dependency.

::

    manager = ConnectionManager()
    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(create_router(manager))
    app.include_router(health_router(manager))

    @app.post("/facts")
    async def add_fact(fact: FactIn, manager: Manager) -> None:
        await manager.publish(FactCreated(**fact.model_dump()), topic="budget:1")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

try:
    from fastapi import APIRouter, Depends, Request
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budget_ws.adapters.fastapi needs FastAPI: pip install 'budget-ws[fastapi]'"
    ) from exc

from ..compat import Compatibility
from ..errors import ManagerClosed
from ..handshake import Authenticate
from ..manager import ConnectionManager
from .assets import ClientAssets
from .starlette import STATE_KEY, health_routes, lifespan, websocket_route

__all__ = ["Manager", "create_router", "current_manager", "health_router", "lifespan"]


def create_router(
    manager: ConnectionManager,
    *,
    path: str = "/ws",
    client_path: str | None = "/budget-ws",
    authenticate: Authenticate | None = None,
    allowed_origins: Sequence[str] | None = None,
    require_subprotocol: bool = True,
    compatibility: Compatibility | None = None,
) -> APIRouter:
    """An ``APIRouter`` with the WebSocket endpoint at ``path`` and, unless
    ``client_path`` is None, the browser client under ``client_path``."""
    router = APIRouter()
    router.routes.append(
        websocket_route(
            manager,
            path,
            authenticate=authenticate,
            allowed_origins=allowed_origins,
            require_subprotocol=require_subprotocol,
            compatibility=compatibility,
        )
    )
    if client_path is not None:
        # A route with a path parameter, not a Mount: include_router() of older FastAPI
        # releases (0.110 among them) copies no mounts, and the client would be missing.
        client = f"{client_path.rstrip('/')}/{{file}}"
        router.routes.append(Route(client, ClientAssets(), name="budget_ws_client"))
    return router


def health_router(
    manager: ConnectionManager,
    *,
    ready_path: str = "/health/ready",
    live_path: str = "/health/live",
) -> APIRouter:
    """An ``APIRouter`` answering a readiness probe at ``ready_path`` and a liveness probe
    at ``live_path`` (see :class:`~budget_ws.adapters.HealthApp`).

    Readiness is 503 while the manager is not started, draining or closed, or its backend
    is disconnected; liveness is 503 only once the manager is closed. Neither appears in
    the OpenAPI schema.

    .. versionadded:: 0.1
    """
    router = APIRouter()
    router.routes.extend(health_routes(manager, ready_path, live_path))
    return router


def current_manager(request: Request) -> ConnectionManager:
    """A dependency giving the running manager; needs ``FastAPI(lifespan=lifespan(manager))``."""
    manager = getattr(request.state, STATE_KEY, None)
    if not isinstance(manager, ConnectionManager):
        raise ManagerClosed(
            "no running budget_ws manager: create the app with "
            "FastAPI(lifespan=budget_ws.adapters.fastapi.lifespan(manager))"
        )
    return manager


Manager = Annotated[ConnectionManager, Depends(current_manager)]
"""Annotate a route parameter with it to receive the running manager."""
