"""What the client hands to the app: events, and resync notices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import Event
from ..position import Position
from ._ordering import ResyncReason

__all__ = ["EventReceived", "Item", "Resync"]


@dataclass(frozen=True, slots=True)
class EventReceived:
    """An event from the server, handed to the app once and in its topic's order.

    .. versionadded:: 0.1
    """

    name: str
    """The event's wire name (the frame's ``event``)."""
    data: Any
    """The event's data as received (JSON values)."""
    topic: str | None
    """The topic it was published to; None for ``manager.send`` and ``manager.broadcast``."""
    position: Position | None
    """Its position in the topic; persist it to resume after this event later."""
    event: Event | None
    """The typed event: ``data`` validated into the class the client's registry has
    for ``name``; None when the registry has no such class (or the data did not validate,
    which is logged)."""
    traceparent: str | None = None
    """The W3C ``traceparent`` of the event's publish span, to link the client's own
    spans to it; None unless the server passes trace contexts to clients
    (``OpenTelemetryTracer(context_to_clients=True)``) and the event was traced."""


@dataclass(frozen=True, slots=True)
class Resync:
    """The app's state for ``topic`` is stale: reload it, then continue from ``position``.

    Handed on in the topic's order: events after it follow ``position``.

    .. versionadded:: 0.1
    """

    topic: str
    """The topic."""
    position: Position
    """Where the topic continues; the next event follows this position."""
    why: ResyncReason
    """``"not_recovered"``: the client asked to resume and the server could not replay
    what was missed (``recovered: false``: another epoch, history trimmed, too many
    missed). ``"gap"``: an offset jump or another epoch seen on an event, or a server-side
    subscription starting after another position than the last one handed on.
    ``"server"``: the server sent ``resync`` (it lost events of the topic)."""


Item = EventReceived | Resync
"""What subscriptions, handlers and the client's own stream receive."""
