"""A topic the app iterates: the items of one topic, in order, while the block lasts."""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any, Protocol

from ..position import Position
from ._buffer import Buffer
from ._items import Item

__all__ = ["Feed", "Subscriber", "Subscription"]


class Feed:
    """The side of a :class:`Subscription` that the client's topic bookkeeping drives.

    Internal: a subscription hands its feed to the client when it subscribes; the client
    then puts the topic's items in it and ends it. The app only sees the subscription.
    """

    def __init__(self, topic: str, requested: Position | None, buffer: Buffer[Item]) -> None:
        self.topic = topic
        self.requested = requested
        """The position the app asked to resume after, if any."""
        self.position = requested
        """Where the app stands (:attr:`Subscription.position`)."""
        self.buffer = buffer
        """What the client passed on and the app has not taken yet."""

    async def put(self, item: Item) -> None:
        """Pass ``item`` on to the app, waiting for room; dropped once the feed ended."""
        await self.buffer.put(item)

    def started(self, position: Position) -> None:
        """The server answered a subscribe without a position: the topic is at ``position``."""
        # A fresh subscription: nothing came before, the topic continues from `position`.
        if self.position is None:
            self.position = position

    def take_over(self, previous: Feed) -> None:
        """Continue the topic in place of ``previous``, which ends."""
        # The items `previous` did not hand out come first: the client has passed them
        # on once already and will not again.
        self.buffer.extend(previous.buffer.clear())
        if self.requested is None:
            self.position = previous.position
        previous.end()

    def end(self, error: BaseException | None = None, *, discard: bool = False) -> None:
        """No more items; what was received is still handed out unless ``discard``."""
        if discard:
            self.buffer.clear()
        self.buffer.end(error)


class Subscriber(Protocol):
    """What a :class:`Subscription` asks of the client (its topic bookkeeping)."""

    async def subscribe(self, topic: str, position: Position | None, feed: Feed | None) -> None:
        """Subscribe ``topic``, its items going to ``feed`` (else handlers or the stream)."""

    async def release(self, feed: Feed) -> None:
        """Unsubscribe ``feed``'s topic, unless another feed took it over."""

    async def take(self, buffer: Buffer[Item]) -> Item:
        """The next item of ``buffer``, waiting for one."""


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
        self, subscriber: Subscriber, topic: str, position: Position | None, buffer_size: int
    ) -> None:
        self.topic = topic
        """The topic."""
        self._subscriber = subscriber
        self._buffer: Buffer[Item] = Buffer(buffer_size)
        self._feed = Feed(topic, position, self._buffer)
        self._used = False

    @property
    def position(self) -> Position | None:
        """Where the app stands: the position of the last item handed out (a
        :class:`Resync`'s too), or of the ``subscribed`` answer of a fresh subscription.
        Persist it to resume after a restart of the app."""
        return self._feed.position

    @position.setter
    def position(self, position: Position | None) -> None:
        self._feed.position = position

    def __repr__(self) -> str:
        return f"<Subscription {self.topic!r} position={self.position}>"

    def __await__(self) -> Generator[Any, None, None]:
        self._use()
        return self._subscriber.subscribe(self.topic, self._feed.requested, None).__await__()

    async def __aenter__(self) -> Subscription:
        self._use()
        await self._subscriber.subscribe(self.topic, self._feed.requested, self._feed)
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
        self._feed.end(discard=True)
        await self._subscriber.release(self._feed)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        item = await self._subscriber.take(self._buffer)
        if item.position is not None:
            self.position = item.position
        return item

    def _use(self) -> None:
        if self._used:
            raise TypeError("a Subscription is used once: call client.subscribe() again")
        self._used = True
