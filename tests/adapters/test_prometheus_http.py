"""/metrics over HTTP from real servers, while real WebSocket clients come and go.

uvicorn serves Starlette and FastAPI apps in the test's process (its event loop is the
test's, so the test publishes with ``manager.publish``), or runs as ``--workers 2`` in a
subprocess for the multiprocess mode. Clients are ``websockets`` clients speaking
``budget-ws.v1``; metrics are read with httpx and prometheus_client's parser.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount
from tests.backends.conftest import RedisServer
from tests.support.proxy import Proxy
from tests.support.servers import free_port, stop, wait_listening
from tests.test_prometheus import Scrape
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from budget_ws import (
    BackendUnavailable,
    ConnectionManager,
    Event,
    Heartbeat,
    MemoryBackend,
    OutboxLimits,
)
from budget_ws.adapters.fastapi import create_router
from budget_ws.adapters.fastapi import lifespan as fastapi_lifespan
from budget_ws.adapters.starlette import lifespan, websocket_route
from budget_ws.backends.redis import RedisBackend
from budget_ws.prometheus import metrics_app, multiprocess_registry

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
SUBPROTOCOL = Subprotocol("budget-ws.v1")
QUIET = Heartbeat(interval=60, timeout=60)  # no pings: every frame is one the test expects


class Tick(Event, name="test_prometheus_http_tick", register=False):
    number: int
    padding: str = ""


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # A mount answers /metrics with a redirect to /metrics/, which Prometheus follows.
    async with httpx.AsyncClient(trust_env=False, timeout=10, follow_redirects=True) as client:
        yield client


async def scrape(http: httpx.AsyncClient, address: str) -> Scrape:
    response = await http.get(f"http://{address}/metrics")
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def scrape_until(
    http: httpx.AsyncClient, address: str, condition: Callable[[Scrape], bool], within: float = 15
) -> Scrape:
    """Scrape until ``condition`` holds; fail with the last scrape after ``within`` seconds."""
    last: Scrape | None = None
    try:
        with anyio.fail_after(within):
            while True:
                last = await scrape(http, address)
                if condition(last):
                    return last
                await anyio.sleep(0.05)
    except TimeoutError:
        text = last.text if last is not None else "nothing"
        raise AssertionError(f"the metrics never got there; last scrape:\n{text}") from None


class Client:
    """A ``budget-ws.v1`` client: splits messages into frames and keeps every frame."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.frames: list[dict[str, Any]] = []
        self._unread: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, stack: AsyncExitStack, url: str, **options: Any) -> Client:
        connection = await stack.enter_async_context(
            connect(url, subprotocols=[SUBPROTOCOL], compression=None, proxy=None, **options)
        )
        client = cls(connection)
        assert (await client.receive())["op"] == "welcome"
        return client

    @property
    def events(self) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if "event" in frame]

    async def receive(self) -> dict[str, Any]:
        while not self._unread:
            message = await self.connection.recv()
            text = message.decode() if isinstance(message, bytes) else message
            frames = [json.loads(line) for line in text.split("\n") if line]
            self.frames += frames
            self._unread += frames
        return self._unread.pop(0)

    async def subscribe(self, topic: str, position: dict[str, Any] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"op": "subscribe", "topic": topic, "id": 1}
        if position is not None:
            request["position"] = position
        await self.connection.send(json.dumps(request))
        while True:
            frame = await self.receive()
            if frame.get("op") == "subscribed":
                return frame

    async def receive_until(self, condition: Callable[[dict[str, Any]], bool]) -> None:
        """Read frames until one meets ``condition``."""
        with anyio.fail_after(10):
            while not condition(await self.receive()):
                pass

    async def events_until(self, number: int) -> None:
        await self.receive_until(lambda frame: frame.get("data", {}).get("number") == number)


def starlette_app(manager: ConnectionManager, registry: CollectorRegistry) -> Any:
    return Starlette(
        routes=[
            websocket_route(manager, "/ws"),
            Mount("/metrics", metrics_app(manager, registry)),
        ],
        lifespan=lifespan(manager),
    )


def fastapi_app(manager: ConnectionManager, registry: CollectorRegistry) -> Any:
    app = FastAPI(lifespan=fastapi_lifespan(manager))
    app.include_router(create_router(manager))
    app.mount("/metrics", metrics_app(manager, registry))
    return app


