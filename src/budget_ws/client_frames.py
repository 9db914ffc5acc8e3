"""What a client's frames ask of the server: topics, and events for the app's handlers.

The :class:`~budget_ws.ConnectionManager` holds the public API (serving, publishing,
shutdown); this module answers each frame a connection's client sends, in that
connection's reader: ``subscribe`` and ``unsubscribe`` after checking the topic's name,
the app's ``authorize`` and the per-connection topic limit, and client events, validated
and handed to the handler registered with ``manager.on``. Whatever the client does, the
answer is a frame (``subscribed``, ``unsubscribed`` or a documented ``error``), never an
exception into the server.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .backends import Position
from .connection import Connection
from .errors import BackendError, EventValidationError, InvalidTopic, UnknownEvent
from .events import Event, EventRegistry
from .limits import Limits, validate_topic
from .presence import PresenceTracker
from .protocol import (
    ClientEvent,
    ClientFrame,
    CloseCode,
    ErrorCode,
    Subscribe,
    Unsubscribe,
    encode_unsubscribed,
)
from .topics import TopicRouter
from .users import UserDirectory, user_of_topic

__all__ = [
    "Action",
    "Authorize",
    "ClientFrames",
    "ClientMessage",
    "Handler",
    "subscribe_failed",
]

logger = logging.getLogger("budget_ws.manager")
"""The manager's logger: what the app's hooks and the backend do to one client's requests."""

E = TypeVar("E", bound=Event)

Action = Literal["subscribe", "publish", "presence"]
"""What a client asks ``authorize`` for: to receive a topic, to send an event to it, or
to see who is present on it."""

Authorize = Callable[[Any, str, Action], "bool | Awaitable[bool]"]


@dataclass(frozen=True, slots=True)
class ClientMessage(Generic[E]):
    """An event a client sent, validated, as passed to a handler registered with ``on``."""

    connection: Connection
    """The connection that sent it."""
    event: E
    """The validated event."""
    topic: str | None
    """The topic the client addressed it to, if any (already authorized)."""


Handler = Callable[[ClientMessage[Any]], Awaitable[None]]


