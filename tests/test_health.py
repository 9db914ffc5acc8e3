"""check_health: liveness and readiness through a manager's life, on asyncio and trio."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import anyio
import pytest

from budget_ws import (
    ConnectionClosed,
    ConnectionManager,
    Event,
    Health,
    MemoryBackend,
    Position,
    Recovery,
    check_health,
)
from budget_ws.testing import MemoryClient, connect

pytestmark = pytest.mark.anyio


class Tick(Event, name="test_health_tick", register=False):
    number: int


async def stall_during_shutdown(manager: ConnectionManager, client: MemoryClient) -> None:
    """Leave a message the client does not read waiting in the connection's writer."""
    await client.subscribe("t")
    for number in range(2):  # one message fills the client's buffer, one cannot be sent
        await manager.publish(Tick(number=number), topic="t")
        await anyio.wait_all_tasks_blocked()


async def read_until_closed(client: MemoryClient) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            await client.receive()


async def test_readiness_follows_the_manager_from_start_to_close() -> None:
    manager = ConnectionManager(MemoryBackend(), shutdown_timeout=30)
    before = check_health(manager)
    assert (before.live, before.ready) == (True, False)
    assert before.reasons
    await manager.start()
    running = check_health(manager)
    assert running == Health(
        live=True,
        ready=True,
        reasons=(),
        state="running",
        connections=0,
        topics=0,
        backend="MemoryBackend(history_size=1000, history_ttl=300.0)",
        backend_status={"connected": True, "topics": 0},
    )
    async with connect(manager, send_buffer=1) as stalled:
        await stall_during_shutdown(manager, stalled)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(manager.aclose)
            await anyio.wait_all_tasks_blocked()
            draining = check_health(manager)
            # Not ready from the moment draining begins, while connections remain.
            assert (draining.live, draining.ready) == (True, False)
            assert draining.state == "closing"
            assert draining.reasons == ("shutting down (draining)",)
            assert draining.connections == 1
            await read_until_closed(stalled)
    after = check_health(manager)
    assert not after.ready
    assert after.reasons
    assert after.connections == 0


async def test_the_state_tells_not_started_from_closed() -> None:
    manager = ConnectionManager(MemoryBackend())
    before = check_health(manager)
    assert (before.state, before.live, before.ready) == ("new", True, False)
    assert before.reasons == ("manager not started",)
    async with manager:
        assert check_health(manager).state == "running"
    after = check_health(manager)
    assert (after.state, after.live, after.ready) == ("closed", False, False)
    assert after.reasons == ("manager closed",)


class StatusBackend(MemoryBackend):
    """A memory backend that reports what the test sets, and a URL with a password."""

    def __init__(self, status: Any) -> None:
        super().__init__()
        self.reported = status

    def __repr__(self) -> str:
        return "StatusBackend(redis://user:hunter2@10.0.0.1:6379/0)"

    def status(self) -> dict[str, object]:
        if isinstance(self.reported, Exception):
            raise self.reported
        return dict(self.reported)


@pytest.mark.parametrize(
    ("status", "ready", "reason"),
    [
        ({"connected": True, "reconnects": 2}, True, None),
        ({"connected": False, "reconnects": 2}, False, "backend disconnected: StatusBackend("),
        ({"topics": 4}, True, None),  # says nothing of a connection: taken as connected
        ({}, True, None),
        (
            RuntimeError("broken"),
            False,
            "backend disconnected: status() failed: RuntimeError('broken')",
        ),
    ],
    ids=["connected", "disconnected", "no-connected-key", "empty", "status-raises"],
)
async def test_readiness_needs_the_backend_connected(
    status: Any, ready: bool, reason: str | None
) -> None:
    async with ConnectionManager(StatusBackend(status)) as manager:
        health = check_health(manager)
    assert health.live
    assert health.ready is ready
    if reason is None:
        assert health.reasons == ()
    else:
        [found] = health.reasons
        assert found.startswith(reason)
    assert "hunter2" not in str(health.as_dict())
    assert health.backend == "StatusBackend(redis://10.0.0.1:6379/0)"


class Unreported:
    """A backend without ``status()`` (it is optional): taken as connected."""

    async def __aenter__(self) -> Unreported:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def publish(self, topic: str, payload: bytes) -> Position:
        return Position(1, "e")

    async def subscribe(self, topic: str, listener: Any) -> None:
        pass

    async def unsubscribe(self, topic: str, listener: Any) -> None:
        pass

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        return Recovery(False, Position(0, "e"))


async def test_a_backend_without_a_status_is_taken_as_connected() -> None:
    async with ConnectionManager(Unreported()) as manager:
        health = check_health(manager)
    assert (health.ready, health.backend_status) == (True, {})


async def test_as_dict_is_json_ready(manager: ConnectionManager) -> None:
    async with connect(manager) as client:
        await client.subscribe("t")
        data = check_health(manager).as_dict()
    assert data == {
        "live": True,
        "ready": True,
        "reasons": [],
        "state": "running",
        "connections": 1,
        "topics": 1,
        "backend": "MemoryBackend(history_size=1000, history_ttl=300.0)",
        "backend_status": {"connected": True, "topics": 1},
    }
