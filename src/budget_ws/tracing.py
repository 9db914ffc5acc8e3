"""OpenTelemetry traces of publishing and fan-out, across workers.

Needs the ``otel`` extra (``pip install 'budget-ws[otel]'``): the OpenTelemetry *API*
only. The app configures the SDK and its exporters; without them every span is a no-op
and events travel without a trace context.

::

    from budget_ws import ConnectionManager
    from budget_ws.tracing import OpenTelemetryTracer

    manager = ConnectionManager("redis://localhost:6379/0", tracer=OpenTelemetryTracer())

Each ``publish()`` opens a ``budget_ws publish`` span (a child of the current span, such
as the HTTP request's) around a ``budget_ws backend publish`` span. The W3C
``traceparent`` of the publish span travels with the event through the backend (see
:mod:`budget_ws.propagation`), so on every worker with subscribers a ``budget_ws fan_out``
span records the delivery as a child of that publish span, in the same trace. With an
in-process backend (the memory backend) the publish span is the only one: it records the
fan-out, which happens inside it.

.. versionadded:: 0.1
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from types import TracebackType

try:
    from opentelemetry import context, trace
except ImportError as exc:  # pragma: no cover - checked in a subprocess by the tests
    raise ImportError(
        "budget_ws.tracing needs the OpenTelemetry API: pip install 'budget-ws[otel]'"
    ) from exc

from .__about__ import __version__
from .position import Position
from .propagation import TRACEPARENT, PublishSpan

__all__ = [
    "BACKEND_SPAN",
    "FAN_OUT_SPAN",
    "MESSAGING_SYSTEM",
    "PUBLISH_SPAN",
    "OpenTelemetryTracer",
]

PUBLISH_SPAN = "budget_ws publish"
"""Name of the span of one ``publish()`` (kind PRODUCER)."""
BACKEND_SPAN = "budget_ws backend publish"
"""Name of the span of the backend's publish round trip (kind CLIENT)."""
FAN_OUT_SPAN = "budget_ws fan_out"
"""Name of the span of one event reaching one worker's subscribers (kind CONSUMER)."""
MESSAGING_SYSTEM = "budget_ws"
"""The ``messaging.system`` attribute of every span."""

# Span names stay low-cardinality (one per operation, whatever the topic): topic names
# are unbounded, so they go in attributes. Attribute names follow the OpenTelemetry
# messaging conventions, where ``messaging.operation.type`` "send" replaced "publish".


class OpenTelemetryTracer:
    """Traces publishing and fan-out with the OpenTelemetry API.

    Pass it as ``ConnectionManager(..., tracer=OpenTelemetryTracer())``. Spans:

    - ``budget_ws publish`` (PRODUCER): one ``publish()``, a child of the current span.
      Its trace context travels with the event to every worker.
    - ``budget_ws backend publish`` (CLIENT): the backend's round trip, a child of the
      publish span.
    - ``budget_ws fan_out`` (CONSUMER): the event reached this worker's subscribers of the
      topic; a child of the publish span, on whichever worker published it. An event that
      arrives without a trace context (its publisher was untraced) starts a new trace.

    An in-process backend (``in_process``, such as the memory backend) has no round trip
    and delivers inside ``publish()``: its events get the publish span only, which
    records the recipients. The SDK spends tens of microseconds on each span; these two
    would only repeat the publish span's time.

    With the API's default no-op provider (no SDK configured) the spans are no-ops and no
    trace context is added to events.

    Args:
        tracer_provider: Where spans go; the global provider by default, which the app
            may configure before or after making this tracer.
        untraced_fan_out: Whether an event that arrives without a trace context still gets
            a ``budget_ws fan_out`` span, as the root of a trace of its own. False skips
            those spans, so only traced publishers produce traces.
        context_to_clients: Whether clients receive each traced event's ``traceparent``
            (that of its publish span) in its frame, as a last member ``"traceparent"``,
            live and replayed alike: for browsers that trace on their side and link their
            spans to the publisher's. It costs 72 bytes per frame of a traced event;
            frames of untraced events are unchanged. Off by default: clients receive no
            byte of the context. Set it the same on every worker, since the worker that
            builds the frame decides.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        untraced_fan_out: bool = True,
        context_to_clients: bool = False,
    ) -> None:
        self._tracer = trace.get_tracer("budget_ws", __version__, tracer_provider)
        self.untraced_fan_out = untraced_fan_out
        """Whether events without a trace context get a fan-out span (a new trace)."""
        self.context_to_clients = context_to_clients
        """Whether event frames carry a traced event's ``traceparent`` to clients."""

    def publish(self, topic: str, event_name: str) -> AbstractContextManager[PublishSpan]:
        """The span of one ``publish()`` of ``event_name`` to ``topic``.

        Its backend span is made current around the backend's call, so spans of
        instrumented libraries the backend calls are its grandchildren. An exception
        inside it marks it failed.
        """
        span = self._tracer.start_span(
            PUBLISH_SPAN,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": topic,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "budget_ws.event": event_name,
            },
        )
        if not span.get_span_context().is_valid:
            # The no-op provider: no span to make current, no context to carry.
            return _UNTRACED
        return _Publishing(self._tracer, span, topic)

    def fan_out(
        self, topic: str, position: Position, recipients: int, traceparent: str | None
    ) -> None:
        """Record that an event of ``topic`` reached ``recipients`` local subscribers.

        The span's parent is the publish span ``traceparent`` names, on whichever worker
        that ran; never the span that happens to be current here. A fan-out inside the
        ``publish()`` that sent the event (an in-process backend) is recorded on that
        publish span instead, as ``budget_ws.recipients``: a span of its own would only
        repeat the publish span's time, at the cost of another span per event.
        """
        publishing = _OPEN_PUBLISH.get()
        if publishing is not None and publishing.open and publishing.traceparent == traceparent:
            publishing.reached(recipients)
            return
        if traceparent is None:
            if not self.untraced_fan_out:
                return
            parent = _ROOT  # a root span, not a child of whatever is current
        else:
            # An invalid traceparent gives the empty context: a root span too.
            parent = _remote_parent(traceparent)
        span = self._tracer.start_span(
            FAN_OUT_SPAN,
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": topic,
                "messaging.operation.type": "process",
                "messaging.operation.name": "fan_out",
                "budget_ws.offset": position.offset,
                "budget_ws.epoch": position.epoch,
                "budget_ws.recipients": recipients,
            },
        )
        span.end()


