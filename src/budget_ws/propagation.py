"""What travels with an event through the backend, and the tracer the manager calls.

The core imports no tracing library. A :class:`Tracer` (such as
:class:`budget_ws.tracing.OpenTelemetryTracer`) opens the spans; the manager and the topic
router call it at the points that matter.

Two facts about a publish travel inside the payload the backend stores and fans out, in
one last member ``"budget_ws"`` that :func:`attach_context` appends: the W3C
``traceparent`` of the publish span (when traced) and the publish time (when the
publishing manager measures timings, for the publish-to-write latency of
:attr:`Metrics.delivery_latency <budget_ws.metrics.Metrics.delivery_latency>`)::

    {"event":"fact","data":{"id":1},"budget_ws":"tp=00-4bf9…-00f0…-01;ts=1733390000123456"}

The member's value is a list of ``key=value`` fields separated by ``;``, in ABNF
(RFC 5234)::

    context = field *( ";" field )
    field   = key "=" value
    key     = 1*( %x61-7A )                ; lowercase letters
    value   = *( %x20-21 / %x23-3A / %x3C-5B / %x5D-7E )
                                           ; printable ASCII but '"', ';' and '\\'

Keys this version reads (of a key given twice, the last field counts):

- ``tp``: the publish span's ``traceparent``, version 00 (lowercase hex, ids not all
  zero);
- ``ts``: when ``publish()`` was called, in whole microseconds since the Unix epoch
  (1 to 20 digits).

A field with another key is ignored (later versions may add some), and so is one whose
value does not validate: a malformed ``tp`` is no trace context (the fan-out starts a
trace of its own) and a malformed ``ts`` no publish time. Whatever the member holds, it is
taken off before a frame is built (:func:`~budget_ws.protocol.position_frame`), so
clients never receive it, and reading it never raises.

Detection is cheap and unambiguous: an event payload without the member ends with its
``data`` object's ``}}``, one with it ends with ``"}``. A JSON string holds no raw ``"``,
so in a payload that ends with ``"}`` the last ``,"budget_ws":"`` is the start of the
reserved member exactly when no ``"`` follows it before the end. Every backend carries
the bytes unchanged (a backend sees bytes only); each worker reads them once per event,
never per subscriber.
"""

from __future__ import annotations

import re
import time
from contextlib import AbstractContextManager
from typing import Protocol

from .errors import InvalidTraceContext
from .position import Position

__all__ = [
    "CLIENT_CONTEXT_BYTES",
    "TRACEPARENT",
    "PublishSpan",
    "Tracer",
    "attach_context",
    "publish_instant",
    "publish_time",
    "split_context",
]

