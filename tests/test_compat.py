"""Compatibility mode's core, in memory: CompatTransport, serve(topics=, answers_pings=).

The adapter side (the hook, the handshake, real sockets) is in ``tests/adapters``; the
original page in a browser is in ``tests/browser/test_original_page.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pydantic_core
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.clock import virtual_time_backends

from budget_ws import (
    CloseCode,
    ConnectionClosed,
    ConnectionManager,
    Event,
    Heartbeat,
    InvalidTopic,
    MemoryBackend,
    OutboxLimits,
    Position,
)
from budget_ws.compat import Compatibility, CompatTransport
from budget_ws.protocol import (
    ErrorCode,
    control_op,
    encode_error,
    encode_event,
    encode_ping,
    encode_pong,
    encode_resync,
    encode_subscribed,
    encode_unsubscribed,
    encode_welcome,
    position_frame,
    without_position,
)
from budget_ws.testing import MemoryTransport, connect

pytestmark = pytest.mark.anyio


class FactCreated(Event, name="test_compat_fact_created", register=False):
    id: int
    amount: Decimal


def fact(number: int) -> FactCreated:
    return FactCreated(id=number, amount=Decimal("12.50"))


def original(number: int) -> dict[str, Any]:
    """What the original client expects for ``fact(number)``: event and data, nothing else."""
    return {"event": "test_compat_fact_created", "data": {"id": number, "amount": "12.50"}}


class CompatClient:
    """The client's side of a compatibility-mode connection: raw messages, no protocol."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport

    async def message(self) -> str:
        """The next WebSocket message; ``EndOfStream`` once the server has closed."""
        with anyio.fail_after(5):
            return await self.transport.to_client.receive()

    async def event(self) -> dict[str, Any]:
        """The next message, which must hold exactly one JSON object."""
        text = await self.message()
        assert "\n" not in text, f"frames joined in one message: {text!r}"
        decoded = json.loads(text)
        assert isinstance(decoded, dict)
        return decoded

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.event() for _ in range(count)]

    async def closed(self) -> int:
        """Read until the server closes; its close code."""
        with anyio.fail_after(5):
            async for _ in self.transport.to_client:
                pass
        assert self.transport.close_code is not None
        return self.transport.close_code

    async def nothing_more(self) -> None:
        """No message is waiting (everything sent so far was read)."""
        await anyio.sleep(0.01)
        with pytest.raises(anyio.WouldBlock):
            self.transport.to_client.receive_nowait()


class RecordingTransport:
    """Stands between the manager and a CompatTransport; keeps what the manager wrote."""

    def __init__(self, inner: CompatTransport) -> None:
        self.inner = inner
        self.written: list[str] = []

    async def send_text(self, text: str) -> None:
        self.written.append(text)
        await self.inner.send_text(text)

    async def receive(self) -> str | bytes:
        return await self.inner.receive()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.close(code, reason)


@asynccontextmanager
async def compat_client(
    manager: ConnectionManager,
    topics: Sequence[str] = ("budget:1",),
    *,
    positions: bool = False,
    send_buffer: float = math.inf,
    recorder: list[RecordingTransport] | None = None,
) -> AsyncIterator[CompatClient]:
    """Serve an in-memory client the way ``WebSocketApp`` serves one in compatibility mode."""
    transport = MemoryTransport(send_buffer)
    served: Any = CompatTransport(transport, positions=positions)
    if recorder is not None:
        served = RecordingTransport(served)
        recorder.append(served)
    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(_serve, manager, served, tuple(topics))
            yield CompatClient(transport)
            if transport.close_code is None:
                await transport.to_server.send(None)  # the client leaves
    finally:
        transport.release()


async def _serve(
    manager: ConnectionManager, transport: Any, topics: tuple[str, ...], compat: bool = True
) -> None:
    # With compat, as the adapters serve a client in compatibility mode.
    await manager.serve(
        transport, topics=topics, answers_pings=not compat, one_frame_per_message=compat
    )


