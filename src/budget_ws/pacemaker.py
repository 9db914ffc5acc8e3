"""One task that pings every connection of a manager.

A heartbeat task per connection costs a task, its coroutine and a timer for every idle
client: a few KiB each, most of what an idle connection holds. All connections of a
manager share one interval and one timeout, so one task can keep their deadlines in a
heap and sleep until the earliest.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING

import anyio

from ._runtime import loop_clock
from .limits import Heartbeat
from .protocol import CloseCode, encode_ping

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Pacemaker"]

logger = logging.getLogger("budget_ws.connection")

_PING, _CHECK = 0, 1


class _Entry:
    """A deadline in the heap; ``connection`` is cleared when the connection ends."""

    __slots__ = ("connection", "due", "kind", "order", "sent")

    def __init__(self, due: float, order: int, kind: int, connection: Connection,
                 sent: float = 0.0) -> None:  # fmt: skip
        self.due = due
        self.order = order
        self.kind = kind
        self.connection: Connection | None = connection
        self.sent = sent

    def __lt__(self, other: _Entry) -> bool:
        return (self.due, self.order) < (other.due, other.order)


class Pacemaker:
    """Pings each connection every ``interval``; closes those silent ``timeout`` after one.

    :meth:`add` a connection when it starts and :meth:`remove` it when it ends;
    :meth:`run` does the rest in one task.
    """

    def __init__(self, heartbeat: Heartbeat) -> None:
        self._interval = heartbeat.interval
        self._timeout = heartbeat.timeout
        self._heap: list[_Entry] = []
        self._entries: dict[Connection, _Entry] = {}
        self._order = itertools.count()
        self._wakeup: anyio.Event | None = None
        self._clock = anyio.current_time
        """The event loop's clock, once :meth:`run` runs on it."""

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, connection: Connection) -> None:
        """Start the heartbeat of a connection: its first ping is one interval away."""
        self._schedule(self._clock() + self._interval, _PING, connection)

    def remove(self, connection: Connection) -> None:
        """Forget a connection (its pending deadline is skipped when it comes)."""
        entry = self._entries.pop(connection, None)
        if entry is not None:
            entry.connection = None

    def _schedule(self, due: float, kind: int, connection: Connection, sent: float = 0.0) -> None:
        entry = _Entry(due, next(self._order), kind, connection, sent)
        self._entries[connection] = entry
        heap = self._heap
        earliest = heap[0].due if heap else None
        heapq.heappush(heap, entry)
        if (earliest is None or due < earliest) and self._wakeup is not None:
            self._wakeup.set()  # the sleeper waits for a later deadline, or for nothing

    async def run(self) -> None:
        """Send the pings and check the answers, forever."""
        heap = self._heap
        self._clock = clock = loop_clock()
        while True:
            wakeup = self._wakeup = anyio.Event()
            if not heap:
                await wakeup.wait()
                continue
            now = clock()
            if heap[0].due > now:
                with anyio.move_on_after(heap[0].due - now):
                    await wakeup.wait()
                continue
            while heap and heap[0].due <= now:
                self._fire(heapq.heappop(heap), now)

    def _fire(self, entry: _Entry, now: float) -> None:
        connection = entry.connection
        if connection is None:
            return
        if connection.closed:
            self.remove(connection)
        elif entry.kind == _PING:
            connection.push_control(encode_ping())
            self._schedule(now + self._timeout, _CHECK, connection, sent=now)
        elif connection.last_inbound < entry.sent:
            self.remove(connection)
            reason = f"no pong within {self._timeout:g} s"
            logger.info(
                "budget_ws: connection %s closed with 4001: %s",
                connection.id,
                reason,
                extra={
                    "budget_ws_event": "heartbeat_timeout",
                    "budget_ws_connection_id": connection.id,
                    "budget_ws_close_code": int(CloseCode.HEARTBEAT_TIMEOUT),
                    "budget_ws_limit": "Heartbeat.timeout",
                    "budget_ws_limit_value": self._timeout,
                },
            )
            connection.close(CloseCode.HEARTBEAT_TIMEOUT, reason, drain=False)
        else:
            # With timeout >= interval the next ping was due already: it goes now.
            self._schedule(max(entry.sent + self._interval, now), _PING, connection)
