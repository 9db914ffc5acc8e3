"""Fixtures of the native server's tests: asyncio only, as the server.

uvloop's event loop (``python -m budget_ws serve --loop uvloop``) is tried in processes of
its own (``test_cli.py``, ``test_reuse_port.py``), so that what goes wrong there stays there.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the native server runs on asyncio only
