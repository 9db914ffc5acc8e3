"""The family-budget demo over HTTP and WebSocket, served by a real uvicorn process.

One server (SQLite ``:memory:``) serves the module's tests; each test makes the facts it
looks at, so the order of the tests does not matter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.servers import free_port, running_demo, stop, wait_listening
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HTMX = {"HX-Request": "true"}
PROTOCOLS = [Subprotocol("budget-ws.v1")]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_demo() as url:
        yield url


def client_for(base_url: str, user: str | None) -> httpx.Client:
    cookies = {"demo_user": user} if user else None
    return httpx.Client(base_url=base_url, cookies=cookies, timeout=5)


@pytest.fixture(scope="module")
def alice(base_url: str) -> Iterator[httpx.Client]:
    with client_for(base_url, "alice") as client:
        yield client


@pytest.fixture(scope="module")
def bob(base_url: str) -> Iterator[httpx.Client]:
    with client_for(base_url, "bob") as client:
        yield client


@pytest.fixture
def anonymous(base_url: str) -> Iterator[httpx.Client]:
    with client_for(base_url, None) as client:
        yield client


def fact_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'data-fact-id="(\d+)"', html)]


def row(html: str, fact_id: int) -> str:
    found = re.search(rf'<tr data-fact-id="{fact_id}">(.*?)</tr>', html, re.S)
    assert found is not None, f"no row for fact {fact_id}"
    return found.group(1)


def total(html: str) -> Decimal:
    found = re.search(r'id="total"[^>]*>([^<]*)<', html)
    assert found is not None
    return Decimal(found.group(1).replace(",", ""))


def amounts(html: str) -> list[Decimal]:
    cells = re.findall(r'class="num amount">([^<]*)<', html)
    return [Decimal(cell.replace(",", "")) for cell in cells]


def add_fact(client: httpx.Client, amount: str = "7.25", article_id: int = 1) -> int:
    """Add a fact to alice's budget through the htmx form; return its id."""
    before = set(fact_ids(client.get("/budgets/1/ledger").text))
    form = {"amount": amount, "article_id": str(article_id), "financial_center_id": "1"}
    response = client.post("/budgets/1/facts", data=form, headers=HTMX)
    assert response.status_code == 200, response.text
    (new,) = set(fact_ids(client.get("/budgets/1/ledger").text)) - before
    return new


# Logging in ---------------------------------------------------------------------------------


def test_the_login_page_offers_both_demo_users(anonymous: httpx.Client) -> None:
    home = anonymous.get("/")
    assert home.status_code == 303
    assert home.headers["location"] == "/login"
    page = anonymous.get("/login")
    assert page.status_code == 200
    assert 'value="alice"' in page.text
    assert 'value="bob"' in page.text
    assert "Smith family" in page.text
    assert "Jones family" in page.text


@pytest.mark.parametrize(("user", "budget_id"), [("alice", 1), ("bob", 2)])
def test_logging_in_sets_the_cookie_and_opens_the_users_budget(
    anonymous: httpx.Client, user: str, budget_id: int
) -> None:
    response = anonymous.post("/login", data={"user": user})
    assert response.status_code == 303
    assert response.headers["location"] == f"/budgets/{budget_id}"
    assert anonymous.cookies["demo_user"] == user
    assert anonymous.get("/").headers["location"] == f"/budgets/{budget_id}"
    assert anonymous.get(f"/budgets/{budget_id}").status_code == 200
    logout = anonymous.post("/logout")
    assert logout.headers["location"] == "/login"
    assert "demo_user" not in anonymous.cookies


@pytest.mark.parametrize("user", ["mallory", "", "alice' OR 1=1 --"])
def test_an_unknown_user_cannot_log_in(anonymous: httpx.Client, user: str) -> None:
    response = anonymous.post("/login", data={"user": user})
    assert response.status_code == 400
    assert "Pick one of the demo users." in response.text
    assert "demo_user" not in anonymous.cookies


