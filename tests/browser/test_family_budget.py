"""The demos in a real browser: tabs of one budget keep each other up to date, live.

Each tab is a page in its own browser context (its own cookies), so two tabs of Alice
and one of Bob can be open at once.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, WebSocket, expect

from budget_ws.adapters import client_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIVE = 1000  # ms: what "live" promises, from a click in one tab to the change in another
STARTED = 10_000  # ms: a page's load, script and subscription, on a loaded CI machine


@pytest.fixture
def budget_url(live_server: Callable[..., Any], tmp_path: Path) -> str:
    server = live_server(
        "family_budget.app:app_factory",
        app_dir=EXAMPLES,
        factory=True,
        env={"BUDGET_DEMO_DB": str(tmp_path / "budget.sqlite3"), "BUDGET_WS_BACKEND": "memory://"},
    )
    return str(server.url)


@pytest.fixture
def requested() -> list[str]:
    """The URLs every tab has requested (WebSockets aside)."""
    return []


def open_tab(page: Page, url: str, user: str) -> Page:
    """Log ``page`` in as ``user`` on the server at ``url``; return once it is subscribed."""
    page.goto(url + "/login")
    page.click(f"button[value={user}]")
    # The page subscribes from the position it was rendered at: from the confirmation on,
    # it has every change, those made meanwhile included.
    expect(page.locator("#live-status")).to_have_text("subscribed")
    return page


@pytest.fixture
def tab(
    new_page: Callable[[], Page], budget_url: str, requested: list[str]
) -> Callable[[str], Page]:
    """``tab("alice")``: a new page, logged in, subscribed to the budget's topic."""

    def open_new_tab(user: str) -> Page:
        page = new_page()
        page.on("request", lambda request: requested.append(request.url))
        return open_tab(page, budget_url, user)

    return open_new_tab


def total(page: Page) -> Decimal:
    return Decimal(str(page.locator("#total").text_content()).replace(",", ""))


def add_fact(page: Page, amount: str, article: str, center: str) -> None:
    form = page.locator("#new-fact")
    form.locator("[name=amount]").fill(amount)
    form.locator("[name=article_id]").select_option(label=article)
    form.locator("[name=financial_center_id]").select_option(label=center)
    form.locator("button[type=submit]").click()


def add_fact_and_expect_it_live(first: Page, second: Page) -> Decimal:
    """Add 12.34 for Leisure in ``first``; ``second`` shows it within :data:`LIVE`.

    Returns:
        The budget's total before the fact.
    """
    before = total(second)
    rows = second.locator("#facts tr[data-fact-id]")
    count = rows.count()

    add_fact(first, "12.34", "Leisure", "Car")

    expect(rows).to_have_count(count + 1, timeout=LIVE)
    newest = rows.first  # newest first
    expect(newest).to_contain_text("12.34")
    expect(newest).to_contain_text("Leisure")
    expect(newest).to_contain_text("Car")
    expect(second.locator("#total")).to_have_text(f"{before + Decimal('12.34'):,.2f}")
    expect(second.locator("#activity")).to_contain_text("alice added 12.34 for Leisure")
    expect(first.locator("#new-fact")).to_contain_text("Added 12.34 for Leisure.")
    return before


def test_a_fact_added_in_one_tab_appears_in_the_other_within_a_second(
    tab: Callable[[str], Page], budget_url: str, requested: list[str]
) -> None:
    first, second = tab("alice"), tab("alice")
    rows = second.locator("#facts tr[data-fact-id]")
    count = rows.count()
    before = add_fact_and_expect_it_live(first, second)
    expect(first.locator("#total")).to_have_text(f"{before + Decimal('12.34'):,.2f}")
    # The form is ready for the next fact.
    expect(first.locator("#new-fact [name=amount]")).to_have_value("")

    # A bad amount is explained in the form, as typed, and saves nothing.
    add_fact(first, "12.345", "Rent", "Household")
    expect(first.locator("#new-fact .field-error")).to_have_text(
        "Amount must be a number with at most two decimals, like 12.50."
    )
    expect(first.locator("#new-fact [name=amount]")).to_have_value("12.345")
    expect(first.locator("#new-fact [name=article_id] option:checked")).to_have_text("Rent")
    expect(rows).to_have_count(count + 1)

    # Everything came from the demo's server: htmx is vendored, the client bundled.
    assert requested
    assert [url for url in requested if not url.startswith(budget_url + "/")] == []


