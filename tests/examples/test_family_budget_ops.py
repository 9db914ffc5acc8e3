"""The family-budget demo's operator side: ``/metrics`` and the ``/ops`` page.

Each test gets a fresh demo (SQLite ``:memory:``, the memory backend) served by a real
uvicorn process on a loopback port, so its counts start at zero; a process of its own, too,
because the demo's events would clash with other examples' in this process's registry.
Clients are httpx and a ``websockets`` client speaking ``budget-ws.v1``, as a tab would.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.servers import running_demo
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from budget_ws import ConnectionManager

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROTOCOLS = [Subprotocol("budget-ws.v1")]
HTMX = {"HX-Request": "true"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn and the websockets client run on asyncio only


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The demo's ``ops`` module (which imports neither the app nor its events)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("family_budget.ops")


@pytest.fixture
def base_url() -> Iterator[str]:
    """A fresh demo (its own database, manager and metrics) in a uvicorn process."""
    with running_demo() as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Alice's browser, logged in; the operator pages need no login."""
    cookies = {"demo_user": "alice"}
    async with httpx.AsyncClient(
        base_url=base_url, cookies=cookies, timeout=5, trust_env=False
    ) as client:
        yield client


class Tab:
    """A ``budget-ws.v1`` connection as the budget page opens it, frame by frame."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.pending: list[dict[str, Any]] = []

    async def frame(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            while not self.pending:  # one message may carry several frames, one per line
                message = str(await self.socket.recv())
                self.pending.extend(json.loads(line) for line in message.splitlines() if line)
        return self.pending.pop(0)

    async def event(self) -> dict[str, Any]:
        while "event" not in (frame := await self.frame()):
            pass
        return frame


def open_tab(base_url: str, cookie: str = "demo_user=alice") -> Any:
    url = base_url.replace("http://", "ws://") + "/ws"
    return connect(url, subprotocols=PROTOCOLS, additional_headers={"Cookie": cookie}, proxy=None)


async def subscribed_tab(socket: ClientConnection) -> Tab:
    tab = Tab(socket)
    assert (await tab.frame())["op"] == "welcome"
    await socket.send(json.dumps({"op": "subscribe", "topic": "budget:1", "id": "1"}))
    # The server subscribes the tab to alice's own stream too: wait for budget:1's answer.
    while (frame := await tab.frame()).get("id") != "1":
        assert frame["op"] == "subscribed"
        assert frame["topic"] == "~user:alice"
    assert frame["op"] == "subscribed"
    return tab


async def add_fact(http: httpx.AsyncClient, amount: str = "7.25") -> None:
    form = {"amount": amount, "article_id": "1", "financial_center_id": "1"}
    response = await http.post("/budgets/1/facts", data=form, headers=HTMX)
    assert response.status_code == 200, response.text


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """``/metrics`` as ``{"name{label=value}": value}`` (labels sorted), parsed."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/ops/stats.json")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


# /metrics ------------------------------------------------------------------------------------


async def test_metrics_count_a_connection_and_the_events_it_gets(
    base_url: str, http: httpx.AsyncClient
) -> None:
    before = await scrape(http)
    assert before["budget_ws_connections"] == 0
    assert before["budget_ws_backend_connected"] == 1
    async with open_tab(base_url) as socket:
        tab = await subscribed_tab(socket)
        await add_fact(http)
        assert (await tab.event())["event"] == "budget_fact_created"
        during = await scrape(http)
    assert during["budget_ws_connections"] == 1
    assert during["budget_ws_topics"] == 2  # budget:1, and alice's own stream ~user:alice
    assert during["budget_ws_connections_opened_total"] == 1
    published = "budget_ws_events_published_total"
    assert during[published] == before[published] + 1
    # Timings are on: the event's frame and the publish were timed.
    assert during["budget_ws_delivery_latency_seconds_count"] >= 1
    assert during["budget_ws_publish_latency_seconds_count"] == 1


# /ops/stats.json -----------------------------------------------------------------------------


async def test_ops_stats_report_the_connection_and_the_latency_of_delivered_events(
    base_url: str, http: httpx.AsyncClient
) -> None:
    quiet = await stats(http)
    assert quiet["connections"] == 0
    assert quiet["latency"]["delivery"] == {"count": 0, "p50": None, "p95": None, "p99": None}
    assert quiet["backend"]["connected"] is True
    async with open_tab(base_url) as socket:
        tab = await subscribed_tab(socket)
        for amount in ("1.00", "2.00", "3.00"):
            await add_fact(http, amount)
            assert (await tab.event())["event"] == "budget_fact_created"
        busy = await stats(http)
    assert busy["connections"] == 1
    assert busy["topics"] == 2  # budget:1, and alice's own stream ~user:alice
    assert busy["totals"]["published"] == quiet["totals"]["published"] + 3
    delivery = busy["latency"]["delivery"]
    assert delivery["count"] == 3  # each event's frame (control frames are not timed)
    assert 0 < delivery["p50"] <= delivery["p95"] <= delivery["p99"] < 5
    assert busy["latency"]["publish"]["count"] == 3
    assert 0 < busy["latency"]["publish"]["p99"] < 5
    assert busy["rates"]["published"] is not None
    assert busy["rates"]["published"] > 0


