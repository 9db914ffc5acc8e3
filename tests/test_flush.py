"""Connections of a DirectTransport: written from the flusher's callback while the socket
keeps up, by their writer task (bounded by the outbox) while it does not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from budget_ws import CloseCode, ConnectionClosed, ConnectionManager, Event, OutboxLimits
from budget_ws.connection import Connection, DirectTransport
from budget_ws.wire import text_frame

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the flusher runs on asyncio, the only loop of a DirectTransport


@pytest.fixture(autouse=True)
async def _activity() -> None:
    Socket.activity = asyncio.Event()


class Tick(Event, name="test_flush_tick", register=False):
    number: int


class Socket:
    """A DirectTransport whose socket keeps up or falls behind when the test says."""

    activity: asyncio.Event
    """Set whenever any socket is written to or closed (the tests' clock); a new one
    for each test, on its loop."""

    def __init__(self) -> None:
        self.wires: list[bytes] = []
        """Messages written at once, by the flusher."""
        self.texts: list[str] = []
        """Messages written by the writer task."""
        self.keeping_up = True
        self.drain = asyncio.Event()
        self.closed: tuple[int, str] | None = None
        self._gone = asyncio.Event()

    def write_now(self, wire: bytes) -> bool:
        if self.closed is not None:
            raise ConnectionClosed(1006, "closed")
        self.wires.append(wire)
        Socket.activity.set()
        return self.keeping_up

    async def drained(self) -> None:
        if not self.keeping_up:
            await self.drain.wait()

    async def send_text(self, text: str) -> None:
        self.texts.append(text)
        Socket.activity.set()
        await self.drained()

    async def receive(self) -> str | bytes:
        await self._gone.wait()
        raise ConnectionClosed(1000, "")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self._gone.set()
        Socket.activity.set()

    def catch_up(self) -> None:
        self.keeping_up = True
        self.drain.set()

    def frames(self) -> list[dict[str, object]]:
        """Every frame written, in order, whichever way it went."""
        messages = [_payload(wire).decode() for wire in self.wires]
        return [json.loads(line) for message in messages for line in message.split("\n")]


async def until(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds, looking again whenever a socket sees activity."""
    with anyio.fail_after(5):
        while not check():
            Socket.activity.clear()
            await Socket.activity.wait()


def _payload(wire: bytes) -> bytes:
    """The payload of one unmasked frame."""
    length = wire[1] & 0x7F
    return wire[{126: 4, 127: 10}.get(length, 2) :]


@asynccontextmanager
async def served(manager: ConnectionManager, *sockets: Socket) -> AsyncIterator[list[Connection]]:
    async with anyio.create_task_group() as task_group:
        for socket in sockets:
            task_group.start_soon(lambda s=socket: manager.serve(s, topics=["t:1"]))
        await until(
            lambda: len(manager.connections) == len(sockets) and all(s.wires for s in sockets)
        )
        for socket in sockets:  # the welcome and subscribed frames, written at once
            assert [frame["op"] for frame in socket.frames()] == ["welcome", "subscribed"]
            socket.wires.clear()
        yield list(manager.connections.values())
        for connection in manager.connections.values():
            connection.close()


async def test_a_socket_is_a_direct_transport() -> None:
    assert isinstance(Socket(), DirectTransport)


async def test_a_connection_that_keeps_up_runs_no_writer_task() -> None:
    manager = ConnectionManager()
    sockets = [Socket() for _ in range(3)]
    async with manager:
        before = len(asyncio.all_tasks())
        async with served(manager, *sockets):
            await manager.publish(Tick(number=0), topic="t:1")
            await until(lambda: all(s.wires for s in sockets))
            # One task per connection, the one serving it (which reads); none writes.
            assert len(asyncio.all_tasks()) == before + len(sockets)
            assert [len(s.texts) for s in sockets] == [0, 0, 0]


async def test_an_event_is_framed_once_for_every_subscriber() -> None:
    manager = ConnectionManager()
    first, second = Socket(), Socket()
    async with manager, served(manager, first, second):
        for number in range(3):
            await manager.publish(Tick(number=number), topic="t:1")
            await asyncio.sleep(0)  # a steady stream: one event per loop turn
        await until(lambda: len(second.wires) >= 3)
        # The very same bytes object went to both: framed once, not once per client.
        assert [a is b for a, b in zip(first.wires, second.wires)] == [True] * 3
        assert [frame["data"] for frame in first.frames()] == [{"number": n} for n in range(3)]
        assert first.wires[0] == text_frame(_payload(first.wires[0]).decode())
        assert manager.metrics.delivered >= 6


async def test_frames_queued_in_one_turn_leave_as_one_message() -> None:
    manager = ConnectionManager()
    socket = Socket()
    async with manager, served(manager, socket):
        for number in range(5):
            await manager.publish(Tick(number=number), topic="t:1")  # no turn in between
        await until(lambda: bool(socket.wires))
        assert len(socket.wires) == 1
        assert [frame["data"] for frame in socket.frames()] == [{"number": n} for n in range(5)]


async def test_a_socket_that_falls_behind_holds_one_message_then_the_outbox_bounds_it() -> None:
    manager = ConnectionManager(outbox=OutboxLimits(max_messages=10))
    slow, healthy = Socket(), Socket()
    async with manager, served(manager, slow, healthy):
        slow.keeping_up = False
        for number in range(30):
            await manager.publish(Tick(number=number), topic="t:1")
            await asyncio.sleep(0)
        await until(lambda: slow.closed is not None and len(healthy.frames()) >= 30)
        # One write reached the socket that fell behind; nothing more was written while
        # it had not drained, and the outbox overflowed: a slow consumer.
        assert len(slow.wires) == 1
        assert slow.closed[0] == CloseCode.SLOW_CONSUMER
        assert [frame["data"]["number"] for frame in healthy.frames()] == list(range(30))


async def test_a_socket_that_catches_up_gets_the_backlog_joined_then_writes_at_once() -> None:
    manager = ConnectionManager()
    socket = Socket()
    async with manager, served(manager, socket):
        socket.keeping_up = False
        for number in range(4):
            await manager.publish(Tick(number=number), topic="t:1")
            await asyncio.sleep(0)
        texts = len(socket.texts)
        socket.catch_up()
        await until(lambda: len(socket.texts) != texts)
        backlog = socket.texts[-1].split("\n")
        assert [json.loads(frame)["data"]["number"] for frame in backlog] == [1, 2, 3]
        await asyncio.sleep(0.01)  # the writer parks again
        await manager.publish(Tick(number=4), topic="t:1")
        await until(lambda: len(socket.wires) >= 2)
        assert [frame["data"]["number"] for frame in socket.frames()] == [0, 4]


async def test_a_transport_gone_while_parked_ends_the_connection() -> None:
    manager = ConnectionManager()
    socket = Socket()
    async with manager, served(manager, socket) as [connection]:
        socket.closed = (1006, "gone")  # write_now raises from now on
        await manager.publish(Tick(number=1), topic="t:1")
        with anyio.fail_after(5):
            await connection.wait_closed()
        assert connection.close_code is not None


async def test_timings_count_what_the_flusher_wrote() -> None:
    manager = ConnectionManager()
    manager.metrics.enable_timings()
    socket = Socket()
    async with manager, served(manager, socket):
        await manager.publish(Tick(number=0), topic="t:1")  # alone: its wait is timed
        await until(lambda: len(socket.wires) >= 1)
        for number in range(1, 4):  # together: one message, and the outbox's fill
            await manager.publish(Tick(number=number), topic="t:1")
        await until(lambda: len(socket.frames()) >= 4)
        latency, fill = manager.metrics.delivery_latency, manager.metrics.outbox_fill
        assert latency is not None
        assert fill is not None
        latency.flush()
        fill.flush()
        assert sum(latency.counts) == 4  # 1 alone + 3 in one message, each counted
        assert sum(fill.counts) == 1


async def test_a_send_that_fails_after_a_hand_back_ends_the_connection() -> None:
    manager = ConnectionManager()
    socket = Socket()
    async with manager, served(manager, socket) as [connection]:
        socket.keeping_up = False
        await manager.publish(Tick(number=0), topic="t:1")  # written; the socket fell behind
        await until(lambda: len(socket.wires) == 1)
        await manager.publish(Tick(number=1), topic="t:1")  # waits for the writer

        async def broken(text: str) -> None:
            raise ConnectionClosed(1006, "reset")

        socket.send_text = broken  # type: ignore[method-assign]
        socket.catch_up()
        with anyio.fail_after(5):
            await connection.wait_closed()
        assert len(socket.wires) == 1
