"""The ConnectionManager: connections, topics, publishing, recovery and shutdown."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel

from ._runtime import BackgroundTask, loop_clock
from .backends import (
    Backend,
    Position,
    PresenceBackend,
    SignalBackend,
    TransactionalBackend,
    create_backend,
)
from .client_frames import (
    Action,
    Authorize,
    ClientFrames,
    ClientMessage,
    Handler,
)
from .connection import Connection, Transport
from .errors import (
    BackendCapabilityMissing,
    BackendError,
    ConnectionIdInUse,
    EventTooLarge,
    InvalidUser,
    ManagerClosed,
    TransactionalPublishUnsupported,
)
from .events import Event, EventRegistry, default_registry
from .limits import Heartbeat, Limits, OutboxLimits, validate_topic
from .metrics import Metrics
from .pacemaker import Pacemaker
from .presence import Presence, PresenceOptions, PresenceTracker, encode_info
from .propagation import CLIENT_CONTEXT_BYTES, Tracer, attach_context, publish_time
from .protocol import (
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    encode_event,
    encode_unsubscribed,
    welcome_encoder,
)
from .topics import TopicRouter
from .users import Identify, User, UserDirectory, user_topic

ConnectionHook = Callable[[Connection], Awaitable[None]]

__all__ = ["Action", "ClientMessage", "ConnectionManager", "Stats"]

logger = logging.getLogger("budget_ws.manager")
_NO_SPAN = nullcontext()  # reusable: it holds no state
"""Lines about connections as a whole, topics and the app's hooks; see
``docs/reference/logging.md``."""

# Room for `,"topic":…,"offset":…,"epoch":"…"` added to a payload per topic.
_POSITION_FIELDS = 64

E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of one manager's activity, for health checks and metrics."""

    connections: int
    """Connections being served now."""
    topics: int
    """Topics with at least one local subscriber."""
    subscriptions: int
    """Subscriptions of the connections being served (one per connection and topic)."""
    queued_frames: int
    """Frames waiting in all outboxes."""
    queued_bytes: int
    """Size of those frames."""
    published: int
    """Events published through this manager."""
    delivered: int
    """Frames written to client transports."""
    dropped: int
    """Frames dropped by the drop-oldest policy."""
    slow_consumer_disconnects: int
    """Connections closed because their outbox overflowed."""
    backend: str
    """The backend's description."""
    backend_status: dict[str, Any]
    """What the backend reports of itself (e.g. whether its pub/sub connection is up)."""