async def wait_for_connections(
    manager: ConnectionManager, count: int, topics: Sequence[str] = ("budget:1",)
) -> None:
    """Wait until ``count`` connections are served, each subscribed to ``topics``.

    A connection is registered before its topics are subscribed server-side, and an event
    published in between would not reach it.
    """
    for _ in range(5000):
        served = list(manager.connections.values())
        if len(served) == count and all(set(topics) <= c.topics for c in served):
            return
        await anyio.sleep(0.001)
    raise AssertionError(f"{len(manager.connections)} connections, expected {count}")


# CompatTransport alone ---------------------------------------------------------------


@pytest.fixture
def transport() -> Iterator[MemoryTransport]:
    """An in-memory WebSocket, released after the test."""
    created = MemoryTransport()
    yield created
    created.release()


FRAMES_OF_ONE_MESSAGE = {
    "welcome": encode_welcome("c1", 20.0, 20.0, {"max_topics": 100}),
    "subscribed": encode_subscribed("budget:1", Position(4, "e1"), False),
    "ping": encode_ping(),
    "resync": encode_resync("budget:1", Position(9, "e2")),
    "unsubscribed": encode_unsubscribed("budget:1", 3),
    "error": encode_error(ErrorCode.BAD_FRAME, "frame is not valid JSON", 7),
    "pong": encode_pong(),
}


def payload(number: int) -> bytes:
    return encode_event(fact(number))


async def test_each_event_frame_of_a_message_leaves_alone_without_its_position(
    transport: MemoryTransport,
) -> None:
    compat = CompatTransport(transport)
    controls = FRAMES_OF_ONE_MESSAGE
    message = "\n".join(
        [
            controls["welcome"],
            controls["subscribed"],
            position_frame(payload(1), "budget:1", Position(5, "e1")),
            controls["ping"],
            position_frame(payload(2), "budget:1", Position(6, "e1")),
            controls["resync"],
            controls["unsubscribed"],
            controls["error"],
            payload(3).decode(),  # from send() or broadcast(): no position to strip
            controls["pong"],
        ]
    )
    await compat.send_text(message)
    await transport.close()  # ends the stream the client reads, after what was sent
    sent = [text async for text in transport.to_client]
    assert sent == [
        payload(1).decode(),
        payload(2).decode(),
        controls["error"],
        payload(3).decode(),
        controls["pong"],
    ]
    assert [json.loads(text) for text in sent[:2]] == [original(1), original(2)]
    assert transport.messages_sent == 5


@pytest.mark.parametrize("op", ["welcome", "subscribed", "ping", "resync", "unsubscribed"])
async def test_control_frames_meaningless_to_the_original_client_are_dropped(
    op: str, transport: MemoryTransport
) -> None:
    await CompatTransport(transport).send_text(FRAMES_OF_ONE_MESSAGE[op])
    assert transport.messages_sent == 0


@pytest.mark.parametrize("op", ["error", "pong"])
async def test_answers_to_what_the_client_sent_pass_unchanged(
    op: str, transport: MemoryTransport
) -> None:
    await CompatTransport(transport).send_text(FRAMES_OF_ONE_MESSAGE[op])
    assert transport.to_client.receive_nowait() == FRAMES_OF_ONE_MESSAGE[op]


async def test_positions_true_keeps_topic_offset_and_epoch(transport: MemoryTransport) -> None:
    frames = [position_frame(payload(n), "budget:1", Position(n, "e1")) for n in (1, 2)]
    await CompatTransport(transport, positions=True).send_text("\n".join(frames))
    sent = [transport.to_client.receive_nowait() for _ in frames]
    assert sent == frames
    assert json.loads(sent[1]) == {**original(2), "topic": "budget:1", "offset": 2, "epoch": "e1"}


@pytest.mark.parametrize("message", ["", "\n", "\n\n\n"])
async def test_empty_lines_send_nothing(message: str, transport: MemoryTransport) -> None:
    await CompatTransport(transport).send_text(message)
    assert transport.messages_sent == 0


