"""The bounded send queue of one connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

import anyio

from ._runtime import current_async_library
from .limits import OutboxLimits, SlowConsumerPolicy
from .metrics import Metrics
from .protocol import FRAME_SEPARATOR

__all__ = ["Outbox", "TimedOutbox", "Waker"]


class _Future(asyncio.Future[None]):
    """An asyncio future with the ``set()`` and ``wait()`` of an event."""

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)

    def set(self) -> None:
        if not self.done():
            self.set_result(None)

    def wait(self) -> _Future:
        # The future itself, not a coroutine around it: one frame less per idle writer.
        return self


class Waker(Protocol):
    """What the outbox calls when a frame arrives for a writer that is not waiting in it."""

    def set(self) -> None: ...


_Sleeper = anyio.Event | _Future
_Waiter = _Sleeper | Waker


class Outbox:
    """Frames waiting to be written to one client, bounded by count and by size.

    Producers call :meth:`put`, which never waits: that is what keeps one slow client from
    delaying the publisher and every other client. One writer task takes batches with
    :meth:`get_message`. Sizes are counted in characters of the JSON text, which equals
    bytes for ASCII payloads.

    Control frames and replays of missed events go to a separate, urgent queue
    (:meth:`put_urgent`) that is written first and never dropped: a ``subscribed`` answer
    must not be lost to the drop-oldest policy, and a client resuming after an overflow
    must get its replay even though it is as large as the outbox that overflowed. It is
    bounded too, by count and by size, since a client provokes its frames (answers,
    errors) and may never read them.
    """

    __slots__ = (
        "_finished",
        "_frames",
        "_limits",
        "_loop",
        "_max_bytes",
        "_max_messages",
        "_size",
        "_urgent",
        "_urgent_limit",
        "_urgent_size",
        "_wakeup",
        "dropped",
    )

    def __init__(self, limits: OutboxLimits) -> None:
        self._limits = limits
        # Lists, not deques: an empty list costs ~70 bytes where a deque costs ~760, and
        # most connections are idle most of the time. The list lives as long as the
        # outbox (no new object per batch for the garbage collector to track); the
        # urgent one exists only while it holds frames.
        self._frames: list[str] = []
        self._urgent: list[str] | None = None
        # Replays are bounded by max_replay; the rest leaves room for control frames.
        self._urgent_limit = limits.max_replay + limits.max_messages
        self._urgent_size = 0
        self._max_messages = limits.max_messages
        self._max_bytes = limits.max_bytes
        self._size = 0
        self._wakeup: _Waiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False
        self.dropped = 0
        """Frames discarded by the drop-oldest policy."""

    def __len__(self) -> int:
        urgent = self._urgent
        return len(self._frames) + (len(urgent) if urgent else 0)

    @property
    def size(self) -> int:
        """Characters of JSON currently queued (urgent frames included)."""
        return self._size + self._urgent_size

    def put_urgent(self, frames: Iterable[str]) -> bool:
        """Queue frames ahead of the event frames; they are never dropped.

        Returns:
            False when the urgent queue is over its bound, in frames (``max_replay`` +
            ``max_messages``) or in size (``max_bytes``, except for what is put into an
            empty queue at once, such as one large replay): the client asks and never
            reads the answers, and the caller closes the connection.
        """
        urgent = self._urgent
        if urgent is None:
            urgent = self._urgent = []
        was_empty = not urgent
        before = len(urgent)
        urgent.extend(frames)
        self._urgent_size += sum(map(len, urgent[before:]))
        self._wake()
        if len(urgent) > self._urgent_limit:
            return False
        return was_empty or self._urgent_size <= self._max_bytes

    def offer(self, frame: str, size: int) -> int:
        """Queue ``frame`` (``size`` characters) if it fits, without waiting.

        The hot path of every delivery, once per subscriber per event: plain attributes,
        no helper calls, and no policy.

        Returns:
            The number of event frames queued now, or 0 when the frame does not fit: the
            caller then applies the slow-consumer policy with :meth:`put`.
        """
        frames = self._frames
        queued = len(frames)
        if queued >= self._max_messages or self._size + size > self._max_bytes:
            return 0
        frames.append(frame)
        self._size += size
        wakeup = self._wakeup
        if wakeup is not None:  # wake the writer once per batch, not once per frame
            self._wakeup = None
            wakeup.set()
        return queued + 1

    def put(self, frame: str) -> bool:
        """Queue one frame without waiting, applying the slow-consumer policy.

        Returns:
            False when the frame does not fit and the policy is to disconnect; the caller
            then closes the connection. With the drop-oldest policy, older frames make room
            and this returns True.
        """
        size = len(frame)
        if self.offer(frame, size):
            return True
        if self._limits.policy is SlowConsumerPolicy.DISCONNECT:
            return False
        self._drop_oldest(size)
        if size > self._max_bytes:
            self.dropped += 1
            return True
        self._append(frame, size)
        self._wake()
        return True

    def _append(self, frame: str, size: int) -> None:
        self._frames.append(frame)
        self._size += size

    def _wake(self) -> None:
        # Wake the writer once per batch, not once per frame.
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def _drop_oldest(self, room: int) -> None:
        frames = self._frames
        queued = len(frames)
        size = self._size
        drop = 0
        while drop < queued and (
            queued - drop >= self._max_messages or size + room > self._max_bytes
        ):
            size -= len(frames[drop])
            drop += 1
        del frames[:drop]
        self._size = size
        self.dropped += drop

    def finish(self) -> None:
        """No more frames will be put; :meth:`get_message` returns ``None`` once empty."""
        self._finished = True
        self._wake()

    def clear(self) -> None:
        """Discard every queued frame."""
        self._frames.clear()
        self._urgent = None
        self._urgent_size = 0
        self._size = 0

    def _waiter(self) -> _Sleeper:
        # The writer waits once per batch, so this is on every delivery's path: on asyncio a
        # bare future of the running loop costs a fraction of an anyio.Event (whose
        # constructor looks up the async library every time). Cancellation still works:
        # anyio cancels asyncio tasks with Task.cancel(), which cancels the future.
        loop = self._loop
        if loop is None:
            if current_async_library() != "asyncio":
                return anyio.Event()
            loop = self._loop = asyncio.get_running_loop()
        return _Future(loop)

    async def get_message(self) -> tuple[str, int] | None:
        """Wait for frames and take as many as fit in one message.

        A lone frame leaves at once; frames that queued up while the client was busy are
        joined with line feeds up to ``max_batch_bytes``, so a backlog costs one WebSocket
        message instead of one per frame.

        Returns:
            The message and the number of frames in it, or ``None`` after :meth:`finish`
            once the queue is empty.
        """
        while not self._frames and not self._urgent:
            if self._finished:
                return None
            wakeup = self._waiter()
            self._wakeup = wakeup
            try:
                await wakeup.wait()
            finally:
                self._wakeup = None
        return self.take_message()

    def take_message(self) -> tuple[str, int] | None:
        """What :meth:`get_message` returns, without waiting: None when nothing is queued."""
        if self._urgent:
            return self._take_urgent(self._urgent)
        frames = self._frames
        if not frames:
            return None
        if self._size + len(frames) - 1 <= self._limits.max_batch_bytes:
            # Everything queued fits in one message: one join, no per-frame loop.
            count = len(frames)
            message = frames[0] if count == 1 else FRAME_SEPARATOR.join(frames)
            frames.clear()
            self._size = 0
            return message, count
        message, count, size = self._take_batch(frames)
        self._size -= size
        return message, count

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._finished

    def park(self, waker: Waker) -> bool:
        """Call ``waker.set()`` at the next frame (or :meth:`finish`) instead of waking a
        writer waiting in :meth:`get_message`.

        Returns:
            False, and nothing parked, when frames are queued or the outbox is finished.
        """
        if self._frames or self._urgent or self._finished:
            return False
        self._wakeup = waker
        return True

    def _take_urgent(self, urgent: list[str]) -> tuple[str, int]:
        message, count, size = self._take_batch(urgent)
        self._urgent_size -= size
        if not urgent:
            self._urgent = None
            self._urgent_size = 0
        return message, count

    def _take_batch(self, frames: list[str]) -> tuple[str, int, int]:
        """Take frames from the left while they fit in ``max_batch_bytes``."""
        size = len(frames[0])
        budget = self._limits.max_batch_bytes - size
        count = 1
        for index in range(1, len(frames)):
            length = len(frames[index])
            if length >= budget:
                break
            budget -= length + 1
            size += length
            count += 1
        batch = frames[:count]
        del frames[:count]
        if count == 1:
            return batch[0], 1, size
        return FRAME_SEPARATOR.join(batch), count, size


class TimedOutbox(Outbox):
    """An outbox that knows how long the frames it hands out have waited, for metrics.

    Used instead of :class:`Outbox` while the manager measures timings. Reading the clock
    for every frame would cost more than the rest of a delivery in a burst, so the outbox
    keeps one time, :attr:`since`: when its first waiting event frame was queued, which
    the fan-out under way stamps once for every subscriber (``Metrics.queued_at``). Every
    event frame of a message is then as old as the oldest one it could hold: an upper
    bound of its own wait, exact when each message carries one frame (a steady stream).
    Urgent frames (control frames and replays) are not timed: they were not published
    just now.
    """

    __slots__ = ("_metrics", "since", "urgent_taken")

    def __init__(self, limits: OutboxLimits, metrics: Metrics) -> None:
        super().__init__(limits)
        self._metrics = metrics
        self.since = 0.0
        """When the oldest waiting event frame was queued; read it as soon as
        :meth:`get_message` returns, before the next frame is queued."""
        self.urgent_taken = False
        """Set when :meth:`get_message` takes urgent frames; the writer clears it."""

    def offer(self, frame: str, size: int) -> int:
        # Outbox.offer, repeated rather than called: this runs once per delivery.
        frames = self._frames
        queued = len(frames)
        if queued >= self._max_messages or self._size + size > self._max_bytes:
            return 0
        if not queued:
            self.since = self._metrics.queued_at
        frames.append(frame)
        self._size += size
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
        return queued + 1

    def _append(self, frame: str, size: int) -> None:
        if not self._frames:
            self.since = self._metrics.queued_at
        super()._append(frame, size)

    def _take_urgent(self, urgent: list[str]) -> tuple[str, int]:
        self.urgent_taken = True
        return super()._take_urgent(urgent)
