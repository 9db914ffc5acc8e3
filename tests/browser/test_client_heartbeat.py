"""The browser client's heartbeat in Chromium: a link that dies without a close.

A relay between the page and the server stops relaying (both ways, sockets left open), as
a NAT or a mobile network that lost the connection does; the page must notice by itself.
On each transport (``client_server``): uvicorn, or the native server beside it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.browser.test_client import controls, open_client, states, wait

BEAT = 5  # s, the server's heartbeat interval and timeout: a ping every 5 s
SLACK = 5  # s, the client's default heartbeatSlack


class Relay:
    """TCP relay on 127.0.0.1; :meth:`cut` silently drops the links open at that moment."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.links: list[dict[str, bool]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """From now on, drop every byte of the current links; never close them."""
        for link in self.links:
            link["dead"] = True

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # closed, or the server is gone: the test is over
                return
            self.sockets += [client, upstream]
            link = {"dead": False}
            self.links.append(link)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target, link), daemon=True
                ).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, link: dict[str, bool]) -> None:
        try:
            while data := source.recv(65536):
                if not link["dead"]:
                    target.sendall(data)
        except OSError:
            return
        if not link["dead"]:  # an ordinary close is relayed; a dead link relays nothing
            target.close()
            source.close()


@pytest.fixture
def relayed_page(page: Any, client_server: Any) -> Iterator[tuple[Any, Relay]]:
    """A page subscribed through a relay to a server that pings every BEAT seconds."""
    server = client_server(heartbeat=BEAT)
    relay = Relay(server.ws_port)
    if server.transport == "native":
        # The page from uvicorn (the origin the native server allows), its WebSocket via
        # the relay to the native server.
        open_client(page, server.url, defaults="1", ws=f"ws://127.0.0.1:{relay.port}/ws")
    else:  # same origin: page and WebSocket via the relay
        open_client(page, relay.url, defaults="1")
    wait(page, "window.subscriptions.length === 1")
    yield page, relay
    relay.close()


def cut_after_a_ping(page: Any, relay: Relay) -> float:
    """Cut the link right after the page received a ping; returns the time of the cut."""
    pings = len(controls(page, "ping"))
    page.wait_for_function(
        f"window.controls.filter((f) => f.op === 'ping').length > {pings}", timeout=2 * BEAT * 1000
    )
    relay.cut()
    return time.time()


def closed_at(page: Any) -> tuple[float, dict[str, Any]]:
    page.wait_for_function(
        "window.states.some((s) => s.event === 'closed')", timeout=4 * BEAT * 1000
    )
    [closed] = states(page, "closed")
    return closed["at"] / 1000, closed


@pytest.mark.timeout(90)
def test_a_silently_dead_link_is_noticed_one_ping_period_plus_slack_after_the_last_ping(
    relayed_page: tuple[Any, Relay],
) -> None:
    page, relay = relayed_page
    cut = cut_after_a_ping(page, relay)

    at, closed = closed_at(page)

    # The server pings every BEAT s whether or not it hears back: BEAT + SLACK of silence
    # is a dead link (interval + timeout + slack, 3 x BEAT, waited a whole timeout more).
    print(f"dead link noticed {at - cut:.2f} s after the last ping")
    assert closed["code"] == 4001
    assert (closed["reason"], closed["reconnect"]) == ("heartbeat timeout", True)
    assert BEAT + SLACK - 1 <= at - cut <= BEAT + SLACK + 1
    # The network is fine for new connections: the page is subscribed again at once.
    wait(page, "window.states.filter((s) => s.event === 'subscribed').length >= 2")
    assert page.evaluate("window.ws.state") == "open"


@pytest.mark.timeout(90)
def test_online_checks_the_connection_and_reconnects_within_the_slack(
    relayed_page: tuple[Any, Relay],
) -> None:
    page, relay = relayed_page
    cut_after_a_ping(page, relay)
    time.sleep(1)
    online = time.time()
    page.evaluate("window.dispatchEvent(new Event('online'))")  # the network is back

    at, closed = closed_at(page)

    print(f"dead link noticed {at - online:.2f} s after 'online'")
    assert closed["code"] == 4001
    assert SLACK - 1 <= at - online <= SLACK + 1  # not BEAT + SLACK after the last ping
    wait(page, "window.states.filter((s) => s.event === 'subscribed').length >= 2")