async def test_receive_and_close_reach_the_wrapped_transport(transport: MemoryTransport) -> None:
    compat = CompatTransport(transport)
    await transport.to_server.send("hello")
    assert await compat.receive() == "hello"
    await compat.close(CloseCode.SLOW_CONSUMER, "slow")
    assert (transport.close_code, transport.close_reason) == (4000, "slow")


def test_compatibility_is_opt_in_and_strips_positions_by_default() -> None:
    def hook(handshake: Any, principal: Any) -> list[str]:
        return ["budget:1"]

    compatibility = Compatibility(topics=hook)
    assert compatibility.positions is False
    assert compatibility.topics is hook


# serve(topics=, answers_pings=False) -------------------------------------------------


async def test_a_compat_client_gets_its_topics_events_one_per_message_and_nothing_else(
    manager: ConnectionManager,
) -> None:
    async with compat_client(manager, ["budget:1", "budget:2"]) as client:
        await wait_for_connections(manager, 1, ["budget:1", "budget:2"])
        [connection] = manager.connections.values()
        assert connection.topics == {"budget:1", "budget:2"}
        await manager.publish(fact(1), topic="budget:1")
        await manager.publish(fact(99), topic="budget:3")  # not one of its topics
        await manager.publish(fact(2), topic="budget:2")
        await manager.send(connection, fact(3))
        assert await manager.broadcast(fact(4)) == 1
        # No welcome and no subscribed frame came first: the first message is an event.
        assert await client.events(4) == [original(n) for n in (1, 2, 3, 4)]
        await client.nothing_more()


async def test_a_topic_chosen_twice_delivers_each_event_once(
    manager: ConnectionManager,
) -> None:
    async with compat_client(manager, ["budget:1", "budget:1"]) as client:
        await wait_for_connections(manager, 1)
        await manager.publish(fact(1), topic="budget:1")
        assert await client.event() == original(1)
        await client.nothing_more()


async def test_send_and_broadcast_frames_reach_a_compat_client_byte_for_byte(
    manager: ConnectionManager,
) -> None:
    async with compat_client(manager, []) as client:
        await wait_for_connections(manager, 1, [])
        [connection] = manager.connections.values()
        await manager.send(connection, fact(1))
        await manager.broadcast(fact(2))
        assert await client.message() == payload(1).decode()
        assert await client.message() == payload(2).decode()


async def test_a_burst_reaches_a_compat_client_one_frame_per_write(
    manager: ConnectionManager,
) -> None:
    recorder: list[RecordingTransport] = []
    # The client's socket holds one message, so the burst queues up in the outbox...
    async with compat_client(manager, send_buffer=1, recorder=recorder) as client:
        await wait_for_connections(manager, 1)
        for number in range(1, 101):
            await manager.publish(fact(number), topic="budget:1")
        assert await client.events(100) == [original(n) for n in range(1, 101)]
        await client.nothing_more()
    [recording] = recorder
    # ...and still leaves frame by frame: frames not yet written stay in the outbox, where
    # they count against its bounds, instead of in a batch being written out piecemeal.
    assert {len(text.split("\n")) for text in recording.written} == {1}
    assert len(recording.written) >= 100


async def test_positions_true_sends_topic_offset_and_epoch(manager: ConnectionManager) -> None:
    async with compat_client(manager, positions=True) as client:
        await wait_for_connections(manager, 1)
        position = await manager.publish(fact(1), topic="budget:1")
        assert await client.event() == {
            **original(1),
            "topic": "budget:1",
            "offset": position.offset,
            "epoch": position.epoch,
        }


async def test_a_compat_client_that_sends_a_frame_gets_the_answer(
    manager: ConnectionManager,
) -> None:
    async with compat_client(manager) as client:
        await client.transport.to_server.send("not json")
        error = await client.event()
        assert (error["op"], error["code"]) == ("error", "bad_frame")
        await client.transport.to_server.send('{"op": "ping"}')
        assert await client.event() == {"op": "pong"}