def test_the_budget_needs_a_login(anonymous: httpx.Client, base_url: str) -> None:
    page = anonymous.get("/budgets/1")
    assert page.status_code == 303
    assert page.headers["location"] == "/login"
    fragment = anonymous.get("/budgets/1/ledger", headers=HTMX)
    assert fragment.status_code == 401
    assert fragment.headers["HX-Redirect"] == "/login"
    with client_for(base_url, "nobody") as stranger:
        assert stranger.get("/budgets/1").headers["location"] == "/login"


# The budget page ----------------------------------------------------------------------------


def test_the_budget_page_shows_the_facts_the_total_and_the_forms(alice: httpx.Client) -> None:
    page = alice.get("/budgets/1")
    assert page.status_code == 200
    html = page.text
    assert "Smith family" in html
    assert 'id="facts"' in html
    assert fact_ids(html)
    assert total(html) == sum(amounts(html))
    assert '<form id="new-fact"' in html
    for field in ("amount", "article_id", "financial_center_id"):
        assert f'name="{field}"' in html
    assert 'id="live-status"' in html
    assert 'data-topic="budget:1"' in html
    # The page loads the bundled client and htmx from this server, nothing from elsewhere.
    assert 'from "/budget-ws/budget-ws.js?v=' in html
    assert 'src="/static/vendor/htmx.min.js"' in html
    assert "https://" not in html
    assert alice.get("/budget-ws/budget-ws.js").status_code == 200
    assert alice.get("/static/vendor/htmx.min.js").status_code == 200
    assert alice.get("/static/budget.css").status_code == 200


def test_budgets_are_kept_apart(alice: httpx.Client, bob: httpx.Client) -> None:
    alices = fact_ids(alice.get("/budgets/1/ledger").text)
    bobs = fact_ids(bob.get("/budgets/2/ledger").text)
    assert alices
    assert bobs
    assert not set(alices) & set(bobs)


# Creating, editing and deleting -------------------------------------------------------------


def test_adding_a_fact_shows_it_and_updates_the_total(alice: httpx.Client) -> None:
    before = total(alice.get("/budgets/1/ledger").text)
    form = {"amount": "12.5", "article_id": "2", "financial_center_id": "3"}
    response = alice.post("/budgets/1/facts", data=form, headers=HTMX)
    assert response.status_code == 200
    # The posting tab refreshes its own table; other tabs hear it over the WebSocket.
    assert response.headers["HX-Trigger"] == "facts-changed"
    assert 'id="new-fact"' in response.text
    assert "Added 12.50 for Rent." in response.text
    ledger = alice.get("/budgets/1/ledger").text
    newest = fact_ids(ledger)[0]  # newest first
    assert "12.50" in row(ledger, newest)
    assert "Rent" in row(ledger, newest)
    assert "Kids" in row(ledger, newest)
    assert "alice" in row(ledger, newest)
    assert total(ledger) == before + Decimal("12.50")


def test_editing_a_fact_changes_it(alice: httpx.Client) -> None:
    fact_id = add_fact(alice, "3.00")
    edit = alice.get(f"/budgets/1/facts/{fact_id}/edit", headers=HTMX)
    assert edit.status_code == 200
    assert f'data-fact-id="{fact_id}"' in edit.text
    assert 'value="3.00"' in edit.text
    form = {"amount": "-4,5", "article_id": "3", "financial_center_id": "2"}
    response = alice.post(f"/budgets/1/facts/{fact_id}", data=form, headers=HTMX)
    assert response.status_code == 200
    assert response.text == ""  # empties the editor
    assert response.headers["HX-Trigger"] == "facts-changed"
    updated = row(alice.get("/budgets/1/ledger").text, fact_id)
    assert "-4.50" in updated
    assert "Transport" in updated
    assert "Car" in updated


def test_deleting_a_fact_removes_it(alice: httpx.Client) -> None:
    fact_id = add_fact(alice)
    response = alice.post(f"/budgets/1/facts/{fact_id}/delete", headers=HTMX)
    assert response.status_code == 200
    assert fact_id not in fact_ids(alice.get("/budgets/1/ledger").text)
    again = alice.post(f"/budgets/1/facts/{fact_id}/delete", headers=HTMX)
    assert again.status_code == 404
    assert again.headers["HX-Retarget"] == "#flash"
    assert alice.get(f"/budgets/1/facts/{fact_id}/edit").status_code == 404


