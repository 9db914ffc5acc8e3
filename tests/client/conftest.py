"""The Python client runs on asyncio only: ``websockets`` (and uvicorn) are asyncio-only."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
