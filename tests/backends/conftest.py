"""The backend contract suite runs against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from budget_ws import Backend, create_backend
from budget_ws.testing import RecordingListener

BACKEND_URLS = {"memory": "memory://?history_size=100"}


@pytest.fixture(params=sorted(BACKEND_URLS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with create_backend(BACKEND_URLS[request.param]) as opened:
        yield opened


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()
