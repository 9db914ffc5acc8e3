"""Delivery in offset order for a backend whose live messages can be lost or repeated.

A networked backend hears about events on a connection that may drop a message, repeat
one after a reconnect, or come back from a server that lost its state. Whatever the
server, the answer is the same state machine, kept here so that every such backend
shares it and it can be tested without a server:

- an event at the next offset is delivered; one at or before the last is dropped;
- a jump holds live events and fills the gap from the backend's history first, and so
  does an event announced without its payload (too large for the connection to carry);
- history that no longer covers the gap, or a new epoch, tells listeners to resync.

While a topic's position is being established (a new subscription, a reconnect), its
live events are held, then released in order behind what history filled in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from .base import Listener, Position, Recovery

__all__ = ["Sequencer"]

History = Callable[[str, Position, int], Awaitable[Recovery]]
"""Reads ``(topic, after, limit)`` from the backend's history, all or nothing."""

Fetch = Callable[[str, Position], Awaitable["bytes | None"]]
"""Reads the payload of one event announced without it; None when it is gone."""


@dataclass(eq=False)
class _Topic:
    listeners: list[Listener] = field(default_factory=list)
    # Last position delivered to the listeners; None until known.
    position: Position | None = None
    # Live events held while the position is established or a gap is filled.
    held: list[tuple[Position, bytes | None]] | None = field(default_factory=list)
    # The next fill reads an event announced without its payload: not a gap.
    fetching: bool = False


