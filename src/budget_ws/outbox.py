"""The bounded send queue of one connection."""

from __future__ import annotations

from collections import deque

import anyio

from .limits import OutboxLimits, SlowConsumerPolicy
from .protocol import FRAME_SEPARATOR

__all__ = ["Outbox"]


class Outbox:
    """Frames waiting to be written to one client, bounded by count and by size.

    Producers call :meth:`put`, which never waits: that is what keeps one slow client from
    delaying the publisher and every other client. One writer task takes batches with
    :meth:`get_message`. Sizes are counted in characters of the JSON text, which equals
    bytes for ASCII payloads.
    """

    __slots__ = ("_finished", "_frames", "_limits", "_size", "_wakeup", "dropped")

    def __init__(self, limits: OutboxLimits) -> None:
        self._limits = limits
        self._frames: deque[str] = deque()
        self._size = 0
        self._wakeup: anyio.Event | None = None
        self._finished = False
        self.dropped = 0
        """Frames discarded by the drop-oldest policy."""

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def size(self) -> int:
        """Characters of JSON currently queued."""
        return self._size

    def fits(self, count: int, size: int) -> bool:
        """Whether ``count`` more frames totalling ``size`` would fit right now."""
        limits = self._limits
        return (
            len(self._frames) + count <= limits.max_messages
            and self._size + size <= limits.max_bytes
        )

    def put(self, frame: str) -> bool:
        """Queue one frame without waiting.

        Returns:
            False when the frame does not fit and the policy is to disconnect; the caller
            then closes the connection. With the drop-oldest policy, older frames make room
            and this returns True.
        """
        size = len(frame)
        frames = self._frames
        limits = self._limits
        if len(frames) >= limits.max_messages or self._size + size > limits.max_bytes:
            if limits.policy is SlowConsumerPolicy.DISCONNECT:
                return False
            while frames and (
                len(frames) >= limits.max_messages or self._size + size > limits.max_bytes
            ):
                self._size -= len(frames.popleft())
                self.dropped += 1
            if size > limits.max_bytes:
                self.dropped += 1
                return True
        frames.append(frame)
        self._size += size
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def finish(self) -> None:
        """No more frames will be put; :meth:`get_message` returns ``None`` once empty."""
        self._finished = True
        if self._wakeup is not None:
            self._wakeup.set()

    def clear(self) -> None:
        """Discard every queued frame."""
        self._frames.clear()
        self._size = 0

    async def get_message(self) -> tuple[str, int] | None:
        """Wait for frames and take as many as fit in one message.

        A lone frame leaves at once; frames that queued up while the client was busy are
        joined with line feeds up to ``max_batch_bytes``, so a backlog costs one WebSocket
        message instead of one per frame.

        Returns:
            The message and the number of frames in it, or ``None`` after :meth:`finish`
            once the queue is empty.
        """
        frames = self._frames
        while not frames:
            if self._finished:
                return None
            self._wakeup = anyio.Event()
            try:
                await self._wakeup.wait()
            finally:
                self._wakeup = None
        first = frames.popleft()
        size = len(first)
        if not frames or size >= self._limits.max_batch_bytes:
            self._size -= size
            return first, 1
        batch = [first]
        budget = self._limits.max_batch_bytes - size
        while frames and len(frames[0]) < budget:
            frame = frames.popleft()
            budget -= len(frame) + 1
            size += len(frame)
            batch.append(frame)
        self._size -= size
        return FRAME_SEPARATOR.join(batch), len(batch)
