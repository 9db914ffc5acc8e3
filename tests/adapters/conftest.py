"""Real servers for adapter tests: uvicorn on 127.0.0.1, an ephemeral port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import uvicorn

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
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            ws=ws_implementation,
            lifespan=lifespan,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    if task.done():
                        task.result()
                        raise RuntimeError("uvicorn stopped before it started")
                    await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            yield f"127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task

    return run