def test_forms_work_without_javascript_too(alice: httpx.Client) -> None:
    form = {"amount": "1.11", "article_id": "1", "financial_center_id": "1"}
    created = alice.post("/budgets/1/facts", data=form)
    assert created.status_code == 303
    assert created.headers["location"] == "/budgets/1"
    fact_id = fact_ids(alice.get("/budgets/1").text)[0]
    page = alice.get(f"/budgets/1/facts/{fact_id}/edit")  # the whole page, editor open
    assert '<form id="edit-fact"' in page.text
    assert '<form id="new-fact"' in page.text
    updated = alice.post(f"/budgets/1/facts/{fact_id}", data={**form, "amount": "2.22"})
    assert updated.status_code == 303
    assert "2.22" in row(alice.get("/budgets/1").text, fact_id)
    deleted = alice.post(f"/budgets/1/facts/{fact_id}/delete")
    assert deleted.status_code == 303
    assert fact_id not in fact_ids(alice.get("/budgets/1").text)


def test_renaming_an_article_renames_it_everywhere(alice: httpx.Client) -> None:
    fact_id = add_fact(alice, article_id=4)
    try:
        response = alice.post("/budgets/1/articles/4", data={"name": "  Fun   time "}, headers=HTMX)
        assert response.status_code == 200
        assert response.headers["HX-Trigger"] == "articles-changed"
        assert 'value="Fun time"' in response.text
        assert "Fun time" in row(alice.get("/budgets/1/ledger").text, fact_id)
        options = alice.get("/budgets/1/article-options", params={"article_id": "4"}).text
        assert '<option value="4" selected>Fun time</option>' in options
    finally:
        alice.post("/budgets/1/articles/4", data={"name": "Leisure"})


# Another budget -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/budgets/2"),
        ("GET", "/budgets/2/ledger"),
        ("GET", "/budgets/2/articles"),
        ("GET", "/budgets/2/facts/5/edit"),
        ("POST", "/budgets/2/facts"),
        ("POST", "/budgets/2/facts/5"),
        ("POST", "/budgets/2/facts/5/delete"),
        ("POST", "/budgets/2/articles/5"),
        ("POST", "/budgets/3/facts"),
    ],
)
def test_another_budget_is_forbidden(
    alice: httpx.Client, bob: httpx.Client, method: str, path: str
) -> None:
    form = {"amount": "1.00", "article_id": "5", "financial_center_id": "4", "name": "Mine"}
    data = form if method == "POST" else None
    response = alice.request(method, path, data=data)
    assert response.status_code == 403
    assert "not your budget" in response.text
    hx = alice.request(method, path, data=data, headers=HTMX)
    assert hx.status_code == 403
    assert hx.headers["HX-Retarget"] == "#flash"
    assert '<p class="error" role="alert">' in hx.text
    # Nothing changed in Bob's budget.
    ledger = bob.get("/budgets/2/ledger").text
    assert 5 in fact_ids(ledger)
    assert "61.30" in row(ledger, 5)
    assert "Mine" not in bob.get("/budgets/2/articles").text


