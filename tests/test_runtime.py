"""The manager's background task, outside any task group, on asyncio and trio alike."""

from __future__ import annotations

import anyio
import pytest
from tests.support.tasks import running_tasks

from budget_ws._runtime import BackgroundTask

pytestmark = pytest.mark.anyio


async def test_a_background_task_runs_from_start_to_stop() -> None:
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    task = BackgroundTask(forever, "test forever")
    await task.stop()  # never started: nothing to stop
    task.start()
    with anyio.fail_after(5):
        await started.wait()
    assert "test forever" in running_tasks().values()
    await task.stop()
    assert "test forever" not in running_tasks().values()


async def test_a_failing_background_task_is_logged_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("bug in the task")

    task = BackgroundTask(broken, "test broken")
    task.start()
    with anyio.fail_after(5):
        await task.stop()
    assert "test broken failed" in caplog.text
    assert "RuntimeError: bug in the task" in caplog.text
