"""One client's WebSocket: its transport, outbox and writer task."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, cast, runtime_checkable

import anyio

from ._runtime import current_async_library
from .errors import ConnectionClosed
from .flush import Flusher
from .limits import Limits, OutboxLimits, RateLimiter
from .metrics import Histogram, Metrics
from .outbox import Outbox, TimedOutbox
from .protocol import (
    ClientFrame,
    CloseCode,
    ErrorCode,
    Ping,
    Pong,
    ProtocolViolation,
    close_reason,
    decode_client_frame,
    encode_error,
    encode_pong,
    excerpt,
)
from .wire import text_frame

__all__ = ["Connection", "DirectTransport", "Transport", "fan_out"]

logger = logging.getLogger("budget_ws.connection")
"""Lines about one client's connection; the table is in ``docs/reference/logging.md``."""

_PRINCIPAL_CHARS = 80
"""Characters of a principal's ``repr`` at most in a log line."""

CLOSE_TIMEOUT = 5.0
"""Seconds allowed for the closing handshake before the transport is abandoned."""


@runtime_checkable
class Transport(Protocol):
    """What a web framework's WebSocket must offer; adapters implement it.

    The WebSocket is already accepted when the manager gets its transport.
    """

    async def send_text(self, text: str) -> None:
        """Send one text message; may wait while the client's socket is full."""

    async def receive(self) -> str | bytes:
        """Wait for the next message from the client.

        Raises:
            ConnectionClosed: The client disconnected.
        """

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with ``code`` and ``reason``."""


@runtime_checkable
class DirectTransport(Transport, Protocol):
    """A transport that writes framed messages itself, at once (the native server's).

    Its connections write from one callback per loop turn (:mod:`budget_ws.flush`)
    while its socket keeps up, and from their writer task while it does not.
    """

    def write_now(self, wire: bytes) -> bool:
        """Write one framed message (:func:`budget_ws.wire.text_frame`) without waiting.

        Returns:
            Whether the transport keeps up: False once what waits in its buffer passed
            its high-water mark; the writer task then takes over and waits for
            :meth:`drained` before the next message.

        Raises:
            ConnectionClosed: The WebSocket is closing or closed; nothing was written.
        """

    async def drained(self) -> None:
        """Wait until the transport's buffer is below its low-water mark again.

        Raises:
            ConnectionClosed: The connection was lost meanwhile.
        """


FrameHandler = Callable[["Connection", ClientFrame], Awaitable[None]]


class _DirectWriter:
    """The writer of a :class:`DirectTransport`'s connection: no task while its socket
    keeps up.

    It is the outbox's waker: a frame queued while it is parked marks it, and the
    flusher's callback writes the outbox's message with :meth:`DirectTransport.write_now`,
    then parks it again. A connection whose client keeps up thus needs no writer task
    at all, which saves a task and its frame on every connect and on every idle
    connection. When the socket falls behind (or more is queued than one message holds),
    a task takes over: it waits for the socket to drain, writes until the outbox is
    empty, and parks the writer again, so what a client does not read waits in its
    outbox, bounded, and no more than the transport's high-water mark and one message
    in the transport's buffer.
    """

    __slots__ = (
        "connection",
        "flusher",
        "metrics",
        "outbox",
        "stopped",
        "task",
        "timed",
        "transport",
        "write_now",
    )

    def __init__(self, connection: Connection, transport: DirectTransport) -> None:
        self.connection = connection
        self.flusher = Flusher.of_running_loop()
        self.outbox = outbox = connection._outbox
        self.metrics = metrics = connection._metrics
        self.transport = transport
        self.write_now = transport.write_now
        self.timed = isinstance(outbox, TimedOutbox) and metrics.timed
        self.task: asyncio.Task[None] | None = None
        """The task writing while the socket is behind; None while parked."""
        self.stopped = False

    def start(self) -> None:
        """Write what is queued already (the welcome), at once, and park."""
        self._write({})

    def stop(self) -> asyncio.Task[None] | None:
        """Write no more; returns the task still writing, for the caller to cancel."""
        self.stopped = True
        return self.task

    def set(self) -> None:
        self.flusher.mark(self)

    def flush(self, wires: dict[str, bytes]) -> None:
        """Write the outbox's next message; ``wires`` holds this turn's framed one-event
        messages by their text, since an event's frame is the same for each subscriber."""
        if self.task is None and not self.stopped:
            self._write(wires)

    def _write(self, wires: dict[str, bytes]) -> None:
        outbox = self.outbox
        item = outbox.take_message()
        if item is None:
            if not outbox.park(self):  # empty, so finished: the connection ends
                self._end()
            return
        message, count = item
        if count == 1:
            wire = wires.get(message)
            if wire is None:
                wire = wires[message] = text_frame(message)
        else:
            wire = text_frame(message)
        since = outbox.since if self.timed else 0.0  # type: ignore[attr-defined]
        try:
            keeping_up = self.write_now(wire)
        except Exception as exc:
            self.connection._send_failed(exc)
            self._end()
            return
        self.metrics.delivered += count
        if self.timed:
            self.record(message, count, since)
        if not (keeping_up and outbox.park(self)):
            self.task = asyncio.get_running_loop().create_task(self._catch_up())

    def _end(self) -> None:
        self.stopped = True
        self.connection._cancel()

    async def _catch_up(self) -> None:
        """Write while the socket is behind, until the outbox is empty; then park."""
        outbox = self.outbox
        transport = self.transport
        try:
            # What the last write_now left in the transport's buffer goes first.
            await transport.drained()
            while True:
                item = outbox.take_message()
                if item is None:
                    if outbox.park(self):  # caught up
                        self.task = None
                        return
                    break  # finished: the connection ends
                message, count = item
                del item
                since = outbox.since if self.timed else 0.0  # type: ignore[attr-defined]
                await transport.send_text(message)
                self.metrics.delivered += count
                if self.timed:
                    self.record(message, count, since)
                del message
        except Exception as exc:
            self.connection._send_failed(exc)
        self._end()

    def record(self, message: str, count: int, since: float) -> None:
        """Record a written message, as the timed write loop does."""
        outbox = self.outbox
        assert isinstance(outbox, TimedOutbox)
        latency, fill = self.metrics.delivery_latency, self.metrics.outbox_fill
        assert latency is not None
        assert fill is not None
        if outbox.urgent_taken:
            outbox.urgent_taken = False
        elif count == 1:
            latency.pending.append(time.perf_counter() - since)
        else:
            fill.pending.append(len(message) - count + 1 + outbox.size)
            latency.weighted.append((time.perf_counter() - since, count))


class Connection:
    """A client connected to a :class:`~budget_ws.ConnectionManager`.

    Created by the manager for each transport it serves; application code receives it in
    hooks and handlers and may call :meth:`close`, or pass it to the manager's ``send``,
    ``subscribe`` and ``unsubscribe``.
    """

    __slots__ = (
        "__weakref__",
        "_cancel_scope",
        "_clock",
        "_close_code",
        "_close_reason",
        "_finished",
        "_finished_event",
        "_half_full",
        "_last_inbound",
        "_limits",
        "_metrics",
        "_outbox",
        "_peer_closed",
        "id",
        "principal",
        "state",
        "topics",
        "transport",
        "user",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        principal: Any = None,
        connection_id: str | None = None,
        limits: Limits,
        outbox_limits: OutboxLimits,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.id: str = connection_id or os.urandom(16).hex()
        """Identifier of the connection, unique within the process."""
        self.principal: Any = principal
        """Who is connected, as returned by the app's ``authenticate`` hook."""
        self.user: str | None = None
        """The id of the connection's user, from the manager's ``identify`` hook; None for
        an anonymous connection."""
        self.state: dict[str, Any] = {}
        """Free space for the application's own per-connection data."""
        self.transport = transport
        self.topics: set[str] = set()
        """Topics this connection is subscribed to (read-only for applications)."""
        self._limits = limits
        self._clock = clock
        """The event loop's clock (its manager's): ``anyio.current_time``, read faster."""
        self._metrics = metrics = metrics or Metrics()
        self._outbox = (
            TimedOutbox(outbox_limits, metrics) if metrics.timed else Outbox(outbox_limits)
        )
        self._half_full = outbox_limits.max_messages // 2
        self._cancel_scope: anyio.CancelScope | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._peer_closed = False
        self._last_inbound = 0.0
        self._finished = False
        self._finished_event: anyio.Event | None = None  # only for wait_closed()

    def __repr__(self) -> str:
        return f"<Connection {self.id} principal={self.principal!r} topics={len(self.topics)}>"

    @property
    def closed(self) -> bool:
        """Whether the connection has finished or is closing."""
        return self._close_code is not None or self._finished

    @property
    def close_code(self) -> int | None:
        """The code the connection was (or is being) closed with; None while open."""
        return self._close_code

    @property
    def last_inbound(self) -> float:
        """``anyio.current_time()`` of the client's latest frame (0 before any)."""
        return self._last_inbound

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the outbox."""
        return len(self._outbox)

    @property
    def dropped_frames(self) -> int:
        """Frames the drop-oldest policy discarded on this connection."""
        return self._outbox.dropped

    @property
    def queued_bytes(self) -> int:
        """Size of the frames waiting in the outbox."""
        return self._outbox.size

    def push(self, frame: str) -> bool:
        """Queue an encoded frame for this client without waiting.

        When the outbox is full, the slow-consumer policy applies: by default the
        connection is closed with 4000 so the client reconnects and recovers.

        Returns:
            True when the outbox is past half full: whoever queues a burst should let the
            writer run before the next frame, so a burst larger than an outbox is not
            mistaken for a slow consumer.
        """
        if self._close_code is not None:
            return False
        metrics = self._metrics
        if metrics.delivery_latency is not None:  # timed: this frame is queued now
            metrics.queued_at = time.perf_counter()
            metrics.settle()
        outbox = self._outbox
        if not outbox.put(frame):
            self._overflowed()
            return False
        return len(outbox) > self._half_full

    def _overflowed(self) -> None:
        self._slow_consumer("events", "slow consumer: outbox full; reconnect and resume")

    def push_control(self, *frames: str) -> None:
        """Queue control frames (or a replay) ahead of events, never to be dropped.

        A client that lets them pile up beyond the outbox's bounds is closed with 4000.
        """
        if self._close_code is not None:
            return
        if not self._outbox.put_urgent(frames):
            self._slow_consumer("control", "slow consumer: control frames piled up")

    def reject(
        self,
        code: ErrorCode,
        message: str,
        request_id: int | str | None = None,
        *,
        topic: str | None = None,
        details: list[dict[str, object]] | None = None,
    ) -> None:
        """Answer a client frame with an ``error`` frame (the connection stays open), and
        count it in the manager's metrics by its code."""
        self._metrics.frames_rejected[code.value] += 1
        self.push_control(encode_error(code, message, request_id, topic=topic, details=details))

    def _slow_consumer(self, queue: str, reason: str) -> None:
        self._metrics.slow_consumers += 1
        outbox = self._outbox
        logger.warning(
            "budget_ws: slow consumer: connection %s closed with 4000, %d frames (%d bytes) "
            "waiting in its %s queue",
            self.id,
            len(outbox),
            outbox.size,
            queue,
            extra={
                "budget_ws_event": "slow_consumer",
                "budget_ws_connection_id": self.id,
                "budget_ws_close_code": int(CloseCode.SLOW_CONSUMER),
                "budget_ws_queue": queue,
                "budget_ws_queued_frames": len(outbox),
                "budget_ws_queued_bytes": outbox.size,
            },
        )
        self.close(CloseCode.SLOW_CONSUMER, reason, drain=False)

    def _over_limit(
        self, code: CloseCode, reason: str, event: str, limit: str, value: float, **fields: Any
    ) -> None:
        """Close for a limit the client broke: an expected condition, one INFO line."""
        logger.info(
            "budget_ws: connection %s closed with %d: %s",
            self.id,
            code,
            reason,
            extra={
                "budget_ws_event": event,
                "budget_ws_connection_id": self.id,
                "budget_ws_close_code": int(code),
                "budget_ws_limit": limit,
                "budget_ws_limit_value": value,
                **fields,
            },
        )
        self.close(code, reason, drain=False)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, drain: bool = True) -> None:
        """Close the connection without waiting.

        Args:
            code: The WebSocket close code.
            reason: Why, for the client; cut to the 123 bytes a close frame holds.
            drain: Write the frames already queued before closing; otherwise drop them.
        """
        if self._close_code is None:
            self._close_code = int(code)
            self._close_reason = close_reason(reason)
        if drain:
            self._outbox.finish()
        else:
            self._outbox.clear()
            self._outbox.finish()
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()

    async def wait_closed(self) -> None:
        """Wait until the connection has completely finished."""
        if self._finished:
            return
        if self._finished_event is None:
            self._finished_event = anyio.Event()
        await self._finished_event.wait()

    async def run(self, handle_frame: FrameHandler) -> None:
        """Serve the connection until the client leaves or it is closed.

        Reads and checks client frames (size, rate, syntax), passes valid ones to
        ``handle_frame``, and runs the writer beside it. Never raises
        because of what the client did.
        """
        opened = self._clock()
        if logger.isEnabledFor(logging.DEBUG):
            principal = _principal(self.principal)
            logger.debug(
                "budget_ws: connection %s opened, principal %s",
                self.id,
                principal,
                extra={
                    "budget_ws_event": "connection_opened",
                    "budget_ws_connection_id": self.id,
                    "budget_ws_principal": principal,
                    "budget_ws_topics": len(self.topics),
                },
            )
        try:
            if current_async_library() == "asyncio":
                await self._run_on_asyncio(handle_frame)
            else:
                async with anyio.create_task_group() as task_group:
                    self._cancel_scope = task_group.cancel_scope
                    if self._close_code is not None and not len(self._outbox):
                        task_group.cancel_scope.cancel()
                    task_group.start_soon(self._writer)
                    await self._read_loop(handle_frame)
                    task_group.cancel_scope.cancel()
        finally:
            if self._close_code is None:
                if self._peer_closed:
                    self._close_code = CloseCode.GOING_AWAY
                else:
                    # Nobody chose to close: the task was cancelled from outside (a server
                    # going down without a graceful shutdown). A 1000 would tell the
                    # client never to come back; this tells it to reconnect and resume.
                    self._close_code = CloseCode.SERVICE_RESTART
                    self._close_reason = "connection ended by the server"
            try:
                if not self._peer_closed:
                    with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        await self.transport.close(self._close_code, self._close_reason)
            except Exception:  # the socket may already be broken; nothing left to tell
                logger.debug(
                    "closing connection %s failed",
                    self.id,
                    exc_info=True,
                    extra={"budget_ws_event": "close_failed", "budget_ws_connection_id": self.id},
                )
            finally:
                metrics = self._metrics
                metrics.closes[self._close_code] += 1
                # Handed over: the manager's stats() counts this connection's drops while
                # it is being served and the metrics' once it has ended, never both.
                metrics.dropped += self._outbox.dropped
                self._outbox.dropped = 0
                self._outbox.clear()
                if logger.isEnabledFor(logging.DEBUG):
                    self._log_closed(self._clock() - opened)
                self._finished = True
                if self._finished_event is not None:
                    self._finished_event.set()

    def _log_closed(self, duration: float) -> None:
        closed_by = "client" if self._peer_closed else "server"
        logger.debug(
            "budget_ws: connection %s closed by the %s with %s %r after %.1f s",
            self.id,
            closed_by,
            self._close_code,
            self._close_reason,
            duration,
            extra={
                "budget_ws_event": "connection_closed",
                "budget_ws_connection_id": self.id,
                "budget_ws_principal": _principal(self.principal),
                "budget_ws_close_code": self._close_code,
                "budget_ws_close_reason": self._close_reason,
                "budget_ws_closed_by": closed_by,
                "budget_ws_topics": len(self.topics),
                "budget_ws_duration": round(duration, 3),
            },
        )

    def _cancel(self) -> None:
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def _run_on_asyncio(self, handle_frame: FrameHandler) -> None:
        # What the task group above does, for less memory: an anyio task group and the
        # task it spawns cost ~1.9 KiB more per connection than a cancel scope for the
        # reader and a bare asyncio task for the writer, which is cancelled and awaited
        # here whatever happens, so it never outlives the connection. A DirectTransport's
        # writer needs a task only while its socket is behind.
        scope = self._cancel_scope = anyio.CancelScope()
        if self._close_code is not None and not len(self._outbox):
            scope.cancel()
        direct = _direct(self.transport)
        writer: _DirectWriter | None = None
        task: asyncio.Task[None] | None = None
        if direct is None:
            task = asyncio.get_running_loop().create_task(self._writer())
        else:
            writer = _DirectWriter(self, direct)
            writer.start()
        try:
            with scope:
                await self._read_loop(handle_frame)
        finally:
            if writer is not None:
                task = writer.stop()
            if task is not None:
                task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait((task,))

    def _writer(self) -> Coroutine[Any, Any, None]:
        """The writer task's loop: timed or not, chosen once rather than per message (a
        coroutine awaiting another costs a frame more at every wakeup)."""
        outbox = self._outbox
        metrics = self._metrics
        latency, fill = metrics.delivery_latency, metrics.outbox_fill
        if isinstance(outbox, TimedOutbox) and latency is not None and fill is not None:
            return self._timed_write_loop(outbox, latency, fill)
        return self._write_loop()

    async def _write_loop(self) -> None:
        outbox = self._outbox
        metrics = self._metrics
        transport = self.transport
        try:
            while True:
                item = await outbox.get_message()
                if item is None:
                    break
                message, count = item
                del item  # an idle writer must not pin its last batch
                await transport.send_text(message)
                del message
                metrics.delivered += count
        except Exception as exc:
            self._send_failed(exc)
        self._cancel()

    async def _timed_write_loop(
        self, outbox: TimedOutbox, latency: Histogram, fill: Histogram
    ) -> None:
        """The write loop, also recording each message's wait, and the outbox's fill when
        a backlog formed.

        Records by appending to the histograms' pending lists, counted later in one sorted
        pass (:meth:`Histogram.flush <budget_ws.metrics.Histogram.flush>`): a bisection per
        message would cost more than the rest of the timing. A message of one frame leaves
        the fill unrecorded: in a steady stream every message is one, and recording each
        would report what the frame sizes say. Control frames and replays are neither
        timed nor a backlog, so every value recorded here follows a fan-out or a push,
        which settle the histograms: what waits uncounted stays bounded.
        """
        transport = self.transport
        metrics = self._metrics
        clock = time.perf_counter
        waited, waited_times = latency.pending.append, latency.weighted.append
        filled = fill.pending.append
        try:
            while True:
                item = await outbox.get_message()
                if item is None:
                    break
                message, count = item
                del item
                since = outbox.since  # before another frame is queued
                if outbox.urgent_taken:  # control frames and replays: neither timed
                    outbox.urgent_taken = False
                    await transport.send_text(message)
                elif count == 1:
                    await transport.send_text(message)
                    waited(clock() - since)
                else:  # a backlog: what waited is this message and what is left
                    filled(len(message) - count + 1 + outbox.size)
                    await transport.send_text(message)
                    waited_times((clock() - since, count))
                del message
                metrics.delivered += count
        except Exception as exc:
            self._send_failed(exc)
        self._cancel()

    def _send_failed(self, exc: Exception) -> None:
        if not isinstance(exc, ConnectionClosed):
            logger.warning(
                "sending to connection %s failed",
                self.id,
                exc_info=exc,
                extra={"budget_ws_event": "send_failed", "budget_ws_connection_id": self.id},
            )
        self._peer_closed = True

    async def _read_loop(self, handle_frame: FrameHandler) -> None:
        limits = self._limits
        max_frame = limits.max_frame_bytes
        clock = self._clock
        started = clock()
        rate = RateLimiter(limits.max_messages_per_second, limits.message_burst, started)
        byte_rate = RateLimiter(limits.max_bytes_per_second, limits.byte_burst, started)
        transport = self.transport
        while True:
            try:
                raw = await transport.receive()
            except ConnectionClosed as closed:
                self._peer_closed = True
                if self._close_code is None and closed.code is not None:
                    self._close_code = closed.code
                    self._close_reason = closed.reason
                return
            now = clock()
            self._last_inbound = now
            size = _size(raw, max_frame)
            if size > max_frame:
                self._over_limit(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"frame larger than {max_frame} bytes",
                    "frame_too_big",
                    "Limits.max_frame_bytes",
                    max_frame,
                    budget_ws_frame_bytes=size,
                )
                return
            if not rate.allow(now):
                self._over_limit(
                    CloseCode.RATE_LIMITED,
                    f"more than {limits.max_messages_per_second:g} frames per second",
                    "rate_limited",
                    "Limits.max_messages_per_second",
                    limits.max_messages_per_second,
                )
                return
            if not byte_rate.allow(now, size):
                self._over_limit(
                    CloseCode.RATE_LIMITED,
                    f"more than {limits.max_bytes_per_second:g} bytes per second",
                    "rate_limited",
                    "Limits.max_bytes_per_second",
                    limits.max_bytes_per_second,
                )
                return
            try:
                frame = decode_client_frame(raw)
            except ProtocolViolation as exc:
                self.reject(exc.code, exc.message, exc.id)
                continue
            if isinstance(frame, Pong):
                continue
            if isinstance(frame, Ping):
                self.push_control(encode_pong())
                continue
            try:
                await handle_frame(self, frame)
            except Exception:
                # A bug on the server side must not escape into the web framework.
                logger.exception(
                    "handling a frame of connection %s failed",
                    self.id,
                    extra={
                        "budget_ws_event": "frame_handling_failed",
                        "budget_ws_connection_id": self.id,
                    },
                )
                self.close(CloseCode.INTERNAL_ERROR, "internal error", drain=False)
                return
            del raw, frame  # an idle reader must not pin the client's last frame


def _principal(principal: Any) -> str:
    """The principal's ``repr`` for a log line, cut short; never one that raises."""
    try:
        text = repr(principal)
    except Exception:
        text = f"<{type(principal).__name__} without a repr>"
    return excerpt(text, _PRINCIPAL_CHARS)


def _size(raw: str | bytes, limit: int) -> int:
    # A str of n characters encodes to at most 4n bytes: encode only when it could matter.
    if isinstance(raw, str) and len(raw) * 4 > limit:
        return len(raw.encode("utf-8", "surrogatepass"))  # lone surrogates count too
    return len(raw)


def _direct(transport: Transport) -> DirectTransport | None:
    """``transport`` if it is a :class:`DirectTransport`: what ``isinstance`` says, for a
    fraction of its cost on a protocol class (~14 µs a connection on Python 3.11)."""
    if callable(getattr(transport, "write_now", None)) and callable(
        getattr(transport, "drained", None)
    ):
        return cast(DirectTransport, transport)
    return None


def fan_out(connections: Iterable[Connection], frame: str) -> bool:
    """Queue one frame for many connections without waiting: the hot path of a publish.

    What :meth:`Connection.push` does for each connection, with the outbox's fast
    :meth:`~budget_ws.outbox.Outbox.offer`, since it runs once per subscriber per event;
    a full outbox takes the slow path (the slow-consumer policy).

    Returns:
        True when an outbox is past half full: the publisher should let writers run.
    """
    size = len(frame)
    crowded = False
    for connection in connections:
        if connection._close_code is not None:
            continue
        queued = connection._outbox.offer(frame, size)
        if not queued:
            crowded = connection.push(frame) or crowded
        elif queued > connection._half_full:
            crowded = True
    return crowded
