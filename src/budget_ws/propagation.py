"""How a trace context travels with an event, and the tracer the manager calls.

The core imports no tracing library. A :class:`Tracer` (such as
:class:`budget_ws.tracing.OpenTelemetryTracer`) opens the spans; the manager and the topic
router call it at the points that matter, and the W3C ``traceparent`` of the publishing
span rides inside the payload the backend stores and fans out, as a last member
``"traceparent"``. Every backend carries it unchanged (a backend sees bytes only), and
:func:`~budget_ws.protocol.position_frame` takes it off before a frame is built, so
browsers never receive it.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Protocol

from .errors import InvalidTraceContext
from .position import Position

__all__ = ["TRACEPARENT", "PublishSpan", "Tracer", "attach_context", "split_context"]

_FIELD = b',"traceparent":"'
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A W3C ``traceparent`` of version 00, to match whole: lowercase hex trace id, parent
(span) id and flags, as groups."""
_TRACEPARENT_LENGTH = 55
_SUFFIX_LENGTH = len(_FIELD) + _TRACEPARENT_LENGTH + 2  # closing '"' and '}'


class PublishSpan(Protocol):
    """The span of one ``publish()``, as the manager sees it."""

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` to send with the event; None to send none."""

    def backend(self) -> AbstractContextManager[object]:
        """A child span around the backend's publish round trip."""

    def published(self, position: Position) -> None:
        """Record the position the event got."""


class Tracer(Protocol):
    """What the manager calls to trace publishing and fan-out."""

    def publish(self, topic: str, event_name: str) -> AbstractContextManager[PublishSpan]:
        """The span of one ``publish()``; an exception inside it marks the span failed."""

    def fan_out(
        self, topic: str, position: Position, recipients: int, traceparent: str | None
    ) -> None:
        """An event reached this worker's subscribers of ``topic``; ``traceparent`` is
        what its publisher sent (None for an event published untraced)."""


def attach_context(payload: bytes, traceparent: str) -> bytes:
    """The event payload with ``traceparent`` as its last member.

    Raises:
        InvalidTraceContext: ``traceparent`` is not a version-00 W3C traceparent.
    """
    if TRACEPARENT.fullmatch(traceparent) is None:
        raise InvalidTraceContext(f"not a W3C traceparent: {traceparent!r}")
    return payload[:-1] + _FIELD + traceparent.encode("ascii") + b'"}'


def split_context(payload: bytes) -> tuple[bytes, str | None]:
    """The payload without its trace context, and the context (None when it has none).

    An event payload ends with its ``data`` object's ``}}``: one ending in ``"}`` carries
    a context, which :func:`attach_context` put at a fixed distance from the end.
    """
    if len(payload) < _SUFFIX_LENGTH or payload[-2] != 0x22:  # '"'
        return payload, None
    start = len(payload) - _SUFFIX_LENGTH
    if payload[start : start + len(_FIELD)] != _FIELD:
        return payload, None
    traceparent = payload[start + len(_FIELD) : -2].decode("ascii", "replace")
    return payload[:start] + b"}", traceparent
