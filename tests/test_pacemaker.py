"""The one task that pings every connection of a manager (virtual time: exact times)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from tests.support.clock import virtual_time_backends

from budget_ws import CloseCode, Heartbeat
from budget_ws.pacemaker import Pacemaker

pytestmark = pytest.mark.parametrize("anyio_backend", virtual_time_backends())


class FakeConnection:
    """What the pacemaker uses of a Connection; answers pings unless told to be silent."""

    def __init__(self, name: str, *, answers: bool = True) -> None:
        self.name = name
        self.id = name  # named in the log line of a heartbeat timeout
        self.answers = answers
        self.pings: list[float] = []
        self.last_inbound = 0.0
        self.closed = False
        self.close_code: int | None = None

    def push_control(self, frame: str) -> None:
        assert frame == '{"op":"ping"}'
        now = anyio.current_time()
        self.pings.append(now)
        if self.answers:
            self.last_inbound = now

    def close(self, code: int, reason: str = "", *, drain: bool = True) -> None:
        self.closed = True
        self.close_code = code


async def run_for(pacemaker: Pacemaker, seconds: float, *joins: tuple[float, Any]) -> None:
    """Run the pacemaker, adding each connection at its time (seconds from now)."""
    start = anyio.current_time()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(pacemaker.run)
        for at, connection in sorted(joins, key=lambda join: join[0]):
            await anyio.sleep_until(start + at)
            pacemaker.add(connection)
        await anyio.sleep_until(start + seconds)
        task_group.cancel_scope.cancel()


def relative(times: list[float], origin: float) -> list[float]:
    return [round(time - origin, 6) for time in times]


async def test_each_connection_is_pinged_every_interval_from_its_own_start(
    anyio_backend: Any,
) -> None:
    pacemaker = Pacemaker(Heartbeat(interval=10, timeout=3))
    first, second = FakeConnection("first"), FakeConnection("second")
    origin = anyio.current_time()
    await run_for(pacemaker, 35, (0, first), (4, second))
    assert relative(first.pings, origin) == [10, 20, 30]
    assert relative(second.pings, origin) == [14, 24, 34]
    assert not first.closed
    assert not second.closed


async def test_a_silent_connection_is_closed_timeout_after_its_ping(anyio_backend: Any) -> None:
    pacemaker = Pacemaker(Heartbeat(interval=10, timeout=3))
    silent, alive = FakeConnection("silent", answers=False), FakeConnection("alive")
    origin = anyio.current_time()
    await run_for(pacemaker, 40, (0, silent), (1, alive))
    assert relative(silent.pings, origin) == [10]
    assert silent.close_code == CloseCode.HEARTBEAT_TIMEOUT
    assert relative(alive.pings, origin) == [11, 21, 31]
    assert len(pacemaker) == 1, "the closed connection is forgotten"


async def test_a_newcomer_is_not_delayed_by_a_later_deadline(anyio_backend: Any) -> None:
    # A timeout longer than the interval: while the pacemaker sleeps until the first
    # connection's check at 10 + 30, a newcomer's first ping is due at 12 + 10.
    pacemaker = Pacemaker(Heartbeat(interval=10, timeout=30))
    first, newcomer = FakeConnection("first"), FakeConnection("newcomer")
    origin = anyio.current_time()
    await run_for(pacemaker, 23, (0, first), (12, newcomer))
    assert relative(newcomer.pings, origin) == [22]


async def test_with_a_timeout_beyond_the_interval_the_next_ping_follows_the_check(
    anyio_backend: Any,
) -> None:
    pacemaker = Pacemaker(Heartbeat(interval=10, timeout=15))
    connection = FakeConnection("c")
    origin = anyio.current_time()
    await run_for(pacemaker, 60, (0, connection))
    assert relative(connection.pings, origin) == [10, 25, 40, 55]


async def test_removed_and_closed_connections_get_no_more_pings(anyio_backend: Any) -> None:
    pacemaker = Pacemaker(Heartbeat(interval=10, timeout=3))
    removed, closed = FakeConnection("removed"), FakeConnection("closed")
    origin = anyio.current_time()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(pacemaker.run)
        pacemaker.add(removed)
        pacemaker.add(closed)
        await anyio.sleep_until(origin + 15)
        pacemaker.remove(removed)
        closed.closed = True
        await anyio.sleep_until(origin + 50)
        task_group.cancel_scope.cancel()
    assert relative(removed.pings, origin) == [10]
    assert relative(closed.pings, origin) == [10]
    assert len(pacemaker) == 0