@pytest.mark.parametrize("ws_implementation", ["websockets-sansio"])
@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
async def test_the_counts_are_what_real_clients_received(
    serve: Any, http: httpx.AsyncClient, make_app: Callable[..., Any]
) -> None:
    manager = ConnectionManager(MemoryBackend(), heartbeat=QUIET)
    async with serve(make_app(manager, CollectorRegistry())) as address:
        async with AsyncExitStack() as stack:
            url = f"ws://{address}/ws"
            clients = [await Client.open(stack, url) for _ in range(3)]
            for client in clients:
                await client.subscribe("t")
            for number in range(4):
                await manager.publish(Tick(number=number), topic="t")
            for client in clients:
                await client.events_until(3)
            # A client that resumes after the first event gets three replayed frames, which
            # are not live: the latency histogram does not count them, frames_sent does.
            first = clients[0].events[0]
            resumed = await Client.open(stack, url)
            answer = await resumed.subscribe(
                "t", {"offset": first["offset"], "epoch": first["epoch"]}
            )
            assert answer["recovered"] is True
            clients.append(resumed)
            await manager.publish(Tick(number=4), topic="t")
            for client in clients:
                await client.events_until(4)
            assert sum(len(client.events) for client in clients) == 3 * 5 + 3 + 1

            live_frames = 3 * 5 + 1
            metrics = await scrape_until(
                http,
                address,
                lambda s: s("budget_ws_delivery_latency_seconds_count") >= live_frames,
            )
            assert metrics("budget_ws_delivery_latency_seconds_count") == live_frames
            assert metrics("budget_ws_delivery_latency_seconds_bucket", le="+Inf") == live_frames
            assert metrics("budget_ws_frames_sent_total") == sum(len(c.frames) for c in clients)
            assert metrics("budget_ws_connections") == 4
            assert metrics("budget_ws_connections_opened_total") == 4
            assert metrics("budget_ws_topics") == 1
            assert metrics("budget_ws_subscriptions") == 4
            assert metrics("budget_ws_events_published_total") == 5
            assert metrics("budget_ws_publish_latency_seconds_count") == 5
            assert metrics.types["budget_ws_delivery_latency_seconds"] == "histogram"

        closed = await scrape_until(http, address, lambda s: s("budget_ws_connections") == 0)
        assert closed("budget_ws_connections_closed_total", code="1000") == 4
        assert closed("budget_ws_slow_consumer_disconnects_total") == 0


@pytest.mark.parametrize("ws_implementation", ["websockets-sansio"])
async def test_refused_handshakes_are_counted_by_reason(
    serve: Any, http: httpx.AsyncClient
) -> None:
    manager = ConnectionManager(MemoryBackend(), heartbeat=QUIET)
    async with serve(starlette_app(manager, CollectorRegistry())) as address:
        url = f"ws://{address}/ws"
        with pytest.raises(InvalidStatus):
            async with connect(url, proxy=None):  # no budget-ws.v1
                pass
        for _ in range(2):  # as a browser: accepted, then closed with 1008 at once
            async with connect(
                url, subprotocols=[SUBPROTOCOL], origin=Origin("https://evil.example"), proxy=None
            ) as refused:
                with pytest.raises(ConnectionClosed) as closed:
                    await refused.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1008
        metrics = await scrape(http, address)
    assert metrics.named("budget_ws_handshake_refusals_total") == {
        frozenset({("reason", "subprotocol")}): 1,
        frozenset({("reason", "origin")}): 2,
    }
    assert metrics("budget_ws_connections_opened_total") == 0
    assert metrics.named("budget_ws_connections_closed_total") == {}


