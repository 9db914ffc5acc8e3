"""Limits that keep one client from hurting the server or the other clients."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import InvalidLimit, InvalidTopic

__all__ = ["Heartbeat", "Limits", "OutboxLimits", "SlowConsumerPolicy", "validate_topic"]

_TOPIC_CHARACTERS = re.compile(r"[A-Za-z0-9_.:@/=+\-]+")


class SlowConsumerPolicy(str, enum.Enum):
    """What happens when a client's outbox is full."""

    DISCONNECT = "disconnect"
    """Close with code 4000; the client reconnects and recovers the missed events from
    history. Nothing is silently lost while history covers the gap (the default)."""
    DROP_OLDEST = "drop_oldest"
    """Drop the oldest queued frames to make room. The client sees an offset gap and must
    resync; suits feeds where only the latest state matters."""


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds of each connection's send queue.

    A connection's outbox holds frames that were published but not yet written to its
    socket. Both bounds apply; whichever is reached first triggers ``policy``.
    """

    max_messages: int = 1000
    """Frames queued for one connection at most."""
    max_bytes: int = 1024 * 1024
    """Size of the event frames queued for one connection at most, counted in characters
    of JSON text (bytes for ASCII). An event larger than this cannot be published."""
    policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT
    """What to do when a frame does not fit."""
    max_batch_bytes: int = 64 * 1024
    """Queued frames are joined into one WebSocket message up to this size."""
    max_replay: int = 1000
    """Missed events replayed at most to a client that resumes; a larger gap is answered
    with ``recovered: false``. Replays queue ahead of live events, outside the bounds
    above, so a client that overflowed its outbox can still recover."""

    def __post_init__(self) -> None:
        if (
            self.max_messages < 1
            or self.max_bytes < 1
            or self.max_batch_bytes < 1
            or self.max_replay < 0
        ):
            raise InvalidLimit("outbox limits must be positive")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Server pings that detect dead or stalled clients.

    The server sends a ping every ``interval`` seconds; a client that sends nothing at all
    within ``timeout`` seconds of a ping is closed with code 4001. This is also what bounds
    in time a client that stopped reading: its pings stop arriving too.
    """

    interval: float = 20.0
    """Seconds between pings."""
    timeout: float = 20.0
    """Seconds a client has to answer a ping."""

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise InvalidLimit("heartbeat interval and timeout must be positive")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may send; each limit has a documented answer in the protocol."""

    max_frame_bytes: int = 64 * 1024
    """A larger client frame closes the connection with 1009."""
    max_messages_per_second: float = 50.0
    """Sustained rate of client frames; a flood beyond the burst closes with 4029."""
    message_burst: int = 100
    """Client frames allowed back to back before the rate applies."""
    max_bytes_per_second: float = 128 * 1024
    """Sustained rate of client bytes; beyond the burst the connection closes with 4029.

    What a frame costs the server (parsing, validation) grows with its size, so counting
    frames alone would let a client send large costly ones within the frame rate.
    """
    byte_burst: int = 512 * 1024
    """Client bytes allowed back to back before the byte rate applies."""
    max_topics_per_connection: int = 100
    """More subscriptions get a ``too_many_topics`` error frame."""
    max_topic_length: int = 128
    """Longer topic names get an ``invalid_topic`` error frame."""

    def __post_init__(self) -> None:
        if (
            self.max_frame_bytes < 1
            or self.max_messages_per_second <= 0
            or self.message_burst < 1
            or self.max_bytes_per_second <= 0
            or self.byte_burst < self.max_frame_bytes
            or self.max_topics_per_connection < 1
            or self.max_topic_length < 1
        ):
            raise InvalidLimit("limits must be positive, and byte_burst at least max_frame_bytes")

    def describe(self) -> dict[str, float]:
        """The limits a client is told in the welcome frame."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_messages_per_second": self.max_messages_per_second,
            "max_topics": self.max_topics_per_connection,
            "max_topic_length": self.max_topic_length,
        }


def validate_topic(topic: str, max_length: int = 128) -> str:
    """Check a topic name and return it.

    Topic names are 1 to ``max_length`` characters from ``A-Z a-z 0-9 _ . : @ / = + -``.
    Names starting with ``$`` are not allowed: they are reserved for budget_ws itself.

    Raises:
        InvalidTopic: The name breaks one of these rules.
    """
    if not isinstance(topic, str) or not topic:
        raise InvalidTopic("topic name must be a non-empty string")
    if len(topic) > max_length:
        raise InvalidTopic(f"topic name is longer than {max_length} characters")
    if not _TOPIC_CHARACTERS.fullmatch(topic):
        raise InvalidTopic(
            f"topic name {topic[:40]!r} may only use letters, digits and _ . : @ / = + -"
        )
    return topic


class RateLimiter:
    """Token bucket: ``rate`` units (frames, bytes) per second on average, ``burst`` at once."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens; false when the bucket holds fewer."""
        elapsed = now - self._updated
        self._updated = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