class Sequencer:
    """The topics one worker listens to, each delivered in offset order.

    Args:
        history: Reads a gap from the backend's history.
        gap_limit: The most events one fill asks history for, per topic.
        start_fill: Starts :meth:`fill_live_gap` for a topic in the background, under
            whatever supervises the connection; it may do nothing while the connection
            is being re-established, which fills every topic's gap anyway.
        logger: Where resync warnings go.
        server: The server's name in log lines (``"Redis"``).
        fetch: Reads one event announced without its payload, for a backend whose
            connection announces events too large to carry.
    """

    def __init__(
        self,
        *,
        history: History,
        gap_limit: Callable[[str], int],
        start_fill: Callable[[str], None],
        logger: logging.Logger,
        server: str,
        fetch: Fetch | None = None,
    ) -> None:
        self._history = history
        self._fetch = fetch
        self._gap_limit = gap_limit
        self._start_fill = start_fill
        self._logger = logger
        self._server = server
        self._topics: dict[str, _Topic] = {}
        self.gaps_filled = 0
        """Topics whose missed events history filled in."""
        self.events_recovered = 0
        """Events history filled gaps with."""

    # Who listens -------------------------------------------------------------------------

    def __contains__(self, topic: str) -> bool:
        return topic in self._topics

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._topics))

    def __len__(self) -> int:
        return len(self._topics)

    def add(self, topic: str, listener: Listener) -> bool:
        """Add ``listener`` to ``topic``; True when the topic is new (and now holding)."""
        state = self._topics.get(topic)
        if state is None:
            self._topics[topic] = _Topic(listeners=[listener])
            return True
        if listener not in state.listeners:
            state.listeners.append(listener)
        return False

    def remove(self, topic: str, listener: Listener) -> bool:
        """Remove ``listener``; True when that left ``topic`` without listeners (dropped)."""
        state = self._topics.get(topic)
        if state is None or listener not in state.listeners:
            return False
        state.listeners.remove(listener)
        if state.listeners:
            return False
        del self._topics[topic]
        return True

    def has(self, topic: str, listener: Listener) -> bool:
        state = self._topics.get(topic)
        return state is not None and listener in state.listeners

    def established(self, topic: str) -> bool:
        """Whether ``topic``'s position is known (its subscription is complete)."""
        state = self._topics.get(topic)
        return state is not None and state.position is not None

    # Positions ---------------------------------------------------------------------------

    def start(self, topic: str, position: Position) -> None:
        """The subscription is live and history ends at ``position``: release the held."""
        state = self._topics.get(topic)
        if state is not None:
            state.position = position
            self._release_held(topic, state)

    def hold_all(self) -> None:
        """The connection is gone: hold every topic's live events until it is filled."""
        for state in self._topics.values():
            state.fetching = False  # the reconnection fills everything from history
            if state.held is None:
                state.held = []

    def receive(self, topic: str, position: Position, payload: bytes | None) -> None:
        """A live event from the connection, in whatever order it came.

        ``payload`` is None for an event announced without it: it is read from history.
        """
        state = self._topics.get(topic)
        if state is None:
            return
        if state.held is not None:
            state.held.append((position, payload))
            return
        self._deliver(topic, state, position, payload)

    def _deliver(
        self, topic: str, state: _Topic, position: Position, payload: bytes | None
    ) -> None:
        last = state.position
        if last is not None and position.epoch == last.epoch:
            if position.offset <= last.offset:
                return
        elif last is not None:
            # Another epoch: the server lost the topic's state, nothing is recoverable.
            # Listeners resync to just before this event, then get it.
            self._log_resync(topic, "new_epoch")
            state.position = last = Position(position.offset - 1, position.epoch)
            self._notify_resync(topic, state, last)
        if payload is None or (last is not None and position.offset > last.offset + 1):
            # Lost on the way, or too large to carry: hold live events, fill from history.
            state.fetching = last is not None and position.offset == last.offset + 1
            state.held = [(position, payload)]
            self._start_fill(topic)
            return
        self._dispatch(topic, state, position, payload)

    async def fill(self, topic: str) -> int | None:
        """Deliver what history holds after the last delivered event, then the held.

        Call it under the connection's supervisor: if it fails, the reconnection fills
        the gap again, so a topic is never left holding.

        Returns:
            How many events history filled the gap with, or None when it could not and
            the listeners were told to resync.
        """
        state = self._topics.get(topic)
        if state is None:
            return 0
        if state.held is None:
            state.held = []
        after = state.position
        if after is None:
            return 0  # its subscription is establishing the position
        recovery = await self._history(topic, after, max(self._gap_limit(topic), 1))
        if self._topics.get(topic) is not state:
            return 0  # unsubscribed meanwhile
        replayed: int | None = None
        fetched, state.fetching = state.fetching, False
        if recovery.recovered:
            replayed = len(recovery.items)
            if replayed and not fetched:
                self.gaps_filled += 1
                self.events_recovered += replayed
            for position, payload in recovery.items:
                self._dispatch(topic, state, position, payload)
        else:
            state.position = recovery.position
            self._notify_resync(topic, state, recovery.position)
        self._release_held(topic, state)
        return replayed

    async def fill_live_gap(self, topic: str) -> None:
        """Fill a gap the connection left while up (a lost message), and say so.

        An event announced without its payload is read alone, then the held follow.
        """
        state = self._topics.get(topic)
        if state is None:
            return
        fetching = state.fetching
        if fetching and self._fetch is not None and state.held:
            position = state.held[0][0]
            payload = await self._fetch(topic, position)
            if self._topics.get(topic) is not state:
                return  # unsubscribed meanwhile
            if payload is not None and state.fetching:
                state.fetching = False
                state.held.pop(0)
                self._dispatch(topic, state, position, payload)
                self._release_held(topic, state)
                return
        replayed = await self.fill(topic)
        if replayed is None:
            self._log_resync(topic, "history_short")
        elif not fetching:
            self._logger.debug(
                "budget_ws: a gap in live events of %r was filled from history (%d events)",
                topic,
                replayed,
                extra={
                    "budget_ws_event": "gap_filled",
                    "budget_ws_topic": topic,
                    "budget_ws_events_recovered": replayed,
                },
            )

    def _release_held(self, topic: str, state: _Topic) -> None:
        held, state.held = state.held or [], None
        for position, payload in held:
            if state.held is not None:  # a new gap: keep holding behind it
                state.held.append((position, payload))
            else:
                self._deliver(topic, state, position, payload)

    # Listeners ---------------------------------------------------------------------------

    def _dispatch(self, topic: str, state: _Topic, position: Position, payload: bytes) -> None:
        state.position = position
        for listener in tuple(state.listeners):
            try:
                listener.deliver(topic, position, payload)
            except Exception:
                self._listener_failed(listener, topic)

    def _notify_resync(self, topic: str, state: _Topic, position: Position) -> None:
        for listener in tuple(state.listeners):
            try:
                listener.resync(topic, position)
            except Exception:
                self._listener_failed(listener, topic)

    def _listener_failed(self, listener: Listener, topic: str) -> None:
        self._logger.exception(
            "listener %r failed on topic %r",
            listener,
            topic,
            extra={"budget_ws_event": "listener_failed", "budget_ws_topic": topic},
        )

    def _log_resync(self, topic: str, cause: str) -> None:
        """One WARNING line: the server lost what a topic's subscribers needed."""
        self._logger.warning(
            "budget_ws: subscribers of %r told to resync: %s",
            topic,
            f"{self._server} started the topic over (new epoch)"
            if cause == "new_epoch"
            else "the gap in live events is no longer in history",
            extra={
                "budget_ws_event": "topic_resync",
                "budget_ws_topic": topic,
                "budget_ws_cause": cause,
            },
        )
