"""Two uvicorn workers on one Redis or PostgreSQL: every client gets every event once.

Each worker is a uvicorn process of its own (``two_workers_app.py``) with its own
``ConnectionManager``; they share events and history only through the Redis server on
127.0.0.1:6379, under a key prefix of the test's own, or through the PostgreSQL server on
127.0.0.1:5432, in a schema of the test's own, each event published in a transaction of
its own. Clients are ``websockets`` clients speaking ``budget-ws.v1``; events are
published through the workers' HTTP endpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from tests.support.postgres import POSTGRES_DSN, url_of
from tests.support.servers import UvicornWorker
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/0"
TOPICS = ["budget:1", "budget:2", "budget:3"]
CLIENTS = 300
SUBPROTOCOL = "budget-ws.v1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn, the websockets client and redis-py run on asyncio only


def make_worker(name: str, backend_url: str, transactions: str = "") -> UvicornWorker:
    """A worker of ``two_workers_app`` on ``backend_url``."""
    environment = {"TWO_WORKERS_BACKEND": backend_url, "TWO_WORKERS_TRANSACTIONS": transactions}
    return UvicornWorker(name, "two_workers_app", HERE, environment)


@pytest.fixture
def key_prefix() -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    prefix = f"test-two-workers-{uuid.uuid4().hex[:12]}"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as admin:
        keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            admin.delete(*keys)


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A schema of the test's own, made by the documented step and dropped afterwards."""
    schema = f"test_two_workers_{uuid.uuid4().hex[:12]}"
    migrate = [sys.executable, "-m", "budget_ws", "migrate", url_of(schema)]
    subprocess.run(migrate, check=True, capture_output=True, timeout=30)
    yield schema
    drop = ["psql", POSTGRES_DSN, "-qc", f"DROP SCHEMA {schema} CASCADE"]
    subprocess.run(drop, check=True, capture_output=True, timeout=30)


@pytest.fixture(params=["redis", "postgres"])
def workers(request: pytest.FixtureRequest) -> Iterator[tuple[UvicornWorker, UvicornWorker]]:
    if request.param == "redis":
        key_prefix = request.getfixturevalue("key_prefix")
        backend_url = f"{REDIS_URL}?key_prefix={key_prefix}&history_size=1000&topic_ttl=300"
        transactions = ""
    else:
        backend_url = url_of(request.getfixturevalue("postgres_schema"), history_size=1000)
        transactions = POSTGRES_DSN
    pair = (
        make_worker("A", backend_url, transactions),
        make_worker("B", backend_url, transactions),
    )
    try:
        for worker in pair:
            worker.launch()
        for worker in pair:
            worker.wait_listening()
        yield pair
    finally:
        for worker in pair:
            worker.stop()


class Client:
    """One ``budget-ws.v1`` client: splits messages into frames, keeps its event frames."""

    def __init__(self, connection: ClientConnection, topic: str) -> None:
        self.connection = connection
        self.topic = topic
        self.pending: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        while not self.pending:
            message = await self.connection.recv()
            text = message.decode() if isinstance(message, bytes) else message
            self.pending.extend(json.loads(line) for line in text.split("\n") if line)
        return self.pending.pop(0)

    async def receive_op(self, op: str) -> dict[str, Any]:
        """The next control frame, which must be ``op``; event frames are kept meanwhile."""
        while True:
            frame = await self.receive()
            if "event" in frame:
                self.events.append(frame)
                continue
            assert frame["op"] == op, frame
            return frame

    async def subscribe(self, position: dict[str, Any] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"op": "subscribe", "topic": self.topic, "id": 1}
        if position is not None:
            request["position"] = position
        await self.connection.send(json.dumps(request))
        answer = await self.receive_op("subscribed")
        assert answer["id"] == 1
        return answer

    async def collect_until(self, offset: int) -> None:
        """Keep event frames until the one at ``offset`` (or a later one) arrives."""
        while not self.events or self.events[-1]["offset"] < offset:
            frame = await self.receive()
            assert "event" in frame, f"unexpected control frame {frame}"
            self.events.append(frame)

    @property
    def last_position(self) -> dict[str, Any]:
        last = self.events[-1]
        return {"offset": last["offset"], "epoch": last["epoch"]}


class Clients:
    """Opens clients; leaving ``async with`` closes those still open, all at once."""

    def __init__(self) -> None:
        self.open: list[Client] = []

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        clients, self.open = self.open, []
        with anyio.move_on_after(5, shield=True):
            async with anyio.create_task_group() as task_group:
                for client in clients:
                    task_group.start_soon(client.connection.close)
        for client in clients:  # a test that failed may leave unread frames behind
            client.connection.transport.abort()

    async def connect(self, worker: UvicornWorker, topic: str) -> Client:
        connection = await connect(
            worker.ws, subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None, proxy=None
        )
        client = Client(connection, topic)
        self.open.append(client)
        assert connection.subprotocol == SUBPROTOCOL
        await client.receive_op("welcome")
        return client

    async def close(self, client: Client) -> None:
        self.open.remove(client)
        await client.connection.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def publish(
    http: httpx.AsyncClient, worker: UvicornWorker, topic: str, count: int
) -> list[tuple[int, str, int, str]]:
    """Publish ``count`` events through ``worker``: ``(offset, epoch, n, worker name)`` each."""
    response = await http.post(
        f"{worker.http}/publish", params={"topic": topic, "count": count, "source": worker.name}
    )
    response.raise_for_status()
    return [(offset, epoch, n, worker.name) for offset, epoch, n in response.json()["published"]]