def test_facts_of_another_budget_are_out_of_reach_from_ones_own(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    # Bob's fact 5 addressed through Alice's budget: no such fact there.
    form = {"amount": "1.00", "article_id": "1", "financial_center_id": "1"}
    assert alice.post("/budgets/1/facts/5", data=form).status_code == 404
    assert alice.post("/budgets/1/facts/5/delete").status_code == 404
    assert alice.get("/budgets/1/facts/5/edit").status_code == 404
    assert alice.post("/budgets/1/articles/5", data={"name": "Mine"}).status_code == 404
    assert "61.30" in row(bob.get("/budgets/2/ledger").text, 5)


# Bad input ----------------------------------------------------------------------------------

AMOUNT_FORMAT = "Amount must be a number with at most two decimals, like 12.50."


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"amount": "abc"}, AMOUNT_FORMAT),
        ({"amount": ""}, AMOUNT_FORMAT),
        ({"amount": "1.234"}, AMOUNT_FORMAT),
        ({"amount": "NaN"}, AMOUNT_FORMAT),
        ({"amount": "Infinity"}, AMOUNT_FORMAT),
        ({"amount": "1e5"}, AMOUNT_FORMAT),
        ({"amount": "12345678901"}, AMOUNT_FORMAT),
        ({"amount": "١٢"}, AMOUNT_FORMAT),  # Arabic-Indic digits
        ({"amount": "0.00"}, "Amount must not be zero."),
        ({"article_id": "x"}, "Choose an article."),
        ({"article_id": ""}, "Choose an article."),
        ({"article_id": "99999999999999999999"}, "Choose an article."),
        ({"article_id": "5"}, "Choose one of this budget&#39;s articles."),
        ({"financial_center_id": "4"}, "Choose one of this budget&#39;s financial centers."),
    ],
)
@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
def test_a_bad_fact_is_a_400_with_a_message(
    alice: httpx.Client, fields: dict[str, str], message: str, htmx: bool
) -> None:
    before = fact_ids(alice.get("/budgets/1/ledger").text)
    form = {"amount": "1.00", "article_id": "1", "financial_center_id": "1", **fields}
    response = alice.post("/budgets/1/facts", data=form, headers=HTMX if htmx else None)
    assert response.status_code == 400
    assert message in response.text
    # The form comes back as typed, so nothing has to be typed again.
    assert '<form id="new-fact"' in response.text
    assert 'aria-invalid="true"' in response.text or "field-error" in response.text
    assert fact_ids(alice.get("/budgets/1/ledger").text) == before


def test_a_bad_edit_is_a_400_and_keeps_the_fact(alice: httpx.Client) -> None:
    fact_id = add_fact(alice, "8.00")
    form = {"amount": "eight", "article_id": "1", "financial_center_id": "1"}
    response = alice.post(f"/budgets/1/facts/{fact_id}", data=form, headers=HTMX)
    assert response.status_code == 400
    assert AMOUNT_FORMAT in response.text
    assert 'value="eight"' in response.text
    assert '<form id="edit-fact"' in response.text
    assert "8.00" in row(alice.get("/budgets/1/ledger").text, fact_id)


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "An article needs a name."), ("   ", "An article needs a name."), ("x" * 41, "At most")],
)
def test_a_bad_article_name_is_a_400(alice: httpx.Client, name: str, message: str) -> None:
    response = alice.post("/budgets/1/articles/4", data={"name": name}, headers=HTMX)
    assert response.status_code == 400
    assert message in response.text
    assert "Leisure" in alice.get("/budgets/1/articles").text


@pytest.mark.parametrize(
    ("method", "path", "options"),
    [
        ("GET", "/budgets/abc", {}),
        ("GET", "/budgets/1/facts/abc/edit", {}),
        ("GET", "/budgets/99999999999999999999999", {}),
        ("POST", "/budgets/1/facts", {"content": b"\xff\xfe\x00garbage"}),
        ("POST", "/budgets/1/facts", {"json": {"amount": "1.00"}}),
        ("POST", "/budgets/1/facts", {"files": {"amount": ("a.txt", b"1.00")}}),
        ("POST", "/budgets/1/facts", {"data": {"amount": "1" * 100_000}}),
        ("PUT", "/budgets/1/facts", {}),
        ("GET", "/nowhere", {}),
    ],
)
def test_garbage_never_crashes_the_server(
    alice: httpx.Client, method: str, path: str, options: dict[str, Any]
) -> None:
    response = alice.request(method, path, **options)
    assert 400 <= response.status_code < 500, response.text
    assert alice.get("/budgets/1/ledger").status_code == 200


# Live events --------------------------------------------------------------------------------


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws"


