"""A trace context rides inside an event payload, and never reaches a client's frame."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_ws import Event, InvalidTraceContext, Position
from budget_ws.propagation import attach_context, split_context
from budget_ws.protocol import encode_event, position_frame


class Note(Event, name="test_propagation_note", register=False):
    text: str
    amount: float
    tags: list[str] = []


class Label(Event, name="test_propagation_label", register=False):
    text: str


# Text with the characters a context's frame is made of ('"', '}', ',', ':'), so a payload
# can end with what looks like part of one.
texts = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('"},:-'), max_size=60)
notes = st.builds(
    Note,
    text=texts,
    amount=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(texts, max_size=3),
)
payloads = notes.map(encode_event)
traceparents = st.builds(
    lambda trace_id, span_id, flags: f"00-{trace_id}-{span_id}-{flags}",
    st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{2}", fullmatch=True),
)
topics = st.from_regex(r"[A-Za-z0-9_.:@/=+\-]{1,40}", fullmatch=True)
positions = st.builds(Position, st.integers(min_value=0, max_value=2**53), texts)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@given(payloads, traceparents)
def test_a_context_attached_is_split_off_again(payload: bytes, traceparent: str) -> None:
    carried = attach_context(payload, traceparent)
    assert split_context(carried) == (payload, traceparent)
    # Still one JSON object, the context its last member, the event's fields untouched.
    decoded = json.loads(carried)
    assert decoded.pop("traceparent") == traceparent
    assert decoded == json.loads(payload)


@given(payloads)
def test_a_payload_without_context_is_returned_unchanged(payload: bytes) -> None:
    rest, traceparent = split_context(payload)
    assert rest is payload
    assert traceparent is None


def test_a_payload_whose_data_ends_like_a_context_has_none() -> None:
    # The data's last string holds a whole context member: the payload still ends with
    # '"}}', its quotes escaped.
    payload = encode_event(Label(text=f',"traceparent":"{TRACEPARENT}"'))
    assert payload.endswith(b'\\""}}')
    assert split_context(payload) == (payload, None)


def test_a_payload_ending_in_a_string_is_not_taken_for_a_context() -> None:
    # Backends carry any bytes: one that ends with '"}' yet has no context at its place.
    payload = b'{"event":"x","data":{},"note":"' + b"a" * 80 + b'"}'
    assert split_context(payload) == (payload, None)


@given(st.binary(max_size=200))
def test_splitting_any_bytes_never_raises(payload: bytes) -> None:
    rest, traceparent = split_context(payload)
    assert traceparent is None or len(rest) < len(payload)


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "not a traceparent",
        TRACEPARENT.upper(),  # W3C: lowercase hex only
        "01" + TRACEPARENT[2:],  # a version this format does not know
        TRACEPARENT[:-1],  # one digit short
        TRACEPARENT + "0",
        TRACEPARENT + "\n",
        TRACEPARENT.replace("-", "_"),
        TRACEPARENT[:-2] + 'x"',  # would close the JSON string early
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","x":"',
    ],
)
def test_an_invalid_traceparent_is_refused(traceparent: str) -> None:
    payload = encode_event(Note(text="t", amount=1))
    with pytest.raises(InvalidTraceContext, match="not a W3C traceparent"):
        attach_context(payload, traceparent)


@given(payloads, traceparents, topics, positions)
def test_the_client_frame_leaves_the_context_out(
    payload: bytes, traceparent: str, topic: str, position: Position
) -> None:
    frame = position_frame(attach_context(payload, traceparent), topic, position)
    assert frame == position_frame(payload, topic, position)
    assert "traceparent" not in json.loads(frame)
    assert traceparent not in frame