def test_a_change_made_while_the_page_loads_is_not_lost(
    new_page: Callable[[], Page], budget_url: str
) -> None:
    """A fact added after the page was rendered, before its script subscribed, shows up.

    The page's script (the bundled client) is held back until another client has added the
    fact: the rendered HTML cannot show it, and no subscription existed when it was
    published. The page subscribes from the position it was rendered at, and the server
    replays the event.
    """
    page = new_page()
    frames: list[dict[str, Any]] = []

    def record(websocket: WebSocket) -> None:
        def split(payload: str | bytes) -> None:  # a message may hold several frames
            frames.extend(json.loads(line) for line in str(payload).splitlines() if line)

        websocket.on("framesent", split)
        websocket.on("framereceived", split)

    page.on("websocket", record)
    added: list[int] = []

    def add_fact_then_load(route: Route) -> None:
        if not added:  # the page is rendered, its script not yet loaded
            with httpx.Client(base_url=budget_url, cookies={"demo_user": "alice"}) as other:
                form = {"amount": "31.41", "article_id": "4", "financial_center_id": "2"}
                assert other.post("/budgets/1/facts", data=form, timeout=5).status_code == 303
                ledger = other.get("/budgets/1/ledger", timeout=5).text
                added.append(int(re.findall(r'data-fact-id="(\d+)"', ledger)[0]))  # newest
        route.continue_()

    page.route(re.compile(r"/budget-ws/budget-ws\.js"), add_fact_then_load)
    page.goto(budget_url + "/login")
    with page.expect_response(re.compile(r"/budgets/1$")) as rendered:
        page.click("button[value=alice]")
    html = rendered.value.text()
    assert "31.41" not in html
    found = re.search(r"data-position='([^']*)'", html)
    assert found is not None
    position = json.loads(found.group(1))

    expect(page.locator("#live-status")).to_have_text("subscribed", timeout=STARTED)
    [fact_id] = added
    row = page.locator(f'#facts tr[data-fact-id="{fact_id}"]')
    expect(row).to_contain_text("31.41", timeout=LIVE)
    # The event itself reached the page (a mere re-fetch would not tell who added what).
    expect(page.locator("#activity")).to_contain_text("alice added 31.41 for Leisure")
    [subscribe] = [f for f in frames if f.get("op") == "subscribe"]
    assert subscribe["position"] == position
    # (The server also subscribes the connection to Alice's own stream, `~user:alice`.)
    [subscribed] = [f for f in frames if f.get("op") == "subscribed" and f["topic"] == "budget:1"]
    assert subscribed["recovered"] is True
    assert subscribed["position"]["offset"] == position["offset"] + 1
    replayed = [f for f in frames if f.get("event") == "budget_fact_created"]
    assert [f["data"]["id"] for f in replayed] == [fact_id]


def test_edits_and_deletes_propagate_and_totals_follow(tab: Callable[[str], Page]) -> None:
    first, second = tab("alice"), tab("alice")
    before = total(second)
    groceries = second.locator('#facts tr[data-fact-id="2"]')  # 54.20 in the seed
    expect(groceries).to_contain_text("54.20")

    first.locator('#facts tr[data-fact-id="2"]').get_by_role("link", name="Edit").click()
    editor = first.locator("#edit-fact")
    editor.locator("[name=amount]").fill("60")
    editor.locator("[name=financial_center_id]").select_option(label="Kids")
    editor.locator("button[type=submit]").click()
    expect(first.locator("#edit-fact")).to_have_count(0)

    expect(groceries).to_contain_text("60.00", timeout=LIVE)
    expect(groceries).to_contain_text("Kids")
    after_edit = before + Decimal("60.00") - Decimal("54.20")
    expect(second.locator("#total")).to_have_text(f"{after_edit:,.2f}")

    first.locator('#facts tr[data-fact-id="3"]').get_by_role("button", name="Delete").click()
    expect(second.locator('#facts tr[data-fact-id="3"]')).to_have_count(0, timeout=LIVE)
    expect(first.locator('#facts tr[data-fact-id="3"]')).to_have_count(0)
    after_delete = after_edit - Decimal("38.75")
    expect(second.locator("#total")).to_have_text(f"{after_delete:,.2f}")

    # A tab editing a fact that another tab deletes is told so.
    second.locator('#facts tr[data-fact-id="4"]').get_by_role("link", name="Edit").click()
    expect(second.locator("#edit-fact")).to_be_visible()
    first.locator('#facts tr[data-fact-id="4"]').get_by_role("button", name="Delete").click()
    expect(second.locator("#editor")).to_contain_text("has just been deleted", timeout=LIVE)
    expect(second.locator('#facts tr[data-fact-id="4"]')).to_have_count(0)


