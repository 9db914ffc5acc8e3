"""The messages on a PostgreSQL backend's channel: events' announcements and signals.

One channel (the schema's name) carries both, so that the one listening connection
hears them in the order they were committed and listens again to both at once after a
reconnect. They cannot be mistaken for each other: an announcement starts with the
event's offset, a digit (it is written by the schema's ``publish()``), a signal with
:data:`SIGNAL_MARK`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from ..errors import BackendError
from ._postgres_schema import NOTIFY_LIMIT
from .base import Position

__all__ = ["SIGNAL_LIMIT", "SIGNAL_MARK", "Announcement", "read_notification", "signal_message"]

SIGNAL_MARK = "!"
"""What a signal's message starts with; its payload follows in base64 (a ``NOTIFY``
carries text, and a payload may hold any bytes)."""

SIGNAL_LIMIT = (NOTIFY_LIMIT - len(SIGNAL_MARK)) // 4 * 3
"""The largest signal payload, in bytes, that a ``NOTIFY`` carries once in base64."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """An event published to ``topic``; ``payload`` is None when it was too large to carry
    (the listener reads it from the table)."""

    topic: str
    position: Position
    payload: bytes | None


def signal_message(payload: bytes) -> str:
    """The message that carries a signal.

    Raises:
        BackendError: ``payload`` is larger than :data:`SIGNAL_LIMIT` bytes.
    """
    if len(payload) > SIGNAL_LIMIT:
        raise BackendError(
            f"a signal of {len(payload)} bytes is more than PostgreSQL's NOTIFY carries "
            f"(at most {SIGNAL_LIMIT} bytes); signals are meant to be short"
        )
    return SIGNAL_MARK + base64.b64encode(payload).decode("ascii")


def read_notification(message: str) -> Announcement | bytes | None:
    """An event's announcement, a signal's payload, or None for a message budget_ws did
    not send.

    An announcement is ``"<offset> <epoch> <topic length> <topic>"``, then ``"="`` and
    the payload in base64 when it fit.
    """
    try:
        if message.startswith(SIGNAL_MARK):
            return base64.b64decode(message[len(SIGNAL_MARK) :], validate=True)
        offset, epoch, length, rest = message.split(" ", 3)
        topic, body = rest[: int(length)], rest[int(length) :]
        if len(topic) != int(length) or (body and body[0] != "="):
            return None
        payload = base64.b64decode(body[1:], validate=True) if body else None
        return Announcement(topic, Position(int(offset), epoch), payload)
    except (ValueError, binascii.Error):
        return None
