"""The Python client: one connection at a time, reconnecting and resuming every topic.

The connection loop is in ``_link``, the topics' bookkeeping and routing in ``_topics``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WebSocketClosed

from ..errors import InvalidLimit
from ..events import Event, EventRegistry, default_registry
from ..position import Position
from ..protocol import Ping, encode_client_event, encode_pong
from ..server_frames import ServerFrame, Welcome
from ._buffer import Buffer
from ._handlers import Handlers
from ._items import Item
from ._link import Link
from ._subscription import Subscription
from ._topics import Topics
from ._websocket import client_url, handshake_headers

__all__ = ["Client", "connect"]

H = TypeVar("H", bound=Callable[..., Awaitable[None]])


class Client:
    """A budget-ws client over a real WebSocket, on asyncio (``websockets`` is asyncio-only).

    Keeps one connection open, reconnects with fully jittered backoff after any end but a
    final one (1000, 1002, 1008, 4003, 4010, a refused handshake), resubscribes every topic the
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
        self.buffer_size = buffer_size
        self._link = Link(
            client_url(url, query),
            handshake_headers(headers, cookies),
            min_delay=min_delay,
            max_delay=max_delay,
            heartbeat_slack=heartbeat_slack,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            max_attempts=max_attempts,
            max_message_size=max_message_size,
        )
        self._handlers = Handlers()
        self._stream: Buffer[Item] = Buffer(buffer_size)
        self._topics = Topics(
            self._link,
            registry if registry is not None else default_registry,
            self._handlers,
            self._stream,
            max_delay=max_delay,
        )

    def __repr__(self) -> str:
        link = self._link
        state = "open" if link.open else "closed" if link.done else "connecting"
        return f"<Client {self.url} {state} topics={self._topics.names()}>"

    # Settings and state ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL connected to, with ``query`` added."""
        return self._link.url

    @url.setter
    def url(self, url: str) -> None:
        self._link.url = url

    @property
    def registry(self) -> EventRegistry:
        """Where wire names are looked up to build typed events."""
        return self._topics.registry

    @registry.setter
    def registry(self, registry: EventRegistry) -> None:
        self._topics.registry = registry

    @property
    def heartbeat_slack(self) -> float:
        """Seconds of silence tolerated beyond the server's heartbeat."""
        return self._link.heartbeat_slack

    @heartbeat_slack.setter
    def heartbeat_slack(self, heartbeat_slack: float) -> None:
        self._link.heartbeat_slack = heartbeat_slack

    @property
    def max_attempts(self) -> int | None:
        """Consecutive failed connection attempts before giving up; None: never."""
        return self._link.max_attempts

    @max_attempts.setter
    def max_attempts(self, max_attempts: int | None) -> None:
        self._link.max_attempts = max_attempts

    @property
    def welcome(self) -> Welcome | None:
        """The current connection's welcome frame; None while disconnected."""
        return self._link.welcome

    @property
    def connected(self) -> bool:
        """Whether a connection is open (its welcome frame received)."""
        return self._link.open

    @property
    def connection_id(self) -> str | None:
        """The server's id of the current connection; None while disconnected."""
        welcome = self._link.welcome
        return welcome.connection_id if welcome is not None else None

    @property
    def positions(self) -> dict[str, Position]:
        """Per topic, the position of the last item passed on to the app's side.

        Items may still wait in buffers; to persist what the app has processed, use the
        items' positions or :attr:`Subscription.position`.
        """
        return self._topics.ordering.positions

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if not self._link.started:  # not started with start() already
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
        if exc_type is None:
            final = self._link.unseen_final()
            if final is not None:
                raise final

    async def start(self) -> None:
        """Connect, and return once the server's welcome frame arrived.

        Retries with backoff meanwhile (``max_attempts`` bounds it); called by
        ``async with``.

        Raises:
            ClientClosed: The server refused for good (:class:`~budget_ws.HandshakeRefused`,
                a final close code, :class:`~budget_ws.ServerProtocolError`), or
                ``max_attempts`` failed.
        """
        # `_handle` is looked up per frame, not bound once: tests replace it.
        self._link.start(lambda websocket, frame: self._handle(websocket, frame), self._topics)
        try:
            await self._link.wait_open()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the connection with 1000 and stop; iterators end, waiting calls raise.

        Idempotent. Items still buffered are dropped.
        """
        if not await self._link.stop():
            return
        self._topics.finished(self._link.finish(None))
        self._link.stopped()

    async def _handle(self, websocket: ClientConnection, frame: ServerFrame) -> None:
        """One frame from the server, in the link's reader."""
        if isinstance(frame, Ping):
            await self._link.send(websocket, encode_pong())
        elif isinstance(frame, Welcome):
            self._link.welcomed(frame)
            await self._topics.welcomed()
        else:
            await self._topics.received(frame)

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Item:
        """The next item no subscription or handler took; ends when the client stops."""
        return await self._topics.take(self._stream)

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
        return Subscription(self._topics, topic, position, self.buffer_size)

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``: no more of its items, and no resubscribe after a reconnect.

        Its :class:`Subscription`, if any, ends. Does not wait for the server's answer.
        """
        await self._topics.unsubscribe(topic)

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
            websocket = await self._link.wait_open(stale)
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
