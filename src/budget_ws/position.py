"""Where an event sits in its topic: the value the wire protocol, the backends and clients share.

It lives below all of them, so that the codec does not import the backend layer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Position"]


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """Where an event sits in its topic.

    ``offset`` counts the topic's events, starting at 1 for the first; 0 means "before the
    first event". ``epoch`` names one unbroken history of offsets: when a backend loses a
    topic's history (a restart of an in-memory backend, a flushed Redis), the topic gets a
    new epoch and positions from the old one can no longer be recovered.
    """

    offset: int
    """Number of events published to the topic up to and including this one."""
    epoch: str
    """Identifier of the topic's history; offsets compare only within one epoch."""
