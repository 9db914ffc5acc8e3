"""The family-budget app's ORIGINAL page, unchanged, in Chromium, against budget_ws.

The page is ``examples/migration/original/index.html`` with its ``BudgetSocket``
(``budget_socket.js``), served as they are by ``compat_app.py`` (same directory) with a
budget_ws endpoint in compatibility mode at ``/ws``. The client connects without the
subprotocol, never subscribes, ``JSON.parse``\\ s each message as one object, never answers
pings and reconnects 3 s after any close: nothing here helps it (no init script, no shim);
the tests only read the DOM it builds and count the messages it got.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

HERE = Path(__file__).resolve().parent
ORIGINAL = HERE.parents[1] / "examples" / "migration" / "original"
TIMEOUT = 10_000  # ms, for every wait on the page
RECONNECT_DELAY = 3.0  # s, BudgetSocket's fixed timer


def serve(live_server: Any, **env: str) -> Any:
    """Start ``compat_app`` with ``BUDGET_WS_<NAME>`` set from ``env``."""
    return live_server(
        "compat_app:app_factory",
        app_dir=HERE,
        factory=True,
        env={f"BUDGET_WS_{name.upper()}": value for name, value in env.items()},
    )


def created(number: int) -> dict[str, Any]:
    return {"event": "budget_fact_created", "data": {"id": number, "amount": f"{number}.50"}}


def publish(server: Any, events: list[dict[str, Any]], delay: float = 0.0) -> list[int]:
    """Publish through the server; returns the offsets the events got."""
    response = httpx.post(
        server.url + "/publish", json={"events": events, "delay": delay}, timeout=30
    )
    response.raise_for_status()
    return list(response.json()["offsets"])


def stats(server: Any) -> dict[str, Any]:
    response = httpx.get(server.url + "/stats", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def wait_for_connections(server: Any, count: int, timeout: float = 10.0) -> None:
    """Until ``count`` pages are connected and subscribed, so what is published reaches them."""
    deadline = time.monotonic() + timeout
    while (now := stats(server)["subscribed"]) != count:
        assert time.monotonic() < deadline, f"{now} connections, expected {count}"
        time.sleep(0.05)


class OriginalPage:
    """The original page, opened, with what it threw and every message it received."""

    def __init__(self, page: Page, server: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        """Uncaught exceptions of the page's scripts (a failed ``JSON.parse`` among them)."""
        self.messages: list[str] = []
        """Every WebSocket message the page received, over all its connections."""
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("websocket", self._watch)
        page.goto(server.url + "/")
        expect(page.locator("h1")).to_have_text("Family budget")
        wait_for_connections(server, 1)

    def _watch(self, websocket: Any) -> None:
        websocket.on("framereceived", lambda payload: self.messages.append(str(payload)))

    def facts(self) -> list[str]:
        return list(self.page.locator("#facts li").all_text_contents())

    def wait_for_facts(self, count: int) -> None:
        expect(self.page.locator("#facts li")).to_have_count(count, timeout=TIMEOUT)

    def wait_for_messages(self, count: int) -> None:
        """Until Playwright has reported ``count`` messages (its events lag the DOM a bit)."""
        for _ in range(200):
            if len(self.messages) >= count:
                return
            self.page.wait_for_timeout(50)  # lets Playwright dispatch the events
        raise AssertionError(f"{len(self.messages)} messages, expected {count}")


def test_the_original_files_are_served_as_they_are(live_server: Any) -> None:
    server = serve(live_server)
    for path, name in [("/", "index.html"), ("/budget_socket.js", "budget_socket.js")]:
        response = httpx.get(server.url + path, timeout=10)
        assert response.content == (ORIGINAL / name).read_bytes()


def test_a_steady_stream_reaches_the_page_in_order(page: Page, live_server: Any) -> None:
    server = serve(live_server)
    original = OriginalPage(page, server)

    publish(server, [created(n) for n in range(1, 21)], delay=0.05)

    original.wait_for_facts(20)
    assert original.facts() == [f"{n}: {n}.50" for n in range(1, 21)]
    assert page.locator("#facts li").evaluate_all("items => items.map((i) => i.id)") == [
        f"fact-{n}" for n in range(1, 21)
    ]
    original.wait_for_messages(20)
    assert [json.loads(message) for message in original.messages] == [
        created(n) for n in range(1, 21)
    ]
    assert original.errors == []


