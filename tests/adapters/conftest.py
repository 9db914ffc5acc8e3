"""Real servers for adapter tests, on 127.0.0.1 and an ephemeral port: uvicorn (each of its
WebSocket implementations) and budget_ws's native server.

``serve`` runs every test that takes it on each server: uvicorn with either WebSocket
implementation, and ``NativeServer`` for a :class:`~budget_ws.adapters.WebSocketApp`. A test
whose app is more than a ``WebSocketApp`` (a Starlette or FastAPI app, health probes, an ASGI
wrapper) runs on uvicorn only: list it in ``ASGI_ONLY``, or take ``serve_uvicorn``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from tests.support.servers import bound_port, running_native, running_uvicorn

from budget_ws.adapters import WebSocketApp

# uvicorn's WebSocket implementations; the default ("auto") picks websockets-sansio.
WS_IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]
NATIVE = "native"
SERVERS = [*WS_IMPLEMENTATIONS, NATIVE]
"""What ``serve`` runs on: uvicorn with each WebSocket implementation, the native server."""

ASGI_ONLY = (
    "test_fastapi.py",
    "test_health.py",
    "test_starlette.py",
    "test_compat.py::test_starlette_and_fastapi_routes_take_compatibility",
)
"""Modules, or tests (``module.py::test``), whose apps serve HTTP or framework routes
beside the WebSocket: the native server serves a ``WebSocketApp`` alone, so these run on
uvicorn only."""

Serve = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn and the native server run on asyncio only


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names: str | Sequence[str] = marker.args[0]
        if isinstance(names, str):
            names = [part.strip() for part in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test over ``SERVERS`` when it takes ``serve``, over uvicorn's implementations
    when it takes ``serve_uvicorn``, unless it chose its own ``ws_implementation``."""
    if "ws_implementation" not in metafunc.fixturenames:
        return
    if _parametrized(metafunc, "ws_implementation"):
        return
    module = metafunc.definition.path.name
    asgi_only = {module, f"{module}::{metafunc.function.__name__}"} & set(ASGI_ONLY)
    native = "serve" in metafunc.fixturenames and not asgi_only
    metafunc.parametrize("ws_implementation", SERVERS if native else WS_IMPLEMENTATIONS)


@pytest.fixture
def ws_implementation() -> str:
    """Replaced by the parametrization above; a test taking it alone runs on uvicorn."""
    return WS_IMPLEMENTATIONS[0]


def _uvicorn(ws_implementation: str) -> Serve:
    @asynccontextmanager
    async def run(app: Any, *, lifespan: str = "on") -> AsyncIterator[str]:
        async with running_uvicorn(
            app, ws=ws_implementation, lifespan=lifespan, timeout_graceful_shutdown=5
        ) as server:
            yield f"127.0.0.1:{bound_port(server)}"

    return run


@asynccontextmanager
async def _native(app: Any, *, lifespan: str = "on") -> AsyncIterator[str]:
    if not isinstance(app, WebSocketApp):
        raise TypeError(
            f"serve() on the native server takes a WebSocketApp, not {type(app).__name__}: "
            "list the test in ASGI_ONLY (tests/adapters/conftest.py) or take serve_uvicorn"
        )
    # uvicorn serves a top-level WebSocketApp at every path: so does this (path=None).
    async with running_native(app, lifespan=lifespan == "on", path=None) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture
def serve(ws_implementation: str) -> Serve:
    """``async with serve(app) as address:`` runs the server until the block ends.

    ``lifespan="on"`` (the default) runs the app's lifespan, which starts and closes the
    ``WebSocketApp``'s manager: on the native server, the manager is started before it
    listens (unless it already runs) and closed after it stops, as uvicorn's lifespan does.
    """
    if ws_implementation == NATIVE:
        return _native
    return _uvicorn(ws_implementation)


@pytest.fixture
def serve_uvicorn(ws_implementation: str) -> Serve:
    """``serve`` on uvicorn only: for an ASGI app that is not a bare ``WebSocketApp``."""
    assert ws_implementation in WS_IMPLEMENTATIONS
    return _uvicorn(ws_implementation)
