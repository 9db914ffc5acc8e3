"""The family-budget demo in a real browser: who is viewing a budget, and removing a member.

Alice's two tabs share one browser context (her cookie), as two tabs of one browser do;
Bob has a context of his own, as a private window would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocket, expect
from tests.browser.test_family_budget import EXAMPLES, LIVE, add_fact, open_tab

PRESENCE = 3000
"""ms: presence changes reach other tabs at most once per second (`PresenceOptions.interval`)."""


@pytest.fixture
def budget_url(live_server: Callable[..., Any], tmp_path: Path) -> str:
    server = live_server(
        "family_budget.app:app_factory",
        app_dir=EXAMPLES,
        factory=True,
        env={"BUDGET_DEMO_DB": str(tmp_path / "budget.sqlite3"), "BUDGET_WS_BACKEND": "memory://"},
    )
    return str(server.url)


def record_frames(page: Page) -> list[dict[str, Any]]:
    """Every frame ``page``'s WebSockets receive from now on, in order."""
    frames: list[dict[str, Any]] = []

    def record(websocket: WebSocket) -> None:
        def split(payload: str | bytes) -> None:  # a message may hold several frames
            frames.extend(json.loads(line) for line in str(payload).splitlines() if line)

        websocket.on("framereceived", split)

    page.on("websocket", record)
    return frames


def mentions(frames: list[dict[str, Any]], user: str) -> list[dict[str, Any]]:
    """The presence frames that list ``user`` as present or arriving."""
    return [
        frame
        for frame in frames
        if frame.get("op") in ("presence", "presence_diff")
        and any(member["user"] == user for member in frame.get("members", frame.get("joins", [])))
    ]


def test_viewers_are_listed_once_and_a_removed_member_stops_at_once(
    new_page: Callable[[], Page], budget_url: str
) -> None:
    # Alice opens her budget in two tabs: she is listed once, with her two tabs.
    first = new_page()
    alices_frames = record_frames(first)
    open_tab(first, budget_url, "alice")
    viewing = first.locator("#viewing li")
    expect(viewing).to_have_text(["Alice"], timeout=PRESENCE)
    second = first.context.new_page()
    second.goto(budget_url + "/budgets/1")
    expect(second.locator("#live-status")).to_have_text("subscribed")
    for tab in (first, second):
        expect(tab.locator("#viewing li")).to_have_text(["Alice 2 tabs"], timeout=PRESENCE)

    # Bob opens his own budget: he is viewing that one, never Alice's.
    bob = new_page()
    bobs_frames = record_frames(bob)
    open_tab(bob, budget_url, "bob")
    expect(bob.locator(".budget-name")).to_have_text("Jones family")
    expect(bob.locator("#viewing li")).to_have_text(["Bob"], timeout=PRESENCE)
    # An absence cannot be awaited: give a wrong join a presence interval and more to show.
    first.wait_for_timeout(1500)
    expect(viewing).to_have_text(["Alice 2 tabs"])
    assert mentions(alices_frames, "bob") == []

    # Alice shares her budget with Bob; his page is told, and he opens it from there.
    first.locator("#new-member").select_option(label="Bob")
    first.get_by_role("button", name="Add member").click()
    expect(second.locator('#members li[data-member="bob"]')).to_have_count(1, timeout=LIVE)
    notice = bob.locator("#notices")
    expect(notice).to_contain_text("alice shared Smith family with you", timeout=LIVE)
    notice.get_by_role("link", name="open it").click()
    expect(bob.locator(".budget-name")).to_have_text("Smith family")
    expect(bob.locator("#live-status")).to_have_text("subscribed")
    for tab in (first, second, bob):
        expect(tab.locator("#viewing li")).to_have_text(["Alice 2 tabs", "Bob"], timeout=PRESENCE)
    expect(bob.locator('#members li[data-member="bob"] button')).to_have_count(0)  # no Remove

    # Alice removes him: his page says so at once, and hears no more of her budget.
    first.locator('#members li[data-member="bob"]').get_by_role("button", name="Remove").click()
    expect(bob.locator("#removed")).to_contain_text(
        "You were removed from this budget", timeout=LIVE
    )
    expect(bob.locator("#live-status")).to_have_text("removed")
    expect(bob.locator("#notices")).to_contain_text("alice removed you from Smith family.")
    expect(second.locator('#members li[data-member="bob"]')).to_have_count(0, timeout=LIVE)
    for tab in (first, second):
        expect(tab.locator("#viewing li")).to_have_text(["Alice 2 tabs"], timeout=PRESENCE)

    facts = bob.locator("#facts tr[data-fact-id]")
    count = facts.count()
    add_fact(first, "55.55", "Rent", "Household")
    for tab in (first, second):  # delivered: it would have reached Bob by now, too
        expect(tab.locator("#facts tr[data-fact-id]").first).to_contain_text("55.55", timeout=LIVE)
    expect(facts).to_have_count(count)
    expect(bob.locator("#facts")).not_to_contain_text("55.55")
    revoked = {"op": "unsubscribed", "topic": "budget:1", "reason": "revoked"}
    after = bobs_frames[bobs_frames.index(revoked) + 1 :]
    since = [
        frame.get("event", frame.get("op")) for frame in after if frame.get("topic") == "budget:1"
    ]
    # The news of his removal was queued before the revocation, which overtook it; the
    # client drops it (the topic is no longer held). Nothing published later came.
    assert since in ([], ["budget_member_removed"])

    # Reloading, he is refused: the budget is no longer shared with him.
    response = bob.reload()
    assert response is not None
    assert response.status == 403
    expect(bob.locator("main")).to_contain_text("not your budget")