class Socket:
    """A raw WebSocket client of the demo, frame by frame."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.pending: list[dict[str, Any]] = []

    def frame(self) -> dict[str, Any]:
        while not self.pending:  # one message may carry several frames, one per line
            message = str(self.connection.recv(timeout=5))
            self.pending = [json.loads(line) for line in message.splitlines() if line]
        return self.pending.pop(0)

    def event(self) -> dict[str, Any]:
        while "event" not in (frame := self.frame()):
            pass
        return frame

    def subscribe(
        self, topic: str, position: dict[str, Any] | None = None, *, presence: bool = False
    ) -> dict[str, Any]:
        """Subscribe; return the answer (``subscribed`` or ``error``)."""
        request: dict[str, Any] = {"op": "subscribe", "topic": topic, "id": topic}
        if position is not None:
            request["position"] = position
        if presence:
            request["presence"] = True
        self.connection.send(json.dumps(request))
        # Frames before the answer are skipped: the server subscribes every connection to
        # its user's own stream (a `subscribed` frame without id) right after `welcome`.
        while (frame := self.frame()).get("id") != topic:
            pass
        return frame


@contextmanager
def open_socket(base_url: str, user: str) -> Iterator[Socket]:
    headers = {"Cookie": f"demo_user={user}"}
    with connect(ws_url(base_url), subprotocols=PROTOCOLS, additional_headers=headers) as ws:
        socket = Socket(ws)
        welcome = socket.frame()
        assert welcome["op"] == "welcome"
        assert welcome["user"] == user  # the demo's `identify`: the user's name
        yield socket


def test_a_subscriber_receives_every_change_of_its_budget(
    base_url: str, alice: httpx.Client
) -> None:
    with open_socket(base_url, "alice") as socket:
        assert socket.subscribe("budget:1")["op"] == "subscribed"

        form = {"amount": "7.25", "article_id": "1", "financial_center_id": "2"}
        assert alice.post("/budgets/1/facts", data=form, headers=HTMX).status_code == 200
        created = socket.event()
        assert created["event"] == "budget_fact_created"
        assert created["topic"] == "budget:1"
        fact_id = created["data"]["id"]
        assert created["data"] == {
            "id": fact_id,
            "amount": "7.25",
            "article_id": 1,
            "article": "Groceries",
            "financial_center_id": 2,
            "financial_center": "Car",
            "author": "alice",
        }

        form["amount"] = "9"
        alice.post(f"/budgets/1/facts/{fact_id}", data=form, headers=HTMX)
        updated = socket.event()
        assert updated["event"] == "budget_fact_updated"
        assert updated["data"]["amount"] == "9.00"
        assert updated["offset"] == created["offset"] + 1

        alice.post(f"/budgets/1/facts/{fact_id}/delete", headers=HTMX)
        assert socket.event() == {
            "event": "budget_fact_deleted",
            "data": {"id": fact_id, "author": "alice"},
            "topic": "budget:1",
            "offset": created["offset"] + 2,
            "epoch": created["epoch"],
        }

        try:
            alice.post("/budgets/1/articles/3", data={"name": "Travel"}, headers=HTMX)
            renamed = socket.event()
            assert renamed["event"] == "article_updated"
            assert renamed["data"] == {"id": 3, "name": "Travel", "author": "alice"}
        finally:
            alice.post("/budgets/1/articles/3", data={"name": "Transport"})


def test_a_user_receives_only_their_own_budget(
    base_url: str, alice: httpx.Client, bob: httpx.Client
) -> None:
    with open_socket(base_url, "bob") as socket:
        refused = socket.subscribe("budget:1")
        assert refused["op"] == "error"
        assert refused["code"] == "forbidden"
        assert socket.subscribe("budget:2")["op"] == "subscribed"

        add_fact(alice, "5.55")  # not for Bob's eyes
        form = {"amount": "6.66", "article_id": "6", "financial_center_id": "4"}
        assert bob.post("/budgets/2/facts", data=form, headers=HTMX).status_code == 200
        event = socket.event()  # Bob's own event is the first he gets
        assert event["topic"] == "budget:2"
        assert event["data"]["amount"] == "6.66"
        assert event["data"]["author"] == "bob"


def rendered_position(html: str) -> dict[str, Any]:
    """The topic's position a budget page was rendered at (its ``data-position``)."""
    found = re.search(r"data-position='([^']*)'", html)
    assert found is not None, "the page carries no position"
    position: dict[str, Any] = json.loads(found.group(1))
    return position


