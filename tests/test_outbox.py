"""The bounded outbox: limits, policies and batching."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_ws import OutboxLimits, SlowConsumerPolicy
from budget_ws.metrics import Metrics
from budget_ws.outbox import Outbox, TimedOutbox

pytestmark = pytest.mark.anyio


def test_disconnect_policy_refuses_what_does_not_fit() -> None:
    outbox = Outbox(OutboxLimits(max_messages=2, max_bytes=100))
    assert outbox.put("a")
    assert outbox.put("b")
    assert not outbox.put("c")
    assert len(outbox) == 2
    sized = Outbox(OutboxLimits(max_messages=10, max_bytes=5))
    assert sized.put("abc")
    assert not sized.put("abc")
    assert sized.size == 3


def test_drop_oldest_makes_room_and_counts() -> None:
    limits = OutboxLimits(max_messages=2, max_bytes=6, policy=SlowConsumerPolicy.DROP_OLDEST)
    outbox = Outbox(limits)
    for frame in ["aa", "bb", "cc"]:
        assert outbox.put(frame)
    assert (len(outbox), outbox.dropped) == (2, 1)
    assert outbox.put("dddd")  # the count limit drops "bb"; then the bytes fit exactly
    assert (len(outbox), outbox.size, outbox.dropped) == (2, 6, 2)
    assert outbox.put("x" * 7)  # can never fit: everything goes, itself included
    assert outbox.dropped == 5
    assert len(outbox) == 0


@given(
    st.lists(st.text(alphabet="xyz", min_size=1, max_size=30), max_size=60),
    st.integers(1, 10),
    st.integers(1, 100),
    st.sampled_from(SlowConsumerPolicy),
)
def test_bounds_always_hold(
    frames: list[str], max_messages: int, max_bytes: int, policy: SlowConsumerPolicy
) -> None:
    outbox = Outbox(OutboxLimits(max_messages=max_messages, max_bytes=max_bytes, policy=policy))
    kept = 0
    for frame in frames:
        if outbox.put(frame):
            kept += 1
        assert len(outbox) <= max_messages
        assert outbox.size <= max_bytes
    assert kept + outbox.dropped >= len(outbox)


async def test_batches_join_queued_frames_up_to_the_batch_size() -> None:
    outbox = Outbox(OutboxLimits(max_batch_bytes=10))
    for frame in ["aaaa", "bbbb", "cccc", "dddddddddddd", "e"]:
        outbox.put(frame)
    assert await outbox.get_message() == ("aaaa\nbbbb", 2)
    assert await outbox.get_message() == ("cccc", 1)
    assert await outbox.get_message() == ("dddddddddddd", 1)
    assert await outbox.get_message() == ("e", 1)
    assert outbox.size == 0


async def test_get_waits_for_frames_and_ends_after_finish() -> None:
    outbox = Outbox(OutboxLimits())
    results: list[tuple[str, int] | None] = []

    async def take() -> None:
        results.append(await outbox.get_message())
        results.append(await outbox.get_message())

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(take)
        await anyio.sleep(0.01)
        assert results == []
        outbox.put("hello")
        await anyio.sleep(0.01)
        outbox.finish()
    assert results == [("hello", 1), None]


async def test_the_urgent_queue_is_bounded_in_bytes_but_takes_one_large_replay() -> None:
    outbox = Outbox(OutboxLimits(max_messages=100, max_bytes=10, max_batch_bytes=1000))
    # One replay larger than the bound is taken into an empty queue: a resume must work.
    assert outbox.put_urgent(["subscribed", "event-1", "event-2"])
    assert outbox.size == 24
    assert not outbox.put_urgent(["pong"]), "over max_bytes while not empty"
    while outbox.size:
        assert await outbox.get_message() is not None
    assert outbox.put_urgent(["pong"])
    assert outbox.size == 4
    outbox.clear()
    assert outbox.size == 0


def test_offer_queues_what_fits_and_leaves_the_policy_to_put() -> None:
    limits = OutboxLimits(max_messages=2, max_bytes=100, policy=SlowConsumerPolicy.DROP_OLDEST)
    outbox = Outbox(limits)
    assert outbox.offer("a", 1) == 1
    assert outbox.offer("b", 1) == 2
    assert outbox.offer("c", 1) == 0, "full: nothing dropped by offer"
    assert (len(outbox), outbox.dropped) == (2, 0)
    assert outbox.put("c")  # put applies the policy
    assert (len(outbox), outbox.dropped) == (2, 1)


def timed_outbox(limits: OutboxLimits) -> tuple[TimedOutbox, Metrics]:
    metrics = Metrics()
    metrics.enable_timings()
    return TimedOutbox(limits, metrics), metrics


async def test_a_timed_outbox_dates_each_message_by_its_oldest_event_frame() -> None:
    # Batches of at most two 3-character frames: the queue is taken in two messages.
    outbox, metrics = timed_outbox(OutboxLimits(max_batch_bytes=7))
    for stamp, frame in enumerate(("aaa", "bbb", "ccc")):
        metrics.queued_at = float(stamp + 1)
        assert outbox.offer(frame, 3)
    outbox.put_urgent(["ctl"])
    assert await outbox.get_message() == ("ctl", 1)
    assert outbox.urgent_taken  # control frames are not timed
    outbox.urgent_taken = False
    assert await outbox.get_message() == ("aaa\nbbb", 2)
    assert (outbox.urgent_taken, outbox.since) == (False, 1.0)
    # "ccc" was queued at 3.0, but all the outbox knows is that nothing waiting is older
    # than 1.0: an upper bound of its wait.
    assert await outbox.get_message() == ("ccc", 1)
    assert outbox.since == 1.0
    # Empty again: the next frame brings the time of its own fan-out.
    metrics.queued_at = 9.0
    assert outbox.offer("ddd", 3)
    metrics.queued_at = 10.0
    assert outbox.offer("eee", 3)
    assert await outbox.get_message() == ("ddd\neee", 2)
    assert outbox.since == 9.0


async def test_a_timed_outbox_dates_frames_put_by_the_slow_path_and_forgets_cleared_ones() -> None:
    limits = OutboxLimits(max_messages=2, policy=SlowConsumerPolicy.DROP_OLDEST)
    outbox, metrics = timed_outbox(limits)
    metrics.queued_at = 4.0
    outbox.put("x")
    outbox.clear()
    metrics.queued_at = 5.0
    for frame in ("old", "mid", "new"):  # the third goes in by dropping the oldest
        assert outbox.put(frame)
    assert outbox.dropped == 1
    assert await outbox.get_message() == ("mid\nnew", 2)
    assert outbox.since == 5.0
    metrics.queued_at = 6.0
    outbox.put("y")  # into an empty queue (no room was needed): stamped now
    assert await outbox.get_message() == ("y", 1)
    assert outbox.since == 6.0
