"""The family-budget demo's operator page in a real browser: its numbers follow the tabs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NO_VALUE = "\N{EN DASH}"  # a number the page does not have
POLL = 3000  # ms: the page re-fetches its numbers every second


def open_budget(page: Page, url: str) -> Page:
    """Log ``page`` in as alice; return once her budget page is subscribed."""
    page.goto(url + "/login")
    page.click("button[value=alice]")
    expect(page.locator("#live-status")).to_have_text("subscribed")
    return page


def test_the_ops_page_follows_tabs_opening_closing_and_publishing(
    live_server: Callable[..., Any], new_page: Callable[[], Page], tmp_path: Path
) -> None:
    server = live_server(
        "family_budget.app:app_factory",
        app_dir=EXAMPLES,
        factory=True,
        env={"BUDGET_DEMO_DB": str(tmp_path / "budget.sqlite3"), "BUDGET_WS_BACKEND": "memory://"},
    )
    ops = new_page()
    ops.goto(server.url + "/ops")
    connections = ops.locator("#ops-connections")
    expect(connections).to_have_text("0")  # the page itself holds no WebSocket
    expect(ops.locator("#ops-delivery-p50")).to_have_text(NO_VALUE)

    first = open_budget(new_page(), server.url)
    expect(connections).to_have_text("1", timeout=POLL)
    second = open_budget(new_page(), server.url)
    expect(connections).to_have_text("2", timeout=POLL)
    # Her budget's topic, and her own stream (~user:alice), which the server subscribes.
    expect(ops.locator("#ops-topics")).to_have_text("2")
    expect(ops.locator("#ops-closes")).to_have_text("none yet")

    form = first.locator("#new-fact")
    form.locator("[name=amount]").fill("12.34")
    form.locator("button[type=submit]").click()
    expect(second.locator("#facts tr[data-fact-id]").first).to_contain_text("12.34")
    expect(ops.locator("#ops-delivery-p99")).to_have_text(re.compile(r"^[\d.,]+ ms$"), timeout=POLL)
    expect(ops.locator("#ops-publish-p99")).not_to_have_text(NO_VALUE)

    second.close()
    expect(connections).to_have_text("1", timeout=POLL)
    expect(ops.locator("#ops-closes")).to_have_text("1000 normal 1", use_inner_text=True)

    # The budget page links to it, out of the way, in its footer.
    first.locator("footer").get_by_role("link", name="Operator page").click()
    expect(first.locator("#ops-connections")).to_have_text("0", timeout=POLL)