def test_the_page_carries_its_position_and_a_subscriber_resumes_from_it(
    base_url: str, alice: httpx.Client
) -> None:
    position = rendered_position(alice.get("/budgets/1").text)
    assert sorted(position) == ["epoch", "offset"]
    fact_id = add_fact(alice, "4.44")  # published after the page was rendered
    later = rendered_position(alice.get("/budgets/1").text)
    assert later == {**position, "offset": position["offset"] + 1}
    with open_socket(base_url, "alice") as socket:
        subscribed = socket.subscribe("budget:1", position)
        assert subscribed["recovered"] is True
        assert subscribed["position"] == later
        replayed = socket.event()
        assert replayed["event"] == "budget_fact_created"
        assert replayed["data"]["id"] == fact_id
        assert replayed["offset"] == later["offset"]


def test_every_whole_budget_page_carries_its_position(alice: httpx.Client) -> None:
    fact_id = add_fact(alice, "5.55")
    current = rendered_position(alice.get("/budgets/1").text)
    bad_fact = {"amount": "x", "article_id": "1", "financial_center_id": "1"}
    pages = [
        alice.get(f"/budgets/1/facts/{fact_id}/edit"),
        alice.post("/budgets/1/facts", data=bad_fact),
        alice.post(f"/budgets/1/facts/{fact_id}", data=bad_fact),
        alice.post("/budgets/1/articles/4", data={"name": ""}),
    ]
    for page in pages:
        assert '<form id="new-fact"' in page.text
        assert rendered_position(page.text) == current
    # Fragments do not: they are not subscribed from.
    fragments = [
        alice.get(f"/budgets/1/facts/{fact_id}/edit", headers=HTMX),
        alice.post("/budgets/1/facts", data=bad_fact, headers=HTMX),
        alice.get("/budgets/1/ledger"),
    ]
    for fragment in fragments:
        assert "data-position" not in fragment.text


@pytest.mark.parametrize("cookie", [None, "demo_user=", "demo_user=mallory"])
def test_the_websocket_needs_a_demo_user(base_url: str, cookie: str | None) -> None:
    headers = {"Cookie": cookie} if cookie else None
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(base_url), subprotocols=PROTOCOLS, additional_headers=headers)
    assert refused.value.response.status_code == 401


# Members: an owner shares a budget, and takes it back ------------------------------------


def members(html: str) -> list[str]:
    """The users the members card lists (the owner first)."""
    return re.findall(r'<li data-member="([^"]+)"', html)


def remove_buttons(html: str) -> list[str]:
    return re.findall(r'action="/budgets/\d+/members/([^"/]+)/remove"', html)


def add_member(client: httpx.Client, name: str, budget_id: int = 1) -> httpx.Response:
    return client.post(f"/budgets/{budget_id}/members", data={"name": name}, headers=HTMX)


def remove_member(client: httpx.Client, name: str, budget_id: int = 1) -> httpx.Response:
    return client.post(f"/budgets/{budget_id}/members/{name}/remove", headers=HTMX)


@contextmanager
def bob_shares_alices_budget(alice: httpx.Client) -> Iterator[None]:
    """Bob is a member of Alice's budget in the block; not after it, whatever happens."""
    response = add_member(alice, "bob")
    assert response.status_code == 200, response.text
    try:
        yield
    finally:
        remove_member(alice, "bob")


def test_a_budget_starts_with_its_owner_alone(alice: httpx.Client, bob: httpx.Client) -> None:
    page = alice.get("/budgets/1").text
    assert members(page) == ["alice"]
    assert "owner" in page
    assert remove_buttons(page) == []
    # The owner may add any other demo user.
    assert '<option value="bob">Bob</option>' in page
    assert 'hx-post="/budgets/1/members"' in page
    assert members(bob.get("/budgets/2/members").text) == ["bob"]
    assert bob.get("/budgets/1").status_code == 403


