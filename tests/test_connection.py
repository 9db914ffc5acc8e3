"""One client's connection: closing, its writer's failures, and transports that misbehave."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import anyio
import pytest

from budget_ws import CloseCode, ConnectionClosed, ConnectionManager, Event
from budget_ws.connection import Connection
from budget_ws.protocol import FINAL_CLOSE_CODES, encode_event
from budget_ws.testing import MemoryClient, MemoryTransport, connect

pytestmark = pytest.mark.anyio


class Saved(Event, name="test_connection_saved", register=False):
    id: int
    amount: Decimal


@asynccontextmanager
async def serving(
    manager: ConnectionManager, transport: MemoryTransport
) -> AsyncIterator[Connection]:
    """Serve ``transport``; yield its connection once welcomed, and wait for it to end."""
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(manager.serve, transport)
            assert (await MemoryClient(transport).receive())["op"] == "welcome"
            [connection] = [c for c in manager.connections.values() if c.transport is transport]
            yield connection
            with anyio.fail_after(5):
                await connection.wait_closed()
    finally:
        transport.release()


async def test_a_closed_connection_queues_nothing_and_keeps_its_first_code(
    manager: ConnectionManager,
) -> None:
    async with connect(manager) as client:
        await client.subscribe("t")
        [connection] = manager.connections.values()
        connection.close(4401, "first")
        connection.close(4402, "second")
        connection.push('{"event":"late"}')
        connection.push_control('{"op":"late"}')
        assert connection.queued_frames == 0
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await client.receive()
        assert (info.value.code, info.value.reason) == (4401, "first")
    assert connection.close_code == 4401


async def test_every_wait_closed_returns_when_the_client_leaves(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.receive()
        [connection] = manager.connections.values()
        finished: list[int] = []

        async def wait(waiter: int) -> None:
            await connection.wait_closed()
            finished.append(waiter)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(wait, 1)
                task_group.start_soon(wait, 2)
                await anyio.wait_all_tasks_blocked()
                assert not finished
                await client.close()
        assert sorted(finished) == [1, 2]
    assert connection.closed
    assert connection.close_code == 1000


class _CloseFails(MemoryTransport):
    async def close(self, code: int = 1000, reason: str = "") -> None:
        await super().close(code, reason)
        raise OSError("socket already reset")


async def test_a_transport_failing_to_close_still_ends_the_connection(
    manager: ConnectionManager,
) -> None:
    transport = _CloseFails()
    async with serving(manager, transport) as connection:
        connection.close(4400, "bye")
    assert transport.close_code == 4400
    assert manager.stats().connections == 0


class _SendFails(MemoryTransport):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.fail = False

    async def send_text(self, text: str) -> None:
        if self.fail:
            raise self.error
        await super().send_text(text)


@pytest.mark.parametrize(
    ("error", "warned"),
    [
        (ConnectionClosed(1006, "client went away"), False),  # a peer leaving is normal
        (RuntimeError("bug in the transport"), True),  # anything else is worth a warning
    ],
    ids=["connection-closed", "other-error"],
)
async def test_a_failing_send_ends_the_connection(
    manager: ConnectionManager,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    warned: bool,
) -> None:
    transport = _SendFails(error)
    async with serving(manager, transport) as connection:
        await manager.subscribe(connection, "t")
        transport.fail = True
        await manager.publish(Saved(id=1, amount=Decimal(1)), topic="t")
    assert manager.stats().connections == 0
    # The writer saw the peer gone: the server sends no close frame of its own.
    assert transport.close_code is None
    warnings = [r for r in caplog.records if r.message.startswith("sending to connection")]
    assert bool(warnings) == warned


class _ClosesWithoutCode(MemoryTransport):
    async def receive(self) -> str | bytes:
        await super().receive()  # the first frame from the client, then it is gone
        raise ConnectionClosed(None)


async def test_a_peer_gone_without_a_close_code_counts_as_going_away(
    manager: ConnectionManager,
) -> None:
    transport = _ClosesWithoutCode()
    async with serving(manager, transport) as connection:
        await MemoryClient(transport).send_raw('{"op": "pong"}')
    assert connection.close_code == CloseCode.GOING_AWAY


async def test_the_memory_transport_reports_a_vanished_client() -> None:
    transport = MemoryTransport()
    await transport.close(4400, "bye")
    await transport.close(1000, "again")  # closing twice keeps the first code
    assert (transport.close_code, transport.close_reason) == (4400, "bye")
    with pytest.raises(ConnectionClosed) as info:
        await transport.send_text("{}")
    assert info.value.code == 4400
    transport.release()
    with pytest.raises(ConnectionClosed) as info:
        await transport.receive()
    assert info.value.code == 1006
    gone = MemoryTransport()
    gone.to_client.close()  # the client stopped reading
    with pytest.raises(ConnectionClosed) as info:
        await gone.send_text(encode_event(Saved(id=1, amount=Decimal(1))).decode())
    assert info.value.code == 1006
    gone.release()


async def test_an_application_close_before_the_first_frame_sends_the_code() -> None:
    closed_early: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        connection.close(4403, "not today", drain=False)
        closed_early.append(connection)

    async with ConnectionManager(on_connect=on_connect) as manager, connect(manager) as client:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await client.receive()
        assert (info.value.code, info.value.reason) == (4403, "not today")
    assert closed_early[0].close_code == 4403


async def test_a_connection_cancelled_from_outside_tells_the_client_to_come_back(
    manager: ConnectionManager,
) -> None:
    # A 1000 would be final for the browser client: its page would never reconnect.
    transport = MemoryTransport()
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(manager.serve, transport)
            assert (await MemoryClient(transport).receive())["op"] == "welcome"
            [connection] = manager.connections.values()
            task_group.cancel_scope.cancel()
    finally:
        transport.release()
    assert transport.close_code == CloseCode.SERVICE_RESTART
    assert connection.close_code == CloseCode.SERVICE_RESTART
    assert CloseCode.SERVICE_RESTART not in FINAL_CLOSE_CODES
