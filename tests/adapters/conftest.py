"""Real servers for adapter tests: uvicorn on 127.0.0.1, an ephemeral port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from tests.support.servers import bound_port, running_uvicorn

# uvicorn's WebSocket implementations; the default ("auto") picks websockets-sansio.
WS_IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]

Serve = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio only


@pytest.fixture(params=WS_IMPLEMENTATIONS)
def ws_implementation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(ws_implementation: str) -> Serve:
    """``async with serve(app) as address:`` runs uvicorn until the block ends."""

    @asynccontextmanager
    async def run(app: Any, *, lifespan: str = "on") -> AsyncIterator[str]:
        async with running_uvicorn(
            app, ws=ws_implementation, lifespan=lifespan, timeout_graceful_shutdown=5
        ) as server:
            yield f"127.0.0.1:{bound_port(server)}"

    return run