def test_the_owner_shares_the_budget_and_takes_it_back(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    with bob_shares_alices_budget(alice):
        card = alice.get("/budgets/1/members").text
        assert members(card) == ["alice", "bob"]
        assert remove_buttons(card) == ["bob"]
        assert "<option" not in card  # nobody else to add

        # Bob may open it and change it, and finds it beside his own; he removes nobody.
        page = bob.get("/budgets/1")
        assert page.status_code == 200
        assert "Smith family" in page.text
        assert members(page.text) == ["alice", "bob"]
        assert remove_buttons(page.text) == []
        assert 'hx-post="/budgets/1/members"' not in page.text
        assert '<a href="/budgets/1">Smith family</a>' in bob.get("/budgets/2").text
        assert bob.get("/").headers["location"] == "/budgets/2"  # his own, still
        fact_id = add_fact(bob, "3.33")
        assert "bob" in row(alice.get("/budgets/1/ledger").text, fact_id)

        removed = remove_member(alice, "bob")
        assert removed.status_code == 200
        assert members(removed.text) == ["alice"]
        assert '<option value="bob">Bob</option>' in removed.text
        for path in ("/budgets/1", "/budgets/1/ledger", "/budgets/1/members"):
            response = bob.get(path)
            assert response.status_code == 403
            assert "not your budget" in response.text
        form = {"amount": "1.00", "article_id": "1", "financial_center_id": "1"}
        assert bob.post("/budgets/1/facts", data=form).status_code == 403
        assert '<a href="/budgets/1">' not in bob.get("/budgets/2").text
        # Removed already: nothing to remove.
        again = remove_member(alice, "bob")
        assert again.status_code == 404
        assert again.headers["HX-Retarget"] == "#flash"


def test_members_work_without_javascript_too(alice: httpx.Client, bob: httpx.Client) -> None:
    try:
        added = alice.post("/budgets/1/members", data={"name": "bob"})
        assert added.status_code == 303
        assert added.headers["location"] == "/budgets/1"
        assert bob.get("/budgets/1").status_code == 200
        removed = alice.post("/budgets/1/members/bob/remove")
        assert removed.status_code == 303
        assert removed.headers["location"] == "/budgets/1"
        assert bob.get("/budgets/1").status_code == 403
    finally:
        remove_member(alice, "bob")


def test_only_the_owner_changes_the_members(alice: httpx.Client, bob: httpx.Client) -> None:
    with bob_shares_alices_budget(alice):
        for response in (add_member(bob, "alice"), remove_member(bob, "bob")):
            assert response.status_code == 403
            assert "Only the owner of the budget" in response.text
        assert members(alice.get("/budgets/1/members").text) == ["alice", "bob"]
    # Nor can anyone change the members of a budget they cannot open.
    assert add_member(alice, "alice", budget_id=2).status_code == 403
    assert remove_member(alice, "bob", budget_id=2).status_code == 403
    assert members(bob.get("/budgets/2/members").text) == ["bob"]


@pytest.mark.parametrize("name", ["alice", "mallory", "", "bob' OR 1=1 --"])
def test_only_another_demo_user_can_be_added(alice: httpx.Client, name: str) -> None:
    response = add_member(alice, name)
    assert response.status_code == 400
    assert "Choose one of the demo users who does not share it yet." in response.text
    assert members(alice.get("/budgets/1/members").text) == ["alice"]


def test_the_owner_cannot_be_removed(alice: httpx.Client) -> None:
    assert remove_member(alice, "alice").status_code == 404
    assert members(alice.get("/budgets/1/members").text) == ["alice"]


class Roster:
    """Who a socket is told is present on a topic, from its presence frames."""

    def __init__(self, socket: Socket, topic: str) -> None:
        self.socket = socket
        self.topic = topic
        self.members: dict[str, dict[str, Any]] | None = None
        self.count = 0

    def until(self, expected: dict[str, int]) -> None:
        """Read frames until the members and their connections are ``expected``."""
        while self.connections() != expected:
            frame = self.socket.frame()
            if frame.get("topic") != self.topic:
                continue
            if frame.get("op") == "presence":
                self.members = {member["user"]: member for member in frame["members"]}
            elif frame.get("op") == "presence_diff" and self.members is not None:
                for user in frame["leaves"]:
                    self.members.pop(user, None)
                self.members.update({member["user"]: member for member in frame["joins"]})
            else:
                continue
            self.count = frame["count"]
            assert self.count == len(self.members)

    def connections(self) -> dict[str, int] | None:
        if self.members is None:
            return None
        return {user: member["connections"] for user, member in self.members.items()}


def test_presence_lists_each_viewer_of_a_budget_once(base_url: str, bob: httpx.Client) -> None:
    with (
        open_socket(base_url, "alice") as first,
        open_socket(base_url, "alice") as second,
        open_socket(base_url, "bob") as bobs,
    ):
        assert first.subscribe("budget:1", presence=True)["op"] == "subscribed"
        roster = Roster(first, "budget:1")
        roster.until({"alice": 1})
        assert roster.members == {
            "alice": {"user": "alice", "connections": 1, "info": {"name": "Alice"}}
        }
        assert second.subscribe("budget:1", presence=True)["op"] == "subscribed"
        roster.until({"alice": 2})  # one user, two tabs
        # Bob, on his own budget, is never present on Alice's, nor told who is there.
        assert bobs.subscribe("budget:2", presence=True)["op"] == "subscribed"
        Roster(bobs, "budget:2").until({"bob": 1})
        refused = bobs.subscribe("budget:1", presence=True)
        assert (refused["op"], refused["code"]) == ("error", "forbidden")
        second.connection.close()
        roster.until({"alice": 1})
        assert roster.count == 1


def test_a_removed_member_hears_no_more_of_the_budget(
    base_url: str, alice: httpx.Client, bob: httpx.Client
) -> None:
    with open_socket(base_url, "bob") as bobs, open_socket(base_url, "alice") as alices:
        assert alices.subscribe("budget:1", presence=True)["op"] == "subscribed"
        roster = Roster(alices, "budget:1")
        roster.until({"alice": 1})
        with bob_shares_alices_budget(alice):
            # Bob's own stream tells him, on whatever page he has open.
            shared = bobs.event()
            assert shared == {
                "event": "added_to_budget",
                "data": {"budget_id": 1, "budget": "Smith family", "author": "alice"},
                "topic": "~user:bob",
                "offset": shared["offset"],
                "epoch": shared["epoch"],
            }
            assert bobs.subscribe("budget:1", presence=True)["op"] == "subscribed"
            roster.until({"alice": 1, "bob": 1})
            assert roster.members is not None
            assert roster.members["bob"]["info"] == {"name": "Bob"}

            assert remove_member(alice, "bob").status_code == 200
            # Until his own stream tells him: the topic is taken away ...
            frames = []
            while (frame := bobs.frame()).get("event") != "removed_from_budget":
                frames.append(frame)
            assert frame["topic"] == "~user:bob"
            assert frame["data"] == {"budget_id": 1, "budget": "Smith family", "author": "alice"}
            revoked = {"op": "unsubscribed", "topic": "budget:1", "reason": "revoked"}
            assert revoked in frames
            # ... and of the budget's events, only the news of his removal, published
            # before (it may come after `unsubscribed`: control frames overtake events
            # queued; the browser client drops events of topics it no longer holds).
            news = [f["event"] for f in frames if f.get("topic") == "budget:1" and "event" in f]
            assert news in ([], ["budget_member_removed"])
            roster.until({"alice": 1})

            # Alice's next change does not reach him; his own budget's does.
            add_fact(alice, "2.22")
            assert bobs.subscribe("budget:2")["op"] == "subscribed"
            form = {"amount": "6.66", "article_id": "6", "financial_center_id": "4"}
            assert bob.post("/budgets/2/facts", data=form, headers=HTMX).status_code == 200
            event = bobs.event()
            assert (event["topic"], event["data"]["amount"]) == ("budget:2", "6.66")
            # And he cannot subscribe again.
            refused = bobs.subscribe("budget:1")
            assert (refused["op"], refused["code"]) == ("error", "forbidden")


# Running it ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "cwd"),
    [
        (["examples/family_budget"], ROOT),  # from the repository root, as the docs say
        (["-m", "family_budget"], EXAMPLES),
    ],
    ids=["root", "module"],
)
def test_the_demo_runs_with_one_command(command: list[str], cwd: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "BUDGET_DEMO_DB": str(tmp_path / "demo.sqlite3")}
    with subprocess.Popen(
        [sys.executable, *command], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            first_line = process.stdout.readline()
            assert first_line.strip() == f"Family budget demo on http://127.0.0.1:{port}/"
            wait_listening(port, process)
            with client_for(f"http://127.0.0.1:{port}", "alice") as client:
                assert "Smith family" in client.get("/budgets/1").text
        finally:
            stop(process)
    assert (tmp_path / "demo.sqlite3").exists()