class ConnectionManager:
    """Serves WebSocket connections and broadcasts events to them by topic.

    Framework-agnostic: adapters hand it an accepted WebSocket wrapped as a
    :class:`~budget_ws.Transport`. Publishing never waits on a client: each event is
    encoded once and put in every subscriber's bounded outbox, and one writer task per
    connection drains it.

    Args:
        backend: A :class:`~budget_ws.Backend`, or a URL such as ``"memory://"`` or
            ``"redis://localhost:6379/0"``. The manager opens and closes it.
        registry: The events clients may send are looked up here.
        authorize: ``authorize(principal, topic, action)`` decides whether a client may
            subscribe to (``"subscribe"``) or send an event to (``"publish"``) a topic;
            it may be async. Without it, every topic is allowed.
        limits: What one client may send.
        outbox: Bounds of each connection's send queue and the slow-consumer policy.
        heartbeat: Ping interval and pong timeout.
        shutdown_timeout: Seconds :meth:`aclose` lets connections drain before it
            closes them anyway.
        max_connections: Connections served at once at most; more are closed with 1013
            (try again later) so their clients back off. Unlimited by default.
        on_connect: Awaited with each new connection before it reads its first frame
            (e.g. to subscribe it to topics server-side).
        on_disconnect: Awaited with each connection after it has closed.
        tracer: Traces publishing and fan-out, such as
            :class:`budget_ws.tracing.OpenTelemetryTracer`; untraced by default.
        identify: ``identify(principal)`` returns the connection's
            :class:`~budget_ws.User` (or a bare user id, or None for an anonymous
            connection); it may be async. An identified connection is subscribed to its
            user's own stream (:meth:`publish_to_user`), counted in presence, and reached
            by :meth:`disconnect_user` and :meth:`unsubscribe_user`.
        presence: Track who is present on topics (:meth:`presence`, and ``presence``
            frames for clients that ask); needs ``identify`` and a backend that stores
            presence (memory, Redis, PostgreSQL).

    Raises:
        BackendCapabilityMissing: ``presence`` was given with a backend that cannot store
            it.
        InvalidLimit: A ``presence`` frame of ``max_members`` users with the largest
            ``info`` would not fit in ``OutboxLimits.max_bytes``.
    """

    def __init__(
        self,
        backend: Backend | str = "memory://",
        *,
        registry: EventRegistry | None = None,
        authorize: Authorize | None = None,
        limits: Limits | None = None,
        outbox: OutboxLimits | None = None,
        heartbeat: Heartbeat | None = None,
        shutdown_timeout: float = 10.0,
        max_connections: int | None = None,
        on_connect: ConnectionHook | None = None,
        on_disconnect: ConnectionHook | None = None,
        tracer: Tracer | None = None,
        identify: Identify | None = None,
        presence: PresenceOptions | None = None,
    ) -> None:
        self.backend: Backend = create_backend(backend) if isinstance(backend, str) else backend
        self._identify = identify
        self._presence: PresenceTracker | None = None
        if presence is not None:
            if not isinstance(self.backend, PresenceBackend):
                raise BackendCapabilityMissing(
                    f"{self.backend!r} cannot store presence; the memory, Redis and "
                    "PostgreSQL backends can"
                )
            presence.check_fits(outbox or OutboxLimits())
            self._presence = PresenceTracker(self.backend, presence)
        self.registry = registry if registry is not None else default_registry
        self.limits = limits or Limits()
        self.outbox_limits = outbox or OutboxLimits()
        self.heartbeat = heartbeat or Heartbeat()
        self.shutdown_timeout = shutdown_timeout
        self.max_connections = max_connections
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._tracer = tracer
        # No round trip to trace when the backend delivers inside publish(), in-process.
        self._backend_in_process = bool(getattr(self.backend, "in_process", False))
        self._handlers: dict[str, Handler] = {}
        self._connections: dict[str, Connection] = {}
        self._metrics = Metrics()
        self._router = TopicRouter(
            self.backend,
            max_replay=self.outbox_limits.max_replay,
            metrics=self._metrics,
            tracer=tracer,
            membership=self._presence,
        )
        self._users = UserDirectory()
        self._frames = ClientFrames(
            router=self._router,
            registry=self.registry,
            limits=self.limits,
            authorize=authorize,
            handlers=self._handlers,
            users=self._users,
            presence=self._presence,
            revoked=self._wake_releases,
        )
        self._welcome = welcome_encoder(
            self.heartbeat.interval, self.heartbeat.timeout, self.limits.describe()
        )
        self._clock: Callable[[], float] = anyio.current_time
        """The event loop's clock, once the manager runs on it."""
        self._pacemaker = Pacemaker(self.heartbeat)
        self._heartbeats = BackgroundTask(self._pacemaker.run, "budget_ws heartbeats")
        self._revocations = BackgroundTask(self._release_revoked, "budget_ws revocations")
        self._revoked = anyio.Event()
        self._presence_task = (
            BackgroundTask(
                functools.partial(self._presence.run, self._signal), "budget_ws presence"
            )
            if self._presence is not None
            else None
        )
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self._idle = anyio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return (
            f"<ConnectionManager {self._state} backend={self.backend!r} "
            f"connections={len(self._connections)}>"
        )

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ConnectionManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the backend; called by ``async with``."""
        if self._state != "new":
            raise ManagerClosed(f"a ConnectionManager can be started once; it is {self._state}")
        self._clock = loop_clock()
        await self.backend.__aenter__()
        try:
            if isinstance(self.backend, SignalBackend):
                await self.backend.listen_signals(self._on_signal)
        except BaseException:
            await self.backend.aclose()
            raise
        self._heartbeats.start()
        self._revocations.start()
        if self._presence_task is not None:
            self._presence_task.start()
        self._state = "running"

    async def aclose(self) -> None:
        """Shut down gracefully.

        Stops accepting connections, closes every connection with 1012 (service restart)
        after writing what is already queued, waits up to ``shutdown_timeout`` for them,
        closes the rest without draining, then closes the backend.
        """
        if self._state in ("closing", "closed"):
            await self._idle.wait()
            return
        was_running = self._state == "running"
        self._state = "closing"
        try:
            for connection in list(self._connections.values()):
                connection.close(CloseCode.SERVICE_RESTART, "server shutting down")
            with anyio.move_on_after(self.shutdown_timeout, shield=True):
                await self._idle.wait()
            for connection in list(self._connections.values()):
                connection.close(CloseCode.SERVICE_RESTART, "server shutting down", drain=False)
            with anyio.CancelScope(shield=True):
                await self._idle.wait()
        finally:
            self._state = "closed"
            if was_running:
                with anyio.CancelScope(shield=True):
                    await self._heartbeats.stop()
                    await self._revocations.stop()
                    await self._stop_presence()
            # Outside any scope opened here: a backend may close a task group that
            # `start()` opened, which must be the innermost scope when it exits.
            if was_running:
                await self.backend.aclose()

    @property
    def running(self) -> bool:
        """Whether the manager accepts connections and publishes."""
        return self._state == "running"

    @property
    def state(self) -> Literal["new", "running", "closing", "closed"]:
        """Where the manager is in its life: ``"new"`` until :meth:`start`, ``"running"``,
        ``"closing"`` while :meth:`aclose` drains the connections, then ``"closed"``."""
        return self._state

    def _check_running(self) -> None:
        if self._state != "running":
            raise ManagerClosed(
                f"the ConnectionManager is {self._state}; use it inside `async with manager:`"
            )

    # Handlers --------------------------------------------------------------------------

    def on(
        self, event_class: type[E]
    ) -> Callable[
        [Callable[[ClientMessage[E]], Awaitable[None]]],
        Callable[[ClientMessage[E]], Awaitable[None]],
    ]:
        """Register the handler of an event that clients may send.

        Only events with a handler are accepted from clients; others get an
        ``unknown_event`` error frame. Handlers run in the connection's reader, one frame
        at a time per connection::

            @manager.on(NoteAdded)
            async def note_added(message: ClientMessage[NoteAdded]) -> None:
                await manager.publish(message.event, topic=message.topic)
        """
        self.registry.register(event_class)

        def decorator(
            handler: Callable[[ClientMessage[E]], Awaitable[None]],
        ) -> Callable[[ClientMessage[E]], Awaitable[None]]:
            self._handlers[event_class.event_name] = handler
            return handler

        return decorator

    # Serving connections ---------------------------------------------------------------

    async def serve(
        self,
        transport: Transport,
        *,
        principal: Any = None,
        connection_id: str | None = None,
        topics: Iterable[str] = (),
        answers_pings: bool = True,
        one_frame_per_message: bool = False,
    ) -> None:
        """Serve one accepted WebSocket until it closes.

        Sends the welcome frame, answers the client's frames, and delivers the events of
        its topics. Returns when the client leaves or the connection is closed; never
        raises because of what the client did. During shutdown, the transport is closed at
        once with 1012.

        Args:
            transport: The accepted WebSocket.
            principal: Who is connected (from the adapter's ``authenticate``); passed to
                ``authorize``.
            connection_id: Identifier to use instead of a random one.
            topics: Topics to subscribe the connection to from the server side before it
                reads its first frame, as :meth:`subscribe` does. If the backend fails,
                the connection is closed with 1013 (try again later).
            answers_pings: False for a client that never answers the protocol's ping
                (see :mod:`budget_ws.compat`): no heartbeat closes it, so the WebSocket
                server's own ping must check its link.
            one_frame_per_message: Never join frames into one message, for a client that
                parses each message as one frame: the writer takes frames one at a time,
                so those not yet sent still count against the outbox's bounds.

        Raises:
            InvalidTopic: One of ``topics`` breaks the naming rules (nothing is sent).
            ConnectionIdInUse: ``connection_id`` names a connection being served.
        """
        topics = (topics,) if isinstance(topics, str) else tuple(topics)
        for topic in topics:
            validate_topic(topic, self.limits.max_topic_length)
        connection = Connection(
            transport,
            principal=principal,
            connection_id=connection_id,
            limits=self.limits,
            outbox_limits=(
                dataclasses.replace(self.outbox_limits, max_batch_bytes=1)
                if one_frame_per_message
                else self.outbox_limits
            ),
            metrics=self._metrics,
            clock=self._clock,
        )
        if self._state != "running":
            if self._state == "new":
                raise ManagerClosed("start the ConnectionManager (`async with manager:`) first")
            connection.close(CloseCode.SERVICE_RESTART, "server shutting down")
            await connection.run(self._frames.handle)
            return
        if connection.id in self._connections:
            raise ConnectionIdInUse(f"connection id {connection.id!r} is already in use")
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            logger.info(
                "budget_ws: connection %s refused with 1013: %d connections already "
                "(max_connections)",
                connection.id,
                len(self._connections),
                extra={
                    "budget_ws_event": "connection_refused",
                    "budget_ws_connection_id": connection.id,
                    "budget_ws_close_code": int(CloseCode.TRY_AGAIN_LATER),
                    "budget_ws_limit": "ConnectionManager.max_connections",
                    "budget_ws_limit_value": self.max_connections,
                },
            )
            self._metrics.handshake_refusals["max_connections"] += 1
            connection.close(CloseCode.TRY_AGAIN_LATER, "server full; try again later")
            await connection.run(self._frames.handle)
            return
        self._connections[connection.id] = connection
        self._metrics.connections_opened += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        if answers_pings:
            self._pacemaker.add(connection)
        try:
            if self._identify is not None:
                identifying_since = self._clock()
                if await self._identified(connection):
                    ended = self._users.add(connection, identifying_since)
                    if ended is not None:  # disconnect_user arrived while identify ran
                        connection.close(*ended)
                    topics = (user_topic(connection.user), *topics)  # type: ignore[arg-type]
            connection.push_control(self._welcome(connection.id, connection.user))
            if topics:
                await self._frames.subscribe_server_side(connection, topics)
            if self._on_connect is not None and not connection.closed:
                try:
                    await self._on_connect(connection)
                except Exception:
                    logger.exception(
                        "on_connect failed for %r",
                        connection,
                        extra={
                            "budget_ws_event": "on_connect_failed",
                            "budget_ws_connection_id": connection.id,
                        },
                    )
                    connection.close(CloseCode.INTERNAL_ERROR, "on_connect failed")
            await connection.run(self._frames.handle)
        finally:
            self._pacemaker.remove(connection)
            with anyio.CancelScope(shield=True):
                for topic in list(connection.topics):
                    await self._router.detach(connection, topic)
                self._users.remove(connection)
                self._frames.forget(connection)
                del self._connections[connection.id]
                if not self._connections:
                    self._idle.set()
                if self._on_disconnect is not None:
                    try:
                        await self._on_disconnect(connection)
                    except Exception:
                        logger.exception(
                            "on_disconnect failed for %r",
                            connection,
                            extra={
                                "budget_ws_event": "on_disconnect_failed",
                                "budget_ws_connection_id": connection.id,
                            },
                        )

    async def _identified(self, connection: Connection) -> bool:
        """Give ``connection`` its user from ``identify``; on a failure, close it with 1011."""
        assert self._identify is not None
        try:
            found = self._identify(connection.principal)
            if inspect.isawaitable(found):
                found = await found
            if found is None:
                return False
            user = found if isinstance(found, User) else User(found)
            user_topic(user.id)  # checks the id
            presence = self._presence
            if presence is not None:
                info = encode_info(user.info, presence.options.max_info_bytes)
        except InvalidUser as exc:
            logger.error(
                "budget_ws: identify gave an unusable user for %r: %s",
                connection,
                exc,
                extra={
                    "budget_ws_event": "identify_failed",
                    "budget_ws_connection_id": connection.id,
                },
            )
            connection.close(CloseCode.INTERNAL_ERROR, "the server could not identify the user")
            return False
        except Exception:
            logger.exception(
                "identify failed for %r",
                connection,
                extra={
                    "budget_ws_event": "identify_failed",
                    "budget_ws_connection_id": connection.id,
                },
            )
            connection.close(CloseCode.INTERNAL_ERROR, "the server could not identify the user")
            return False
        connection.user = user.id
        if presence is not None:
            presence.identified(user.id, info)
        return True

    @property
    def connections(self) -> dict[str, Connection]:
        """The connections being served, by id (a copy)."""
        return dict(self._connections)

    # Topics ----------------------------------------------------------------------------

    async def subscribe(
        self, connection: Connection, topic: str, *, position: Position | None = None
    ) -> None:
        """Subscribe a connection to a topic from the server side.

        Neither ``authorize`` nor the per-connection topic limit applies: the server
        decides. The client receives a ``subscribed`` frame (without an ``id``), and the
        missed events when ``position`` is given and recoverable.

        Raises:
            InvalidTopic: The topic name breaks the naming rules.
            BackendError: The backend failed to subscribe the topic.
        """
        self._check_running()
        validate_topic(topic, self.limits.max_topic_length)
        await self._frames.subscribe(connection, topic, position, None)
        self._frames.mark_server_side(connection, topic)

    async def unsubscribe(self, connection: Connection, topic: str) -> None:
        """Unsubscribe a connection from a topic; the client gets an ``unsubscribed`` frame."""
        if topic in connection.topics:
            await self._router.detach(connection, topic)
            connection.push_control(encode_unsubscribed(topic))

    # Publishing ------------------------------------------------------------------------

    async def publish(self, event: Event, *, topic: str, within: object = None) -> Position:
        """Publish an event to every subscriber of ``topic``, on every worker.

        The event is encoded once; no client socket is awaited. Subscribers that
        reconnect within the backend's history window recover it.

        Args:
            event: The event.
            topic: Where it goes.
            within: The app's open database transaction (SQLAlchemy's ``AsyncSession``
                or ``AsyncConnection``, or an asyncpg connection in a transaction): the
                event is then delivered if and only if that transaction commits. Needs
                the PostgreSQL backend (see ``docs/topics/transactional-publish.md``).

        Returns:
            The position the event got in its topic (with ``within``, if it commits).

        Raises:
            InvalidTopic: The topic name breaks the naming rules.
            ManagerClosed: The manager is not running.
            EventTooLarge: The event's frame would exceed ``OutboxLimits.max_bytes``
                (its position, and the trace context when the tracer passes it to
                clients, counted in).
            TransactionalPublishUnsupported: ``within`` was given to a backend that
                cannot publish in a transaction, or is not a transaction it understands.
            TypeError: ``event`` is not an :class:`~budget_ws.Event`.
        """
        self._check_running()
        validate_topic(topic, self.limits.max_topic_length)
        return await self._publish(event, topic, within)

    async def publish_to_user(self, user_id: str, event: Event) -> Position:
        """Publish an event to every connection of a user, on every worker.

        The user's stream (the topic ``~user:<id>``) is a topic like any other: its events
        have offsets, and a tab that reconnects within the history window recovers what
        it missed. Every connection that ``identify`` gave this user is subscribed to it by
        the server.

        Returns:
            The position the event got in the user's stream.

        Raises:
            InvalidUser: ``user_id`` is not a valid user id.
            ManagerClosed: The manager is not running.
            EventTooLarge: As for :meth:`publish`.
        """
        self._check_running()
        return await self._publish(event, user_topic(user_id), None)

    async def _publish(self, event: Event, topic: str, within: object) -> Position:
        backend_publish: Callable[[str, bytes], Awaitable[Position]] = self.backend.publish
        if within is not None:
            backend_publish = self._publisher_within(within)
        metrics = self._metrics
        latency = metrics.publish_latency
        # Timed: the event carries when it was published, so that the worker that writes
        # it to a client counts its latency from here, not from its own fan-out. An
        # in-process backend fans out inside this call: no stamp to carry or read back.
        published = None if latency is None or self._backend_in_process else publish_time()
        tracer = self._tracer
        extra = len(topic) + _POSITION_FIELDS
        if tracer is not None and tracer.context_to_clients:
            extra += CLIENT_CONTEXT_BYTES
        payload = self._encode(event, extra=extra)
        try:
            if tracer is not None:
                position = await self._publish_traced(
                    tracer, event, topic, payload, published, backend_publish
                )
            elif latency is not None:
                payload = attach_context(payload, published=published)
                started = time.perf_counter()
                position = await backend_publish(topic, payload)
                latency.observe(time.perf_counter() - started)
            else:
                position = await backend_publish(topic, payload)
        except BackendError:
            metrics.publish_failures += 1
            raise
        metrics.published += 1
        if self._router.take_crowded():
            # Frames pile up in some outbox: let the writers run before the next event,
            # so a burst larger than an outbox is not mistaken for slow consumers.
            await anyio.lowlevel.checkpoint()
        return position

    def _publisher_within(self, transaction: object) -> Callable[[str, bytes], Awaitable[Position]]:
        """The backend's publish inside ``transaction``, or a clear refusal."""
        backend = self.backend
        if not isinstance(backend, TransactionalBackend):
            raise TransactionalPublishUnsupported(
                f"{backend!r} cannot publish inside a database transaction "
                "(publish(..., within=...)); the PostgreSQL backend can"
            )
        return functools.partial(backend.publish_within, transaction)

    async def _publish_traced(
        self,
        tracer: Tracer,
        event: Event,
        topic: str,
        payload: bytes,
        published: int | None,
        backend_publish: Callable[[str, bytes], Awaitable[Position]],
    ) -> Position:
        with tracer.publish(topic, event.event_name) as span:
            payload = attach_context(payload, span.traceparent, published)
            latency = self._metrics.publish_latency
            with _NO_SPAN if self._backend_in_process else span.backend():
                started = time.perf_counter()
                position = await backend_publish(topic, payload)
                if latency is not None:
                    latency.observe(time.perf_counter() - started)
            span.published(position)
            return position

    # Users and presence -------------------------------------------------------------------

    async def presence(self, topic: str) -> Presence:
        """Who is present on ``topic`` now, across every worker.

        A user is present once, whatever the number of their connections holding the
        topic. Changes show within the presence writes' pace (a few milliseconds after a
        subscribe on an idle worker); a crashed worker's users disappear after
        ``PresenceOptions.ttl``.

        Raises:
            BackendCapabilityMissing: The manager was made without ``presence``.
            InvalidTopic: The topic name breaks the naming rules.
            BackendError: The backend could not be read.
        """
        self._check_running()
        validate_topic(topic, self.limits.max_topic_length)
        if self._presence is None:
            raise BackendCapabilityMissing(
                "this ConnectionManager does not track presence: pass presence=PresenceOptions()"
            )
        return await self._presence.presence(topic)

    async def unsubscribe_user(self, user_id: str, topic: str) -> None:
        """Take ``topic`` away from every connection of a user, on every worker.

        Each gets an ``unsubscribed`` frame with ``"reason": "revoked"``, and the bundled
        client does not subscribe to the topic again on its own. Change what ``authorize``
        answers *before* calling this: a subscribe of the topic by that user still being
        made when the revocation reaches its worker is taken back once made, and later
        ones ask ``authorize``.

        Raises:
            InvalidUser: ``user_id`` is not a valid user id.
            InvalidTopic: The topic name breaks the naming rules.
            BackendCapabilityMissing: The backend cannot signal other workers.
            BackendError: The backend could not pass the revocation on.
        """
        self._check_running()
        user_topic(user_id)
        validate_topic(topic, self.limits.max_topic_length)
        await self._signal({"k": "u", "u": user_id, "t": topic})

    async def disconnect_user(
        self, user_id: str, *, code: int = CloseCode.DISCONNECTED, reason: str = ""
    ) -> None:
        """Close every connection of a user, on every worker (logout, removal).

        Args:
            user_id: Whose connections.
            code: The close code: 4010 by default, after which the bundled client does not
                reconnect; 1000, 1012, 1013 or an application code from 3000 to 4999.
            reason: Told to the client; at most 123 bytes as UTF-8.

        Raises:
            InvalidUser: ``user_id`` is not a valid user id.
            ValueError: ``code`` or ``reason`` cannot be sent in a close frame.
            BackendCapabilityMissing: The backend cannot signal other workers.
            BackendError: The backend could not pass the request on.
        """
        self._check_running()
        user_topic(user_id)
        if (
            isinstance(code, bool)
            or not isinstance(code, int)
            or not (code in (1000, 1012, 1013) or 3000 <= code <= 4999)
        ):
            raise ValueError(f"close code {code!r} must be 1000, 1012, 1013 or 3000-4999")
        if len(reason.encode()) > MAX_CLOSE_REASON_BYTES:
            raise ValueError(f"a close reason holds at most {MAX_CLOSE_REASON_BYTES} bytes")
        await self._signal({"k": "d", "u": user_id, "c": int(code), "r": reason})

    async def _signal(self, message: dict[str, Any]) -> None:
        backend = self.backend
        if not isinstance(backend, SignalBackend):
            raise BackendCapabilityMissing(
                f"{backend!r} cannot signal other workers; the memory, Redis and PostgreSQL "
                "backends can"
            )
        # UTF-8 as is: the size the presence batches count, not 6 bytes per \u escape.
        payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        await backend.signal(payload)

    def _on_signal(self, payload: bytes) -> None:
        """A signal from any worker (this one included): apply it to local connections."""
        try:
            message = json.loads(payload)
            kind = message["k"]
            if kind == "p" and self._presence is not None:
                self._presence.on_signal(message, anyio.current_time())
            elif kind == "u":
                self._frames.revoke(str(message["u"]), str(message["t"]))
            elif kind == "d":
                code, reason = int(message["c"]), str(message["r"])
                for connection in self._users.disconnect(str(message["u"]), code, reason):
                    connection.close(code, reason)
        except (ValueError, TypeError, KeyError, IndexError):
            # Another program on the same Redis prefix or PostgreSQL schema, or a
            # manager of an incompatible version: nothing of it is applied.
            logger.warning(
                "budget_ws: ignored a signal that is not the manager's: %r",
                payload[:80],
                extra={"budget_ws_event": "foreign_signal"},
            )

    def _wake_releases(self) -> None:
        self._revoked.set()

    async def _release_revoked(self) -> None:
        """Drop backend subscriptions that revocations left without a local subscriber."""
        while True:
            await self._revoked.wait()
            self._revoked = anyio.Event()
            while self._frames.to_release:
                await self._router.release(self._frames.to_release.pop())

    async def _stop_presence(self) -> None:
        if self._presence_task is None or self._presence is None:
            return
        await self._presence_task.stop()
        try:
            with anyio.fail_after(self.shutdown_timeout):
                await self._presence.forget(self._signal)
        except (BackendError, TimeoutError) as exc:
            logger.warning(
                "budget_ws: could not remove this worker's presence (it expires after the TTL): %s",
                exc,
                extra={"budget_ws_event": "presence_failed", "budget_ws_error": str(exc)},
            )

    async def position(self, topic: str) -> Position:
        """The topic's latest position.

        Render it into a page together with the state it shows; the browser client then
        subscribes from it (``subscribe(topic, {position})``) and recovers every event
        published between rendering and subscribing.

        Raises:
            InvalidTopic: The topic name breaks the naming rules.
            BackendError: The backend could not be read.
        """
        self._check_running()
        validate_topic(topic, self.limits.max_topic_length)
        return (await self.backend.history(topic, None, 0)).position

    async def send(self, connection: Connection, event: Event) -> None:
        """Send an event to one connection, outside any topic (not recoverable).

        Never waits on the client; lets the connection's writer run when its outbox is
        past half full, as :meth:`publish` does.
        """
        self._check_running()
        if connection.push(self._encode(event).decode()):
            await anyio.lowlevel.checkpoint()

    async def broadcast(self, event: Event) -> int:
        """Send an event to every connection of *this* manager, outside any topic.

        Not recoverable and local to this worker; to reach every client of every
        worker, publish to a topic they all subscribe to.

        Returns:
            The number of connections the event was queued for.
        """
        self._check_running()
        frame = self._encode(event).decode()
        connections = list(self._connections.values())
        crowded = False
        for connection in connections:
            crowded = connection.push(frame) or crowded
        if crowded:
            await anyio.lowlevel.checkpoint()
        return len(connections)

    def _encode(self, event: Event, extra: int = 0) -> bytes:
        if not isinstance(event, Event):
            raise TypeError(f"expected a budget_ws.Event, not {type(event).__name__}")
        payload = encode_event(event)
        if len(payload) + extra > self.outbox_limits.max_bytes:
            raise EventTooLarge(
                f"{event.event_name!r} encodes to {len(payload)} bytes, more than "
                f"OutboxLimits.max_bytes ({self.outbox_limits.max_bytes}): no client could "
                "receive it"
            )
        return payload

    # Introspection ---------------------------------------------------------------------

    @property
    def metrics(self) -> Metrics:
        """Counters and timings of this manager, for exporters such as
        :mod:`budget_ws.prometheus` (see ``docs/reference/metrics.md``)."""
        return self._metrics

    def stats(self) -> Stats:
        """Return counters and gauges of this manager."""
        connections = list(self._connections.values())
        metrics = self._metrics
        return Stats(
            connections=len(connections),
            topics=len(self._router),
            subscriptions=sum(len(connection.topics) for connection in connections),
            queued_frames=sum(connection.queued_frames for connection in connections),
            queued_bytes=sum(connection.queued_bytes for connection in connections),
            published=metrics.published,
            delivered=metrics.delivered,
            dropped=metrics.dropped + sum(c.dropped_frames for c in connections),
            slow_consumer_disconnects=metrics.slow_consumers,
            backend=repr(self.backend),
            backend_status=_backend_status(self.backend),
        )

    def topic_connections(self, topic: str) -> Iterable[Connection]:
        """The local connections subscribed to ``topic``."""
        return self._router.connections(topic)


def _backend_status(backend: Backend) -> dict[str, Any]:
    # `status()` is optional for third-party backends.
    status = getattr(backend, "status", None)
    if status is None:
        return {}
    try:
        return dict(status())
    except Exception as exc:
        return {"error": repr(exc)}
