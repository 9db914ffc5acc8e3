"""Positions on the client side: duplicates dropped, gaps reported, without a socket."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from budget_ws import Position
from budget_ws.client._ordering import Ordering, Verdict


def test_the_next_offset_is_delivered_and_adopted() -> None:
    ordering = Ordering()
    assert ordering.event("t", Position(1, "e")) is Verdict.DELIVER
    assert ordering.event("t", Position(2, "e")) is Verdict.DELIVER
    assert ordering.position("t") == Position(2, "e")
    assert ordering.positions == {"t": Position(2, "e")}


def test_an_offset_already_seen_is_a_duplicate() -> None:
    ordering = Ordering()
    ordering.event("t", Position(5, "e"))
    assert ordering.event("t", Position(5, "e")) is Verdict.DUPLICATE
    assert ordering.event("t", Position(3, "e")) is Verdict.DUPLICATE
    assert ordering.position("t") == Position(5, "e")


def test_a_jump_or_another_epoch_is_a_gap_then_adopted() -> None:
    ordering = Ordering()
    ordering.event("t", Position(5, "e"))
    assert ordering.event("t", Position(7, "e")) is Verdict.GAP
    assert ordering.position("t") == Position(7, "e")
    # Another epoch is a gap whatever its offset, lower ones too.
    assert ordering.event("t", Position(1, "f")) is Verdict.GAP
    assert ordering.position("t") == Position(1, "f")


def test_topics_are_independent() -> None:
    ordering = Ordering()
    ordering.event("a", Position(1, "e"))
    assert ordering.event("b", Position(1, "e")) is Verdict.DELIVER


def test_a_resume_that_could_not_be_recovered_asks_for_a_resync() -> None:
    ordering = Ordering()
    ordering.resume_from("t", Position(3, "old"))
    reason = ordering.subscribed("t", Position(9, "new"), False, requested=Position(3, "old"))
    assert reason == "not_recovered"
    assert ordering.position("t") == Position(9, "new")


def test_a_fresh_subscription_is_no_resync() -> None:
    ordering = Ordering()
    assert ordering.subscribed("t", Position(9, "e"), False, requested=None) is None
    assert ordering.position("t") == Position(9, "e")


def test_a_recovered_subscription_keeps_the_position_for_the_replay() -> None:
    ordering = Ordering()
    ordering.resume_from("t", Position(3, "e"))
    assert ordering.subscribed("t", Position(9, "e"), True, requested=Position(3, "e")) is None
    assert ordering.position("t") == Position(3, "e")
    assert ordering.event("t", Position(4, "e")) is Verdict.DELIVER


def test_a_server_side_subscription_past_the_last_position_is_a_gap() -> None:
    ordering = Ordering()
    assert ordering.subscribed_by_server("t", Position(4, "e"), False) is None
    assert ordering.subscribed_by_server("t", Position(4, "e"), False) is None
    assert ordering.subscribed_by_server("t", Position(8, "e"), False) == "gap"
    assert ordering.position("t") == Position(8, "e")
    assert ordering.subscribed_by_server("t", Position(9, "e"), True) is None
    assert ordering.position("t") == Position(8, "e")


def test_resume_from_keeps_a_later_known_position_of_the_same_epoch() -> None:
    ordering = Ordering()
    ordering.resume_from("t", None)
    assert ordering.position("t") is None
    ordering.resume_from("t", Position(5, "e"))
    ordering.resume_from("t", Position(3, "e"))
    assert ordering.position("t") == Position(5, "e")
    ordering.resume_from("t", Position(2, "f"))
    assert ordering.position("t") == Position(2, "f")


def test_resync_and_forget() -> None:
    ordering = Ordering()
    ordering.event("t", Position(5, "e"))
    ordering.resync("t", Position(40, "e"))
    assert ordering.event("t", Position(41, "e")) is Verdict.DELIVER
    ordering.forget("t")
    ordering.forget("t")
    assert ordering.position("t") is None


# A server log of one topic; the client reconnects at random points and resumes from a
# position that is its own, an older one (a replay: duplicates) or a later one (lost
# events: a gap); the server may also change epoch (history lost).
deliveries = st.lists(
    st.tuples(
        st.integers(min_value=-3, max_value=3),  # resume shift: <0 replays, >0 skips
        st.integers(min_value=0, max_value=6),  # events delivered before the next break
        st.booleans(),  # the epoch changes before this stretch
    ),
    max_size=25,
)


@given(deliveries)
def test_what_reaches_the_app_is_in_order_once_each_and_gaps_are_reported(
    stretches: list[tuple[int, int, bool]],
) -> None:
    ordering = Ordering()
    epoch = 0
    last_sent = 0
    handed: list[Position] = []
    for shift, count, new_epoch in stretches:
        if new_epoch:
            epoch += 1
            last_sent = 0
        start = max(0, last_sent + shift)
        for offset in range(start + 1, start + 1 + count):
            position = Position(offset, str(epoch))
            verdict = ordering.event("t", position)
            previous = handed[-1] if handed else None
            if verdict is Verdict.DUPLICATE:
                assert previous is not None
                assert previous.epoch == position.epoch
                assert position.offset <= previous.offset
                continue
            expected_gap = previous is not None and (
                previous.epoch != position.epoch or position.offset != previous.offset + 1
            )
            assert (verdict is Verdict.GAP) == expected_gap
            handed.append(position)
        last_sent = start + count
    # Within an epoch, offsets handed on strictly increase: no duplicate, no reordering.
    for before, after in itertools.pairwise(handed):
        if before.epoch == after.epoch:
            assert after.offset > before.offset
    assert len(set(handed)) == len(handed)
