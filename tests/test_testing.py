"""The test doubles budget_ws ships for applications' own tests."""

from __future__ import annotations

import anyio
import pytest

from budget_ws import Position
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio


async def test_a_recording_listener_waits_for_deliveries_and_resyncs() -> None:
    listener = RecordingListener()
    done = anyio.Event()

    async def wait() -> None:
        await listener.wait_for(1, resyncs=1)
        done.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(wait)
        listener.deliver("t", Position(1, "e"), b"{}")
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set(), "a delivery alone is not enough"
        listener.resync("t", Position(5, "f"))
        with anyio.fail_after(5):
            await done.wait()
    assert listener.delivered == [("t", Position(1, "e"), b"{}")]
    assert listener.resyncs == [("t", Position(5, "f"))]
