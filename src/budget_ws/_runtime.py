"""What the core needs from the running event loop beyond anyio's public API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio

try:
    from sniffio import current_async_library
except ImportError:  # anyio runs only on asyncio without sniffio (trio requires it)

    def current_async_library() -> str:
        return "asyncio"


__all__ = ["BackgroundTask", "current_async_library", "loop_clock"]

logger = logging.getLogger("budget_ws.runtime")


def loop_clock() -> Callable[[], float]:
    """The running event loop's clock: what ``anyio.current_time()`` reads, without
    finding the async library and the loop again at every reading (a few µs each, on
    every connect and every client frame)."""
    if current_async_library() == "asyncio":
        return asyncio.get_running_loop().time
    return anyio.current_time


class BackgroundTask:
    """A task that lives from :meth:`start` to :meth:`stop`, outside any task group.

    A manager is started and closed by separate calls (``start()`` in a lifespan's
    startup, ``aclose()`` in its shutdown, or ``aclose()`` from anywhere), so its own
    task cannot belong to a task group opened in ``start()``: the group would have to be
    exited exactly where it was entered. This is an asyncio task, or a trio system task,
    run inside a cancel scope that :meth:`stop` cancels.
    """

    def __init__(self, function: Callable[[], Awaitable[None]], name: str) -> None:
        self._function = function
        self._name = name
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._task: asyncio.Task[None] | None = None  # asyncio keeps only weak references

    def start(self) -> None:
        """Start the task; call it from inside the event loop."""
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        if current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._main, name=self._name)
        else:
            self._task = asyncio.get_running_loop().create_task(self._main(), name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has finished."""
        if self._scope is None or self._done is None:
            return  # never started
        self._scope.cancel()
        await self._done.wait()

    async def _main(self) -> None:
        assert self._scope is not None
        assert self._done is not None
        try:
            with self._scope:
                await self._function()
        except Exception:  # a bug: say so, and leave the rest of the manager running
            logger.exception(
                "%s failed",
                self._name,
                extra={"budget_ws_event": "task_failed", "budget_ws_task": self._name},
            )
        finally:
            self._done.set()