async def test_ops_stats_count_closes_by_code_and_refused_handshakes(
    base_url: str, http: httpx.AsyncClient
) -> None:
    async with open_tab(base_url) as socket:
        await subscribed_tab(socket)
    with pytest.raises(InvalidStatus):
        async with open_tab(base_url, cookie="demo_user=mallory"):
            pass
    with anyio.fail_after(5):
        # The server's side of the close ends a moment after the client's, and nothing
        # outside the server says when: poll.
        while (report := await stats(http))["connections"]:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert report["closes"] == {"1000": 1}
    assert report["handshake_refusals"] == {"authentication": 1}
    assert report["totals"]["connections_opened"] == 1


# /ops ----------------------------------------------------------------------------------------


async def test_the_ops_page_shows_the_numbers_and_polls_them(
    base_url: str, http: httpx.AsyncClient
) -> None:
    async with open_tab(base_url) as socket:
        await subscribed_tab(socket)
        page = await http.get("/ops")
        fragment = await http.get("/ops/stats", headers=HTMX)
    assert page.status_code == 200
    assert '<dd id="ops-connections" class="num">1</dd>' in page.text
    assert 'hx-get="/ops/stats" hx-trigger="every 1s"' in page.text
    assert 'href="/metrics"' in page.text
    for name in ("ops-delivery-p50", "ops-delivery-p99", "ops-publish-p99", "ops-closes"):
        assert f'id="{name}"' in page.text
    assert fragment.status_code == 200
    assert '<dd id="ops-connections" class="num">1</dd>' in fragment.text
    assert "<html" not in fragment.text
    # Every page of the demo links to it, out of the way.
    login = await http.get("/login")
    assert '<footer class="footer"><a href="/ops">Operator page</a></footer>' in login.text


@pytest.mark.parametrize("path", ["/ops", "/ops/stats", "/ops/stats.json", "/metrics"])
async def test_the_operator_pages_refuse_other_machines(http: httpx.AsyncClient, path: str) -> None:
    assert (await http.get(path)).status_code == 200
    # Through a proxy on this machine, uvicorn takes the client's address from the proxy's
    # header (it trusts 127.0.0.1 to set it): a client elsewhere is refused, logged in or not.
    response = await http.get(path, headers={"X-Forwarded-For": "203.0.113.7"})
    assert response.status_code == 403
    assert "only requests from the machine the demo runs on" in response.text
    assert (await http.get("/budgets/1", headers={"X-Forwarded-For": "203.0.113.7"})).is_success


@pytest.mark.parametrize(
    ("client", "local"),
    [
        (("127.0.0.1", 1), True),
        (("127.8.9.10", 1), True),
        (("::1", 1), True),
        (("192.168.1.20", 1), False),
        (("::ffff:203.0.113.7", 1), False),
        (("testclient", 1), False),
        (None, False),
    ],
)
def test_only_loopback_addresses_are_local(
    ops: ModuleType, client: tuple[str, int] | None, local: bool
) -> None:
    assert ops.is_local(client) is local


# The arithmetic behind the page ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_cover_the_last_interval_and_latency_the_window(ops: ModuleType) -> None:
    manager = ConnectionManager("memory://")  # never started: only its counters are read
    metrics = manager.metrics
    clock = FakeClock()
    readings = ops.Readings(manager, interval=1.0, window=10.0, clock=clock)
    assert metrics.delivery_latency is not None  # the readings switched timings on

    for _ in range(20):  # a page polling every second: 4 events and 3 slow frames a second
        clock.now += 1
        metrics.published += 4
        metrics.delivered += 4
        for _ in range(3):
            metrics.delivery_latency.observe(0.2)
        readings.report()
    clock.now += 1
    metrics.published += 10  # a burst in the last second
    metrics.delivery_latency.observe(0.002)
    report = readings.report()

    assert report["rates"] == {"seconds": 1.0, "published": 10.0, "delivered": 0.0}
    latency = report["latency"]
    assert latency["seconds"] == 10.0  # the reads older than the window are gone
    assert latency["delivery"]["count"] == 9 * 3 + 1
    assert 0.1 < latency["delivery"]["p50"] <= 0.25
    assert latency["delivery"]["p95"] <= 0.25
    assert latency["publish"] == {"count": 0, "p99": None}

    # Two pages polling at once: a second read right after does not shrink the interval.
    clock.now += 0.1
    assert readings.report()["rates"]["seconds"] == pytest.approx(1.1)