def test_a_burst_reaches_the_page_one_event_per_message_without_a_script_error(
    page: Page, live_server: Any
) -> None:
    server = serve(live_server)
    original = OriginalPage(page, server)

    # Published at once, the 300 events queue up and leave the manager joined in a few
    # messages; a joined message would make the page's JSON.parse throw (a pageerror).
    publish(server, [created(n) for n in range(1, 301)])

    original.wait_for_facts(300)
    assert original.facts() == [f"{n}: {n}.50" for n in range(1, 301)]
    original.wait_for_messages(300)
    assert len(original.messages) == 300
    assert all("\n" not in message for message in original.messages)
    assert original.errors == []


def test_updates_deletions_and_articles_change_the_page_as_its_handlers_say(
    page: Page, live_server: Any
) -> None:
    server = serve(live_server)
    original = OriginalPage(page, server)

    publish(
        server,
        [
            created(1),
            created(2),
            created(3),
            {"event": "budget_fact_updated", "data": {"id": 2, "amount": "99.00"}},
            {"event": "budget_fact_updated", "data": {"id": 42, "amount": "1.00"}},  # not shown
            {"event": "budget_fact_deleted", "data": {"id": 1}},
            {"event": "article_updated", "data": {"id": 7, "name": "Groceries"}},
        ],
        delay=0.02,
    )

    expect(page.locator("#article")).to_have_text("Groceries", timeout=TIMEOUT)
    original.wait_for_facts(2)
    assert original.facts() == ["2: 99.00", "3: 3.50"]
    assert original.errors == []


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_after_a_restart_the_page_reconnects_on_its_own_timer_and_receives_again(
    page: Page, live_server: Any, backend: str
) -> None:
    env: dict[str, str] = {}
    if backend == "redis":
        if not redis_available():
            pytest.skip("needs a Redis server on 127.0.0.1:6379")
        prefix = f"test-original-page-{uuid.uuid4().hex[:12]}"
        env["backend"] = f"redis://127.0.0.1:6379/0?key_prefix={prefix}"
    server = serve(live_server, **env)
    other_worker = serve(live_server, **env) if backend == "redis" else None
    original = OriginalPage(page, server)
    publish(server, [created(1), created(2)])
    original.wait_for_facts(2)

    stopped_at = time.time()
    server.stop()  # SIGTERM: a graceful shutdown closes the page's WebSocket with 1012
    missed: list[int] = []
    if other_worker is not None:
        # Another worker publishes while this one is down. The events stay in Redis's
        # history, but a compatibility-mode client cannot ask for them (it sends no
        # position): they are never shown. That is what these clients give up; with
        # the memory backend, a restart loses the history as well.
        missed = publish(other_worker, [created(3), created(4)])
    server.start()

    # A restarted server has seen no handshake yet: the first one is the page's return,
    # on BudgetSocket's fixed 3 s timer, counted from the close, which followed the stop.
    deadline = time.monotonic() + 15
    while not (handshakes := stats(server)["handshakes"]):
        assert time.monotonic() < deadline, "the page did not reconnect"
        time.sleep(0.05)
    assert handshakes[0] - stopped_at >= RECONNECT_DELAY
    wait_for_connections(server, 1)

    after = publish(server, [created(5), created(6)])
    original.wait_for_facts(4)
    assert original.facts() == ["1: 1.50", "2: 2.50", "5: 5.50", "6: 6.50"]
    if backend == "redis":
        # The topic's history went on across the restart (a budget-ws.v1 client resuming
        # from offset 2 would have recovered 3 and 4), but the page never saw them.
        assert (missed, after) == ([3, 4], [5, 6])
    else:
        assert after == [1, 2], "a memory backend starts afresh"
    assert original.errors == []
