"""The client's topics: subscribe and unsubscribe requests, the server's answers, positions,
and each item routed to one place (a subscription, handlers, or the client's stream)."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from ..errors import ClientClosed, EventValidationError, SubscriptionRefused
from ..events import EventRegistry
from ..position import Position
from ..protocol import ErrorCode, encode_subscribe, encode_unsubscribe, excerpt
from ..server_frames import (
    ErrorFrame,
    EventFrame,
    ResyncFrame,
    ServerFrame,
    Subscribed,
    Unsubscribed,
)
from ._buffer import Buffer
from ._handlers import Handlers
from ._items import EventReceived, Item, Resync
from ._link import Link
from ._ordering import Ordering, Verdict
from ._subscription import Feed

__all__ = ["Topics"]

logger = logging.getLogger("budget_ws.client")


@dataclass(eq=False)
class _Topic:
    """A topic the app subscribed: re-sent with its position on every new connection."""

    feed: Feed | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Request:
    topic: str
    position: Position | None


class Topics:
    """The topics the app subscribed, kept subscribed over ``link``'s connections.

    The client hands it the frames its link reads (:meth:`welcomed`, :meth:`received`);
    it hears the link's ends as the link's ``Listener``. It resubscribes every topic on
    each welcome frame, matches the server's answers to requests, orders each topic's
    events, and routes every item to exactly one place: the topic's :class:`Feed` (its
    open :class:`Subscription`), else ``handlers``, else ``stream``. Subscriptions talk
    to it as their ``Subscriber``.
    """

    def __init__(
        self,
        link: Link,
        registry: EventRegistry,
        handlers: Handlers,
        stream: Buffer[Item],
        *,
        max_delay: float,
    ) -> None:
        self.registry = registry
        """Where wire names are looked up to build typed events."""
        self.ordering = Ordering()
        """Per topic, the position of the last item passed on."""
        self._link = link
        self._handlers = handlers
        self._stream = stream
        self._max_delay = max_delay
        self._topics: dict[str, _Topic] = {}
        self._held: set[str] = set()
        self._requests: dict[int, _Request] = {}
        self._request_ids = 0
        self._retries: dict[str, asyncio.Task[None]] = {}

    def names(self) -> list[str]:
        """The topics the app subscribed, sorted."""
        return sorted(self._topics)

    # From the link's reader -------------------------------------------------------------

    async def welcomed(self) -> None:
        """A new connection is open: subscribe every topic again, from its position."""
        for topic in list(self._topics):
            await self._send_subscribe(topic)

    async def received(self, frame: ServerFrame) -> None:
        """A frame about topics, events or requests (not a welcome frame, nor a ping)."""
        if isinstance(frame, EventFrame):
            await self._on_event(frame)
        elif isinstance(frame, Subscribed):
            await self._on_subscribed(frame)
        elif isinstance(frame, Unsubscribed):
            self._on_unsubscribed(frame)
        elif isinstance(frame, ResyncFrame):
            self.ordering.resync(frame.topic, frame.position)
            await self._route(Resync(frame.topic, frame.position, "server"))
        elif isinstance(frame, ErrorFrame):
            await self._on_error(frame)
        # Pong and unknown control frames: nothing to do.

    def disconnected(self) -> None:
        """The connection ended: the server holds no topic of it any more."""
        self._held.clear()
        self._requests.clear()
        self._cancel_retries()

    def finished(self, error: BaseException | None) -> None:
        """Iterators end (with ``error``), waiting calls raise."""
        self._cancel_retries()
        discard = error is None  # closed by the app: what is buffered no longer matters
        if discard:
            self._stream.clear()
        for topic in self._topics.values():
            if topic.feed is not None:
                topic.feed.end(error, discard=discard)
            for waiter in topic.waiters:
                if not waiter.done():
                    waiter.set_exception(error or ClientClosed(1000, "the client was closed"))
            topic.waiters.clear()
        self._stream.end(error)

    def _cancel_retries(self) -> None:
        for retry in self._retries.values():
            retry.cancel()
        self._retries.clear()

    # Frames from the server ------------------------------------------------------------

    async def _on_event(self, frame: EventFrame) -> None:
        topic = frame.topic
        if topic is not None:
            if topic not in self._held:
                return  # unsubscribed (events of it may still be on the way): dropped
            if frame.position is not None:
                verdict = self.ordering.event(topic, frame.position)
                if verdict is Verdict.DUPLICATE:
                    return
                if verdict is Verdict.GAP:
                    before = Position(frame.position.offset - 1, frame.position.epoch)
                    await self._route(Resync(topic, before, "gap"))
        typed = None
        if frame.event in self.registry:
            try:
                typed = self.registry.validate(frame.event, frame.data)
            except EventValidationError as exc:
                logger.warning(
                    "budget_ws: %s; handed out without a typed event",
                    exc,
                    extra={
                        "budget_ws_event": "client_event_invalid",
                        "budget_ws_event_name": frame.event,
                        "budget_ws_topic": topic,
                        "budget_ws_error": str(exc),
                    },
                )
        await self._route(
            EventReceived(frame.event, frame.data, topic, frame.position, typed, frame.traceparent)
        )

    async def _on_subscribed(self, frame: Subscribed) -> None:
        topic = frame.topic
        state = self._topics.get(topic)
        if frame.id is not None:
            request = self._requests.pop(frame.id, None) if isinstance(frame.id, int) else None
            if request is None or state is None:
                return  # superseded by a later request, or unsubscribed since
            reason = self.ordering.subscribed(
                topic, frame.position, frame.recovered, requested=request.position
            )
            if request.position is None and state.feed is not None:
                state.feed.started(frame.position)
        else:  # subscribed by the server: tracked, but not the client's to send again
            reason = self.ordering.subscribed_by_server(topic, frame.position, frame.recovered)
        self._held.add(topic)
        if reason is not None:
            await self._route(Resync(topic, frame.position, reason))
        if state is not None:
            for waiter in state.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            state.waiters.clear()

    def _on_unsubscribed(self, frame: Unsubscribed) -> None:
        self._held.discard(frame.topic)
        # The server's own decision (no id): forget the topic, don't subscribe it again.
        if frame.id is None or frame.topic not in self._topics:
            refusal = SubscriptionRefused("unsubscribed", frame.topic, "by the server")
            self._forget(frame.topic, refusal)

    async def _on_error(self, frame: ErrorFrame) -> None:
        request = self._requests.pop(frame.id, None) if isinstance(frame.id, int) else None
        if request is None:
            await self._handlers.error(frame)
            return
        topic = request.topic
        if frame.code == ErrorCode.BACKEND_ERROR.value and topic in self._topics:
            # The server could not subscribe right now: ask again after a random delay.
            delay = random.uniform(0, self._max_delay)
            self._retries[topic] = asyncio.create_task(self._retry_subscribe(topic, delay))
            return
        logger.info(
            "budget_ws: subscribing to %r was refused (%s): %s",
            topic,
            frame.code,
            excerpt(frame.message, 200),
            extra={
                "budget_ws_event": "client_subscribe_refused",
                "budget_ws_topic": topic,
                "budget_ws_error_code": frame.code,
                "budget_ws_error_message": excerpt(frame.message, 200),
            },
        )
        self._forget(topic, SubscriptionRefused(frame.code, topic, frame.message))

    async def _retry_subscribe(self, topic: str, delay: float) -> None:
        await asyncio.sleep(delay)
        del self._retries[topic]
        await self._send_subscribe(topic)

    # Routing ---------------------------------------------------------------------------

    async def _route(self, item: Item) -> None:
        """Hand ``item`` to exactly one place: its subscription, handlers, or the stream."""
        if isinstance(item, Resync):
            logger.info(
                "budget_ws: resync of topic %r (%s) at offset %d",
                item.topic,
                item.why,
                item.position.offset,
                extra={
                    "budget_ws_event": "client_resync",
                    "budget_ws_topic": item.topic,
                    "budget_ws_cause": item.why,
                },
            )
        state = self._topics.get(item.topic) if item.topic is not None else None
        if state is not None and state.feed is not None:
            await state.feed.put(item)
            return
        if not await self._handlers.deliver(item):
            await self._stream.put(item)

    async def take(self, buffer: Buffer[Item]) -> Item:
        """The next item of ``buffer`` (a subscription's, or the client's stream)."""
        try:
            return await buffer.get()
        except ClientClosed as exc:
            self._link.raised(exc)
            raise

    # Subscribing -----------------------------------------------------------------------

    async def subscribe(self, topic: str, position: Position | None, feed: Feed | None) -> None:
        """Subscribe ``topic`` and wait for the answer; its items go to ``feed`` if given."""
        self._link.check_usable()
        state = self._topics.setdefault(topic, _Topic())
        if feed is not None:
            if state.feed is not None:
                feed.take_over(state.feed)
            state.feed = feed
        self.ordering.resume_from(topic, position)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        try:
            await self._send_subscribe(topic)
            await waiter
        except BaseException as exc:
            self._link.raised(exc)
            waiter.cancel()
            if waiter in state.waiters:
                state.waiters.remove(waiter)
            if feed is not None and state.feed is feed:
                await self.release(feed)
            raise

    async def _send_subscribe(self, topic: str) -> None:
        websocket = self._link.socket()
        if websocket is None:
            return  # sent on the next welcome
        retry = self._retries.pop(topic, None)
        if retry is not None:
            retry.cancel()
        self._request_ids += 1
        request_id = self._request_ids
        position = self.ordering.position(topic)
        self._drop_requests(topic)
        self._requests[request_id] = _Request(topic, position)
        await self._link.send(websocket, encode_subscribe(topic, position, request_id))

    def _drop_requests(self, topic: str) -> None:
        for request_id in [key for key, value in self._requests.items() if value.topic == topic]:
            del self._requests[request_id]

    async def unsubscribe(self, topic: str) -> None:
        """Forget ``topic`` (its feed ends) and tell the server, if connected."""
        self._forget(topic, SubscriptionRefused("unsubscribed", topic, "unsubscribed by the app"))
        websocket = self._link.socket()
        if websocket is not None and not self._link.done:
            self._request_ids += 1
            await self._link.send(websocket, encode_unsubscribe(topic, self._request_ids))

    async def release(self, feed: Feed) -> None:
        """Unsubscribe ``feed``'s topic, unless another feed took it over."""
        state = self._topics.get(feed.topic)
        if state is not None and state.feed is feed:
            await self.unsubscribe(feed.topic)

    def _forget(self, topic: str, refusal: SubscriptionRefused) -> None:
        state = self._topics.pop(topic, None)
        self._held.discard(topic)
        self.ordering.forget(topic)
        self._drop_requests(topic)
        retry = self._retries.pop(topic, None)
        if retry is not None:
            retry.cancel()
        if state is None:
            return
        if state.feed is not None:
            state.feed.end()
        for waiter in state.waiters:
            if not waiter.done():
                waiter.set_exception(refusal)
        state.waiters.clear()