@pytest.mark.parametrize("topics", [["no spaces"], ["budget:1", "x" * 129], [""]])
async def test_invalid_server_side_topics_raise_before_anything_is_sent(
    manager: ConnectionManager, topics: list[str], transport: MemoryTransport
) -> None:
    with pytest.raises(InvalidTopic):
        await manager.serve(CompatTransport(transport), topics=topics, answers_pings=False)
    assert transport.messages_sent == 0
    assert transport.close_code is None
    stats = manager.stats()
    assert (stats.connections, stats.topics) == (0, 0)


class _SubscribeFails(MemoryBackend):
    """Subscribes every topic but ``failing``, as a backend losing its server would."""

    failing = "budget:2"

    async def subscribe(self, topic: str, listener: Any) -> None:
        if topic == self.failing:
            raise ConnectionError("backend down")
        await super().subscribe(topic, listener)


async def test_a_backend_failure_while_subscribing_server_side_closes_with_1013(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager(_SubscribeFails()) as manager:
        async with compat_client(manager, ["budget:1", "budget:2", "budget:3"]) as client:
            assert await client.closed() == CloseCode.TRY_AGAIN_LATER
            assert "budget:2" in client.transport.close_reason
        stats = manager.stats()
        assert (stats.connections, stats.topics) == (0, 0), "budget:1 was released"
    [record] = [r for r in caplog.records if "subscribing" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert "backend down" in record.getMessage()


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_the_heartbeat_never_closes_a_client_that_does_not_answer_pings(
    anyio_backend: Any,
) -> None:
    heartbeat = Heartbeat(interval=1, timeout=1)
    recorder: list[RecordingTransport] = []
    async with ConnectionManager(heartbeat=heartbeat) as manager:
        async with (
            compat_client(manager, recorder=recorder) as compat,
            connect(manager) as protocol_client,
        ):
            protocol_client.timeout = 100
            start = anyio.current_time()
            # A protocol client that never answers is closed after interval + timeout...
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await protocol_client.receive()
            assert info.value.code == CloseCode.HEARTBEAT_TIMEOUT
            assert anyio.current_time() - start == pytest.approx(2)
            # ...while the compat client, silent as well, is never pinged nor closed.
            await anyio.sleep(600)
            assert compat.transport.close_code is None
            assert len(manager.connections) == 1
            await manager.publish(fact(1), topic="budget:1")
            assert await compat.event() == original(1)
            await compat.nothing_more()
    [recording] = recorder
    assert encode_ping() not in "\n".join(recording.written).split("\n")


async def test_a_compat_client_that_stops_reading_is_closed_with_4000_beside_a_healthy_one() -> (
    None
):
    outbox = OutboxLimits(max_messages=10, max_bytes=1_000_000)
    async with ConnectionManager(outbox=outbox) as manager:
        async with (
            compat_client(manager, send_buffer=1) as stalled,
            compat_client(manager) as healthy,
        ):
            await wait_for_connections(manager, 2)
            with anyio.fail_after(2):
                for number in range(1, 51):
                    await manager.publish(fact(number), topic="budget:1")
                    # Events published one at a time, as an app's requests do (a burst
                    # larger than the outbox is the xfail test below).
                    await anyio.lowlevel.checkpoint()
            assert await healthy.events(50) == [original(n) for n in range(1, 51)]
            assert await stalled.closed() == CloseCode.SLOW_CONSUMER
            stats = manager.stats()
            assert stats.slow_consumer_disconnects == 1
            assert stats.connections == 1


@pytest.mark.parametrize(
    "compat", [pytest.param(False, id="protocol"), pytest.param(True, id="compat")]
)
async def test_a_burst_larger_than_the_outbox_does_not_disconnect_a_healthy_client(
    compat: bool,
) -> None:
    # A v1 client's writer sends all queued frames in one message; the publisher's
    # checkpoint when an outbox is past half full is meant to be enough for that.
    async with ConnectionManager(outbox=OutboxLimits(max_messages=10)) as manager:
        transport = MemoryTransport()
        served: Any = CompatTransport(transport) if compat else transport
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(_serve, manager, served, ("budget:1",), compat)
                await wait_for_connections(manager, 1)
                for number in range(1, 41):
                    await manager.publish(fact(number), topic="budget:1")
                await anyio.sleep(0.05)
                closed_with = transport.close_code
                if closed_with is None:
                    await transport.to_server.send(None)
        finally:
            transport.release()
    assert closed_with is None
    assert manager.stats().slow_consumer_disconnects == 0


# protocol.without_position and control_op ---------------------------------------------

# What a WebSocket text frame can carry: any character but a lone surrogate.
characters = st.characters(exclude_categories=["Cs"])
texts = st.text(characters, max_size=30)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
event_payloads = st.builds(
    lambda name, data: (
        b'{"event":'
        + json.dumps(name, ensure_ascii=False).encode()
        + b',"data":'
        + pydantic_core.to_json(data)
        + b"}"
    ),
    st.text(characters, min_size=1, max_size=30),
    st.dictionaries(texts, json_values, max_size=5),
)
topics = st.from_regex(r"[A-Za-z0-9_.:@/=+\-]{1,128}", fullmatch=True)
# Epochs as backends make them (hex, in practice): text JSON writes without an escape.
epochs = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='"\\'))
positions = st.builds(Position, st.integers(min_value=0, max_value=2**63), epochs)


