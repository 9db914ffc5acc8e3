"""The ordering state machine every networked backend shares, without any server."""

from __future__ import annotations

import logging

import pytest

from budget_ws import Position
from budget_ws.backends._sequencer import Sequencer
from budget_ws.backends.base import Recovery
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio

EPOCH = "e1"


def at(offset: int, epoch: str = EPOCH) -> Position:
    return Position(offset, epoch)


class History:
    """A topic's history as a server would keep it: the last ``size`` events."""

    def __init__(self, size: int = 100) -> None:
        self.size = size
        self.events: dict[str, list[tuple[Position, bytes]]] = {}
        self.reads: list[tuple[str, Position, int]] = []

    def append(self, topic: str, offset: int, epoch: str = EPOCH) -> tuple[Position, bytes]:
        item = (at(offset, epoch), b"%d" % offset)
        self.events.setdefault(topic, []).append(item)
        del self.events[topic][: -self.size]
        return item

    async def read(self, topic: str, after: Position, limit: int) -> Recovery:
        self.reads.append((topic, after, limit))
        kept = self.events.get(topic, [])
        latest = kept[-1][0] if kept else after
        missed = [item for item in kept if item[0].offset > after.offset]
        complete = bool(kept) and kept[0][0].offset <= after.offset + 1
        if missed and complete and len(missed) <= limit and kept[0][0].epoch == after.epoch:
            return Recovery(True, latest, missed)
        if not missed and latest == after:
            return Recovery(True, latest, [])
        return Recovery(False, latest)


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def fills() -> list[str]:
    return []


@pytest.fixture
def sequencer(history: History, fills: list[str]) -> Sequencer:
    return Sequencer(
        history=history.read,
        gap_limit=lambda topic: history.size,
        start_fill=fills.append,
        logger=logging.getLogger("budget_ws.test.sequencer"),
        server="TestServer",
    )


def payloads(listener: RecordingListener) -> list[int]:
    return [int(payload) for _, _, payload in listener.delivered]


def test_a_new_topic_holds_live_events_until_its_position_is_known(
    sequencer: Sequencer, history: History
) -> None:
    listener = RecordingListener()
    assert sequencer.add("t", listener)
    sequencer.receive("t", *history.append("t", 4))
    assert listener.delivered == []
    sequencer.start("t", at(3))
    sequencer.receive("t", *history.append("t", 5))
    assert payloads(listener) == [4, 5]
    assert sequencer.established("t")


def test_repeats_and_older_events_are_dropped(sequencer: Sequencer, history: History) -> None:
    listener = RecordingListener()
    sequencer.add("t", listener)
    sequencer.start("t", at(0))
    for offset in (1, 2, 2, 1, 3):
        sequencer.receive("t", at(offset), b"%d" % offset)
    assert payloads(listener) == [1, 2, 3]


