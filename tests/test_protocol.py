"""Wire protocol v1: frames survive encode/decode, bad frames are named precisely."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_ws import Event, Position
from budget_ws.protocol import (
    FRAME_SEPARATOR,
    MAX_ERROR_DETAILS,
    MAX_ERROR_MESSAGE,
    ClientEvent,
    ErrorCode,
    Ping,
    Pong,
    ProtocolViolation,
    Subscribe,
    Unsubscribe,
    decode_client_frame,
    decode_server_message,
    encode_client_event,
    encode_error,
    encode_event,
    encode_ping,
    encode_pong,
    encode_resync,
    encode_subscribe,
    encode_subscribed,
    encode_unsubscribe,
    encode_unsubscribed,
    encode_welcome,
    position_frame,
)


class Message(Event, name="test_protocol_message", register=False):
    text: str
    amount: float
    tags: list[str] = []


texts = st.text(max_size=50)
topics = st.from_regex(r"[A-Za-z0-9_.:@/=+\-]{1,40}", fullmatch=True)
positions = st.builds(Position, st.integers(min_value=0, max_value=2**53), texts)
request_ids = st.none() | st.integers(min_value=-(2**53), max_value=2**53) | texts
messages = st.builds(
    Message,
    text=texts,
    amount=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(texts, max_size=3),
)


@given(topics, st.none() | positions, request_ids)
def test_subscribe_round_trips(topic: str, position: Position | None, request_id: Any) -> None:
    decoded = decode_client_frame(encode_subscribe(topic, position, request_id))
    assert decoded == Subscribe(topic, position, request_id)


@given(topics, request_ids)
def test_unsubscribe_round_trips(topic: str, request_id: Any) -> None:
    assert decode_client_frame(encode_unsubscribe(topic, request_id)) == Unsubscribe(
        topic, request_id
    )


@given(messages, st.none() | topics, request_ids)
def test_client_events_round_trip(message: Message, topic: str | None, request_id: Any) -> None:
    decoded = decode_client_frame(encode_client_event(message, topic, request_id))
    assert isinstance(decoded, ClientEvent)
    assert (decoded.event, decoded.topic, decoded.id) == (message.event_name, topic, request_id)
    assert Message.model_validate(decoded.data) == message


@given(messages, topics, positions)
def test_event_frames_carry_the_original_shape_plus_position(
    message: Message, topic: str, position: Position
) -> None:
    payload = encode_event(message)
    assert json.loads(payload) == {
        "event": "test_protocol_message",
        "data": message.model_dump(mode="json"),
    }
    frame = json.loads(position_frame(payload, topic, position))
    assert frame == {
        "event": "test_protocol_message",
        "data": message.model_dump(mode="json"),
        "topic": topic,
        "offset": position.offset,
        "epoch": position.epoch,
    }
    assert FRAME_SEPARATOR not in position_frame(payload, topic, position)


@given(st.lists(st.dictionaries(texts, texts | st.integers(), max_size=3), min_size=1, max_size=5))
def test_batched_server_messages_split_into_their_frames(frames: list[dict[str, Any]]) -> None:
    message = FRAME_SEPARATOR.join(json.dumps(frame, ensure_ascii=False) for frame in frames)
    assert decode_server_message(message) == frames
    assert decode_server_message(message.encode()) == frames


def _reference(frame: dict[str, Any]) -> str:
    """A frame as the protocol's JSON encoder writes it: compact, non-ASCII kept."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


@given(topics | texts, positions, st.booleans(), request_ids)
def test_subscribed_is_the_frame_json_writes(
    topic: str, position: Position, recovered: bool, request_id: Any
) -> None:
    frame: dict[str, Any] = {
        "op": "subscribed",
        "topic": topic,
        "position": {"offset": position.offset, "epoch": position.epoch},
        "recovered": recovered,
    }
    if request_id is not None:
        frame["id"] = request_id
    assert encode_subscribed(topic, position, recovered, request_id) == _reference(frame)


