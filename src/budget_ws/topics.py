"""Local subscribers of each topic, bridged to the backend, with gap-free recovery."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from .backends import Backend, Position
from .connection import Connection, fan_out
from .errors import BackendError
from .metrics import Metrics
from .propagation import Tracer, publish_instant, split_context
from .protocol import encode_resync, encode_subscribed, position_frame

__all__ = ["Membership", "TopicRouter"]

logger = logging.getLogger("budget_ws.topics")


class Membership(Protocol):
    """Told whenever a connection starts or stops holding a topic (presence counts it)."""

    def joined(self, connection: Connection, topic: str) -> None: ...

    def left(self, connection: Connection, topic: str) -> None: ...


@dataclass(eq=False)
class _Topic:
    """The local subscribers of one topic on this worker."""

    connections: set[Connection] = field(default_factory=set)
    # Connections resuming from history: live frames wait here until history is sent.
    recovering: dict[Connection, list[tuple[Position, str]]] = field(default_factory=dict)
    # Connections that were sent everything up to a position by history: live messages
    # still in flight from the backend (pub/sub lags behind a history read) must not reach
    # them again. An entry goes once live delivery has passed its position.
    floors: dict[Connection, Position] = field(default_factory=dict)
    # Subscriptions under way; the topic is kept while any is.
    reserved: int = 0
    # Serialises the backend subscribe/unsubscribe of this topic.
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    subscribed: bool = False
    # A backend subscribe or unsubscribe is under way (its holder of the lock waits on
    # the backend): only then must a subscriber of a subscribed topic wait for the lock.
    changing: bool = False


class TopicRouter:
    """Keeps topic → local connections and is the backend's :class:`~budget_ws.Listener`.

    One backend subscription per topic per worker, whatever the number of local
    subscribers: the first subscriber subscribes, the last one leaving unsubscribes.
    Each event arriving from the backend is turned into a frame once and queued for every
    local subscriber without waiting.

    Args:
        backend: Where topics are subscribed and history is read.
        max_replay: Most events replayed to one resuming connection; a larger gap is not
            recovered.
        metrics: Where resyncs are counted, and whose timings say when each fan-out's
            events were published.
        tracer: Told of each fan-out, with the trace context the event carries; asked
            whether clients get that context in their frames.
    """

    def __init__(
        self,
        backend: Backend,
        max_replay: int,
        *,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        membership: Membership | None = None,
    ) -> None:
        self._backend = backend
        self._membership = membership
        self._max_replay = max_replay
        self._metrics = metrics or Metrics()
        self._tracer = tracer
        self._topics: dict[str, _Topic] = {}
        self._crowded = False

    def __len__(self) -> int:
        return len(self._topics)

    def take_crowded(self) -> bool:
        """Whether an outbox passed half full in a delivery since the last call.

        The backend calls :meth:`deliver`, so its answer cannot travel back through
        ``publish()``: the publisher asks here, and then lets the writers run.
        """
        crowded, self._crowded = self._crowded, False
        return crowded

    def connections(self, topic: str) -> tuple[Connection, ...]:
        """The local connections subscribed to ``topic``."""
        state = self._topics.get(topic)
        return tuple(state.connections) if state is not None else ()

    async def attach(
        self,
        connection: Connection,
        topic: str,
        position: Position | None,
        request_id: int | str | None = None,
    ) -> None:
        """Subscribe ``connection`` to ``topic``, resuming after ``position`` if given.

        The client gets a ``subscribed`` frame, then the missed events (when recovered),
        then live events, with none lost or repeated in between.

        Raises:
            BackendError: The backend failed to subscribe or to read history.
        """
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        state.reserved += 1
        try:
            try:
                # The topic's lock only while its backend subscription changes: taking
                # it costs a turn of the event loop, and waiting whenever it is held
                # (rather than changing) queued every connect of a busy topic behind the
                # one before in a connect storm. No unsubscribe starts while this
                # attach is reserved.
                if not state.subscribed or state.changing:
                    async with state.lock:
                        if not state.subscribed:
                            # Confirmed before history is read: every event published
                            # after this point reaches the buffer below, so none falls in
                            # between.
                            state.changing = True
                            try:
                                await self._backend.subscribe(topic, self)
                            finally:
                                state.changing = False
                            state.subscribed = True
                buffer: list[tuple[Position, str]] = []
                state.recovering[connection] = buffer
                try:
                    recovery = await self._backend.history(topic, position, self._max_replay)
                finally:
                    del state.recovering[connection]
            except Exception as exc:
                raise BackendError(f"could not subscribe to {topic!r}: {exc}") from exc
            if connection.closed:
                return
            recovered = recovery.recovered and position is not None
            top = recovery.position
            if self._context_to_clients():
                replay = [_frame_with_context(payload, topic, at) for at, payload in recovery.items]
            else:
                replay = [position_frame(payload, topic, at) for at, payload in recovery.items]
            connection.push_control(encode_subscribed(topic, top, recovered, request_id), *replay)
            sent = top
            for at, frame in buffer:
                # History already held these, or they precede the client's new position.
                if at.epoch != sent.epoch or at.offset > sent.offset:
                    connection.push(frame)
                    sent = at
            connection.topics.add(topic)
            state.connections.add(connection)
            state.floors[connection] = sent
            if self._membership is not None:
                self._membership.joined(connection, topic)
        finally:
            state.reserved -= 1
            await self._release(topic, state)

    async def detach(self, connection: Connection, topic: str) -> None:
        """Stop delivering ``topic`` to ``connection``."""
        self.drop(connection, topic)
        state = self._topics.get(topic)
        if state is not None:
            await self._release(topic, state)

    def drop(self, connection: Connection, topic: str) -> bool:
        """Stop delivering ``topic`` to ``connection`` at once, without waiting on the
        backend; :meth:`release` drops the topic's backend subscription later if it was
        the last. Returns whether the connection held the topic."""
        held = topic in connection.topics
        connection.topics.discard(topic)
        state = self._topics.get(topic)
        if state is not None:
            state.connections.discard(connection)
            state.floors.pop(connection, None)
        if held and self._membership is not None:
            self._membership.left(connection, topic)
        return held

    async def release(self, topic: str) -> None:
        """Drop ``topic``'s backend subscription if no local connection needs it."""
        state = self._topics.get(topic)
        if state is not None:
            await self._release(topic, state)

    async def _release(self, topic: str, state: _Topic) -> None:
        """Drop the backend subscription once no local connection needs the topic."""
        if state.connections or state.reserved:
            return
        async with state.lock:
            if state.connections or state.reserved:
                return
            if state.subscribed:
                # The topic stays registered while unsubscribing, so a subscriber arriving
                # meanwhile waits for the lock and subscribes again instead of racing.
                state.changing = True
                try:
                    await self._backend.unsubscribe(topic, self)
                except BackendError as exc:
                    # An outage the docs describe: one line, no traceback.
                    logger.warning(
                        "budget_ws: unsubscribing %r from the backend failed: %s",
                        topic,
                        exc,
                        extra={
                            "budget_ws_event": "unsubscribe_failed",
                            "budget_ws_topic": topic,
                            "budget_ws_error": str(exc),
                        },
                    )
                except Exception:
                    logger.exception(
                        "unsubscribing %r from the backend failed",
                        topic,
                        extra={"budget_ws_event": "unsubscribe_failed", "budget_ws_topic": topic},
                    )
                finally:
                    state.changing = False
                state.subscribed = False
            if not state.connections and not state.reserved and self._topics.get(topic) is state:
                del self._topics[topic]

    def _context_to_clients(self) -> bool:
        tracer = self._tracer
        return tracer is not None and tracer.context_to_clients

    # The Listener protocol: called by the backend, never blocks.

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        """Queue one event for every local subscriber of ``topic``.

        While timings are measured, its frames count as queued when the event was
        published, if its publisher stamped the time (see :mod:`budget_ws.propagation`):
        the publish-to-write latency then covers the backend and, for Redis, the hop to
        this worker. Without a stamp they count from this fan-out.
        """
        state = self._topics.get(topic)
        if state is None:
            return
        tracer = self._tracer
        traceparent = published = None
        if payload.endswith(b'"}'):  # carries a context: split once, for every subscriber
            payload, traceparent, published = split_context(payload)
        if self._context_to_clients():
            frame = position_frame(payload, topic, position, traceparent)
        else:
            frame = position_frame(payload, topic, position)
        metrics = self._metrics
        if metrics.delivery_latency is not None:
            metrics.queued_at = (
                time.perf_counter() if published is None else publish_instant(published)
            )
            metrics.settle()
        for buffer in state.recovering.values():
            buffer.append((position, frame))
        recipients = state.connections
        if state.floors:
            sent_already = _sent_already(state.floors, position)
            if sent_already:
                recipients = recipients - sent_already
        if fan_out(recipients, frame):
            self._crowded = True
        if tracer is not None:
            tracer.fan_out(topic, position, len(recipients), traceparent)

    def resync(self, topic: str, position: Position) -> None:
        """Tell every local subscriber of ``topic`` that events were lost."""
        state = self._topics.get(topic)
        if state is None:
            return
        self._metrics.resyncs += 1
        frame = encode_resync(topic, position)
        # Clients start over from the resync's position: every later event is new to them.
        state.floors.clear()
        for connection in state.connections:
            connection.push_control(frame)


def _frame_with_context(payload: bytes, topic: str, position: Position) -> str:
    """The frame of a stored event, with the trace context it carries for the client."""
    payload, traceparent, _ = split_context(payload)
    return position_frame(payload, topic, position, traceparent)


def _sent_already(floors: dict[Connection, Position], position: Position) -> set[Connection]:
    """The connections history already gave ``position``; forget those it has passed."""
    sent: set[Connection] = set()
    for connection, floor in list(floors.items()):
        if position.epoch == floor.epoch and position.offset <= floor.offset:
            sent.add(connection)
        else:
            del floors[connection]
    return sent