async def test_a_jump_holds_live_events_and_history_fills_the_gap_first(
    sequencer: Sequencer, history: History, fills: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    listener = RecordingListener()
    sequencer.add("t", listener)
    sequencer.start("t", at(0))
    sequencer.receive("t", *history.append("t", 1))
    history.append("t", 2)
    history.append("t", 3)  # 2 and 3 were lost on the way
    sequencer.receive("t", *history.append("t", 4))
    sequencer.receive("t", *history.append("t", 5))
    assert payloads(listener) == [1]
    assert fills == ["t"]
    with caplog.at_level(logging.DEBUG, "budget_ws.test.sequencer"):
        await sequencer.fill_live_gap("t")
    assert payloads(listener) == [1, 2, 3, 4, 5]
    assert history.reads == [("t", at(1), 100)]
    assert (sequencer.gaps_filled, sequencer.events_recovered) == (1, 4)
    assert [record.budget_ws_event for record in caplog.records] == ["gap_filled"]  # type: ignore[attr-defined]
    sequencer.receive("t", *history.append("t", 6))
    assert payloads(listener)[-1] == 6


async def test_a_gap_history_no_longer_covers_tells_listeners_to_resync(
    history: History, fills: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    history.size = 2
    sequencer = Sequencer(
        history=history.read,
        gap_limit=lambda topic: history.size,
        start_fill=fills.append,
        logger=logging.getLogger("budget_ws.test.sequencer"),
        server="TestServer",
    )
    listener = RecordingListener()
    sequencer.add("t", listener)
    sequencer.start("t", at(0))
    sequencer.receive("t", *history.append("t", 1))
    for offset in (2, 3, 4):
        history.append("t", offset)
    sequencer.receive("t", *history.append("t", 5))
    with caplog.at_level(logging.WARNING, "budget_ws.test.sequencer"):
        await sequencer.fill_live_gap("t")
    assert listener.resyncs == [("t", at(5))]
    # Event 5 was held behind the gap; history already ends at it, so it is not repeated.
    assert payloads(listener) == [1]
    assert caplog.records[-1].budget_ws_cause == "history_short"  # type: ignore[attr-defined]
    sequencer.receive("t", *history.append("t", 6))
    assert payloads(listener) == [1, 6]


def test_a_new_epoch_resyncs_to_just_before_its_event_then_delivers_it(
    sequencer: Sequencer, caplog: pytest.LogCaptureFixture
) -> None:
    listener = RecordingListener()
    sequencer.add("t", listener)
    sequencer.start("t", at(7))
    with caplog.at_level(logging.WARNING, "budget_ws.test.sequencer"):
        sequencer.receive("t", at(1, "e2"), b"1")
    assert listener.resyncs == [("t", at(0, "e2"))]
    assert listener.delivered == [("t", at(1, "e2"), b"1")]
    assert "TestServer started the topic over" in caplog.records[0].getMessage()


async def test_after_a_lost_connection_every_topic_holds_then_fills(
    sequencer: Sequencer, history: History
) -> None:
    first, second = RecordingListener(), RecordingListener()
    sequencer.add("a", first)
    sequencer.add("b", second)
    sequencer.start("a", at(0))
    sequencer.start("b", at(0))
    sequencer.hold_all()
    history.append("a", 1)  # published while the connection was down
    sequencer.receive("a", *history.append("a", 2))  # the new connection's first event
    assert first.delivered == []
    assert await sequencer.fill("a") == 2  # both from history; the held 2 is a repeat
    assert await sequencer.fill("b") == 0  # nothing was published to b
    sequencer.receive("b", *history.append("b", 1))
    assert payloads(first) == [1, 2]
    assert payloads(second) == [1]


async def test_a_topic_dropped_during_its_fill_gets_nothing(history: History) -> None:
    listener = RecordingListener()

    async def unsubscribing_read(topic: str, after: Position, limit: int) -> Recovery:
        sequencer.remove(topic, listener)  # the last listener leaves while history is read
        return await history.read(topic, after, limit)

    sequencer = Sequencer(
        history=unsubscribing_read,
        gap_limit=lambda topic: 10,
        start_fill=lambda topic: None,
        logger=logging.getLogger("budget_ws.test.sequencer"),
        server="TestServer",
    )
    sequencer.add("t", listener)
    sequencer.start("t", at(0))
    history.append("t", 1)
    assert await sequencer.fill("t") == 0
    assert listener.delivered == []
    assert "t" not in sequencer
    assert await sequencer.fill("t") == 0  # unknown topics: nothing to do


def test_listeners_join_and_leave_and_unknown_topics_are_ignored(sequencer: Sequencer) -> None:
    first, second = RecordingListener(), RecordingListener()
    assert sequencer.add("t", first)
    assert not sequencer.add("t", second)
    assert not sequencer.add("t", second)  # twice is once
    sequencer.start("t", at(0))
    sequencer.receive("t", at(1), b"1")
    sequencer.receive("other", at(1), b"1")
    sequencer.start("other", at(1))
    assert not sequencer.remove("t", first)
    assert not sequencer.remove("t", first)
    assert not sequencer.remove("other", first)
    sequencer.receive("t", at(2), b"2")
    assert payloads(first) == [1]
    assert payloads(second) == [1, 2]
    assert sequencer.has("t", second)
    assert not sequencer.has("t", first)
    assert list(sequencer) == ["t"]
    assert len(sequencer) == 1
    assert sequencer.remove("t", second)
    assert "t" not in sequencer
    assert not sequencer.established("t")


def test_a_failing_listener_is_logged_and_the_others_still_get_the_event(
    sequencer: Sequencer, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingListener):
        def deliver(self, topic: str, position: Position, payload: bytes) -> None:
            raise RuntimeError("listener bug")

        def resync(self, topic: str, position: Position) -> None:
            raise RuntimeError("listener bug")

    broken, working = Broken(), RecordingListener()
    sequencer.add("t", broken)
    sequencer.add("t", working)
    sequencer.start("t", at(0))
    with caplog.at_level(logging.ERROR, "budget_ws.test.sequencer"):
        sequencer.receive("t", at(1), b"1")
        sequencer.receive("t", at(1, "e2"), b"1")
    assert payloads(working) == [1, 1]
    assert working.resyncs == [("t", at(0, "e2"))]
    events = [record.budget_ws_event for record in caplog.records]  # type: ignore[attr-defined]
    assert events.count("listener_failed") == 3
