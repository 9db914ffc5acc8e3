"""OpenTelemetry spans of publishing and fan-out, and the trace context across workers.

Spans go to an SDK ``TracerProvider`` of the test's own with an in-memory exporter; the
global provider is never set.
"""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from tests.client.app import running
from websockets.asyncio.client import connect as connect_socket
from websockets.typing import Subprotocol

from budget_ws import (
    BackendUnavailable,
    ConnectionManager,
    Event,
    EventTooLarge,
    Heartbeat,
    MemoryBackend,
    OutboxLimits,
    Position,
)
from budget_ws.backends import Listener
from budget_ws.backends.redis import RedisBackend
from budget_ws.client import connect as connect_client
from budget_ws.propagation import split_context
from budget_ws.protocol import (
    FRAME_SEPARATOR,
    decode_server_message,
    encode_event,
    encode_subscribe,
)
from budget_ws.testing import MemoryClient, RecordingListener, connect
from budget_ws.tracing import (
    BACKEND_SPAN,
    FAN_OUT_SPAN,
    PUBLISH_SPAN,
    OpenTelemetryTracer,
)

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
QUIET = Heartbeat(interval=60, timeout=60)  # no ping lands between the frames a test reads


class FactCreated(Event, name="test_tracing_fact_created", register=False):
    id: int


