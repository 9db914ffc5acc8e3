"""Reconnect delays: full jitter over the whole range, at the cap too."""

from __future__ import annotations

import random

import pytest

from budget_ws import InvalidLimit
from budget_ws.client._backoff import Backoff


def test_each_range_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0, random=lambda: 0.999999)
    delays = [backoff.next_delay() for _ in range(7)]
    assert [round(delay, 3) for delay in delays] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_full_jitter_reaches_zero() -> None:
    backoff = Backoff(base=1.0, cap=8.0, random=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.0] * 5


def test_jitter_stays_at_the_cap() -> None:
    # socket.io-client's jitter dies at its maximum: every client then retries in lockstep.
    backoff = Backoff(base=0.1, cap=2.0, random=random.Random(7).random)
    for _ in range(10):
        backoff.next_delay()
    at_cap = [backoff.next_delay() for _ in range(200)]
    assert all(0 <= delay <= 2.0 for delay in at_cap)
    assert min(at_cap) < 0.2
    assert max(at_cap) > 1.8
    assert len(set(at_cap)) == len(at_cap)


def test_reset_starts_from_the_base_again() -> None:
    backoff = Backoff(base=1.0, cap=30.0, random=lambda: 0.999999)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == pytest.approx(1.0, abs=1e-5)


def test_a_long_outage_does_not_overflow() -> None:
    backoff = Backoff(base=1.0, cap=20.0, random=lambda: 0.5)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 10.0


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_bad_ranges_are_refused(base: float, cap: float) -> None:
    with pytest.raises(InvalidLimit):
        Backoff(base, cap)