def test_a_renamed_article_is_renamed_in_every_tab(tab: Callable[[str], Page]) -> None:
    first, second = tab("alice"), tab("alice")
    second.locator("#new-fact [name=article_id]").select_option(label="Rent")

    rename = first.locator('form.rename-article[data-article-id="1"]')
    rename.locator("[name=name]").fill("Food")
    rename.locator("button").click()

    expect(second.locator('#facts tr[data-fact-id="2"]')).to_contain_text("Food", timeout=LIVE)
    expect(second.locator("#article-1")).to_have_value("Food")
    options = second.locator("#new-fact [name=article_id] option")
    expect(options).to_contain_text(["Food", "Leisure", "Rent", "Transport"])
    # The choice made in the form survived the re-fetch of its options.
    expect(second.locator("#new-fact [name=article_id] option:checked")).to_have_text("Rent")


def test_bob_never_sees_alices_budget(tab: Callable[[str], Page], budget_url: str) -> None:
    alice, bob = tab("alice"), tab("bob")
    expect(bob.locator(".budget-name")).to_have_text("Jones family")
    alices_facts = alice.locator("#facts tr[data-fact-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.factId)"
    )

    add_fact(alice, "77.77", "Rent", "Household")
    add_fact(bob, "8.88", "Garden", "Garden")  # Bob's own change reaches his tab...
    expect(bob.locator("#facts tr[data-fact-id]").first).to_contain_text("8.88", timeout=LIVE)
    expect(alice.locator("#facts tr[data-fact-id]").first).to_contain_text("77.77")
    # ... Alice's does not, nor any of her facts.
    expect(bob.locator("#facts")).not_to_contain_text("77.77")
    for fact_id in alices_facts:
        expect(bob.locator(f'#facts tr[data-fact-id="{fact_id}"]')).to_have_count(0)

    # Even a hand-made subscription to Alice's topic is refused (authorize).
    code = bob.evaluate(
        """async (url) => {
            const { connect } = await import(url);
            const ws = connect("/ws");
            try {
                await ws.subscribe("budget:1");
                return "subscribed";
            } catch (error) {
                return error.code;
            } finally {
                ws.close();
            }
        }""",
        client_url(),
    )
    assert code == "forbidden"
    # And Alice's pages and fragments answer 403.
    response = bob.request.get(budget_url + "/budgets/1/ledger")
    assert response.status == 403


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.redis
def test_on_redis_tabs_served_by_two_workers_stay_in_step(
    live_server: Callable[..., Any], new_page: Callable[[], Page], tmp_path: Path
) -> None:
    if not redis_available():
        pytest.skip("needs a Redis server on 127.0.0.1:6379")
    prefix = f"test-family-budget-{uuid.uuid4().hex[:12]}"
    env = {
        "BUDGET_DEMO_DB": str(tmp_path / "budget.sqlite3"),
        "BUDGET_WS_BACKEND": f"redis://127.0.0.1:6379/0?key_prefix={prefix}",
    }
    workers = [
        live_server("family_budget.app:app_factory", app_dir=EXAMPLES, factory=True, env=env)
        for _ in range(2)
    ]
    first, second = (open_tab(new_page(), worker.url, "alice") for worker in workers)

    add_fact(first, "42.00", "Transport", "Car")
    expect(second.locator("#facts tr[data-fact-id]").first).to_contain_text("42.00", timeout=LIVE)
    expect(second.locator("#activity")).to_contain_text("alice added 42.00 for Transport")


def test_starlette_chat_reaches_every_page(
    live_server: Callable[..., Any], new_page: Callable[[], Page]
) -> None:
    server = live_server("starlette_chat.app:app", app_dir=EXAMPLES)
    first, second = new_page(), new_page()
    for page in (first, second):
        page.goto(server.url)
        expect(page.locator("#status")).to_have_text("open")
    first.locator("#author").fill("ann")
    first.locator("#text").fill("hello, lobby")
    first.locator("#text").press("Enter")
    expect(second.locator("#messages li")).to_have_text(["ann: hello, lobby"], timeout=LIVE)
    expect(first.locator("#messages li")).to_have_text(["ann: hello, lobby"])
    expect(first.locator("#text")).to_have_value("")
