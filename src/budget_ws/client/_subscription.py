"""A topic the app iterates: the items of one topic, in order, while the block lasts."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..position import Position
from ._buffer import Buffer
from ._items import Item

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Subscription"]


class Subscription:
    """One topic's items (:class:`EventReceived` and :class:`Resync`), in order, once each.

    Made by :meth:`Client.subscribe`. Use it as ``async with`` to subscribe and iterate:
    entering waits for the server's ``subscribed`` answer; leaving unsubscribes. Or await
    it (``await client.subscribe(topic)``) to subscribe without iterating: the topic's
    items then go to handlers, else to the client's own stream.

    The iterator ends (``StopAsyncIteration``) when the server unsubscribes the client
    from the topic, or when another ``subscribe()`` of the same topic takes it over; it
    raises :class:`~budget_ws.ClientClosed` once the client stopped for good (after the
    items received before).

    .. versionadded:: 0.1
    """

    def __init__(
        self, client: Client, topic: str, position: Position | None, buffer_size: int
    ) -> None:
        self.topic = topic
        """The topic."""
        self.position = position
        """Where the app stands: the position of the last item handed out (a
        :class:`Resync`'s too), or of the ``subscribed`` answer of a fresh subscription.
        Persist it to resume after a restart of the app."""
        self._requested = position
        self._client = client
        self._buffer: Buffer[Item] = Buffer(buffer_size)
        self._used = False

    def __repr__(self) -> str:
        return f"<Subscription {self.topic!r} position={self.position}>"

    def __await__(self) -> Generator[Any, None, None]:
        self._use()
        return self._client._subscribe(self.topic, self._requested, None).__await__()

    async def __aenter__(self) -> Subscription:
        self._use()
        await self._client._subscribe(self.topic, self._requested, self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe (unless another subscription took the topic over) and end."""
        self._end(discard=True)
        await self._client._release(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        item = await self._client._take(self._buffer)
        if item.position is not None:
            self.position = item.position
        return item

    def _use(self) -> None:
        if self._used:
            raise TypeError("a Subscription is used once: call client.subscribe() again")
        self._used = True

    def _started(self, position: Position) -> None:
        # A fresh subscription: nothing came before, the topic continues from `position`.
        if self.position is None:
            self.position = position

    def _take_over(self, previous: Subscription) -> None:
        # The items `previous` did not hand out come first: the client has passed them
        # on once already and will not again.
        self._buffer.extend(previous._buffer.clear())
        if self._requested is None:
            self.position = previous.position
        previous._end()

    def _end(self, error: BaseException | None = None, *, discard: bool = False) -> None:
        # Ended by the server or the client: what was received is still handed out.
        if discard:
            self._buffer.clear()
        self._buffer.end(error)
