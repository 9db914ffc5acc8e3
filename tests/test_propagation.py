"""What rides inside an event payload through the backend (its trace context and publish
time), read back once, and never reaching a client's frame unless asked."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_ws import Event, InvalidTraceContext, Position
from budget_ws.propagation import (
    CLIENT_CONTEXT_BYTES,
    attach_context,
    publish_instant,
    publish_time,
    split_context,
)
from budget_ws.protocol import encode_event, position_frame


class Note(Event, name="test_propagation_note", register=False):
    text: str
    amount: float
    tags: list[str] = []


class Label(Event, name="test_propagation_label", register=False):
    text: str


class Tagged(Event, name="test_propagation_tagged", register=False):
    """An event whose own data ends with a member of the reserved name."""

    budget_ws: str


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PUBLISHED = 1_733_390_000_123_456  # microseconds since the epoch: 2024-12-05

# Text made of what a context member is made of, so a payload's data can end with what
# looks like part of one, or all of one.
FRAGMENTS = ['"', "}", ",", ":", "-", ";", "=", "\\", ',"budget_ws":"', "tp=", "ts=", "00-"]
texts = st.lists(
    st.sampled_from(FRAGMENTS) | st.text(st.characters(codec="utf-8"), max_size=8), max_size=8
).map("".join)
notes = st.builds(
    Note,
    text=texts,
    amount=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(texts, max_size=3),
)
payloads = (notes | st.builds(Label, text=texts) | st.builds(Tagged, budget_ws=texts)).map(
    encode_event
)
traceparents = st.builds(
    lambda trace_id, span_id, flags: f"00-{trace_id}-{span_id}-{flags}",
    st.from_regex(r"[0-9a-f]{31}[1-9a-f]", fullmatch=True),
    st.from_regex(r"[1-9a-f][0-9a-f]{15}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{2}", fullmatch=True),
)
published_times = st.integers(min_value=0, max_value=10**20 - 1)
topics = st.from_regex(r"[A-Za-z0-9_.:@/=+\-]{1,40}", fullmatch=True)
positions = st.builds(Position, st.integers(min_value=0, max_value=2**53), st.text())


# The grammar ---------------------------------------------------------------------------


@given(payloads, st.none() | traceparents, st.none() | published_times)
def test_what_is_attached_is_split_off_again(
    payload: bytes, traceparent: str | None, published: int | None
) -> None:
    carried = attach_context(payload, traceparent, published)
    assert split_context(carried) == (payload, traceparent, published)
    if traceparent is None and published is None:
        assert carried is payload  # nothing to carry: not a byte more
        return
    # Still one JSON object, the context its last member, the event's fields untouched.
    decoded = json.loads(carried)
    assert list(decoded)[-1] == "budget_ws"
    fields = dict(field.split("=", 1) for field in decoded.pop("budget_ws").split(";"))
    assert fields.get("tp") == traceparent
    assert fields.get("ts") == (None if published is None else str(published))
    assert decoded == json.loads(payload)


@pytest.mark.parametrize(
    ("traceparent", "published", "member", "added"),
    [
        (TRACEPARENT, None, f"tp={TRACEPARENT}", 73),
        (None, PUBLISHED, f"ts={PUBLISHED}", 34),
        (TRACEPARENT, PUBLISHED, f"tp={TRACEPARENT};ts={PUBLISHED}", 93),
    ],
    ids=["traced", "timed", "both"],
)
def test_the_member_is_what_the_docs_say(
    traceparent: str | None, published: int | None, member: str, added: int
) -> None:
    payload = encode_event(Label(text="x"))
    carried = attach_context(payload, traceparent, published)
    assert carried == payload[:-1] + f',"budget_ws":"{member}"}}'.encode()
    # The sizes docs/how-to/tracing.md and docs/reference/metrics.md give.
    assert len(carried) - len(payload) == added


@given(payloads)
def test_a_payload_without_context_is_returned_unchanged(payload: bytes) -> None:
    rest, traceparent, published = split_context(payload)
    assert rest is payload
    assert traceparent is None
    assert published is None


@pytest.mark.parametrize(
    "event",
    [
        Label(text=f',"budget_ws":"tp={TRACEPARENT};ts={PUBLISHED}'),
        Label(text=f',"budget_ws":"tp={TRACEPARENT};ts={PUBLISHED}"}}'),
        Tagged(budget_ws=f"tp={TRACEPARENT};ts={PUBLISHED}"),
    ],
    ids=["string", "string-with-end", "member"],
)
def test_data_whose_last_member_looks_like_a_context_carries_none(event: Event) -> None:
    # The data's last member holds a whole context member, or has the reserved name: the
    # payload still ends with the data object's '}}'.
    payload = encode_event(event)
    assert payload.endswith(b"}}")
    assert split_context(payload) == (payload, None, None)
    # With a context of its own attached, only that one comes off.
    carried = attach_context(payload, None, 7)
    assert split_context(carried) == (payload, None, 7)


@pytest.mark.parametrize(
    "payload",
    [
        # Backends carry any bytes: ones that end with '"}' without the member as the last.
        b'{"event":"x","data":{},"note":"' + b"a" * 80 + b'"}',
        b'{"event":"x","data":{},"traceparent":"' + TRACEPARENT.encode() + b'"}',
        b'{"event":"x","data":{},"budget_ws":"ts=5","note":"a"}',
        b'{"event":"x","data":{},"note":",\\"budget_ws\\":\\"ts=5"}',
        b'{"event":"x","data":{},"budget_ws":"ts=5","budget_ws2":"ts=6"}',
        b'"}',
        b',"budget_ws":"',
    ],
    ids=["string", "old-traceparent", "not-last", "escaped", "other-name", "tiny", "prefix"],
)
def test_a_foreign_suffix_is_left_alone(payload: bytes) -> None:
    assert split_context(payload) == (payload, None, None)


EVENT = b'{"event":"x","data":{"a":1}}'


@pytest.mark.parametrize(
    ("value", "traceparent", "published"),
    [
        ("", None, None),
        (";;", None, None),
        ("=", None, None),
        ("tp", None, None),
        ("tp=", None, None),
        ("tp=garbage", None, None),
        ("tp=" + TRACEPARENT.upper(), None, None),
        ("tp=" + TRACEPARENT + "0", None, None),
        ("tp=00-" + "0" * 32 + "-b7ad6b7169203331-01", None, None),  # W3C: invalid ids
        ("tp=00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", None, None),
        ("tp=01" + TRACEPARENT[2:], None, None),  # a version this format does not know
        ("tp=" + TRACEPARENT.replace("a", "\\u0061"), None, None),  # JSON escapes: not ours
        ("TP=" + TRACEPARENT, None, None),  # keys are lowercase
        ("ts=", None, None),
        ("ts=-1", None, None),
        ("ts=1.5", None, None),
        ("ts=1e6", None, None),
        ("ts=12x", None, None),
        ("ts= 12", None, None),
        ("ts=٣", None, None),  # a digit, but not an ASCII one
        ("ts=" + "9" * 21, None, None),
        ("ts=" + "9" * 5000, None, None),  # int() would raise past 4300 digits
        ("ts=" + "9" * 20, None, 10**20 - 1),
        ("ts=0", None, 0),
        ("x=1;ts=5;later=tp=3", None, 5),  # other keys: ignored
        (f"tp={TRACEPARENT};ts=bad", TRACEPARENT, None),
        ("ts=5;tp=bad", None, 5),
        (f"ts=5;ts=6;tp=bad;tp={TRACEPARENT}", TRACEPARENT, 6),  # the last counts
        (f"ts={PUBLISHED};tp={TRACEPARENT}", TRACEPARENT, PUBLISHED),  # either order
    ],
)
def test_a_malformed_member_comes_off_and_counts_as_absent(
    value: str, traceparent: str | None, published: int | None
) -> None:
    payload = EVENT[:-1] + f',"budget_ws":"{value}"}}'.encode()
    assert split_context(payload) == (EVENT, traceparent, published)


FIELDS = [
    f"tp={TRACEPARENT}",
    "tp=00-" + "0" * 32 + "-b7ad6b7169203331-01",
    "tp=bad",
    f"ts={PUBLISHED}",
    "ts=0",
    "ts=x",
    "ts=",
    "x=1",
    "",
]


@given(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4).map(";".join))
def test_a_field_of_another_key_changes_nothing(value: str) -> None:
    # What attach_context writes is read in one match, anything else field by field:
    # a field of another key sends a member down the second way, with the same result.
    payload = EVENT[:-1] + f',"budget_ws":"{value}"}}'.encode()
    extended = EVENT[:-1] + f',"budget_ws":"{value};later=1"}}'.encode()
    assert split_context(payload) == split_context(extended)


@given(st.binary(max_size=200))
def test_splitting_any_bytes_never_raises(payload: bytes) -> None:
    rest, traceparent, published = split_context(payload)
    assert (traceparent is None and published is None) or len(rest) < len(payload)


@given(st.binary(max_size=60), st.binary(max_size=60))
def test_splitting_any_member_value_never_raises(before: bytes, value: bytes) -> None:
    payload = before + b',"budget_ws":"' + value + b'"}'
    rest, traceparent, published = split_context(payload)
    if b'"' not in value:
        assert rest == before + b"}"
    assert traceparent is None or len(traceparent) == 55
    assert published is None or published >= 0


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
        TRACEPARENT[:-2] + ";x",  # would add a field
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","x":"',
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # W3C: all-zero ids are invalid
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
    ],
)
def test_an_invalid_traceparent_is_refused(traceparent: str) -> None:
    payload = encode_event(Note(text="t", amount=1))
    with pytest.raises(InvalidTraceContext, match="not a W3C traceparent"):
        attach_context(payload, traceparent)


def test_a_negative_publish_time_is_refused() -> None:
    with pytest.raises(InvalidTraceContext, match="not negative"):
        attach_context(encode_event(Label(text="x")), None, -1)


# Publish times -------------------------------------------------------------------------


def test_a_publish_time_is_microseconds_since_the_epoch() -> None:
    before = time.time_ns() // 1000
    published = publish_time()
    assert before <= published <= time.time_ns() // 1000
    assert isinstance(published, int)


def test_a_stamp_from_the_past_maps_to_that_instant_of_the_performance_counter() -> None:
    published = publish_time() - 2_000_000  # two seconds ago, by the wall clock
    instant = publish_instant(published)
    assert time.perf_counter() - instant == pytest.approx(2.0, abs=0.05)


def test_a_stamp_from_the_future_counts_as_no_transit_never_a_negative_one() -> None:
    before = time.perf_counter()
    instant = publish_instant(publish_time() + 3_000_000)  # a clock three seconds ahead
    assert before <= instant <= time.perf_counter()


# What clients get ----------------------------------------------------------------------


@given(payloads, traceparents, published_times, topics, positions)
def test_the_client_frame_leaves_the_context_out(
    payload: bytes, traceparent: str, published: int, topic: str, position: Position
) -> None:
    frame = position_frame(attach_context(payload, traceparent, published), topic, position)
    assert frame == position_frame(payload, topic, position)
    decoded = json.loads(frame)
    assert "traceparent" not in decoded
    assert traceparent not in frame


@given(payloads, traceparents, topics, positions)
def test_a_frame_asked_to_carry_the_traceparent_ends_with_it(
    payload: bytes, traceparent: str, topic: str, position: Position
) -> None:
    frame = position_frame(payload, topic, position, traceparent)
    assert len(frame) == len(position_frame(payload, topic, position)) + CLIENT_CONTEXT_BYTES
    decoded = json.loads(frame)
    assert list(decoded)[-4:] == ["topic", "offset", "epoch", "traceparent"]
    assert decoded == {
        **json.loads(position_frame(payload, topic, position)),
        "traceparent": traceparent,
    }
