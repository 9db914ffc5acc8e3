"""Users: who a connection belongs to, their own event stream, and taking access away.

The app's ``identify`` hook turns a principal into a :class:`User`. Every connection of an
identified user is subscribed by the server to the user's own stream, the topic
``~user:<id>``: events published there with ``publish_to_user`` reach every tab and
device of that user on every worker, with offsets and recovery like any topic, and no
app topic can be named like it (``~`` is outside the topic alphabet).

Revocation travels to every worker as a signal of the backend; each worker applies it to
its own connections of the user. A subscription still being made when the signal arrives
is watched, and taken back once made, so a resubscribe in flight cannot win the race.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import anyio

from .connection import Connection
from .errors import InvalidUser

__all__ = [
    "USER_TOPIC_PREFIX",
    "Identify",
    "User",
    "UserDirectory",
    "user_of_topic",
    "user_topic",
    "validate_user_id",
]

logger = logging.getLogger("budget_ws.users")

USER_TOPIC_PREFIX = "~user:"
"""User streams are topics named ``~user:<id>``."""

MAX_USER_ID_LENGTH = 64
_IDENTIFY_WINDOW = 60.0
"""Seconds a disconnect_user is remembered for connections still being identified."""
_USER_ID = re.compile(r"[A-Za-z0-9_.:@/=+\-]{1,64}")


@dataclass(frozen=True, slots=True)
class User:
    """Who a connection belongs to, as the app's ``identify`` hook says."""

    id: str
    """Stable and unique per user: 1 to 64 characters of ``A-Z a-z 0-9 _ . : @ / = + -``."""
    info: Mapping[str, Any] = field(default_factory=dict)
    """What other users may see of this one in presence (JSON; a name, an avatar URL).
    Never the principal itself: the app chooses what is public."""


Identify = Callable[[Any], "User | str | Awaitable[User | str | None] | None"]
"""``identify(principal)``: the connection's user, a bare user id, or None (anonymous)."""


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is a valid user id.

    Raises:
        InvalidUser: It is not a string of 1 to 64 allowed characters.
    """
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        shown = repr(user_id)[:70]
        raise InvalidUser(
            f"user id {shown} must be 1 to {MAX_USER_ID_LENGTH} characters of "
            "A-Z a-z 0-9 _ . : @ / = + -"
        )
    return user_id


def user_topic(user_id: str) -> str:
    """The topic of ``user_id``'s own stream.

    Raises:
        InvalidUser: ``user_id`` is not a valid user id.
    """
    return USER_TOPIC_PREFIX + validate_user_id(user_id)


def user_of_topic(topic: str) -> str | None:
    """The user whose stream ``topic`` is, or None for any other topic."""
    if topic.startswith(USER_TOPIC_PREFIX):
        return topic[len(USER_TOPIC_PREFIX) :]
    return None


@dataclass(eq=False)
class _Watch:
    """A subscription being made while its user's access may be taken away."""

    revoked: bool = False


class UserDirectory:
    """This worker's connections by user, and the revocations that reach them."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self._connections: dict[str, set[Connection]] = {}
        self._watches: dict[tuple[str, str], list[_Watch]] = {}
        self._clock = clock
        # user -> (when, close code, reason) of recent disconnect_user signals, for the
        # connections whose identify was still running when one arrived.
        self._disconnected: dict[str, tuple[float, int, str]] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: Connection, since: float) -> tuple[int, str] | None:
        """Count ``connection`` as one of its user's, identified from ``since`` on.

        Returns the close code and reason of a ``disconnect_user`` of that user that
        arrived after ``since`` (the connection must close too), or None.
        """
        user = connection.user
        if user is None:
            return None
        self._connections.setdefault(user, set()).add(connection)
        ended = self._disconnected.get(user)
        return (ended[1], ended[2]) if ended is not None and ended[0] >= since else None

    def disconnect(self, user: str, code: int, reason: str) -> frozenset[Connection]:
        """Note a ``disconnect_user``; return the local connections of ``user``."""
        now = self._clock()
        for other, (when, _, _) in list(self._disconnected.items()):
            if now - when > _IDENTIFY_WINDOW:
                del self._disconnected[other]
        self._disconnected[user] = (now, code, reason)
        return self.of(user)

    def remove(self, connection: Connection) -> None:
        """Forget ``connection``."""
        user = connection.user
        connections = self._connections.get(user) if user is not None else None
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._connections[user]  # type: ignore[arg-type]

    def of(self, user: str) -> frozenset[Connection]:
        """The local connections of ``user``."""
        return frozenset(self._connections.get(user, ()))

    def watching(self, connection: Connection, topic: str) -> AbstractContextManager[_Watch]:
        """Watch for a revocation of ``topic`` for ``connection``'s user while subscribing:
        once the subscription is made, ``watch.revoked`` says whether to take it back."""
        if connection.user is None:  # nothing revokes an anonymous subscription
            return nullcontext(_Watch())
        return self._watching(connection.user, topic)

    @contextmanager
    def _watching(self, user: str, topic: str) -> Iterator[_Watch]:
        watch = _Watch()
        key = (user, topic)
        self._watches.setdefault(key, []).append(watch)
        try:
            yield watch
        finally:
            watches = self._watches[key]
            watches.remove(watch)
            if not watches:
                del self._watches[key]

    def revoke(self, user: str, topic: str) -> list[Connection]:
        """Mark subscriptions of ``user`` to ``topic`` in flight as revoked; return the
        local connections of ``user`` holding ``topic`` now."""
        for watch in self._watches.get((user, topic), ()):
            watch.revoked = True
        return [c for c in self._connections.get(user, ()) if topic in c.topics]
