"""Two ``python -m budget_ws serve --reuse-port`` processes on one port, one Redis backend:
the kernel spreads the clients over both, and every event published through Redis reaches
every client exactly once, in order; SIGTERM closes each process's clients with 1012.

Redis answers on 127.0.0.1:6379 (CI starts it); the backend's keys live under a key prefix
of the test's own (the ``key_prefix`` fixture deletes them afterwards).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from tests.native.reuse_port_app import BACKEND_VARIABLE
from tests.support.servers import NativeProcess, free_port
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from budget_ws import ConnectionManager, Event

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

REDIS_URL = "redis://127.0.0.1:6379/0"
PROTOCOL = Subprotocol("budget-ws.v1")
TARGET = "tests.native.reuse_port_app:make_manager"
TOPICS = ["budget:1", "budget:2", "budget:3"]
CLIENTS = 60
EVENTS = 150


class Numbered(Event, name="reuse_port_numbered", register=False):
    n: int


@pytest.fixture(params=["asyncio", "uvloop"])
async def workers(
    key_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[str, str, list[NativeProcess]]]:
    """Two serving processes on one port (on the event loop of the parameter): the backend
    URL they share, their URL, them."""
    backend = f"{REDIS_URL}?key_prefix={key_prefix}&history_size=1000"
    port = free_port()
    arguments = ["--reuse-port", "--loop", request.param]
    environment = {BACKEND_VARIABLE: backend}
    processes = [NativeProcess(TARGET, port, *arguments, environment=environment) for _ in range(2)]
    try:
        for process in processes:
            await process.start()
        yield backend, f"ws://127.0.0.1:{port}/ws", processes
    finally:
        for process in processes:
            if process.process is not None:
                await process.stop()


class Client:
    def __init__(self, ws: ClientConnection, topic: str) -> None:
        self.ws = ws
        self.topic = topic
        self.pid = 0
        self.frames: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(10):
            while not self.frames:
                message = await self.ws.recv()
                self.frames.extend(json.loads(line) for line in str(message).split("\n"))
        return self.frames.pop(0)


async def open_client(stack: AsyncExitStack, url: str, topic: str) -> Client:
    ws = await stack.enter_async_context(
        connect(url, subprotocols=[PROTOCOL], ping_interval=None, open_timeout=10)
    )
    client = Client(ws, topic)
    welcome = await client.next()
    assert welcome["op"] == "welcome"
    worker = await client.next()
    assert worker["event"] == "reuse_port_worker", worker
    client.pid = worker["data"]["pid"]
    await ws.send(json.dumps({"op": "subscribe", "topic": topic, "id": 1}))
    subscribed = await client.next()
    assert (subscribed["op"], subscribed["topic"]) == ("subscribed", topic), subscribed
    return client


async def test_clients_of_two_processes_on_one_port_get_every_event_once_in_order(
    workers: tuple[str, str, list[NativeProcess]],
) -> None:
    backend, url, processes = workers
    async with AsyncExitStack() as stack:
        clients: list[Client] = []
        for number in range(CLIENTS):
            clients.append(await open_client(stack, url, TOPICS[number % len(TOPICS)]))
        pids = {client.pid for client in clients}
        assert pids == {process.pid for process in processes}, "the kernel used one process"

        async with ConnectionManager(backend) as publisher:
            for n in range(1, EVENTS + 1):
                await publisher.publish(Numbered(n=n), topic=TOPICS[n % len(TOPICS)])

        async def receive(client: Client) -> None:
            wanted = [n for n in range(1, EVENTS + 1) if TOPICS[n % len(TOPICS)] == client.topic]
            got = [await client.next() for _ in wanted]
            assert [frame["data"]["n"] for frame in got] == wanted
            assert [frame["offset"] for frame in got] == list(range(1, len(wanted) + 1))
            assert {frame["topic"] for frame in got} == {client.topic}

        async with anyio.create_task_group() as tasks:
            for client in clients:
                tasks.start_soon(receive, client)

        async def nothing_more(client: Client) -> None:
            assert client.frames == []
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.2):
                    await client.ws.recv()

        async with anyio.create_task_group() as tasks:  # no duplicate through the other one
            for client in clients:
                tasks.start_soon(nothing_more, client)

        # SIGTERM: each process stops listening and closes its clients with 1012.
        statuses = [await process.stop() for process in processes]
        assert statuses == [0, 0], [process.stderr.decode() for process in processes]
        for client in clients:
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await client.ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1012, "server shutting down")
    for process in processes:
        assert b"budget_ws: shutting down" in process.stderr