@given(
    texts,
    st.none() | texts,
    st.floats(min_value=0.1, max_value=1e6),
    st.dictionaries(texts, st.integers() | st.floats(allow_nan=False), max_size=4),
)
def test_welcome_is_the_frame_json_writes(
    connection_id: str, user: str | None, interval: float, limits: dict[str, float]
) -> None:
    frame: dict[str, Any] = {
        "op": "welcome",
        "protocol": "budget-ws.v1",
        "connection_id": connection_id,
        "heartbeat": {"interval": interval, "timeout": interval / 2},
        "limits": limits,
    }
    if user is not None:
        frame["user"] = user
    welcome = encode_welcome(connection_id, interval, interval / 2, limits, user)
    assert welcome == _reference(frame)


def test_control_frames() -> None:
    position = Position(3, "e")
    assert json.loads(encode_subscribed("t", position, True, 7)) == {
        "op": "subscribed",
        "topic": "t",
        "position": {"offset": 3, "epoch": "e"},
        "recovered": True,
        "id": 7,
    }
    assert json.loads(encode_unsubscribed("t")) == {"op": "unsubscribed", "topic": "t"}
    assert json.loads(encode_resync("t", position)) == {
        "op": "resync",
        "topic": "t",
        "position": {"offset": 3, "epoch": "e"},
    }
    assert json.loads(encode_error(ErrorCode.FORBIDDEN, "no", "r1", topic="t", details=[])) == {
        "op": "error",
        "code": "forbidden",
        "message": "no",
        "id": "r1",
        "topic": "t",
        "details": [],
    }
    welcome = json.loads(encode_welcome("c1", 20, 10, {"max_topics": 5}))
    assert welcome["heartbeat"] == {"interval": 20, "timeout": 10}
    assert json.loads(encode_ping()) == {"op": "ping"}
    assert json.loads(encode_pong()) == {"op": "pong"}
    assert decode_client_frame(encode_ping()) == Ping()
    assert decode_client_frame(encode_pong()) == Pong()


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        ("nope", ErrorCode.BAD_FRAME, None),
        ("null", ErrorCode.BAD_FRAME, None),
        ('{"id": 4}', ErrorCode.BAD_FRAME, 4),
        ('{"op": "fly", "id": "x"}', ErrorCode.UNKNOWN_OP, "x"),
        ('{"op": "subscribe", "id": true}', ErrorCode.BAD_FRAME, None),
        (
            '{"op": "subscribe", "topic": "t", "position": {"offset": true, "epoch": "e"}}',
            ErrorCode.BAD_FRAME,
            None,
        ),
        ('{"op": "subscribe", "topic": "t", "position": {"offset": 1}}', ErrorCode.BAD_FRAME, None),
        ('{"event": "", "id": 1}', ErrorCode.BAD_FRAME, 1),
        ('{"op": "subscribe", "topic": "t", "presence": "yes", "id": 2}', ErrorCode.BAD_FRAME, 2),
    ],
)
def test_violations_name_their_code(raw: str, code: ErrorCode, request_id: Any) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_client_frame(raw)
    assert info.value.code is code
    assert info.value.id == request_id
    assert info.value.message


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decoding_arbitrary_input_never_raises_anything_else(raw: bytes | str) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode_client_frame(raw)


def test_final_close_codes_are_the_ones_clients_must_not_retry() -> None:
    from budget_ws.protocol import FINAL_CLOSE_CODES, CloseCode

    assert {1000, 1002, 1008, 4003, 4010} == FINAL_CLOSE_CODES
    assert CloseCode.SERVICE_RESTART not in FINAL_CLOSE_CODES


def test_an_error_frame_is_bounded_whatever_it_reports() -> None:
    details: list[dict[str, object]] = [
        {"loc": ["x" * 1000, 1], "msg": "m" * 1000, "type": "extra_forbidden"}
    ] * 500
    frame = json.loads(encode_error(ErrorCode.INVALID_EVENT, "y" * 100_000, "id", details=details))
    assert len(frame["message"]) <= MAX_ERROR_MESSAGE
    assert len(frame["details"]) == MAX_ERROR_DETAILS
    assert len(json.dumps(frame)) < 6_000
    assert frame["details"][0]["loc"][1] == 1
