"""The native server on uvloop, and a server stopped and started again on its port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect

from budget_ws import ConnectionManager, Event
from budget_ws.native import NativeServer

pytestmark = pytest.mark.anyio

PROTOCOL: Any = "budget-ws.v1"


class Tick(Event, name="test_native_tick", register=False):
    number: int


@pytest.fixture(params=["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def _ticks(socket: Any, count: int) -> list[int]:
    numbers: list[int] = []
    while len(numbers) < count:
        for line in str(await socket.recv()).split("\n"):
            frame = json.loads(line)
            if frame.get("event") == "test_native_tick":
                numbers.append(frame["data"]["number"])
    return numbers


async def test_events_arrive_once_and_in_order_on_either_loop() -> None:
    manager = ConnectionManager()
    async with manager, NativeServer(manager) as server:
        async with connect(server.url, subprotocols=[PROTOCOL]) as socket:
            await socket.recv()
            await socket.send('{"op": "subscribe", "topic": "t:1", "id": 1}')
            assert json.loads(str(await socket.recv()))["op"] == "subscribed"
            for number in range(200):
                await manager.publish(Tick(number=number), topic="t:1")
            assert await _ticks(socket, 200) == list(range(200))


async def test_a_stopped_server_starts_again_on_the_port_it_picked() -> None:
    manager = ConnectionManager()
    async with manager:
        server = NativeServer(manager, port=0)
        await server.start()
        port = server.port
        assert port > 0
        await server.aclose()
        with pytest.raises(ConnectionRefusedError):  # nothing listens any more
            async with connect(server.url, subprotocols=[PROTOCOL], open_timeout=2):
                pass
        await server.start()
        try:
            assert server.port == port
            async with connect(server.url, subprotocols=[PROTOCOL]) as socket:
                assert json.loads(str(await socket.recv()))["op"] == "welcome"
        finally:
            await server.aclose()


async def test_starting_twice_is_an_error() -> None:
    manager = ConnectionManager()
    async with manager, NativeServer(manager) as server:
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()


async def test_stopping_drops_connections_that_sent_no_opening_request() -> None:
    manager = ConnectionManager()
    async with manager:
        server = NativeServer(manager, handshake_timeout=60)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            await asyncio.sleep(0.05)  # accepted, and waiting for its request
            await server.aclose()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped, not left open
        finally:
            writer.close()