async def open_stalled(stack: AsyncExitStack, url: str, port: int) -> Client:
    """A client that reads its welcome and its ``subscribed`` answer, then nothing.

    Its socket buffer is small, and the websockets library stops reading once one
    message waits, so the server's writes soon block on it.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    client = await Client.open(stack, url, sock=sock, max_queue=1, max_size=None)
    await client.subscribe("t")
    return client


# The outbox fills only where the server's send waits for the socket: uvicorn's
# websockets-sansio implementation does from 0.53, wsproto's on every version we support
# (see tests/adapters/test_compat.py).
UVICORN = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
SEND_WAITS = "websockets-sansio" if UVICORN >= (0, 53) else "wsproto"


@pytest.mark.parametrize("ws_implementation", [SEND_WAITS])
async def test_a_client_that_stops_reading_is_counted_as_a_slow_consumer(
    serve: Any, http: httpx.AsyncClient
) -> None:
    limits = OutboxLimits(max_messages=4)
    manager = ConnectionManager(MemoryBackend(), heartbeat=QUIET, outbox=limits)
    padding = "x" * 16_384
    async with serve(starlette_app(manager, CollectorRegistry())) as address:
        port = int(address.rsplit(":", 1)[1])
        url = f"ws://{address}/ws"
        async with AsyncExitStack() as stack:
            healthy = await Client.open(stack, url)
            await healthy.subscribe("t")
            stalled = await open_stalled(stack, url, port)
            before = await scrape(http, address)
            assert before("budget_ws_connections") == 2
            # Publish one event at a time, each read by the healthy client, until the
            # stalled client's outbox overflows (a few MB of socket buffers at most).
            for number in range(1000):
                await manager.publish(Tick(number=number, padding=padding), topic="t")
                await healthy.events_until(number)
                if number % 10 == 0:
                    metrics = await scrape(http, address)
                    if metrics("budget_ws_slow_consumer_disconnects_total"):
                        break
            assert metrics("budget_ws_slow_consumer_disconnects_total") == 1
            assert metrics("budget_ws_events_published_total") == number + 1
            # Its close frame cannot get through either: the connection counts until the
            # manager gives up on closing it cleanly (5 s), then as closed with 4000.
            metrics = await scrape_until(http, address, lambda s: s("budget_ws_connections") == 1)
            assert metrics.named("budget_ws_connections_closed_total") == {
                frozenset({("code", "4000")}): 1
            }
            assert metrics("budget_ws_slow_consumer_disconnects_total") == 1
            assert metrics("budget_ws_heartbeat_timeouts_total") == 0
            stalled.connection.transport.abort()  # it never reads its close frame


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop and start."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


async def publish_retrying(manager: ConnectionManager, event: Event) -> None:
    """Publish; while the backend reconnects its command connection, try again."""
    with anyio.fail_after(10):
        while True:
            try:
                await manager.publish(event, topic="t")
            except BackendUnavailable:
                await anyio.sleep(0.05)
            else:
                return


@pytest.mark.parametrize("ws_implementation", ["websockets-sansio"])
async def test_a_lost_pubsub_link_and_a_redis_restart_are_counted(
    serve: Any, http: httpx.AsyncClient, private_redis: RedisServer
) -> None:
    async with Proxy(private_redis.port) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0",
            key_prefix=f"test-{uuid.uuid4().hex[:12]}",
            operation_timeout=2,
            health_check_interval=1,
            # A second before each reconnection: time for the test to publish into the gap.
            reconnect_delay=(1.0, 1.0),
        )
        manager = ConnectionManager(backend, heartbeat=QUIET)
        async with serve(starlette_app(manager, CollectorRegistry())) as address:
            async with AsyncExitStack() as stack:
                client = await Client.open(stack, f"ws://{address}/ws")
                await client.subscribe("t")
                for number in range(2):
                    await manager.publish(Tick(number=number), topic="t")
                await client.events_until(1)
                up = await scrape(http, address)
                assert up("budget_ws_backend_connected") == 1
                reconnects = up("budget_ws_backend_reconnects_total")

                # The pub/sub link drops; events published meanwhile reach the stream
                # only, and the backend fills them in when it is back.
                proxy.kill()
                await scrape_until(http, address, lambda s: s("budget_ws_backend_connected") == 0)
                for number in range(2, 5):
                    await publish_retrying(manager, Tick(number=number))
                await client.events_until(4)
                filled = await scrape_until(
                    http, address, lambda s: s("budget_ws_backend_connected") == 1
                )
                assert filled("budget_ws_backend_reconnects_total") > reconnects
                assert filled("budget_ws_backend_gaps_filled_total") == 1
                assert filled("budget_ws_backend_events_recovered_total") == 3
                assert filled("budget_ws_resyncs_total") == 0
                assert [event["data"]["number"] for event in client.events] == [0, 1, 2, 3, 4]

                # Redis restarts empty: publishing fails while it is down, and the topic's
                # subscribers are told to resync once it is back (its history is gone).
                # Publishes retried during the cut may have failed too: count from here.
                failures = filled("budget_ws_publish_failures_total")
                private_redis.stop()
                await scrape_until(http, address, lambda s: s("budget_ws_backend_connected") == 0)
                with pytest.raises(BackendUnavailable):
                    await manager.publish(Tick(number=5), topic="t")
                private_redis.start()
                await client.receive_until(lambda frame: frame.get("op") == "resync")
                restarted = await scrape_until(
                    http, address, lambda s: s("budget_ws_backend_connected") == 1
                )
                assert restarted("budget_ws_resyncs_total") == 1
                assert restarted("budget_ws_publish_failures_total") == failures + 1
                assert restarted("budget_ws_backend_reconnects_total") > filled(
                    "budget_ws_backend_reconnects_total"
                )
                assert restarted("budget_ws_backend_gaps_filled_total") == 1
                assert restarted("budget_ws_events_published_total") == 5


class Workers:
    """``uvicorn prometheus_workers_app:app_factory --workers 2`` in a subprocess."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", "prometheus_workers_app:app_factory", "--factory",
            "--workers", "2", "--app-dir", str(HERE), "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "warning",
            "--ws-per-message-deflate", "false", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.directory)}
        self.process = subprocess.Popen(command, env=environment)
        wait_listening(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=15)
            self.process = None


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    directory = tmp_path / "metrics"
    directory.mkdir()
    server = Workers(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def fresh_get(path: str, address: str) -> dict[str, Any]:
    """GET on a connection of its own, which the kernel hands to either worker."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"http://{address}{path}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def worker_connections(address: str) -> dict[int, int]:
    """Each worker's pid and how many connections it serves, asked until both answered."""
    seen: dict[int, int] = {}
    for _ in range(50):
        local = await fresh_get("/local", address)
        seen[local["pid"]] = local["connections"]
        if len(seen) == 2:
            break
    return seen


async def read_until(clients: list[Client], events: int) -> None:
    """Read every client's frames until they received ``events`` events between them."""
    enough = anyio.Event()

    async def read(client: Client) -> None:
        while True:
            await client.receive()
            if sum(len(client.events) for client in clients) >= events:
                enough.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            for client in clients:
                task_group.start_soon(read, client)
            await enough.wait()
            task_group.cancel_scope.cancel()


async def test_several_workers_export_their_sum(workers: Workers) -> None:
    address = workers.address
    url = f"ws://{address}/ws"
    async with AsyncExitStack() as stack:
        clients: list[Client] = []
        # Connect until both workers serve clients (the kernel picks one per connection).
        for _ in range(20):
            for _ in range(4):
                client = await Client.open(stack, url)
                await client.subscribe("t")
                clients.append(client)
            connections = await worker_connections(address)
            if len(connections) == 2 and all(connections.values()):
                break
        assert len(connections) == 2, "one worker took every connection"
        assert sum(connections.values()) == len(clients)

        # Each worker publishes to its own clients (memory backends), on requests that
        # land on either worker, until both have published.
        published = dict.fromkeys(connections, 0)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            for _ in range(40):
                response = await http.post(
                    f"http://{address}/publish",
                    params={"topic": "t", "count": 2},
                    headers={"connection": "close"},  # the next request may go elsewhere
                )
                published[response.json()["pid"]] += 2
                if min(published.values()) >= 4:
                    break
        assert min(published.values()) >= 4
        total = sum(published.values())
        received = sum(connections[pid] * published[pid] for pid in connections)
        await read_until(clients, received)
        assert sum(len(client.events) for client in clients) == received

        async with httpx.AsyncClient(trust_env=False, timeout=10, follow_redirects=True) as http:
            metrics = await scrape_until(
                http,
                address,
                lambda s: (
                    s("budget_ws_delivery_latency_seconds_count") == received
                    and s("budget_ws_events_published_total") == total
                    and s("budget_ws_connections") == len(clients)
                ),
            )
        assert metrics("budget_ws_connections_opened_total") == len(clients)
        assert metrics("budget_ws_topics") == 2  # one per worker, summed
        assert metrics("budget_ws_backend_connected") == 1  # the minimum
        assert metrics("budget_ws_publish_latency_seconds_count") == total
        assert metrics("budget_ws_frames_sent_total") == sum(len(c.frames) for c in clients)
        assert metrics.types["budget_ws_delivery_latency_seconds"] == "histogram"
        assert metrics.types["budget_ws_events_published"] == "counter"
        buckets = metrics.buckets("budget_ws_delivery_latency_seconds")
        assert buckets[-1] == (float("inf"), received)
        assert [count for _, count in buckets] == sorted(count for _, count in buckets)
        assert not any("pid" in dict(labels) for _, labels in metrics.samples)

        # The server stops with the clients connected: each worker closes them with
        # 1012, copies a last time, and takes itself out of the gauges.
        workers.stop()
    after = Scrape.of(multiprocess_registry(str(workers.directory)))
    assert after("budget_ws_connections") == 0
    assert after("budget_ws_topics") == 0
    assert after("budget_ws_backend_connected") == 1
    assert after("budget_ws_connections_opened_total") == len(clients)
    assert after.named("budget_ws_connections_closed_total") == {
        frozenset({("code", "1012")}): len(clients)
    }
    assert after("budget_ws_events_published_total") == total
    assert after("budget_ws_delivery_latency_seconds_count") == received
    assert after.types["budget_ws_outbox_fill_bytes"] == "histogram"
