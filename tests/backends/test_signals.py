"""The signal listeners every backend keeps (``backends/_signals.py``)."""

from __future__ import annotations

import logging

import pytest

from budget_ws.backends._signals import SignalListeners


def test_each_listener_once_in_order_and_a_failing_one_stops_no_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[tuple[str, bytes]] = []

    def first(payload: bytes) -> None:
        heard.append(("first", payload))

    def broken(payload: bytes) -> None:
        raise RuntimeError("broken")

    def last(payload: bytes) -> None:
        heard.append(("last", payload))

    listeners = SignalListeners(logging.getLogger("test.signals"))
    assert not listeners
    assert listeners.add(first)
    assert listeners.add(broken)
    assert listeners.add(last)
    assert not listeners.add(first)  # already there: not twice
    listeners.hand_out(b"s")
    assert heard == [("first", b"s"), ("last", b"s")]
    assert "signal listener" in caplog.text


def test_discarding_twice_or_after_clear_is_harmless() -> None:
    listeners = SignalListeners(logging.getLogger("test.signals"))
    heard: list[bytes] = []
    listeners.add(heard.append)
    listeners.discard(heard.append)
    listeners.discard(heard.append)
    listeners.add(heard.append)
    listeners.clear()
    listeners.discard(heard.append)
    listeners.hand_out(b"s")
    assert not listeners
    assert heard == []
