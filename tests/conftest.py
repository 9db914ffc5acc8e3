"""Shared fixtures.

Every async test runs on asyncio and on trio, except the tests of what runs on asyncio
only: the Redis backend (redis-py's client is asyncio-only; ``tests/backends``) and the
adapters served by uvicorn in the test's process (``tests/adapters``, whose in-process
ASGI tests still run on both). Timing tests run on virtual time on both loops
(``tests/support/clock.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis
from tests.support.postgres import migrated_schema

from budget_ws import ConnectionManager, Heartbeat, MemoryBackend

REDIS_URL = "redis://127.0.0.1:6379/0"

_skipped: list[str] = []


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def manager() -> AsyncIterator[ConnectionManager]:
    async with ConnectionManager(
        MemoryBackend(), heartbeat=Heartbeat(interval=60, timeout=60), shutdown_timeout=2
    ) as running:
        yield running


@pytest.fixture
async def key_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of the test's own (``REDIS_URL``); its keys go afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def postgres_schema() -> AsyncIterator[str]:
    """A migrated PostgreSQL schema of the test's own (``tests/support/postgres.py``)."""
    async with migrated_schema() as schema:
        yield schema


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a skipped test is a failed test: Redis and browser tests must really run.
    if os.environ.get("CI") and _skipped:
        print(f"\nCI forbids skipped tests; {len(_skipped)} skipped:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
