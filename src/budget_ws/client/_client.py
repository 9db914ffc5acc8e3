"""The Python client: one connection at a time, reconnecting and resuming every topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WebSocketClosed

from ..errors import (
    ClientClosed,
    EventValidationError,
    InvalidLimit,
    ServerProtocolError,
    SubscriptionRefused,
)
from ..events import Event, EventRegistry, default_registry
from ..position import Position
from ..protocol import (
    FINAL_CLOSE_CODES,
    CloseCode,
    ErrorCode,
    Ping,
    close_reason,
    encode_client_event,
    encode_pong,
    encode_subscribe,
    encode_unsubscribe,
)
from ..server_frames import (
    ErrorFrame,
    EventFrame,
    ResyncFrame,
    Subscribed,
    Unsubscribed,
    Welcome,
    decode_server_frames,
)
from ._backoff import Backoff
from ._buffer import Buffer
from ._handlers import Handlers
from ._items import EventReceived, Item, Resync
from ._ordering import Ordering, Verdict
from ._subscription import Subscription
from ._websocket import Unreachable, client_url, handshake_headers, open_websocket

__all__ = ["Client", "connect"]

logger = logging.getLogger("budget_ws.client")

H = TypeVar("H", bound=Callable[..., Awaitable[None]])

DEFAULT_SILENCE = 20.0
"""Longest server silence (s) before the welcome frame tells the real heartbeat."""


@dataclass(eq=False)
class _Topic:
    """A topic the app subscribed: re-sent with its position on every new connection."""

    stream: Subscription | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Request:
    topic: str
    position: Position | None


class Client:
    """A budget-ws client over a real WebSocket, on asyncio (``websockets`` is asyncio-only).

    Keeps one connection open, reconnects with fully jittered backoff after any end but a
    final one (1000, 1002, 1008, 4003, a refused handshake), resubscribes every topic the
    app subscribed with the position of the last item it handed on, answers the server's
    pings and reconnects when the server has been silent for longer than its heartbeat
    allows. Events reach the app at most once each and, per topic, in offset order; what
    could not be recovered is reported as a :class:`Resync`.

    Each item goes to exactly one place: the topic's open :class:`Subscription` if the app
    holds one, else the handlers registered for it (:meth:`on`, :meth:`on_resync`), else
    the client's own stream (``async for item in client``). Buffers hold ``buffer_size``
    items each; a full one makes the reader wait (the server may then close the
    connection as a slow consumer, and the client reconnects and resumes: nothing is lost
    while the server's history covers the gap).

    Args:
        url: ``ws://`` or ``wss://`` URL of the server's WebSocket route (``http(s)://``
            is accepted and converted).
        registry: Where wire names are looked up to build typed events
            (:attr:`EventReceived.event`); :data:`~budget_ws.default_registry` if None.
        headers: Extra handshake headers, e.g. ``{"Authorization": "Bearer ..."}``.
        cookies: Cookies sent with the handshake.
        query: Query parameters added to the URL, e.g. ``{"token": "..."}``.
        min_delay: Range of the first reconnect delay, in seconds.
        max_delay: Largest range of a reconnect delay, in seconds.
        heartbeat_slack: Seconds of silence tolerated beyond the server's heartbeat
            (``max(interval, timeout)`` from the welcome frame) before the link is
            considered dead.
        open_timeout: Seconds an opening handshake may take.
        close_timeout: Seconds a closing handshake may take before the socket is dropped.
        buffer_size: Items each subscription (and the client's stream) holds at most.
        max_attempts: Consecutive failed connection attempts after which the client gives
            up with :class:`~budget_ws.ClientClosed`; None (the default) never gives up.
        max_message_size: Largest server message accepted, in bytes; None: no limit.

    Raises:
        InvalidURL: ``url`` is not a WebSocket URL.
        InvalidLimit: A delay, size or timeout is out of range.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: str,
        *,
        registry: EventRegistry | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        cookies: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        min_delay: float = 1.0,
        max_delay: float = 20.0,
        heartbeat_slack: float = 5.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        buffer_size: int = 1000,
        max_attempts: int | None = None,
        max_message_size: int | None = 4 * 1024 * 1024,
    ) -> None:
        if (
            heartbeat_slack < 0
            or open_timeout <= 0
            or close_timeout <= 0
            or buffer_size < 1
            or (max_attempts is not None and max_attempts < 1)
        ):
            raise InvalidLimit(
                "heartbeat_slack must be >= 0, timeouts > 0, buffer_size and max_attempts >= 1"
            )
        self.url = client_url(url, query)
        """The URL connected to, with ``query`` added."""
        self.registry = registry if registry is not None else default_registry
        self.heartbeat_slack = heartbeat_slack
        self.buffer_size = buffer_size
        self.max_attempts = max_attempts
        self._headers = handshake_headers(headers, cookies)
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._backoff = Backoff(min_delay, max_delay)
        self._max_delay = max_delay
        self._ordering = Ordering()
        self._topics: dict[str, _Topic] = {}
        self._held: set[str] = set()
        self._requests: dict[int, _Request] = {}
        self._request_ids = 0
        self._retries: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._handlers = Handlers()
        self._stream: Buffer[Item] = Buffer(buffer_size)
        self._websocket: ClientConnection | None = None
        self._open = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = asyncio.Event()
        self._final: BaseException | None = None
        self._final_seen = False
        self.welcome: Welcome | None = None
        """The current connection's welcome frame; None while disconnected."""

    def __repr__(self) -> str:
        state = "open" if self._open else "closed" if self._done else "connecting"
        return f"<Client {self.url} {state} topics={sorted(self._topics)}>"

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._task is None:  # not started with start() already
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        # A final close nobody has seen yet must not pass unnoticed.
        if exc_type is None and self._final is not None and not self._final_seen:
            self._final_seen = True
            raise self._final

    async def start(self) -> None:
        """Connect, and return once the server's welcome frame arrived.

        Retries with backoff meanwhile (``max_attempts`` bounds it); called by
        ``async with``.

        Raises:
            ClientClosed: The server refused for good (:class:`~budget_ws.HandshakeRefused`,
                a final close code, :class:`~budget_ws.ServerProtocolError`), or
                ``max_attempts`` failed.
        """
        if self._task is not None:
            raise ClientClosed(None, "a Client is started once")
        self._task = asyncio.create_task(self._run(), name=f"budget_ws client {self.url}")
        try:
            await self._wait_open()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the connection with 1000 and stop; iterators end, waiting calls raise.

        Idempotent. Items still buffered are dropped.
        """
        if self._stopping:
            if self._task is not asyncio.current_task():
                await self._closed.wait()
            return
        self._stopping = True
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})
        elif self._websocket is not None:  # from a handler, inside the reader
            await self._websocket.close(CloseCode.NORMAL, "client closed")
        for pending in [*self._retries.values(), *self._closing]:
            pending.cancel()
        if self._closing:
            await asyncio.wait(self._closing)
        self._finish(None)
        self._closed.set()

    @property
    def connected(self) -> bool:
        """Whether a connection is open (its welcome frame received)."""
        return self._open

    @property
    def connection_id(self) -> str | None:
        """The server's id of the current connection; None while disconnected."""
        return self.welcome.connection_id if self.welcome is not None else None

    @property
    def positions(self) -> dict[str, Position]:
        """Per topic, the position of the last item passed on to the app's side.

        Items may still wait in buffers; to persist what the app has processed, use the
        items' positions or :attr:`Subscription.position`.
        """
        return self._ordering.positions

    @property
    def _done(self) -> bool:
        return self._stopping or self._final is not None

    def _check_usable(self) -> None:
        if self._final is not None:
            self._final_seen = True
            raise self._final
        if self._stopping:
            raise ClientClosed(CloseCode.NORMAL, "the client was closed")
        if self._task is None:
            raise ClientClosed(None, "the client is not started: use `async with connect(...)`")

    async def _wait_open(self, stale: ClientConnection | None = None) -> ClientConnection:
        """The open connection (not ``stale``), once there is one."""
        while True:
            self._check_usable()
            websocket = self._websocket
            if self._open and websocket is not None and websocket is not stale:
                return websocket
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _finish(self, error: BaseException | None) -> None:
        """Stop for good: iterators end (with ``error``), waiting calls raise."""
        if error is not None and self._final is None and not self._stopping:
            self._final = error
        ending = self._final
        discard = ending is None  # closed by the app: what is buffered no longer matters
        if discard:
            self._stream.clear()
        for topic in self._topics.values():
            if topic.stream is not None:
                topic.stream._end(ending, discard=discard)
            for waiter in topic.waiters:
                if not waiter.done():
                    waiter.set_exception(ending or ClientClosed(1000, "the client was closed"))
            topic.waiters.clear()
        self._stream.end(ending)
        self._notify()

    # Connecting ------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    websocket = await open_websocket(
                        self.url,
                        self._headers,
                        open_timeout=self._open_timeout,
                        close_timeout=self._close_timeout,
                        max_message_size=self._max_message_size,
                    )
                except Unreachable as exc:
                    reason = f"connection failed: {exc}"
                else:
                    code, reason, welcomed = await self._serve(websocket)
                    if self._stopping:  # aclose() from a handler
                        return
                    if code in FINAL_CLOSE_CODES:
                        self._finish(ClientClosed(code, reason))
                        return
                    reason = f"connection closed ({code}{': ' + reason if reason else ''})"
                    if welcomed:
                        failures = 0
                failures += 1
                if self.max_attempts is not None and failures >= self.max_attempts:
                    self._finish(ClientClosed(None, f"gave up after {failures} attempts: {reason}"))
                    return
                delay = self._backoff.next_delay()
                logger.info("%s; reconnecting in %.2f s", reason, delay)
                await asyncio.sleep(delay)
        except ClientClosed as exc:
            self._finish(exc)
        except Exception as exc:  # a bug: surface it rather than hang the app
            logger.exception("the connection loop failed")
            self._finish(exc)

    async def _serve(self, websocket: ClientConnection) -> tuple[int, str, bool]:
        """Read one connection until it ends.

        Returns:
            Its close code and reason, and whether it got its welcome frame.

        Raises:
            ServerProtocolError: After closing with 1002.
        """
        self._websocket = websocket
        silence = DEFAULT_SILENCE
        welcomed = False
        try:
            while True:
                try:
                    message = await asyncio.wait_for(
                        websocket.recv(), silence + self.heartbeat_slack
                    )
                except asyncio.TimeoutError:
                    # A dead link answers nothing, not even a close: don't wait for it.
                    self._close_later(websocket, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                    return CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout (client side)", welcomed
                except WebSocketClosed as exc:
                    if exc.rcvd is None:
                        return 1006, "connection lost", welcomed
                    return exc.rcvd.code, exc.rcvd.reason, welcomed
                try:
                    for frame in decode_server_frames(message):
                        if self.welcome is None and not isinstance(frame, Welcome):
                            raise ServerProtocolError(
                                "the server's first frame is not a welcome frame"
                            )
                        if isinstance(frame, Welcome):
                            silence = max(frame.heartbeat_interval, frame.heartbeat_timeout)
                            welcomed = True
                        await self._handle(websocket, frame)
                except ServerProtocolError as exc:
                    logger.warning("%s; closing with 1002", exc)
                    await websocket.close(CloseCode.PROTOCOL_ERROR, close_reason(str(exc)))
                    raise
        except asyncio.CancelledError:
            if self._stopping:
                await asyncio.shield(websocket.close(CloseCode.NORMAL, "client closed"))
            raise
        finally:
            self._disconnected()

    def _close_later(self, websocket: ClientConnection, code: int, reason: str) -> None:
        task = asyncio.create_task(websocket.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _disconnected(self) -> None:
        self._websocket = None
        self._open = False
        self.welcome = None
        self._held.clear()
        self._requests.clear()
        for retry in self._retries.values():
            retry.cancel()
        self._retries.clear()
        self._notify()

    async def _send_frame(self, websocket: ClientConnection, frame: str) -> None:
        # Closed: the reader sees the end and reconnects; the new connection resubscribes.
        with contextlib.suppress(WebSocketClosed):
            await websocket.send(frame)

    # Frames from the server ------------------------------------------------------------

    async def _handle(self, websocket: ClientConnection, frame: Any) -> None:
        if isinstance(frame, EventFrame):
            await self._on_event(frame)
        elif isinstance(frame, Ping):
            await self._send_frame(websocket, encode_pong())
        elif isinstance(frame, Subscribed):
            await self._on_subscribed(frame)
        elif isinstance(frame, Unsubscribed):
            self._on_unsubscribed(frame)
        elif isinstance(frame, ResyncFrame):
            self._ordering.resync(frame.topic, frame.position)
            await self._route(Resync(frame.topic, frame.position, "server"))
        elif isinstance(frame, ErrorFrame):
            await self._on_error(frame)
        elif isinstance(frame, Welcome):
            self.welcome = frame
            self._open = True
            self._backoff.reset()
            self._notify()
            logger.info("connected to %s (%s)", self.url, frame.connection_id)
            for topic in list(self._topics):
                await self._send_subscribe(topic)
        # Pong and unknown control frames: nothing to do.

    async def _on_event(self, frame: EventFrame) -> None:
        topic = frame.topic
        if topic is not None:
            if topic not in self._held:
                return  # unsubscribed (events of it may still be on the way): dropped
            if frame.position is not None:
                verdict = self._ordering.event(topic, frame.position)
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
                logger.warning("%s", exc)
        await self._route(EventReceived(frame.event, frame.data, topic, frame.position, typed))

    async def _on_subscribed(self, frame: Subscribed) -> None:
        topic = frame.topic
        state = self._topics.get(topic)
        if frame.id is not None:
            request = self._requests.pop(frame.id, None) if isinstance(frame.id, int) else None
            if request is None or state is None:
                return  # superseded by a later request, or unsubscribed since
            reason = self._ordering.subscribed(
                topic, frame.position, frame.recovered, requested=request.position
            )
            if request.position is None and state.stream is not None:
                state.stream._started(frame.position)
        else:  # subscribed by the server: tracked, but not the client's to send again
            reason = self._ordering.subscribed_by_server(topic, frame.position, frame.recovered)
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
        self._forget(topic, SubscriptionRefused(frame.code, topic, frame.message))

    async def _retry_subscribe(self, topic: str, delay: float) -> None:
        await asyncio.sleep(delay)
        del self._retries[topic]
        await self._send_subscribe(topic)

    # Routing ---------------------------------------------------------------------------

    async def _route(self, item: Item) -> None:
        """Hand ``item`` to exactly one place: its subscription, handlers, or the stream."""
        state = self._topics.get(item.topic) if item.topic is not None else None
        if state is not None and state.stream is not None:
            await state.stream._buffer.put(item)
            return
        if not await self._handlers.deliver(item):
            await self._stream.put(item)

    async def _take(self, buffer: Buffer[Item]) -> Item:
        try:
            return await buffer.get()
        except ClientClosed as exc:
            if exc is self._final:
                self._final_seen = True
            raise

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Item:
        """The next item no subscription or handler took; ends when the client stops."""
        return await self._take(self._stream)

    # Subscriptions ---------------------------------------------------------------------

    def subscribe(self, topic: str, *, position: Position | None = None) -> Subscription:
        """Subscribe to ``topic``, resuming after ``position`` if given.

        ``async with client.subscribe(topic) as subscription:`` iterates the topic's items;
        ``await client.subscribe(topic)`` sends them to handlers or the client's stream.
        Either waits for the server's ``subscribed`` answer. The topic is subscribed again,
        with its last position, after every reconnect, until :meth:`unsubscribe` or the
        end of the ``async with`` block.

        Args:
            topic: The topic.
            position: Resume after it (one the app persisted), unless the client already
                passed on a later position of the same epoch.

        Raises:
            SubscriptionRefused: The server answered with an error frame (``forbidden``,
                ``invalid_topic``, ``too_many_topics``...). A ``backend_error`` is retried
                after a random delay instead.
            ClientClosed: The client stopped for good.
        """
        return Subscription(self, topic, position, self.buffer_size)

    async def _subscribe(
        self, topic: str, position: Position | None, stream: Subscription | None
    ) -> None:
        self._check_usable()
        state = self._topics.setdefault(topic, _Topic())
        if stream is not None:
            if state.stream is not None:
                stream._take_over(state.stream)
            state.stream = stream
        self._ordering.resume_from(topic, position)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        try:
            await self._send_subscribe(topic)
            await waiter
        except BaseException as exc:
            if exc is self._final:
                self._final_seen = True
            waiter.cancel()
            if waiter in state.waiters:
                state.waiters.remove(waiter)
            if stream is not None and state.stream is stream:
                await self._release(stream)
            raise

    async def _send_subscribe(self, topic: str) -> None:
        websocket = self._websocket
        if not self._open or websocket is None:
            return  # sent on the next welcome
        retry = self._retries.pop(topic, None)
        if retry is not None:
            retry.cancel()
        self._request_ids += 1
        request_id = self._request_ids
        position = self._ordering.position(topic)
        self._drop_requests(topic)
        self._requests[request_id] = _Request(topic, position)
        await self._send_frame(websocket, encode_subscribe(topic, position, request_id))

    def _drop_requests(self, topic: str) -> None:
        for request_id in [key for key, value in self._requests.items() if value.topic == topic]:
            del self._requests[request_id]

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``: no more of its items, and no resubscribe after a reconnect.

        Its :class:`Subscription`, if any, ends. Does not wait for the server's answer.
        """
        self._forget(topic, SubscriptionRefused("unsubscribed", topic, "unsubscribed by the app"))
        websocket = self._websocket
        if self._open and websocket is not None and not self._done:
            self._request_ids += 1
            await self._send_frame(websocket, encode_unsubscribe(topic, self._request_ids))

    async def _release(self, stream: Subscription) -> None:
        state = self._topics.get(stream.topic)
        if state is not None and state.stream is stream:
            await self.unsubscribe(stream.topic)

    def _forget(self, topic: str, refusal: SubscriptionRefused) -> None:
        state = self._topics.pop(topic, None)
        self._held.discard(topic)
        self._ordering.forget(topic)
        self._drop_requests(topic)
        retry = self._retries.pop(topic, None)
        if retry is not None:
            retry.cancel()
        if state is None:
            return
        if state.stream is not None:
            state.stream._end()
        for waiter in state.waiters:
            if not waiter.done():
                waiter.set_exception(refusal)
        state.waiters.clear()

    # Handlers --------------------------------------------------------------------------

    def on(self, event: type[Event] | str) -> Callable[[H], H]:
        """Register an async handler for an event, by class or wire name::

            @client.on(FactCreated)
            async def fact_created(item: EventReceived) -> None:
                print(item.event)

        Handlers run in the client's reader, one item at a time and in order; an
        exception is logged and the next item follows. A class is added to the client's
        registry, so ``item.event`` is an instance of it.
        """
        if isinstance(event, str):
            name = event
        else:
            self.registry.register(event)
            name = event.event_name

        def decorator(handler: H) -> H:
            self._handlers.add_event(name, handler)
            return handler

        return decorator

    def on_resync(self, handler: H) -> H:
        """Register an async handler of :class:`Resync` items no subscription takes.

        Usable as a decorator.
        """
        self._handlers.add_resync(handler)
        return handler

    def on_error(self, handler: H) -> H:
        """Register an async handler of error frames that answer no subscribe.

        Such as an ``invalid_event`` or ``forbidden`` answer to :meth:`send`, matched by
        its ``id``. Without a handler they are logged. Usable as a decorator.
        """
        self._handlers.add_error(handler)
        return handler

    # Client events ---------------------------------------------------------------------

    async def send(self, event: Event, *, topic: str | None = None, id: str | None = None) -> None:
        """Send a typed event to the server, waiting for a connection if there is none.

        At most once: the frame is handed to one connection's socket; if that connection
        is lost right after, so may the event be. No answer comes on success; an error
        frame (carrying ``id``) goes to :meth:`on_error` handlers.

        Args:
            event: The event; the server must have a handler for it.
            topic: The topic it is addressed to (the server's ``authorize`` must allow
                ``"publish"``).
            id: A string the server copies into an error answer.

        Raises:
            ClientClosed: The client stopped for good.
        """
        frame = encode_client_event(event, topic, id)
        stale: ClientConnection | None = None
        while True:
            websocket = await self._wait_open(stale)
            try:
                await websocket.send(frame)
            except WebSocketClosed:
                stale = websocket  # not sent: wait for the next connection
            else:
                return


connect = Client
"""``async with connect(url, ...) as client:`` reads better; the same as :class:`Client`.

.. versionadded:: 0.1
"""
