"""Writing for many connections in one callback per turn of the event loop.

A steady stream wakes every subscriber's writer task once per event, and a task's wakeup
costs more than the write it leads to. A transport that can write at once
(:class:`~budget_ws.connection.DirectTransport`) needs no writer task while its socket
keeps up: queuing a frame marks the connection, and one callback per loop turn writes
what every marked connection has queued. Frames queued in the same turn still leave as
one message (a burst keeps its coalescing), and a message of one event frame, the same
for every subscriber, is framed once per turn. A connection whose socket falls behind
gets a writer task until it has caught up, which waits for the socket to drain.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import ClassVar, Protocol

__all__ = ["Flushable", "Flusher"]


class Flushable(Protocol):
    def flush(self, wires: dict[str, bytes]) -> None:
        """Write what is queued; ``wires`` holds this turn's framed one-event messages."""


class Flusher:
    """The marked connections of one event loop and the callback that writes for them."""

    __slots__ = ("__weakref__", "_loop", "_marked")

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._marked: list[Flushable] = []

    @classmethod
    def of_running_loop(cls) -> Flusher:
        """The running loop's flusher, created on first use."""
        loop = asyncio.get_running_loop()
        flusher = cls._of_loop.get(loop)
        if flusher is None:
            flusher = cls._of_loop[loop] = cls(loop)
        return flusher

    def mark(self, connection: Flushable) -> None:
        """Have ``connection`` write its queue in this turn's callback."""
        marked = self._marked
        if not marked:
            self._loop.call_soon(self._flush)
        marked.append(connection)

    def _flush(self) -> None:
        marked = self._marked
        self._marked = []
        wires: dict[str, bytes] = {}
        for connection in marked:
            connection.flush(wires)