@given(event_payloads, topics, positions)
def test_without_position_gives_back_the_payload(
    event_payload: bytes, topic: str, position: Position
) -> None:
    frame = position_frame(event_payload, topic, position)
    assert without_position(frame) == event_payload.decode()
    assert control_op(frame) is None


@given(
    event_payloads,
    topics,
    positions,
    st.from_regex(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True),
)
def test_without_position_also_removes_a_traceparent_passed_to_clients(
    event_payload: bytes, topic: str, position: Position, traceparent: str
) -> None:
    frame = position_frame(event_payload, topic, position, traceparent)
    assert without_position(frame) == event_payload.decode()


@given(event_payloads)
def test_a_frame_without_position_is_unchanged(event_payload: bytes) -> None:
    assert without_position(event_payload.decode()) == event_payload.decode()


@given(
    st.builds(
        FactCreated,
        id=st.integers(min_value=-(2**53), max_value=2**53),
        amount=st.decimals(allow_nan=False, allow_infinity=False, places=2),
    ),
    topics,
    positions,
)
def test_without_position_of_a_published_event_is_its_original_shape(
    event: FactCreated, topic: str, position: Position
) -> None:
    stripped = without_position(position_frame(encode_event(event), topic, position))
    assert json.loads(stripped) == {
        "event": "test_compat_fact_created",
        "data": json.loads(pydantic_core.to_json(event)),
    }


@given(event_payloads, topics, st.builds(Position, st.integers(min_value=0), st.text()))
def test_any_epoch_leaves_the_event_and_its_data_intact(
    event_payload: bytes, topic: str, position: Position
) -> None:
    # An epoch JSON must escape (a quote, a backslash, a control character; a third-party
    # backend could make one) is not stripped, but the frame is never damaged.
    frame = position_frame(event_payload, topic, position)
    stripped = without_position(frame)
    assert stripped in (event_payload.decode(), frame)
    original_frame = json.loads(event_payload)
    assert {key: json.loads(stripped)[key] for key in ("event", "data")} == original_frame


@pytest.mark.parametrize("op", sorted(FRAMES_OF_ONE_MESSAGE))
def test_control_op_names_the_op_of_every_control_frame(op: str) -> None:
    assert control_op(FRAMES_OF_ONE_MESSAGE[op]) == op
