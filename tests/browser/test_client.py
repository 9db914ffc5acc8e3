"""The bundled browser client in Chromium against a real server, on each transport.

The app is ``client_app.py`` (same directory), run in a uvicorn subprocess by
``client_server``; its page records what the client does in ``window.*`` (see the module's
docstring). Every test runs twice: with the WebSockets served by uvicorn (``[uvicorn]``),
and by a ``NativeServer`` the app runs beside uvicorn on another port, over the same
manager (``[native]``). The client is created with ``minDelay: 100, maxDelay: 1000`` so
reconnects are quick.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import pytest
from playwright.sync_api import expect

from budget_ws.adapters import client_url
from budget_ws.backends.redis import RedisBackend

TIMEOUT = 10_000  # ms, for every wait on the page
MAX_DELAY = 1000  # ms, the page's maxDelay
MIN_DELAY = 100  # ms, the page's minDelay


def post(server: Any, path: str, content: str | None = None, **params: str | int) -> Any:
    response = httpx.post(server.url + path, params=params, content=content, timeout=10)
    response.raise_for_status()
    return response.json()


def server_connections(server: Any) -> int:
    response = httpx.get(server.url + "/stats", timeout=10)
    response.raise_for_status()
    return int(response.json()["connections"])


def wait_for_connections(server: Any, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := server_connections(server)) != count:
        assert time.monotonic() < deadline, f"{now} connections, expected {count}"
        time.sleep(0.05)


def open_client(page: Any, base: str, path: str = "/", **params: str) -> list[str]:
    """Load the test page (or another at ``path``); returns the list that collects console
    errors."""
    errors: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}{path}?{urlencode(params)}")
    return errors


def wait(page: Any, expression: str) -> None:
    page.wait_for_function(expression, timeout=TIMEOUT)


def subscribed(page: Any, server: Any, **params: str) -> list[str]:
    """Open the page and wait until its subscription is confirmed."""
    errors = open_client(page, server.url, **params)
    wait(page, "window.subscriptions.length === 1")
    return errors


def received(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("window.received"))


def offsets(page: Any) -> list[int]:
    return [event["offset"] for event in received(page)]


def states(page: Any, name: str) -> list[dict[str, Any]]:
    return list(page.evaluate("(name) => window.states.filter((s) => s.event === name)", name))


def controls(page: Any, op: str) -> list[dict[str, Any]]:
    return list(page.evaluate("(op) => window.controls.filter((f) => f.op === op)", op))


def test_module_loads_from_the_asset_route_subscribes_and_receives(
    page: Any, client_server: Any
) -> None:
    server = client_server()
    modules: list[Any] = []
    sockets: list[str] = []

    def response(response: Any) -> None:
        if "budget-ws.js" in response.url:
            modules.append(response)

    page.on("response", response)
    page.on("websocket", lambda socket: sockets.append(socket.url))

    errors = subscribed(page, server)

    assert [response.url for response in modules] == [f"{server.url}{client_url()}"]
    assert sockets == [server.ws_url]  # uvicorn's port, or the native server's
    assert modules[0].status == 200
    assert modules[0].headers["content-type"] == "text/javascript; charset=utf-8"
    assert page.evaluate("window.ws instanceof window.BudgetWS && window.ws.state") == "open"
    [frame] = page.evaluate("window.subscriptions")
    assert (frame["topic"], frame["position"]["offset"], frame["recovered"]) == ("t", 0, False)
    epoch = frame["position"]["epoch"]

    post(server, "/publish", topic="t", count=3)
    wait(page, "window.received.length === 3")
    assert received(page) == [
        {"n": n, "topic": "t", "offset": n, "epoch": epoch} for n in (1, 2, 3)
    ]
    assert page.evaluate("window.resyncs") == []
    assert errors == []


def test_events_published_at_once_arrive_joined_and_are_dispatched_in_order(
    page: Any, client_server: Any
) -> None:
    server = client_server()
    subscribed(page, server)

    post(server, "/publish", topic="t", count=50, burst=1)

    wait(page, "window.received.length >= 50")
    events = received(page)
    assert [event["offset"] for event in events] == list(range(1, 51))
    assert sorted(event["n"] for event in events) == list(range(1, 51))
    # The burst really travelled as multi-frame messages (one per message would prove
    # nothing about the client's "\n" splitting).
    messages: list[int] = page.evaluate("window.messages")
    assert max(messages) > 1, messages
    assert page.evaluate("window.resyncs") == []


def test_dropped_connection_reconnects_with_backoff_and_recovers_missed_events(
    page: Any, client_server: Any
) -> None:
    # The outage is simulated inside one server process (every connection closed with
    # 1012, events published before the client can come back) because the memory
    # backend's history does not survive a real restart; see the restart test below.
    server = client_server()
    subscribed(page, server)
    post(server, "/publish", topic="t", count=3)
    wait(page, "window.received.length === 3")

    dropped = post(server, "/drop-connections", topic="t", count=4)
    assert dropped["closed"] == 1
    assert [offset for offset, _ in dropped["positions"]] == [4, 5, 6, 7]

    wait(page, "window.received.length >= 7")
    [closed] = states(page, "closed")
    assert (closed["code"], closed["reconnect"]) == (1012, True)
    assert 0 <= closed["delay"] < MIN_DELAY  # first retry: full jitter over [0, minDelay)
    assert page.evaluate("window.attempts") == 2
    resubscribe = [
        frame for frame in page.evaluate("window.sent") if frame.get("op") == "subscribe"
    ]
    epoch = received(page)[0]["epoch"]
    assert resubscribe[-1]["position"] == {"offset": 3, "epoch": epoch}
    answer = controls(page, "subscribed")[-1]
    assert (answer["recovered"], answer["position"]) == (True, {"offset": 7, "epoch": epoch})
    assert [state["topic"] for state in states(page, "recovered")] == ["t"]
    # The replay travelled joined in multi-frame messages.
    assert max(page.evaluate("window.messages")) > 1

    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length >= 8")
    assert offsets(page) == list(range(1, 9))
    assert [event["n"] for event in received(page)] == list(range(1, 9))
    assert page.evaluate("window.resyncs") == []


def test_history_too_short_gives_recovered_false_and_runs_the_resync_hook(
    page: Any, client_server: Any
) -> None:
    server = client_server(history=2)
    subscribed(page, server)
    post(server, "/publish", topic="t", count=3)
    wait(page, "window.received.length === 3")
    epoch = received(page)[0]["epoch"]

    post(server, "/drop-connections", topic="t", count=4)  # 4..7 published, 6..7 kept

    wait(page, "window.resyncs.length === 1")
    assert page.evaluate("window.resyncs") == [
        {"topic": "t", "position": {"offset": 7, "epoch": epoch}}
    ]
    answer = controls(page, "subscribed")[-1]
    assert (answer["recovered"], answer["position"]) == (False, {"offset": 7, "epoch": epoch})
    assert [state["position"] for state in states(page, "resync-needed")] == [
        {"offset": 7, "epoch": epoch}
    ]
    assert states(page, "recovered") == []

    # No partial replay: 6 and 7 were in history but only what comes next is delivered.
    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length >= 4")
    assert offsets(page) == [1, 2, 3, 8]
    assert len(page.evaluate("window.resyncs")) == 1


def test_real_server_restart_reconnects_with_backoff_and_resyncs_on_the_new_epoch(
    page: Any, client_server: Any
) -> None:
    # A restarted process starts a memory backend afresh: a new epoch, nothing to
    # recover. The client must say so (recovered: false, onResync), not replay or hang.
    server = client_server()
    subscribed(page, server)
    post(server, "/publish", topic="t", count=3)
    wait(page, "window.received.length === 3")
    old_epoch = received(page)[0]["epoch"]

    server.stop()  # SIGTERM: graceful shutdown closes every connection with 1012
    # 1012, then at least two refused attempts while the server is down.
    wait(page, "window.states.filter((s) => s.event === 'closed').length >= 3")
    server.start()

    wait(page, "window.resyncs.length === 1")
    [resync] = page.evaluate("window.resyncs")
    assert resync["topic"] == "t"
    assert resync["position"]["offset"] == 0
    new_epoch = resync["position"]["epoch"]
    assert new_epoch != old_epoch
    answer = controls(page, "subscribed")[-1]
    assert answer["recovered"] is False
    assert states(page, "recovered") == []

    closes = states(page, "closed")
    assert closes[0]["code"] == 1012
    assert all(close["reconnect"] for close in closes)
    # Full jitter: minDelay, 2 x minDelay, then a fifth of the outage so far (at least
    # 2 x minDelay, at most maxDelay); the 1012 starts the outage.
    assert 0 <= closes[0]["delay"] < MIN_DELAY
    for close in closes:
        outage = close["at"] - closes[0]["at"]
        assert 0 <= close["delay"] < min(MAX_DELAY, max(2 * MIN_DELAY, outage / 5) + 1), close
    assert page.evaluate("window.attempts") == len(closes) + 1
    assert page.evaluate("window.ws.state") == "open"

    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length >= 4")
    assert received(page)[3] == {"n": 1, "topic": "t", "offset": 1, "epoch": new_epoch}
    assert len(received(page)) == 4


def test_real_server_restart_on_redis_recovers_what_was_published_while_it_was_down(
    page: Any, client_server: Any
) -> None:
    # With Redis, history outlives the server process: events another worker published
    # while this one was down are replayed to the returning client, recovered: true.
    key_prefix = f"browser-{uuid.uuid4().hex[:12]}"
    url = f"redis://127.0.0.1:6379/0?key_prefix={key_prefix}"
    server = client_server(backend=url)
    subscribed(page, server)
    post(server, "/publish", topic="t", count=2)
    wait(page, "window.received.length === 2")
    epoch = received(page)[0]["epoch"]

    server.stop()
    wait(page, "window.states.filter((s) => s.event === 'closed').length >= 2")

    async def publish_elsewhere() -> None:
        async with RedisBackend.from_url(url) as other_worker:
            for n in (101, 102, 103):
                payload = b'{"event":"browser_test_tick","data":{"n":%d}}' % n
                await other_worker.publish("t", payload)

    # Playwright's sync API keeps an event loop in this thread: publish from another one.
    publisher = threading.Thread(target=anyio.run, args=(publish_elsewhere,))
    publisher.start()
    publisher.join(timeout=30)
    assert not publisher.is_alive()
    server.start()

    wait(page, "window.received.length === 5")
    answer = controls(page, "subscribed")[-1]
    assert answer["recovered"] is True
    assert offsets(page) == [1, 2, 3, 4, 5]
    assert [event["n"] for event in received(page)[2:]] == [101, 102, 103]
    assert {event["epoch"] for event in received(page)} == {epoch}
    assert page.evaluate("window.resyncs") == []
    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length === 6")
    assert offsets(page)[-1] == 6


def test_events_replayed_by_a_server_side_resubscribe_are_dropped_as_duplicates(
    page: Any, client_server: Any
) -> None:
    server = client_server()
    subscribed(page, server)
    positions = post(server, "/publish", topic="t", count=3)["positions"]
    wait(page, "window.received.length === 3")
    epoch = positions[0][1]

    # The server replays 1..3, which the client has already processed.
    assert post(server, "/resubscribe", topic="t", offset=0, epoch=epoch)["resubscribed"] == 1
    wait(page, "window.controls.filter((f) => f.op === 'subscribed').length === 2")
    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length >= 4")

    assert offsets(page) == [1, 2, 3, 4]
    answer = controls(page, "subscribed")[-1]
    assert "id" not in answer
    assert (answer["recovered"], answer["position"]["offset"]) == (True, 3)
    assert page.evaluate("window.resyncs") == []
    assert page.evaluate("window.ws.positions.get('t')") == {"offset": 4, "epoch": epoch}


def test_gaps_epoch_changes_and_duplicates_in_one_message(page: Any, client_server: Any) -> None:
    server = client_server()
    subscribed(page, server)
    post(server, "/publish", topic="t", count=3)
    wait(page, "window.received.length === 3")
    epoch = received(page)[0]["epoch"]

    def tick(n: int, offset: int, at: str) -> str:
        return (
            f'{{"event":"browser_test_tick","data":{{"n":{n}}},'
            f'"topic":"t","offset":{offset},"epoch":"{at}"}}'
        )

    frames = [
        tick(-2, 2, epoch),  # duplicate: dropped
        tick(-5, 5, epoch),  # gap (4 is missing): resync, then processed
        tick(-6, 6, epoch),  # next in line
        tick(-101, 1, "other"),  # another epoch: resync, then processed
        tick(-102, 1, "other"),  # duplicate in the new epoch: dropped
        '{"op":"resync","topic":"t","position":{"offset":9,"epoch":"other"}}',
        tick(-110, 10, "other"),  # follows the resync position: no further resync
    ]
    post(server, "/inject", content="\n".join(frames))

    wait(page, "window.received.length >= 7")
    assert [event["n"] for event in received(page)] == [1, 2, 3, -5, -6, -101, -110]
    assert page.evaluate("window.resyncs") == [
        {"topic": "t", "position": {"offset": 5, "epoch": epoch}},
        {"topic": "t", "position": {"offset": 1, "epoch": "other"}},
        {"topic": "t", "position": {"offset": 9, "epoch": "other"}},
    ]
    assert len(states(page, "resync-needed")) == 3
    assert max(page.evaluate("window.messages")) >= len(frames)  # one message for all
    assert page.evaluate("window.ws.positions.get('t')") == {"offset": 10, "epoch": "other"}


def test_close_stops_reconnecting_and_connect_resumes_where_it_stopped(
    page: Any, client_server: Any
) -> None:
    server = client_server()
    subscribed(page, server)

    page.evaluate("window.ws.close()")
    wait_for_connections(server, 0)
    [closed] = states(page, "closed")
    assert (closed["code"], closed["reconnect"]) == (1000, False)
    post(server, "/publish", topic="t", count=2)
    # Nothing to wait for: make sure that nothing happens for longer than any backoff.
    page.wait_for_timeout(MAX_DELAY + 500)
    assert page.evaluate("[window.attempts, window.ws.state]") == [1, "closed"]
    assert received(page) == []
    assert server_connections(server) == 0

    page.evaluate("window.ws.connect()")
    wait(page, "window.received.length >= 2")
    assert offsets(page) == [1, 2]
    assert controls(page, "subscribed")[-1]["recovered"] is True
    assert page.evaluate("window.attempts") == 2
    assert page.evaluate("window.resyncs") == []


def test_positions_in_session_storage_survive_a_page_reload(page: Any, client_server: Any) -> None:
    server = client_server()
    subscribed(page, server, storage="1")
    post(server, "/publish", topic="t", count=2)
    wait(page, "window.received.length === 2")
    epoch = received(page)[0]["epoch"]

    page.goto("about:blank")  # pagehide closes the WebSocket
    wait_for_connections(server, 0)
    post(server, "/publish", topic="t", count=3)

    subscribed(page, server, storage="1")
    wait(page, "window.received.length >= 3")
    assert offsets(page) == [3, 4, 5]
    [subscribe] = [
        frame for frame in page.evaluate("window.sent") if frame.get("op") == "subscribe"
    ]
    assert subscribe["position"] == {"offset": 2, "epoch": epoch}
    assert page.evaluate("window.subscriptions[0].recovered") is True
    assert page.evaluate("window.resyncs") == []


def test_the_client_answers_server_pings(page: Any, client_server: Any) -> None:
    server = client_server(heartbeat=0.5)  # a ping every 0.5 s, 0.5 s to answer
    subscribed(page, server)

    wait(page, "window.sent.filter((f) => f.op === 'pong').length >= 3")

    assert len(controls(page, "ping")) >= 3
    assert states(page, "closed") == []
    assert page.evaluate("window.attempts") == 1
    assert server_connections(server) == 1


def refused_attempts(page: Any, base: str, **params: str) -> tuple[int, list[dict[str, Any]]]:
    """Open a page whose WebSocket the server refuses; count attempts for 1.5 s after."""
    open_client(page, base, **params)
    wait(page, "window.states.some((s) => s.event === 'closed')")
    # A client that retries does so within minDelay, then at most maxDelay apart.
    page.wait_for_timeout(MAX_DELAY + 500)
    return page.evaluate("window.attempts"), states(page, "closed")


def test_a_foreign_origin_is_refused_for_good(page: Any, client_server: Any) -> None:
    server = client_server()
    # The page is served from http://localhost:PORT, the WebSocket goes to 127.0.0.1: not
    # the page's origin, which the default allow-list (uvicorn) wants, nor the one the
    # native server allows (http://127.0.0.1:PORT).
    page_base = server.url.replace("127.0.0.1", "localhost")
    attempts, closes = refused_attempts(page, page_base, ws=server.ws_url)

    codes = [close["code"] for close in closes]
    assert attempts == 1, f"{attempts} attempts in 1.5 s, closed with {codes}"
    assert page.evaluate("window.subscriptions") == [{"error": "closed"}]
    assert server_connections(server) == 0


def test_a_failed_authentication_is_refused_for_good(page: Any, client_server: Any) -> None:
    server = client_server(token="secret")
    attempts, closes = refused_attempts(page, server.url)

    codes = [close["code"] for close in closes]
    assert attempts == 1, f"{attempts} attempts in 1.5 s, closed with {codes}"
    assert page.evaluate("window.subscriptions") == [{"error": "closed"}]
    assert server_connections(server) == 0


def test_a_valid_token_is_accepted(page: Any, client_server: Any) -> None:
    server = client_server(token="secret")
    subscribed(page, server, ws=f"{server.ws_url}?token=secret")
    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length === 1")
    assert page.evaluate("window.attempts") == 1


def test_htmx_trigger_has_fragments_follow_events_and_resyncs(
    page: Any, client_server: Any
) -> None:
    # The page's #ticks re-fetches /ticks on each tick (an htmx event on <body>, from
    # htmxTrigger) and on budget-ws:resync, which htmxTrigger fires when events are lost.
    server = client_server(history=2)
    errors = open_client(page, server.url, "/htmx")
    wait(page, "window.subscriptions.length === 1")
    epoch = page.evaluate("window.subscriptions[0].position.epoch")
    fragment = page.locator("#ticks")
    expect(fragment).to_have_text("none")

    post(server, "/publish", topic="t", count=2)
    expect(fragment).to_have_text("2 ticks", timeout=TIMEOUT)
    assert page.evaluate("window.ticks") == [1, 2]  # the event's data is the detail

    post(server, "/drop-connections", topic="t", count=4)  # 3..6 published, 5..6 kept
    wait(page, "window.resyncs.length === 1")
    assert page.evaluate("window.resyncs") == [
        {"topic": "t", "position": {"offset": 6, "epoch": epoch}}
    ]
    expect(fragment).to_have_text("6 ticks", timeout=TIMEOUT)

    post(server, "/publish", topic="t", count=1)
    expect(fragment).to_have_text("7 ticks", timeout=TIMEOUT)
    wait(page, "window.ticks.length === 3")
    assert page.evaluate("window.ticks") == [1, 2, 7]  # no partial replay
    assert len(page.evaluate("window.resyncs")) == 1
    assert errors == []


def test_a_native_server_restarted_on_its_port_while_the_manager_runs_recovers_the_gap(
    page: Any, native_client_server: Any
) -> None:
    # The native transport alone can go while the app and its manager stay: the server
    # stops listening and its connections are closed (1012), events are published while
    # nothing listens, then a new NativeServer takes the same port. History survived:
    # the page gets each missed event once, in order, recovered: true.
    server = native_client_server()
    subscribed(page, server)
    post(server, "/publish", topic="t", count=3)
    wait(page, "window.received.length === 3")
    epoch = received(page)[0]["epoch"]

    stopped = post(server, "/native/stop", topic="t", count=2)
    assert stopped["closed"] == 1
    assert [offset for offset, _ in stopped["positions"]] == [4, 5]
    # 1012, then at least two refused attempts while nothing listens on the port.
    wait(page, "window.states.filter((s) => s.event === 'closed').length >= 3")
    post(server, "/publish", topic="t", count=2)
    assert server_connections(server) == 0
    assert post(server, "/native/start") == {"port": server.ws_port}

    wait(page, "window.received.length >= 7")
    answer = controls(page, "subscribed")[-1]
    assert (answer["recovered"], answer["position"]) == (True, {"offset": 7, "epoch": epoch})
    resubscribe = [
        frame for frame in page.evaluate("window.sent") if frame.get("op") == "subscribe"
    ]
    assert resubscribe[-1]["position"] == {"offset": 3, "epoch": epoch}
    closes = states(page, "closed")
    assert closes[0]["code"] == 1012
    assert {close["code"] for close in closes[1:]} == {1006}  # refused: nothing listened
    assert all(close["reconnect"] for close in closes)
    assert page.evaluate("window.attempts") == len(closes) + 1
    assert [state["topic"] for state in states(page, "recovered")] == ["t"]

    post(server, "/publish", topic="t", count=1)
    wait(page, "window.received.length >= 8")
    assert offsets(page) == list(range(1, 9))
    assert [event["n"] for event in received(page)] == list(range(1, 9))
    assert {event["epoch"] for event in received(page)} == {epoch}
    assert page.evaluate("window.resyncs") == []
    assert server_connections(server) == 1


RESTART_PAGES = 10
DOWN_FOR = 10.0  # s, from SIGTERM to starting the server again


@pytest.mark.timeout(120)
def test_pages_with_the_default_backoff_are_back_soon_after_a_10_s_restart(
    new_page: Any, client_server: Any
) -> None:
    # Measures how stale pages stay after a restart: per page, the time from the server
    # listening again to the page being subscribed again (its own clock, the same machine).
    # BUDGET_WS_CLIENT_FILE=... runs it against another client, for comparison.
    server = client_server()
    pages = [new_page() for _ in range(RESTART_PAGES)]
    for page in pages:
        subscribed(page, server, defaults="1")
    resubscribed = "window.states.filter((s) => s.event === 'subscribed').length >= 2"

    stopped = time.time()
    server.stop()  # graceful: every page gets 1012
    time.sleep(max(0.0, stopped + DOWN_FOR - time.time()))
    server.start()  # returns once the port accepts connections
    up = time.time()
    for page in pages:
        page.wait_for_function(resubscribed, timeout=30_000)

    back = sorted(
        page.evaluate("window.states.filter((s) => s.event === 'subscribed')[1].at") / 1000 - up
        for page in pages
    )
    attempts = [page.evaluate("window.attempts") - 1 for page in pages]
    median = statistics.median(back)
    figures = (
        f"back after a {DOWN_FOR:g} s restart, {len(pages)} pages: median {median:.2f} s, "
        f"max {back[-1]:.2f} s, each {[round(b, 2) for b in back]}; reconnect attempts "
        f"per page {attempts}"
    )
    print(figures)
    assert median <= 1.5, figures
    assert back[-1] <= 5.0, figures