class ClientFrames:
    """Answers the frames of every connection of one manager.

    Args:
        router: The manager's topics, which subscriptions attach to.
        registry: Where client events are looked up and validated.
        limits: The topic name and per-connection topic limits.
        authorize: The app's ``authorize(principal, topic, action)``, or None (allow all).
        handlers: The app's handlers by event name; the manager adds to it.
        users: The connections by user, which revocations reach.
        presence: Presence of topics, when the app tracks it.
        revoked: Called when a revocation took a topic from a connection, so that the
            manager drops the topic's backend subscription if it was the last
            (:attr:`to_release`).
    """

    def __init__(
        self,
        *,
        router: TopicRouter,
        registry: EventRegistry,
        limits: Limits,
        authorize: Authorize | None,
        handlers: Mapping[str, Handler],
        users: UserDirectory,
        presence: PresenceTracker | None = None,
        revoked: Callable[[], None] = lambda: None,
    ) -> None:
        self._router = router
        self.registry = registry
        self.limits = limits
        self._authorize = authorize
        self._handlers = handlers
        self._users = users
        self._presence = presence
        self._revoked = revoked
        # Topics the server subscribed each connection to: its client may resume them.
        self._server_side: dict[Connection, set[str]] = {}
        self.to_release: set[str] = set()
        """Topics revoked from connections, whose backend subscription may now be dropped."""

    async def handle(self, connection: Connection, frame: ClientFrame) -> None:
        """Answer one frame of ``connection``'s client, in its reader."""
        if isinstance(frame, Subscribe):
            await self._client_subscribe(connection, frame)
        elif isinstance(frame, Unsubscribe):
            if user_of_topic(frame.topic) is None and not self._topic_valid(
                connection, frame.topic, frame.id
            ):
                return
            if frame.topic in connection.topics:
                self._server_topics(connection).discard(frame.topic)
                await self._router.detach(connection, frame.topic)
            connection.push_control(encode_unsubscribed(frame.topic, frame.id))
        elif isinstance(frame, ClientEvent):
            await self._client_event(connection, frame)

    async def _client_subscribe(self, connection: Connection, frame: Subscribe) -> None:
        # Watched from before `authorize` is asked: a revocation that arrives while the
        # app's answer is on its way may have come too late for that answer.
        with self._users.watching(connection, frame.topic) as watch:
            await self._checked_subscribe(connection, frame)
        if watch.revoked and frame.topic in connection.topics:
            self._take_back(connection, frame.topic)

    async def _checked_subscribe(self, connection: Connection, frame: Subscribe) -> None:
        topic = frame.topic
        if not await self._subscribe_allowed(connection, frame):
            return
        if frame.presence and not await self._presence_allowed(connection, frame):
            return
        limit = self.limits.max_topics_per_connection
        if topic not in connection.topics and len(connection.topics) >= limit:
            connection.reject(
                ErrorCode.TOO_MANY_TOPICS,
                f"a connection may hold {limit} topics",
                frame.id,
                topic=topic,
            )
            return
        try:
            await self.subscribe(connection, topic, frame.position, frame.id)
            if frame.presence and self._presence is not None and topic in connection.topics:
                await self._presence.watch(connection, topic)
        except BackendError as exc:
            # An outage the docs describe, answered with backend_error: one line, no trace.
            subscribe_failed(connection, topic, exc, server_side=False)
            connection.reject(ErrorCode.BACKEND_ERROR, f"{exc}; retry later", frame.id, topic=topic)

    async def _subscribe_allowed(self, connection: Connection, frame: Subscribe) -> bool:
        """Whether the client may subscribe: its own user stream, a resumption of what
        the server subscribed it to, or what ``authorize`` allows."""
        topic = frame.topic
        owner = user_of_topic(topic)
        if owner is not None:
            if owner == connection.user:
                return True
            connection.reject(
                ErrorCode.FORBIDDEN, "a user stream is only its user's", frame.id, topic=topic
            )
            return False
        if frame.position is not None and topic in self._server_side.get(connection, ()):
            return True
        return await self._topic_allowed(connection, topic, "subscribe", frame.id)

    async def _presence_allowed(self, connection: Connection, frame: Subscribe) -> bool:
        topic = frame.topic
        if self._presence is None or not self._presence.options.tracks(topic):
            connection.reject(
                ErrorCode.PRESENCE_UNAVAILABLE,
                f"the server does not track presence on {topic!r}",
                frame.id,
                topic=topic,
            )
            return False
        if await self._allowed(connection, topic, "presence"):
            return True
        connection.reject(
            ErrorCode.FORBIDDEN, f"not allowed to see presence on {topic!r}", frame.id, topic=topic
        )
        return False

    async def _client_event(self, connection: Connection, frame: ClientEvent) -> None:
        handler = self._handlers.get(frame.event)
        if handler is None:
            connection.reject(
                ErrorCode.UNKNOWN_EVENT,
                f"the server accepts no event named {frame.event!r}",
                frame.id,
            )
            return
        topic = frame.topic
        if topic is not None and not await self._topic_allowed(
            connection, topic, "publish", frame.id
        ):
            return
        try:
            event = self.registry.validate(frame.event, frame.data)
        except EventValidationError as exc:
            connection.reject(ErrorCode.INVALID_EVENT, str(exc), frame.id, details=exc.errors)
            return
        except UnknownEvent as exc:
            connection.reject(ErrorCode.UNKNOWN_EVENT, str(exc), frame.id)
            return
        try:
            await handler(ClientMessage(connection, event, topic))
        except Exception:
            logger.exception(
                "handler for %r failed",
                frame.event,
                extra={
                    "budget_ws_event": "handler_failed",
                    "budget_ws_connection_id": connection.id,
                    "budget_ws_client_event": frame.event,
                    "budget_ws_topic": topic,
                },
            )
            connection.reject(
                ErrorCode.HANDLER_ERROR,
                f"the server failed to handle {frame.event!r}",
                frame.id,
            )

    async def _topic_allowed(
        self, connection: Connection, topic: str, action: Action, request_id: int | str | None
    ) -> bool:
        """Check a client's topic name and ``authorize``; answer with an error frame if not."""
        if not self._topic_valid(connection, topic, request_id):
            return False
        if await self._allowed(connection, topic, action):
            return True
        connection.reject(
            ErrorCode.FORBIDDEN, f"not allowed to {action} to {topic!r}", request_id, topic=topic
        )
        return False

    def _topic_valid(
        self, connection: Connection, topic: str, request_id: int | str | None
    ) -> bool:
        """Check a client's topic name; answer with an ``invalid_topic`` error if it is bad."""
        try:
            validate_topic(topic, self.limits.max_topic_length)
        except InvalidTopic as exc:
            connection.reject(ErrorCode.INVALID_TOPIC, str(exc), request_id)
            return False
        return True

    async def _allowed(self, connection: Connection, topic: str, action: Action) -> bool:
        if self._authorize is None:
            return True
        try:
            verdict = self._authorize(connection.principal, topic, action)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception(
                "authorize failed for %r on %r",
                connection,
                topic,
                extra={
                    "budget_ws_event": "authorize_failed",
                    "budget_ws_connection_id": connection.id,
                    "budget_ws_topic": topic,
                    "budget_ws_action": action,
                },
            )
            return False
        return verdict is True

    async def subscribe_server_side(self, connection: Connection, topics: tuple[str, ...]) -> None:
        """Subscribe a new connection to ``topics`` before it reads; 1013 if the backend fails."""
        for topic in topics:
            if connection.closed:
                return
            try:
                await self.subscribe(connection, topic, None, None)
                self._server_topics(connection).add(topic)
            except BackendError as exc:
                subscribe_failed(connection, topic, exc, server_side=True)
                connection.close(
                    CloseCode.TRY_AGAIN_LATER, f"could not subscribe to {topic}; try again later"
                )
                return

    async def subscribe(
        self,
        connection: Connection,
        topic: str,
        position: Position | None,
        request_id: int | str | None,
    ) -> None:
        """Subscribe ``connection`` to ``topic``, from ``position``; no checks.

        A revocation of the topic for the connection's user that arrives meanwhile takes
        the new subscription back as soon as it is made.
        """
        with self._users.watching(connection, topic) as watch:
            if topic in connection.topics:
                # A second subscribe restarts the subscription, resuming where it says.
                await self._router.detach(connection, topic)
            await self._router.attach(connection, topic, position, request_id)
        if watch.revoked and topic in connection.topics:
            self._take_back(connection, topic)

    def mark_server_side(self, connection: Connection, topic: str) -> None:
        """Record that the server subscribed ``connection`` to ``topic``."""
        self._server_topics(connection).add(topic)

    def _server_topics(self, connection: Connection) -> set[str]:
        topics = self._server_side.get(connection)
        if topics is None:
            topics = self._server_side[connection] = set()
        return topics

    def forget(self, connection: Connection) -> None:
        """``connection`` has closed."""
        self._server_side.pop(connection, None)

    def revoke(self, user: str, topic: str) -> None:
        """Take ``topic`` from every local connection of ``user`` at once, and from
        subscriptions of it still being made."""
        for connection in self._users.revoke(user, topic):
            self._take_back(connection, topic)

    def _take_back(self, connection: Connection, topic: str) -> None:
        self._router.drop(connection, topic)
        self._server_topics(connection).discard(topic)
        connection.push_control(encode_unsubscribed(topic, revoked=True))
        self.to_release.add(topic)
        self._revoked()


def subscribe_failed(
    connection: Connection, topic: str, error: BackendError, *, server_side: bool
) -> None:
    """One WARNING line, no traceback: a backend outage is a condition the docs describe."""
    logger.warning(
        "budget_ws: subscribing %r to %r failed: %s",
        connection,
        topic,
        error,
        extra={
            "budget_ws_event": "subscribe_failed",
            "budget_ws_connection_id": connection.id,
            "budget_ws_topic": topic,
            "budget_ws_error": str(error),
            "budget_ws_server_side": server_side,
        },
    )