_MEMBER = b',"budget_ws":"'
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A W3C ``traceparent`` of version 00, to match whole: lowercase hex trace id, parent
(span) id and flags, as groups."""
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_MAX_TIME_DIGITS = 20  # int() of a longer string would cost, or raise past 4300 digits
# What attach_context() writes, read in one match: half the time of reading field by field.
_WRITTEN = re.compile(
    rb"tp=(00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2})(?:;ts=([0-9]{1,20}))?"
    rb"|ts=([0-9]{1,20})"
)

CLIENT_CONTEXT_BYTES = len(',"traceparent":""') + 55
"""Bytes the ``traceparent`` member adds to an event frame when the tracer passes the
context to clients (``context_to_clients``)."""


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

    @property
    def context_to_clients(self) -> bool:
        """Whether event frames of traced events carry their ``traceparent`` to clients
        (live and replayed), for clients that trace on their side; read at each event."""

    def publish(self, topic: str, event_name: str) -> AbstractContextManager[PublishSpan]:
        """The span of one ``publish()``; an exception inside it marks the span failed."""

    def fan_out(
        self, topic: str, position: Position, recipients: int, traceparent: str | None
    ) -> None:
        """An event reached this worker's subscribers of ``topic``; ``traceparent`` is
        what its publisher sent (None for an event published untraced, or whose context
        did not validate)."""


def _valid_traceparent(traceparent: str) -> bool:
    match = TRACEPARENT.fullmatch(traceparent)
    # W3C: all-zero ids are invalid; a tracer makes none, a foreign writer might.
    return match is not None and match[1] != _ZERO_TRACE_ID and match[2] != _ZERO_SPAN_ID


def attach_context(
    payload: bytes, traceparent: str | None = None, published: int | None = None
) -> bytes:
    """The event payload with its trace context and publish time as its last member.

    Args:
        payload: An event payload, as :func:`~budget_ws.protocol.encode_event` makes.
        traceparent: The publish span's W3C ``traceparent``; None when untraced.
        published: When ``publish()`` was called, in microseconds since the Unix epoch
            (:func:`publish_time`); None when untimed.

    Returns:
        ``payload`` itself when both are None.

    Raises:
        InvalidTraceContext: ``traceparent`` is not a valid version-00 W3C traceparent,
            or ``published`` is negative.
    """
    fields: list[bytes] = []
    if traceparent is not None:
        if not _valid_traceparent(traceparent):
            raise InvalidTraceContext(f"not a W3C traceparent: {traceparent!r}")
        fields.append(b"tp=" + traceparent.encode("ascii"))
    if published is not None:
        if published < 0:
            raise InvalidTraceContext(f"a publish time is not negative: {published}")
        fields.append(b"ts=%d" % published)
    if not fields:
        return payload
    return payload[:-1] + _MEMBER + b";".join(fields) + b'"}'


def split_context(payload: bytes) -> tuple[bytes, str | None, int | None]:
    """The payload without its ``"budget_ws"`` member, and what the member carried.

    Returns:
        The payload as the event was encoded (``payload`` itself when it has no member),
        the ``traceparent`` (None when absent or invalid) and the publish time in
        microseconds since the Unix epoch (None when absent or malformed).
    """
    if not payload.endswith(b'"}'):
        return payload, None, None
    start = payload.rfind(_MEMBER)
    if start < 0:
        return payload, None, None
    written = _WRITTEN.fullmatch(payload, start + len(_MEMBER), len(payload) - 2)
    if written is not None:
        traced, stamped, only_stamped = written.groups()
        stamp = stamped if only_stamped is None else only_stamped
        return (
            payload[:start] + b"}",
            None if traced is None else traced.decode("ascii"),
            None if stamp is None else int(stamp),
        )
    value = payload[start + len(_MEMBER) : -2]
    if b'"' in value:  # the member found is not the last one: not ours
        return payload, None, None
    return (payload[:start] + b"}", *_read_fields(value))


def _read_fields(value: bytes) -> tuple[str | None, int | None]:
    """The trace context and publish time of a member's value, field by field."""
    traceparent: str | None = None
    published: int | None = None
    for field in value.split(b";"):
        key, _, item = field.partition(b"=")
        if key == b"tp":
            text = item.decode("ascii", "replace")
            traceparent = text if _valid_traceparent(text) else None
        elif key == b"ts":
            published = int(item) if item.isdigit() and len(item) <= _MAX_TIME_DIGITS else None
    return traceparent, published


def publish_time() -> int:
    """Now, as :func:`attach_context` carries a publish time: microseconds since the epoch."""
    return time.time_ns() // 1000


def publish_instant(published: int) -> float:
    """The ``time.perf_counter()`` reading at which an event stamped ``published`` was
    published, by this host's wall clock.

    The time in transit is the wall clock now minus ``published``, so across hosts it is
    as right as their clocks are synchronized (NTP); a stamp from the future (a clock
    ahead of this one) counts as no transit at all, never as a negative one.
    """
    now = time.perf_counter()
    transit = time.time_ns() - published * 1000
    return now - transit / 1e9 if transit > 0 else now
