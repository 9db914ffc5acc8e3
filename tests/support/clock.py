"""Virtual time on both event loops: timing tests take exact times and no real seconds.

Trio has :class:`trio.testing.MockClock`; asyncio has nothing alike, so
:class:`VirtualTimeLoop` is a selector event loop whose clock jumps, as MockClock's does
with ``autojump_threshold=0``, to the next timer whenever every task is waiting and no
I/O is ready. Use it only for tests that wait on timers and in-memory streams, never on
sockets or threads: time would jump while they are in flight.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import pytest
from trio.testing import MockClock


class _AutojumpSelector(selectors.DefaultSelector):
    """Polls without blocking; when nothing is ready, moves the loop's clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O (a thread's wake-up) can come
            return super().select(None)
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time that jumps to the next timer when all tasks wait."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_AutojumpSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does it when the loop would sleep)."""
        self._now += seconds


def virtual_time_backends() -> list[Any]:
    """``anyio_backend`` parameters: asyncio and trio, both on virtual, autojumping time."""
    return [
        pytest.param(("asyncio", {"loop_factory": VirtualTimeLoop}), id="asyncio"),
        pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio"),
    ]
