"""The backend contract suite runs against every backend, on every event loop it supports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from budget_ws import Backend, create_backend
from budget_ws.testing import RecordingListener

REDIS_URL = "redis://127.0.0.1:6379/0"

# backend -> the event loops it runs on (redis-py's client is asyncio-only)
BACKENDS = {"memory": ("asyncio", "trio"), "redis": ("asyncio",)}
CASES = [(name, loop) for name, loops in BACKENDS.items() for loop in loops]


def backend_url(name: str) -> str:
    if name == "memory":
        return "memory://?history_size=100"
    # A prefix of its own per test keeps runs (and parallel developers) apart.
    return f"{REDIS_URL}?history_size=100&key_prefix=test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=CASES, ids=[f"{name}-{loop}" for name, loop in CASES])
def backend_case(request: pytest.FixtureRequest) -> tuple[str, str]:
    name, loop = request.param
    return str(name), str(loop)


@pytest.fixture
def contract_anyio_backend(backend_case: tuple[str, str]) -> str:
    return backend_case[1]


@pytest.fixture
async def backend(backend_case: tuple[str, str]) -> AsyncIterator[Backend]:
    async with create_backend(backend_url(backend_case[0])) as opened:
        yield opened


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()
