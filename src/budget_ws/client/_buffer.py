"""A bounded buffer between the client's reader and one consumer (a subscription, or the
client's own stream), with an end that carries an error or none."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Buffer"]

T = TypeVar("T")


class Buffer(Generic[T]):
    """Items in order, at most ``capacity`` of them; ``put`` waits for room.

    Once ended, what is buffered is still handed out; then ``get`` raises the end's error,
    or ``StopAsyncIteration`` for a normal end. Items put after the end are dropped.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` was called."""
        return self._ended

    async def put(self, item: T) -> bool:
        """Append ``item``, waiting while the buffer is full.

        Returns:
            False when the buffer ended (before or while waiting): the item was dropped.
        """
        while len(self._items) >= self.capacity and not self._ended:
            await self._wait()
        if self._ended:
            return False
        self._items.append(item)
        self._notify()
        return True

    async def get(self) -> T:
        """The oldest item, waiting for one.

        Raises:
            StopAsyncIteration: Ended without an error, and empty.
            BaseException: The error the buffer ended with, once empty.
        """
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            await self._wait()
        item = self._items.popleft()
        self._notify()
        return item

    def end(self, error: BaseException | None = None) -> None:
        """No more items; the first end counts. Waiting ``put`` calls return False."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._notify()

    def clear(self) -> list[T]:
        """Remove and return what is buffered (the consumer left, or hands over)."""
        items = list(self._items)
        self._items.clear()
        self._notify()
        return items

    def extend(self, items: list[T]) -> None:
        """Add items taken over from another buffer, beyond the capacity if need be."""
        self._items.extend(items)
        self._notify()

    async def _wait(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