async def stats(http: httpx.AsyncClient, worker: UvicornWorker) -> dict[str, Any]:
    response = await http.get(f"{worker.http}/stats")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def seen(client: Client) -> list[tuple[int, str, int, str]]:
    return [
        (frame["offset"], frame["epoch"], frame["data"]["n"], frame["data"]["source"])
        for frame in client.events
    ]


async def test_every_client_of_both_workers_gets_every_event_once_in_order(
    workers: tuple[UvicornWorker, UvicornWorker], http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers
    per_worker = {"A": 40, "B": 25}
    async with Clients() as opened:
        # Half the clients on each worker, every topic on both workers.
        joined: dict[int, Client] = {}
        limiter = anyio.CapacityLimiter(50)

        async def join(index: int) -> None:
            async with limiter:
                worker = workers[index % 2]
                client = await opened.connect(worker, TOPICS[index % 3])
                answer = await client.subscribe()
                assert answer["recovered"] is False
                assert answer["position"]["offset"] == 0
                joined[index] = client

        with anyio.fail_after(20):
            async with anyio.create_task_group() as task_group:
                for index in range(CLIENTS):
                    task_group.start_soon(join, index)
        clients = [joined[index] for index in range(CLIENTS)]
        for worker in workers:
            status = await stats(http, worker)
            assert status["connections"] == CLIENTS // 2
            assert status["topics"] == len(TOPICS)
            assert status["backend_status"]["connected"] is True
            assert status["backend_status"]["topics"] == len(TOPICS)

        # Publish through both workers at once: their events interleave in each topic.
        published: dict[str, list[tuple[int, str, int, str]]] = {topic: [] for topic in TOPICS}

        async def publish_into(worker: UvicornWorker, topic: str) -> None:
            published[topic] += await publish(http, worker, topic, per_worker[worker.name])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for topic in TOPICS:
                    for worker in (worker_a, worker_b):
                        task_group.start_soon(publish_into, worker, topic)
        total = sum(per_worker.values())
        expected: dict[str, list[tuple[int, str, int, str]]] = {}
        for topic, events in published.items():
            events.sort()
            assert [offset for offset, *_ in events] == list(range(1, total + 1))
            assert len({epoch for _, epoch, _, _ in events}) == 1
            expected[topic] = events

        with anyio.fail_after(15):
            async with anyio.create_task_group() as task_group:
                for client in clients:
                    task_group.start_soon(client.collect_until, total)

        # A last event per topic: whatever arrives before it must have been expected.
        for topic in TOPICS:
            [closing] = await publish(http, worker_a, topic, 1)
            expected[topic].append(closing)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for client in clients:
                    task_group.start_soon(client.collect_until, total + 1)

        for client in clients:
            assert seen(client) == expected[client.topic]
            assert {frame["topic"] for frame in client.events} == {client.topic}
            assert client.pending == []


async def test_a_client_of_worker_a_resumes_on_worker_b_and_recovers_what_it_missed(
    workers: tuple[UvicornWorker, UvicornWorker], http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers
    topic = TOPICS[0]
    async with Clients() as opened:
        # A client that stays on worker B all along, to compare with.
        witness = await opened.connect(worker_b, topic)
        await witness.subscribe()
        moving = await opened.connect(worker_a, topic)
        await moving.subscribe()
        before = await publish(http, worker_a, topic, 5) + await publish(http, worker_b, topic, 3)
        with anyio.fail_after(10):
            await moving.collect_until(8)
        assert seen(moving) == before
        position = moving.last_position
        await opened.close(moving)
        # Disconnected; events keep coming through both workers.
        with anyio.fail_after(5):
            while (await stats(http, worker_a))["connections"]:  # noqa: ASYNC110 - another process
                await anyio.sleep(0.02)
        missed = await publish(http, worker_a, topic, 6) + await publish(http, worker_b, topic, 4)
        assert [offset for offset, *_ in missed] == list(range(9, 19))

        moved = await opened.connect(worker_b, topic)
        answer = await moved.subscribe(position)
        assert answer["recovered"] is True
        assert answer["position"] == {"offset": 18, "epoch": position["epoch"]}
        with anyio.fail_after(10):
            await moved.collect_until(18)
        assert seen(moved) == missed, "exactly the missed events, in order"
        after = await publish(http, worker_a, topic, 1)
        with anyio.fail_after(10):
            await moved.collect_until(19)
            await witness.collect_until(19)
        assert seen(moved) == missed + after, "then live events, none twice"
        assert seen(witness) == before + missed + after