class Recorder:
    """An SDK tracer provider of the test's own, and the spans it has finished."""

    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(**options)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def span(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.provider.shutdown()


class FromElsewhere:
    """Delivers as a networked backend's reader task does: in a context of its own."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        contextvars.Context().run(self.listener.deliver, topic, position, payload)

    def resync(self, topic: str, position: Position) -> None:
        self.listener.resync(topic, position)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FromElsewhere) and other.listener == self.listener

    def __hash__(self) -> int:
        return hash(self.listener)


class RoundTripBackend(MemoryBackend):
    """The memory backend as a tracer sees a networked one (Redis): a round trip to trace,
    and deliveries that do not happen inside the publishing task."""

    in_process = False

    async def subscribe(self, topic: str, listener: Listener) -> None:
        await super().subscribe(topic, FromElsewhere(listener))

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        await super().unsubscribe(topic, FromElsewhere(listener))


@pytest.fixture
async def traced(recorder: Recorder) -> AsyncIterator[ConnectionManager]:
    """A traced manager on a backend with a round trip: every span there is."""
    tracer = OpenTelemetryTracer(recorder.provider)
    async with ConnectionManager(RoundTripBackend(), tracer=tracer, heartbeat=QUIET) as manager:
        yield manager


@pytest.fixture
async def traced_in_process(recorder: Recorder) -> AsyncIterator[ConnectionManager]:
    tracer = OpenTelemetryTracer(recorder.provider)
    async with ConnectionManager(MemoryBackend(), tracer=tracer, heartbeat=QUIET) as manager:
        yield manager


async def raw_message(client: MemoryClient) -> str:
    """The next WebSocket message the server sent, as the bytes on the wire."""
    with anyio.fail_after(5):
        return await client.transport.to_client.receive()


def trace_ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent_ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.trace_id, span.parent.span_id


async def test_publish_backend_and_fan_out_spans_form_one_tree(
    traced: ConnectionManager, recorder: Recorder
) -> None:
    async with connect(traced) as client:
        await client.subscribe("budget:42")
        request_tracer = recorder.provider.get_tracer("test")
        with request_tracer.start_as_current_span("POST /facts", kind=SpanKind.SERVER):
            position = await traced.publish(FactCreated(id=1), topic="budget:42")
        message = await raw_message(client)

    request = recorder.span("POST /facts")
    publish = recorder.span(PUBLISH_SPAN)
    backend = recorder.span(BACKEND_SPAN)
    fan_out = recorder.span(FAN_OUT_SPAN)
    assert parent_ids(publish) == trace_ids(request)
    assert parent_ids(backend) == trace_ids(publish)
    assert parent_ids(fan_out) == trace_ids(publish)
    assert fan_out.parent is not None
    assert fan_out.parent.is_remote  # read from the payload
    assert (publish.kind, backend.kind, fan_out.kind) == (
        SpanKind.PRODUCER,
        SpanKind.CLIENT,
        SpanKind.CONSUMER,
    )
    assert dict(publish.attributes or {}) == {
        "messaging.system": "budget_ws",
        "messaging.destination.name": "budget:42",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "budget_ws.event": "test_tracing_fact_created",
        "budget_ws.offset": 1,
        "budget_ws.epoch": position.epoch,
    }
    assert dict(backend.attributes or {}) == {
        "messaging.system": "budget_ws",
        "messaging.destination.name": "budget:42",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
    }
    assert dict(fan_out.attributes or {}) == {
        "messaging.system": "budget_ws",
        "messaging.destination.name": "budget:42",
        "messaging.operation.type": "process",
        "messaging.operation.name": "fan_out",
        "budget_ws.offset": 1,
        "budget_ws.epoch": position.epoch,
        "budget_ws.recipients": 1,
    }
    for span in (publish, backend, fan_out):
        assert span.status.status_code is StatusCode.UNSET
    assert publish.instrumentation_scope is not None
    assert publish.instrumentation_scope.name == "budget_ws"
    # The browser gets the frame it always got, without a byte of the trace context.
    assert "traceparent" not in message
    assert f"{trace_ids(publish)[0]:032x}" not in message
    assert json.loads(message) == {
        "event": "test_tracing_fact_created",
        "data": {"id": 1},
        "topic": "budget:42",
        "offset": 1,
        "epoch": position.epoch,
    }


async def test_the_fan_out_span_counts_the_recipients(
    traced: ConnectionManager, recorder: Recorder
) -> None:
    async with connect(traced) as first, connect(traced) as second, connect(traced) as other:
        await first.subscribe("t")
        await second.subscribe("t")
        await other.subscribe("elsewhere")
        await traced.publish(FactCreated(id=1), topic="t")
        await traced.publish(FactCreated(id=2), topic="nobody-listens")
    (fan_out,) = recorder.spans(FAN_OUT_SPAN)  # none for a topic without subscribers here
    assert fan_out.attributes is not None
    assert fan_out.attributes["budget_ws.recipients"] == 2
    assert len(recorder.spans(PUBLISH_SPAN)) == 2


async def test_an_in_process_backend_gets_one_span_that_counts_the_recipients(
    traced_in_process: ConnectionManager, recorder: Recorder
) -> None:
    manager = traced_in_process
    async with connect(manager) as first, connect(manager) as second:
        await first.subscribe("t")
        await second.subscribe("t")
        with recorder.provider.get_tracer("test").start_as_current_span("POST /facts"):
            position = await manager.publish(FactCreated(id=1), topic="t")
            await manager.publish(FactCreated(id=2), topic="nobody-listens")
        await first.receive_event()
    # No round trip to trace, and the fan-out happened inside publish(): one span each.
    assert recorder.spans(BACKEND_SPAN) == recorder.spans(FAN_OUT_SPAN) == []
    publish, unheard = recorder.spans(PUBLISH_SPAN)
    assert parent_ids(publish) == trace_ids(recorder.span("POST /facts"))
    assert publish.kind is SpanKind.PRODUCER
    assert dict(publish.attributes or {}) == {
        "messaging.system": "budget_ws",
        "messaging.destination.name": "t",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "budget_ws.event": "test_tracing_fact_created",
        "budget_ws.offset": 1,
        "budget_ws.epoch": position.epoch,
        "budget_ws.recipients": 2,
    }
    assert "budget_ws.recipients" not in (unheard.attributes or {})  # no subscriber here


class DeliverThenFail(MemoryBackend):
    """Delivers in-process, then fails: the fan-out happened, the position never came."""

    async def publish(self, topic: str, payload: bytes) -> Position:
        await super().publish(topic, payload)
        raise BackendUnavailable("lost the reply")


async def test_a_fan_out_inside_a_failed_publish_is_still_recorded(recorder: Recorder) -> None:
    tracer = OpenTelemetryTracer(recorder.provider)
    async with (
        ConnectionManager(DeliverThenFail(), tracer=tracer, heartbeat=QUIET) as manager,
        connect(manager) as client,
    ):
        await client.subscribe("t")
        with pytest.raises(BackendUnavailable):
            await manager.publish(FactCreated(id=1), topic="t")
        await client.receive_event()
    publish = recorder.span(PUBLISH_SPAN)
    assert publish.status.status_code is StatusCode.ERROR
    attributes = dict(publish.attributes or {})
    assert attributes["budget_ws.recipients"] == 1
    assert "budget_ws.offset" not in attributes


@pytest.mark.parametrize(
    "unusable",
    ["not a traceparent", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"],
    ids=["malformed", "zero-trace-id"],
)
def test_a_fan_out_told_of_an_unusable_context_starts_a_trace(
    recorder: Recorder, unusable: str
) -> None:
    """``fan_out`` is public: a caller other than the router may pass anything."""
    tracer = OpenTelemetryTracer(recorder.provider)
    tracer.fan_out("t", Position(1, "e"), 2, unusable)
    assert recorder.span(FAN_OUT_SPAN).parent is None


class ContextCopyingListener(RecordingListener):
    """Keeps the context of each delivery, as a task started from there would."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[contextvars.Context] = []

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        self.contexts.append(contextvars.copy_context())
        super().deliver(topic, position, payload)


async def test_a_fan_out_after_the_publish_span_ended_gets_a_span_of_its_own(
    recorder: Recorder,
) -> None:
    """A task started inside ``publish()`` keeps that context after the publish span
    ended: a fan-out from there is not folded into the ended span, and not lost."""
    tracer = OpenTelemetryTracer(recorder.provider)
    listener = ContextCopyingListener()
    async with ConnectionManager(MemoryBackend(), tracer=tracer, heartbeat=QUIET) as manager:
        await manager.backend.subscribe("t", listener)
        position = await manager.publish(FactCreated(id=1), topic="t")
    ((_, _, payload),) = listener.delivered
    traceparent = split_context(payload)[1]
    listener.contexts[0].run(tracer.fan_out, "t", position, 3, traceparent)
    publish = recorder.span(PUBLISH_SPAN)
    fan_out = recorder.span(FAN_OUT_SPAN)
    assert parent_ids(fan_out) == trace_ids(publish)
    assert fan_out.attributes is not None
    assert fan_out.attributes["budget_ws.recipients"] == 3
    assert "budget_ws.recipients" not in (publish.attributes or {})


async def test_replayed_history_carries_no_context_to_the_client(
    traced: ConnectionManager,
) -> None:
    position = await traced.publish(FactCreated(id=1), topic="t")
    # The backend keeps the context with the event, for later fan-outs elsewhere...
    recovery = await traced.backend.history("t", Position(0, position.epoch), 10)
    ((_, stored),) = recovery.items
    traceparent = split_context(stored)[1]
    assert traceparent is not None
    assert len(stored) == len(encode_event(FactCreated(id=1))) + 73  # as the docs say
    # ...and a client that recovers the event gets it without.
    async with connect(traced) as client:
        await client.send_raw(encode_subscribe("t", Position(0, position.epoch)))
        messages: list[str] = []
        while '"event"' not in "".join(messages):
            messages.append(await raw_message(client))
    assert "traceparent" not in "".join(messages)
    *_, subscribed, replayed = decode_server_message(FRAME_SEPARATOR.join(messages))
    assert subscribed["recovered"] is True
    assert replayed["data"] == {"id": 1}


class FailingBackend(RoundTripBackend):
    async def publish(self, topic: str, payload: bytes) -> Position:
        raise BackendUnavailable("the backend is down; retry later")


async def test_a_failed_publish_marks_its_spans_as_errors(recorder: Recorder) -> None:
    tracer = OpenTelemetryTracer(recorder.provider)
    async with ConnectionManager(FailingBackend(), tracer=tracer, heartbeat=QUIET) as manager:
        with pytest.raises(BackendUnavailable):
            await manager.publish(FactCreated(id=1), topic="t")
    for name in (PUBLISH_SPAN, BACKEND_SPAN):
        span = recorder.span(name)
        assert span.status.status_code is StatusCode.ERROR, name
        assert span.status.description == ("BackendUnavailable: the backend is down; retry later")
        assert span.attributes is not None
        assert span.attributes["error.type"] == "budget_ws.errors.BackendUnavailable"
        (exception,) = [event for event in span.events if event.name == "exception"]
        assert exception.attributes is not None
        assert exception.attributes["exception.type"] == "budget_ws.errors.BackendUnavailable"
    assert recorder.spans(FAN_OUT_SPAN) == []
    assert "budget_ws.offset" not in (recorder.span(PUBLISH_SPAN).attributes or {})


class StalledBackend(RoundTripBackend):
    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()

    async def publish(self, topic: str, payload: bytes) -> Position:
        self.entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_cancelled_publish_ends_its_spans_without_an_error(recorder: Recorder) -> None:
    backend = StalledBackend()
    tracer = OpenTelemetryTracer(recorder.provider)
    async with ConnectionManager(backend, tracer=tracer, heartbeat=QUIET) as manager:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(partial(manager.publish, FactCreated(id=1), topic="t"))
            await backend.entered.wait()
            task_group.cancel_scope.cancel()
    for name in (PUBLISH_SPAN, BACKEND_SPAN):
        span = recorder.span(name)  # ended, so exported
        assert span.status.status_code is StatusCode.UNSET
        assert span.events == ()


async def test_an_event_without_context_starts_a_trace_of_its_own(
    traced: ConnectionManager, recorder: Recorder
) -> None:
    async with connect(traced) as client:
        await client.subscribe("t")
        # Published untraced (another process writing to the backend), inside a span here.
        with recorder.provider.get_tracer("test").start_as_current_span("unrelated"):
            await traced.backend.publish("t", encode_event(FactCreated(id=1)))
        await client.receive_event()
    fan_out = recorder.span(FAN_OUT_SPAN)
    assert fan_out.parent is None  # a root, not a child of the span current here
    assert trace_ids(fan_out)[0] != trace_ids(recorder.span("unrelated"))[0]


@pytest.mark.parametrize(
    "unusable",
    [
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",  # well-formed, but W3C's invalid ids
        "00-" + "0x" + "1" * 30 + "-" + "1" * 16 + "-01",  # int() would take it
        "00-" + "A" * 32 + "-" + "1" * 16 + "-01",  # uppercase: not version 00's form
        "01-" + "1" * 32 + "-" + "1" * 16 + "-01",  # a version this does not know
        "00-" + "1" * 32 + "_" + "1" * 16 + "-01",  # three parts
    ],
    ids=["zero-ids", "0x", "uppercase", "version-01", "three-parts"],
)
async def test_an_unusable_context_starts_a_trace_of_its_own(
    traced: ConnectionManager, recorder: Recorder, unusable: str
) -> None:
    assert len(unusable) == 55
    payload = encode_event(FactCreated(id=1))[:-1] + f',"budget_ws":"tp={unusable}"}}'.encode()
    assert split_context(payload)[1] is None  # does not validate: no context
    async with connect(traced) as client:
        await client.subscribe("t")
        await traced.backend.publish("t", payload)
        message = await raw_message(client)
    assert "traceparent" not in message
    assert "budget_ws" not in message
    assert recorder.span(FAN_OUT_SPAN).parent is None


async def test_fan_out_spans_of_untraced_events_can_be_left_out(recorder: Recorder) -> None:
    tracer = OpenTelemetryTracer(recorder.provider, untraced_fan_out=False)
    assert tracer.untraced_fan_out is False
    async with (
        ConnectionManager(RoundTripBackend(), tracer=tracer, heartbeat=QUIET) as manager,
        connect(manager) as client,
    ):
        await client.subscribe("t")
        await manager.backend.publish("t", encode_event(FactCreated(id=1)))  # untraced
        await manager.publish(FactCreated(id=2), topic="t")  # traced
        for _ in range(2):
            await client.receive_event()
    (fan_out,) = recorder.spans(FAN_OUT_SPAN)
    assert parent_ids(fan_out) == trace_ids(recorder.span(PUBLISH_SPAN))


async def test_an_unsampled_publish_still_carries_its_decision(recorder: Recorder) -> None:
    sampled_out = Recorder(sampler=ParentBased(ALWAYS_OFF))
    listener = RecordingListener()
    try:
        tracer = OpenTelemetryTracer(sampled_out.provider)
        async with ConnectionManager(MemoryBackend(), tracer=tracer) as manager:
            await manager.backend.subscribe("t", listener)
            await manager.publish(FactCreated(id=1), topic="t")
            async with connect(manager) as client:
                await client.subscribe("t")
                await manager.publish(FactCreated(id=2), topic="t")
                await client.receive_event()
    finally:
        sampled_out.provider.shutdown()
    traceparent = split_context(listener.delivered[0][2])[1]
    assert traceparent is not None
    sampled = int(traceparent[-2:], 16) & 0x01  # the W3C "sampled" flag
    assert not sampled  # so every worker drops its fan-out span too
    assert sampled_out.exporter.get_finished_spans() == ()


@pytest.mark.parametrize("backend_class", [MemoryBackend, RoundTripBackend])
async def test_without_an_sdk_nothing_travels_with_the_event(
    backend_class: type[MemoryBackend],
) -> None:
    listener = RecordingListener()
    tracer = OpenTelemetryTracer(trace.NoOpTracerProvider())
    async with (
        ConnectionManager(backend_class(), tracer=tracer, heartbeat=QUIET) as manager,
        connect(manager) as client,
    ):
        await manager.backend.subscribe("t", listener)
        await client.subscribe("t")
        event = FactCreated(id=1)
        with tracer.publish("t", event.event_name) as span:
            assert span.traceparent is None
        position = await manager.publish(event, topic="t")
        assert (await client.receive_event())["offset"] == position.offset
    assert listener.delivered == [("t", position, encode_event(event))]


def test_the_global_default_provider_adds_nothing() -> None:
    # A fresh interpreter: the API's own default (no SDK configured), which a test in this
    # process could not rely on.
    script = textwrap.dedent(
        """
        import anyio
        from budget_ws import ConnectionManager, Event
        from budget_ws.protocol import encode_event
        from budget_ws.testing import RecordingListener
        from budget_ws.tracing import OpenTelemetryTracer

        class Fact(Event, name="fact", register=False):
            id: int

        async def main():
            listener = RecordingListener()
            async with ConnectionManager(tracer=OpenTelemetryTracer()) as manager:
                await manager.backend.subscribe("t", listener)
                await manager.publish(Fact(id=1), topic="t")
            assert listener.delivered[0][2] == encode_event(Fact(id=1)), listener.delivered
            print("unchanged")

        anyio.run(main)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "unchanged", result.stderr


def test_a_missing_api_is_named_with_the_extra_to_install() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import budget_ws.tracing\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert "pip install 'budget-ws[otel]'" in result.stdout, result.stderr


# Across workers: two managers on one Redis, as two processes of an app would be.


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py's client is asyncio-only
async def test_the_trace_context_crosses_workers_through_redis(
    anyio_backend: str, key_prefix: str
) -> None:
    on_a, on_b = Recorder(), Recorder()
    try:
        async with (
            ConnectionManager(
                RedisBackend(REDIS_URL, key_prefix=key_prefix),
                tracer=OpenTelemetryTracer(on_a.provider),
                heartbeat=QUIET,
            ) as worker_a,
            ConnectionManager(
                RedisBackend(REDIS_URL, key_prefix=key_prefix),
                tracer=OpenTelemetryTracer(on_b.provider),
                heartbeat=QUIET,
            ) as worker_b,
            connect(worker_b) as client,
        ):
            await client.subscribe("budget:7")
            with on_a.provider.get_tracer("test").start_as_current_span("POST /facts"):
                position = await worker_a.publish(FactCreated(id=1), topic="budget:7")
            message = await raw_message(client)
    finally:
        on_a.provider.shutdown()
        on_b.provider.shutdown()

    publish = on_a.span(PUBLISH_SPAN)
    assert parent_ids(publish) == trace_ids(on_a.span("POST /facts"))
    assert parent_ids(on_a.span(BACKEND_SPAN)) == trace_ids(publish)
    assert on_a.spans(FAN_OUT_SPAN) == []  # worker A has no subscriber of the topic
    # Worker B's span sits under worker A's publish span, in the same trace.
    (fan_out,) = on_b.exporter.get_finished_spans()
    assert fan_out.name == FAN_OUT_SPAN
    assert parent_ids(fan_out) == trace_ids(publish)
    assert fan_out.attributes is not None
    assert fan_out.attributes["budget_ws.offset"] == position.offset
    assert fan_out.attributes["budget_ws.epoch"] == position.epoch
    assert fan_out.attributes["budget_ws.recipients"] == 1
    assert "traceparent" not in message
    assert json.loads(message)["data"] == {"id": 1}


# Passing the context to clients, when asked.


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def test_clients_get_no_context_unless_asked() -> None:
    assert OpenTelemetryTracer().context_to_clients is False
    assert OpenTelemetryTracer(context_to_clients=True).context_to_clients is True


@pytest.fixture
async def telling(recorder: Recorder) -> AsyncIterator[ConnectionManager]:
    """A traced manager on a backend with a round trip, passing the context to clients."""
    tracer = OpenTelemetryTracer(recorder.provider, context_to_clients=True)
    async with ConnectionManager(RoundTripBackend(), tracer=tracer, heartbeat=QUIET) as manager:
        yield manager


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn and websockets: asyncio
async def test_a_client_asked_for_it_gets_the_publish_span_s_context_over_a_socket(
    anyio_backend: str, recorder: Recorder
) -> None:
    tracer = OpenTelemetryTracer(recorder.provider, context_to_clients=True)
    manager = ConnectionManager(MemoryBackend(), tracer=tracer, heartbeat=QUIET)
    async with (
        running(manager) as server,
        connect_client(server.url) as client,
        connect_socket(server.url, subprotocols=[Subprotocol("budget-ws.v1")]) as socket,
        client.subscribe("budget:42") as subscription,
    ):
        await socket.send(encode_subscribe("budget:42"))
        with anyio.fail_after(5):
            while "subscribed" not in str(await socket.recv()):
                pass
        position = await manager.publish(FactCreated(id=1), topic="budget:42")
        with anyio.fail_after(5):
            item = await subscription.__anext__()
            message = str(await socket.recv())
    traceparent = traceparent_of(recorder.span(PUBLISH_SPAN))
    assert item.traceparent == traceparent
    assert item.data == {"id": 1}
    untraced = (
        '{"event":"test_tracing_fact_created","data":{"id":1},"topic":"budget:42",'
        f'"offset":1,"epoch":"{position.epoch}"}}'
    )
    assert message == untraced[:-1] + f',"traceparent":"{traceparent}"}}'
    assert len(message) == len(untraced) + 72  # as the docs say


async def test_replayed_and_live_frames_carry_the_context_when_asked(
    telling: ConnectionManager, recorder: Recorder
) -> None:
    position = await telling.publish(FactCreated(id=1), topic="t")
    async with connect(telling) as client:
        await client.send_raw(encode_subscribe("t", Position(0, position.epoch)))
        messages: list[str] = []
        while '"event"' not in "".join(messages):
            messages.append(await raw_message(client))
        *_, subscribed, replayed = decode_server_message(FRAME_SEPARATOR.join(messages))
        await telling.publish(FactCreated(id=2), topic="t")
        live = json.loads(await raw_message(client))
    first, second = (traceparent_of(span) for span in recorder.spans(PUBLISH_SPAN))
    assert subscribed["recovered"] is True
    assert replayed == {
        "event": "test_tracing_fact_created",
        "data": {"id": 1},
        "topic": "t",
        "offset": 1,
        "epoch": position.epoch,
        "traceparent": first,
    }
    assert live["traceparent"] == second
    assert list(live)[-1] == "traceparent"
    # The fan-out span still hangs under the publish span, and nothing else travels.
    assert parent_ids(recorder.span(FAN_OUT_SPAN)) == trace_ids(recorder.spans(PUBLISH_SPAN)[1])
    assert "budget_ws" not in "".join(messages)


async def test_untraced_events_carry_no_context_even_when_asked(
    telling: ConnectionManager,
) -> None:
    unusable = "00-" + "0" * 32 + "-" + "1" * 16 + "-01"
    async with connect(telling) as client:
        await client.subscribe("t")
        # Another program writing to the backend: no context, a malformed one, a foreign one.
        await telling.backend.publish("t", encode_event(FactCreated(id=1)))
        await telling.backend.publish(
            "t", encode_event(FactCreated(id=2))[:-1] + f',"budget_ws":"tp={unusable}"}}'.encode()
        )
        await telling.backend.publish(
            "t", encode_event(FactCreated(id=3))[:-1] + b',"budget_ws":"ts=1;x=y"}'
        )
        frames = [await client.receive_event() for _ in range(3)]
    assert [frame["data"] for frame in frames] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert all(list(frame) == ["event", "data", "topic", "offset", "epoch"] for frame in frames)


async def test_without_an_sdk_clients_get_no_context_even_when_asked() -> None:
    tracer = OpenTelemetryTracer(trace.NoOpTracerProvider(), context_to_clients=True)
    async with (
        ConnectionManager(MemoryBackend(), tracer=tracer, heartbeat=QUIET) as manager,
        connect(manager) as client,
    ):
        await client.subscribe("t")
        await manager.publish(FactCreated(id=1), topic="t")
        assert "traceparent" not in await raw_message(client)


async def test_room_for_the_context_counts_against_the_outbox_bound(recorder: Recorder) -> None:
    payload = encode_event(FactCreated(id=1))
    # Room for the event and its position (64 bytes and the topic's name), not the context.
    limits = OutboxLimits(max_bytes=len(payload) + 1 + 64 + 71)
    for context_to_clients in (False, True):
        tracer = OpenTelemetryTracer(recorder.provider, context_to_clients=context_to_clients)
        async with ConnectionManager(MemoryBackend(), tracer=tracer, outbox=limits) as manager:
            if context_to_clients:
                with pytest.raises(EventTooLarge):
                    await manager.publish(FactCreated(id=1), topic="t")
            else:
                await manager.publish(FactCreated(id=1), topic="t")


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py's client is asyncio-only
async def test_context_and_publish_time_cross_workers_together(
    anyio_backend: str, key_prefix: str
) -> None:
    on_a, on_b = Recorder(), Recorder()
    topic = f"budget:{uuid.uuid4().hex[:8]}"
    try:
        async with (
            ConnectionManager(
                RedisBackend(REDIS_URL, key_prefix=key_prefix),
                tracer=OpenTelemetryTracer(on_a.provider),
                heartbeat=QUIET,
            ) as worker_a,
            ConnectionManager(
                RedisBackend(REDIS_URL, key_prefix=key_prefix),
                tracer=OpenTelemetryTracer(on_b.provider, context_to_clients=True),
                heartbeat=QUIET,
            ) as worker_b,
        ):
            worker_a.metrics.enable_timings()
            worker_b.metrics.enable_timings()
            async with connect(worker_b) as client:
                await client.subscribe(topic)
                position = await worker_a.publish(FactCreated(id=1), topic=topic)
                message = await raw_message(client)
                await anyio.wait_all_tasks_blocked()
            recovery = await worker_b.backend.history(topic, Position(0, position.epoch), 10)
    finally:
        on_a.provider.shutdown()
        on_b.provider.shutdown()
    ((_, payload),) = recovery.items
    _, traceparent, published = split_context(payload)
    assert traceparent == traceparent_of(on_a.span(PUBLISH_SPAN))
    assert published is not None
    frame = json.loads(message)
    assert frame["traceparent"] == traceparent
    assert "budget_ws" not in frame
    assert parent_ids(on_b.span(FAN_OUT_SPAN)) == trace_ids(on_a.span(PUBLISH_SPAN))
    assert worker_b.metrics.delivery_latency is not None
    assert worker_b.metrics.delivery_latency.snapshot().count == 1
