"""Server frames, decoded by ``budget_ws.protocol`` for clients: typed, strict, no crash.

(The client's side of the codec; the server's side is tested in ``tests/test_protocol.py``.)
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_ws import ErrorCode, Event, Position, ServerProtocolError
from budget_ws.protocol import (
    Ping,
    Pong,
    encode_error,
    encode_event,
    encode_ping,
    encode_pong,
    encode_resync,
    encode_subscribed,
    encode_unsubscribed,
    encode_welcome,
    position_frame,
)
from budget_ws.server_frames import (
    ErrorFrame,
    EventFrame,
    ResyncFrame,
    Subscribed,
    UnknownControl,
    Unsubscribed,
    Welcome,
    decode_server_frame,
    decode_server_frames,
)


class Added(Event, name="server_frames_added", register=False):
    text: str


topics = st.text(alphabet="abc:1-", min_size=1, max_size=12)
epochs = st.text(alphabet="0123456789abcdef", min_size=1, max_size=8)
positions = st.builds(Position, st.integers(min_value=0, max_value=2**53), epochs)
ids = st.none() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(max_size=64)


@given(st.text(), topics, positions)
def test_event_frames_round_trip(text: str, topic: str, position: Position) -> None:
    payload = encode_event(Added(text=text))
    assert decode_server_frame(position_frame(payload, topic, position)) == EventFrame(
        "server_frames_added", {"text": text}, topic, position
    )
    assert decode_server_frame(payload.decode()) == EventFrame(
        "server_frames_added", {"text": text}
    )


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@given(st.text(), topics, positions)
def test_an_event_frame_s_traceparent_is_read(text: str, topic: str, position: Position) -> None:
    frame = position_frame(encode_event(Added(text=text)), topic, position, TRACEPARENT)
    assert decode_server_frame(frame) == EventFrame(
        "server_frames_added", {"text": text}, topic, position, TRACEPARENT
    )


@pytest.mark.parametrize("value", [None, 1, ["00-"], {"a": 1}, True])
def test_a_traceparent_that_is_no_string_is_ignored(value: object) -> None:
    line = json.dumps({"event": "e", "data": 1, "traceparent": value})
    assert decode_server_frame(line) == EventFrame("e", 1)


@given(topics, positions, st.booleans(), ids)
def test_subscribed_round_trips(
    topic: str, position: Position, recovered: bool, request_id: int | str | None
) -> None:
    frame = encode_subscribed(topic, position, recovered, request_id)
    assert decode_server_frame(frame) == Subscribed(topic, position, recovered, request_id)


@given(topics, positions, ids)
def test_other_control_frames_round_trip(
    topic: str, position: Position, request_id: int | str | None
) -> None:
    assert decode_server_frame(encode_unsubscribed(topic, request_id)) == Unsubscribed(
        topic, request_id
    )
    assert decode_server_frame(encode_resync(topic, position)) == ResyncFrame(topic, position)
    error = encode_error(ErrorCode.FORBIDDEN, "no", request_id, topic=topic, details=[{"a": 1}])
    assert decode_server_frame(error) == ErrorFrame(
        "forbidden", "no", request_id, topic, [{"a": 1}]
    )


def test_welcome_ping_pong_and_unknown_ops() -> None:
    welcome = decode_server_frame(encode_welcome("c1", 20.0, 10, {"max_topics": 100}))
    assert welcome == Welcome("c1", 20.0, 10.0, {"max_topics": 100}, "budget-ws.v1")
    minimal = decode_server_frame(
        '{"op":"welcome","connection_id":"c","heartbeat":{"interval":1,"timeout":2}}'
    )
    assert minimal == Welcome("c", 1.0, 2.0, {})
    assert decode_server_frame(encode_ping()) == Ping()
    assert decode_server_frame(encode_pong()) == Pong()
    # A later server may add ops (and fields): ignored, not an error.
    assert decode_server_frame('{"op":"presence","who":[]}') == UnknownControl("presence")
    assert decode_server_frame('{"op":"pong","extra":1}') == Pong()


def test_a_message_holds_several_frames_and_bad_ones_come_last() -> None:
    message = encode_ping() + "\n\n" + encode_pong() + "\n" + "{oops"
    frames = decode_server_frames(message.encode())
    assert next(frames) == Ping()
    assert next(frames) == Pong()
    with pytest.raises(ServerProtocolError, match="not JSON"):
        next(frames)


_HEARTBEAT = {"interval": 1, "timeout": 1}
_POSITION = {"offset": 1, "epoch": "e"}
_SUBSCRIBED = {"op": "subscribed", "topic": "t", "position": _POSITION, "recovered": True}
BAD_FRAMES: list[tuple[str | dict[str, Any], str]] = [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('"text"', "not a JSON object"),
    ({}, "'op' string or an 'event'"),
    ({"op": 3}, "'op' string"),
    ({"op": "ping", "event": "x"}, "both"),
    ({"event": ""}, "empty"),
    ({"event": 5, "data": {}}, "'event'"),
    ({"event": "e", "topic": 5}, "'topic'"),
    ({"event": "e", "topic": "t", "offset": "1", "epoch": "e"}, "position"),
    ({"event": "e", "topic": "t", "offset": True, "epoch": "e"}, "position"),
    ({"event": "e", "topic": "t", "offset": -1, "epoch": "e"}, "position"),
    ({"event": "e", "topic": "t", "offset": 1}, "position"),
    ({"event": "e", "offset": 1, "epoch": "e"}, "no 'topic'"),
    ({"op": "welcome", "connection_id": "c"}, "'heartbeat'"),
    ({"op": "welcome", "connection_id": 1, "heartbeat": _HEARTBEAT}, "connection_id"),
    (
        {"op": "welcome", "connection_id": "c", "heartbeat": {"interval": 0, "timeout": 1}},
        "positive",
    ),
    (
        {"op": "welcome", "connection_id": "c", "heartbeat": {"interval": True, "timeout": 1}},
        "positive",
    ),
    ({"op": "welcome", "connection_id": "c", "heartbeat": _HEARTBEAT, "limits": []}, "limits"),
    ({"op": "subscribed", "topic": "t", "recovered": False}, "position"),
    ({**_SUBSCRIBED, "recovered": 1}, "recovered"),
    ({**_SUBSCRIBED, "position": {"offset": 1, "epoch": 2}}, "position"),
    ({**_SUBSCRIBED, "id": True}, "'id'"),
    ({**_SUBSCRIBED, "id": [1]}, "'id'"),
    ({"op": "unsubscribed"}, "'topic'"),
    ({"op": "resync", "topic": "t", "position": None}, "position"),
    ({"op": "error", "code": "forbidden"}, "'message'"),
    ({"op": "error", "code": 1, "message": "m"}, "'code'"),
    ({"op": "error", "code": "c", "message": "m", "details": {}}, "'details'"),
]


@pytest.mark.parametrize(("frame", "complaint"), BAD_FRAMES)
def test_malformed_frames_raise_a_typed_error(frame: str | dict[str, Any], complaint: str) -> None:
    with pytest.raises(ServerProtocolError, match=complaint) as caught:
        decode_server_frame(frame if isinstance(frame, str) else json.dumps(frame))
    assert caught.value.code == 1002


def test_a_message_that_is_not_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ServerProtocolError, match="UTF-8"):
        list(decode_server_frames(b"\xff\xfe"))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=8,
    )
)
def test_any_json_decodes_or_raises_the_typed_error(value: Any) -> None:
    for frame in (value, {"op": "subscribed", "position": value}, {"event": "e", "topic": value}):
        with contextlib.suppress(ServerProtocolError):
            decode_server_frame(json.dumps(frame))
