"""Limits: topic names, the rate limiter and the option objects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_ws import Heartbeat, InvalidLimit, InvalidTopic, Limits, OutboxLimits, validate_topic
from budget_ws.limits import RateLimiter


@pytest.mark.parametrize("topic", ["budget:42", "a", "user/7", "x.y-z_w=1+2@h", "A" * 128])
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize("topic", ["", " ", "a b", "$sys", "a\nb", "ü", "A" * 129, 5])
def test_invalid_topics(topic: object) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(topic)  # type: ignore[arg-type]


def test_topic_length_is_configurable() -> None:
    with pytest.raises(InvalidTopic, match="longer than 3"):
        validate_topic("abcd", max_length=3)


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=200))
def test_rate_limiter_never_allows_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    rate, burst = 10.0, 5
    now = 0.0
    limiter = RateLimiter(rate, burst, now)
    allowed = 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow(now)
    assert allowed <= burst + rate * now + 1e-9


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(1.0, 2, 0.0)
    assert [limiter.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow(1.0)
    assert not limiter.allow(1.0)


def test_rate_limiter_charges_a_cost() -> None:
    limiter = RateLimiter(100.0, 250, 0.0)
    assert limiter.allow(0.0, 200)
    assert not limiter.allow(0.0, 100)
    assert limiter.allow(0.5, 100)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Limits(max_frame_bytes=0),
        lambda: Limits(max_messages_per_second=0),
        lambda: Limits(max_topics_per_connection=0),
        lambda: Limits(max_bytes_per_second=0),
        lambda: Limits(byte_burst=1_000),  # below max_frame_bytes: no frame could pass
        lambda: OutboxLimits(max_messages=0),
        lambda: OutboxLimits(max_bytes=0),
        lambda: Heartbeat(interval=0),
        lambda: Heartbeat(timeout=-1),
    ],
)
def test_nonsense_limits_are_refused(make: object) -> None:
    with pytest.raises(InvalidLimit, match="positive"):
        make()  # type: ignore[operator]


def test_limits_describe_what_clients_are_told() -> None:
    assert Limits().describe() == {
        "max_frame_bytes": 65536,
        "max_messages_per_second": 50,
        "max_topics": 100,
        "max_topic_length": 128,
    }
