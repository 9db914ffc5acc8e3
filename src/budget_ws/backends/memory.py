"""The in-memory backend: one process, no server, history kept in RAM."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from types import TracebackType

import anyio.lowlevel
from typing_extensions import Self

from ._options import is_seconds, refuse
from ._signals import SignalListeners
from .base import Listener, Position, PresenceRow, PresenceSnapshot, Recovery

__all__ = ["MemoryBackend"]

logger = logging.getLogger("budget_ws.backend.memory")


class _Topic:
    __slots__ = ("entries", "epoch", "listeners", "offset")

    def __init__(self, history_size: int) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        # (offset, published at, payload); offsets are contiguous, oldest first.
        self.entries: deque[tuple[int, float, bytes]] = deque(maxlen=history_size)
        self.listeners: list[Listener] = []


class MemoryBackend:
    """Delivers events inside one process and keeps each topic's recent history.

    The default backend (``memory://``): right for a single worker, for tests and for
    development. Every event is delivered to subscribers before :meth:`publish` returns,
    so history order is delivery order. History is lost when the process exits; topics get
    a new epoch then, and reconnecting clients are told to resync.

    Args:
        history_size: Events kept per topic for recovery.
        history_ttl: Seconds an event stays recoverable.
        clock: Source of time for expiry, in seconds (for tests).
    """

    in_process = True
    """Delivers inside :meth:`publish`, in this process: there is no round trip to trace."""

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(history_size, int) or history_size < 0:
            raise refuse("MemoryBackend", "history_size", history_size, "a whole number >= 0")
        if not is_seconds(history_ttl):
            raise refuse("MemoryBackend", "history_ttl", history_ttl, "a number of seconds > 0")
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._clock = clock
        self._topics: dict[str, _Topic] = {}
        self._last_sweep = clock()
        self._signal_listeners = SignalListeners(logger)
        # topic -> (worker, user) -> row; worker -> (alive until, seq of its last write)
        self._presence: dict[str, dict[tuple[str, str], PresenceRow]] = {}
        self._workers: dict[str, tuple[float, int]] = {}

    def __repr__(self) -> str:
        return f"MemoryBackend(history_size={self.history_size}, history_ttl={self.history_ttl})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Forget every listener; history stays until the object is gone."""
        for state in self._topics.values():
            state.listeners.clear()
        self._signal_listeners.clear()

    def status(self) -> dict[str, object]:
        """What ``ConnectionManager.stats()`` reports of this backend."""
        return {"connected": True, "topics": len(self._topics)}

    def _topic(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(self.history_size)
        return state

    def _expire(self, state: _Topic, now: float) -> None:
        entries = state.entries
        deadline = now - self.history_ttl
        while entries and entries[0][1] < deadline:
            entries.popleft()

    def _sweep(self, now: float) -> None:
        # Forget topics that hold nothing recoverable and have no listener, so a process
        # that touches many short-lived topics does not grow without bound.
        if now - self._last_sweep < self.history_ttl:
            return
        self._last_sweep = now
        for name, state in list(self._topics.items()):
            self._expire(state, now)
            if not state.entries and not state.listeners:
                del self._topics[name]

    async def publish(self, topic: str, payload: bytes) -> Position:
        """Append to history and deliver to every listener before returning.

        Does not yield to the event loop (only checks for cancellation): the events of a
        burst queue up and each connection writes them in one message. The manager yields
        when outboxes fill up.
        """
        now = self._clock()
        self._sweep(now)
        state = self._topic(topic)
        self._expire(state, now)
        state.offset += 1
        position = Position(state.offset, state.epoch)
        if self.history_size:
            state.entries.append((state.offset, now, payload))
        for listener in tuple(state.listeners):
            try:
                listener.deliver(topic, position, payload)
            except Exception:  # one broken listener must not stop the others
                logger.exception(
                    "listener %r failed on topic %r",
                    listener,
                    topic,
                    extra={"budget_ws_event": "listener_failed", "budget_ws_topic": topic},
                )
        await anyio.lowlevel.checkpoint_if_cancelled()
        return position

    async def subscribe(self, topic: str, listener: Listener) -> None:
        """Add a listener; confirmed at once, since delivery is in-process."""
        state = self._topic(topic)
        if listener not in state.listeners:
            state.listeners.append(listener)

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        """Remove a listener; unknown pairs are ignored."""
        state = self._topics.get(topic)
        if state is not None and listener in state.listeners:
            state.listeners.remove(listener)

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        """Return every event after ``after``, or nothing if any of them is gone."""
        state = self._topic(topic)
        self._expire(state, self._clock())
        top = Position(state.offset, state.epoch)
        if after is None or after.epoch != state.epoch or after.offset > state.offset:
            return Recovery(False, top)
        missing = state.offset - after.offset
        if missing == 0:
            return Recovery(True, top)
        entries = state.entries
        if missing > limit or not entries or entries[0][0] > after.offset + 1:
            return Recovery(False, top)
        start = after.offset + 1 - entries[0][0]
        items = [
            (Position(offset, state.epoch), payload)
            for offset, _, payload in itertools.islice(entries, start, None)
        ]
        return Recovery(True, top, items)

    # Signals and presence (SignalBackend, PresenceBackend) -----------------------------

    async def signal(self, payload: bytes) -> None:
        """Hand ``payload`` to every signal listener before returning."""
        self._signal_listeners.hand_out(payload)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def listen_signals(self, listener: Callable[[bytes], None]) -> None:
        """Add a signal listener; confirmed at once."""
        self._signal_listeners.add(listener)

    def _sweep_workers(self, now: float) -> None:
        dead = {worker for worker, (until, _) in self._workers.items() if until <= now}
        for worker in dead:
            del self._workers[worker]
        self._drop_rows(dead)

    def _drop_rows(self, workers: Collection[str]) -> None:
        """Delete every row of ``workers``, and the topics left without rows."""
        if not workers:
            return
        for topic, stored in list(self._presence.items()):
            for key in [key for key in stored if key[0] in workers]:
                del stored[key]
            if not stored:
                del self._presence[topic]

    async def presence_write(
        self, worker: str, seq: int, ttl: float, rows: Sequence[PresenceRow], *, replace: bool
    ) -> bool:
        """Store ``worker``'s rows; see :class:`~budget_ws.backends.PresenceBackend`."""
        now = self._clock()
        known = worker in self._workers and self._workers[worker][0] > now
        self._sweep_workers(now)
        if replace:
            self._drop_rows((worker,))
        for row in rows:
            stored = self._presence.setdefault(row.topic, {})
            if row.connections > 0:
                stored[(worker, row.user)] = row
            else:
                stored.pop((worker, row.user), None)
                if not stored:
                    del self._presence[row.topic]
        self._workers[worker] = (now + ttl, seq)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return known

    async def presence_read(self, topic: str) -> PresenceSnapshot:
        """The rows of ``topic`` from live workers."""
        now = self._clock()
        alive = {worker: seq for worker, (until, seq) in self._workers.items() if until > now}
        rows = [row for row in self._presence.get(topic, {}).values() if row.worker in alive]
        await anyio.lowlevel.checkpoint_if_cancelled()
        return PresenceSnapshot(rows, alive)

    async def presence_forget(self, worker: str) -> None:
        """Delete every row of ``worker``."""
        self._workers.pop(worker, None)
        self._drop_rows((worker,))
        await anyio.lowlevel.checkpoint_if_cancelled()