class _CurrentSpan:
    """A started span made current for a block, ended when the block ends.

    An exception (not a cancellation, which is no failure of the span's operation) is
    recorded on the span and sets its status to error.
    """

    __slots__ = ("_span", "_token")

    _token: Token[context.Context]  # set on entering

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> _CurrentSpan:
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context.detach(self._token)
        _end(self._span, exc)


class _Publishing:
    """The span of one ``publish()``: a :class:`~budget_ws.propagation.PublishSpan`.

    Not made current itself: the backend span, its child, is what the backend's own
    instrumented calls run under, and one context switch per publish is cheaper than two.
    While it is open, a fan-out in the same task (an in-process backend delivers inside
    ``publish()``) is recorded on it rather than as a span of its own.
    """

    __slots__ = (
        "_position",
        "_recipients",
        "_span",
        "_token",
        "_topic",
        "_tracer",
        "open",
        "traceparent",
    )

    _token: Token[_Publishing | None]  # set on entering

    def __init__(self, tracer: trace.Tracer, span: trace.Span, topic: str) -> None:
        self._span = span
        self._tracer = tracer
        self._topic = topic
        span_context = span.get_span_context()
        # Formatted as TraceContextTextMapPropagator.inject() would, without a carrier. An
        # unsampled context travels too, so every worker keeps the sampling decision.
        self.traceparent: str = (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{span_context.trace_flags:02x}"
        )
        """The W3C ``traceparent`` of the publish span."""
        self._position: Position | None = None
        self._recipients: int | None = None
        self.open = False
        """Whether ``publish()`` is still under way (a task started meanwhile keeps this
        object in its context after the span ends)."""

    def __enter__(self) -> _Publishing:
        self._token = _OPEN_PUBLISH.set(self)
        self.open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open = False
        _OPEN_PUBLISH.reset(self._token)
        span, position, recipients = self._span, self._position, self._recipients
        if (position is not None or recipients is not None) and span.is_recording():
            # One call for all: the SDK takes a lock and cleans values at each.
            attributes: dict[str, str | int] = {}
            if position is not None:
                attributes["budget_ws.offset"] = position.offset
                attributes["budget_ws.epoch"] = position.epoch
            if recipients is not None:
                attributes["budget_ws.recipients"] = recipients
            span.set_attributes(attributes)
        _end(span, exc)

    def reached(self, recipients: int) -> None:
        """Record a fan-out that happened inside this publish, in this task."""
        self._recipients = (self._recipients or 0) + recipients

    def backend(self) -> _CurrentSpan:
        """A child span around the backend's publish round trip (kind CLIENT)."""
        return _CurrentSpan(
            self._tracer.start_span(
                BACKEND_SPAN,
                context=trace.set_span_in_context(self._span),
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "messaging.system": MESSAGING_SYSTEM,
                    "messaging.destination.name": self._topic,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                },
            )
        )

    def published(self, position: Position) -> None:
        """Record the position the event got (on the span as it ends)."""
        self._position = position


class _Untraced:
    """The publish "span" under the no-op provider: nothing to record or to carry."""

    __slots__ = ()

    traceparent = None

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def backend(self) -> AbstractContextManager[None]:
        return _NO_SPAN

    def published(self, position: Position) -> None:
        return None


_NO_SPAN = nullcontext()  # reusable: it holds no state
_UNTRACED = _Untraced()


_ROOT = context.Context()

_OPEN_PUBLISH: ContextVar[_Publishing | None] = ContextVar("budget_ws_open_publish", default=None)
"""The publish span open in this task: an in-process fan-out is recorded on it."""


def _remote_parent(traceparent: str) -> context.Context:
    """The context of the remote publish span a ``traceparent`` names.

    What ``TraceContextTextMapPropagator.extract`` gives for a version-00 traceparent,
    for a fraction of its cost; anything malformed, or all-zero ids, give the empty
    context.
    """
    match = TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return _ROOT
    trace_id, span_id, flags = match.groups()
    span_context = trace.SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(flags, 16)),
    )
    if not span_context.is_valid:
        return _ROOT
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), _ROOT)


def _end(span: trace.Span, exc: BaseException | None) -> None:
    """End a span; an exception (not a cancellation, which is no failure of the span's
    operation) is recorded on it and sets its status to error."""
    if isinstance(exc, Exception) and span.is_recording():
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.set_attribute("error.type", _error_type(exc))
    span.end()


def _error_type(exc: BaseException) -> str:
    """The ``error.type`` of an exception: its fully qualified class name."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
