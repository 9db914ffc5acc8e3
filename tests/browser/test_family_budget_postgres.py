"""The family-budget demo on PostgreSQL in a real browser: two tabs of Alice keep in step.

The server is started as a deployment would: budget_ws's migration step first
(``python -m budget_ws migrate URL``), then ``uvicorn --factory`` with the backend in
``$BUDGET_WS_BACKEND``. Both schemas (budget_ws's and the demo's data) are the test's
own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import pytest
from playwright.sync_api import Page
from tests.browser.test_family_budget import EXAMPLES, add_fact_and_expect_it_live, open_tab
from tests.support.postgres import POSTGRES_DSN, url_of


def drop_schemas(*schemas: str) -> None:
    async def drop() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {', '.join(schemas)} CASCADE")
        finally:
            await connection.close()

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, drop()).result()


@pytest.fixture
def budget_url(live_server: Callable[..., Any]) -> Iterator[str]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    backend = url_of(schema)
    try:
        migrate = [sys.executable, "-m", "budget_ws", "migrate", backend]
        subprocess.run(migrate, check=True, capture_output=True, timeout=30)
        env = {
            "BUDGET_WS_BACKEND": backend,
            "BUDGET_DEMO_SCHEMA": f"{schema}_data",
            "BUDGET_DEMO_DB": "",  # SQLite only: refused on PostgreSQL
        }
        server = live_server(
            "family_budget.app:app_factory", app_dir=EXAMPLES, factory=True, env=env
        )
        try:
            yield str(server.url)
        finally:
            server.stop()  # before its schemas go
    finally:
        drop_schemas(schema, f"{schema}_data")


def test_on_postgresql_a_fact_added_in_one_tab_appears_in_the_other(
    new_page: Callable[[], Page], budget_url: str
) -> None:
    first, second = (open_tab(new_page(), budget_url, "alice") for _ in range(2))
    add_fact_and_expect_it_live(first, second)
