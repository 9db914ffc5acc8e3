"""What is particular to the in-memory backend, and choosing backends by URL."""

from __future__ import annotations

import pytest

from budget_ws import BackendNotInstalled, MemoryBackend, Position, UnknownBackend, create_backend
from budget_ws import backends as backends_module
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_history_is_bounded_by_size() -> None:
    backend = MemoryBackend(history_size=3)
    first = await backend.publish("t", b"1")
    for number in range(2, 6):
        await backend.publish("t", b"%d" % number)
    assert not (await backend.history("t", first, 100)).recovered
    recovery = await backend.history("t", Position(2, first.epoch), 100)
    assert [payload for _, payload in recovery.items] == [b"3", b"4", b"5"]


async def test_history_expires() -> None:
    clock = Clock()
    backend = MemoryBackend(history_ttl=10, clock=clock)
    first = await backend.publish("t", b"1")
    clock.now += 6
    await backend.publish("t", b"2")
    clock.now += 6
    assert not (await backend.history("t", Position(0, first.epoch), 10)).recovered
    recovery = await backend.history("t", first, 10)
    assert [payload for _, payload in recovery.items] == [b"2"]


async def test_idle_topics_are_forgotten_and_get_a_new_epoch() -> None:
    clock = Clock()
    backend = MemoryBackend(history_ttl=10, clock=clock)
    listener = RecordingListener()
    old = await backend.publish("idle", b"1")
    await backend.subscribe("watched", listener)
    clock.now += 11
    await backend.publish("other", b"x")  # any publish sweeps
    new = await backend.publish("idle", b"2")
    assert (new.offset, new.epoch != old.epoch) == (1, True)
    assert not (await backend.history("idle", old, 10)).recovered
    await backend.publish("watched", b"still")
    assert [payload for _, _, payload in listener.delivered] == [b"still"]


async def test_zero_history_still_numbers_events() -> None:
    backend = MemoryBackend(history_size=0)
    first = await backend.publish("t", b"1")
    second = await backend.publish("t", b"2")
    assert second.offset == 2
    assert not (await backend.history("t", first, 10)).recovered
    assert (await backend.history("t", second, 10)).recovered


async def test_a_failing_listener_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(RecordingListener):
        def deliver(self, topic: str, position: Position, payload: bytes) -> None:
            raise RuntimeError("broken listener")

    backend = MemoryBackend()
    healthy = RecordingListener()
    await backend.subscribe("t", Broken())
    await backend.subscribe("t", healthy)
    await backend.publish("t", b"1")
    assert len(healthy.delivered) == 1
    assert "broken listener" in caplog.text


async def test_a_failing_signal_listener_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(payload: bytes) -> None:
        raise RuntimeError("broken signal listener")

    heard: list[bytes] = []
    backend = MemoryBackend()
    await backend.listen_signals(broken)
    await backend.listen_signals(heard.append)
    await backend.signal(b"s")
    assert heard == [b"s"]
    assert "signal listener" in caplog.text


async def test_aclose_forgets_listeners() -> None:
    listener = RecordingListener()
    async with MemoryBackend() as backend:
        await backend.subscribe("t", listener)
    await backend.publish("t", b"after close")
    assert listener.delivered == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="history_size"):
        MemoryBackend(history_size=-1)
    with pytest.raises(ValueError, match="history_ttl"):
        MemoryBackend(history_ttl=0)


def test_create_backend_from_urls() -> None:
    backend = create_backend("memory://?history_size=5&history_ttl=2.5")
    assert isinstance(backend, MemoryBackend)
    assert (backend.history_size, backend.history_ttl) == (5, 2.5)
    assert "history_size=5" in repr(backend)
    assert isinstance(create_backend("memory://"), MemoryBackend)
    with pytest.raises(UnknownBackend, match="no option 'size'"):
        create_backend("memory://?size=5")
    with pytest.raises(UnknownBackend, match="history_size accepts a whole number"):
        create_backend("memory://?history_size=many")
    with pytest.raises(UnknownBackend, match="known schemes: memory://"):
        create_backend("kafka://localhost")


def test_missing_extras_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        backends_module._LAZY_BACKENDS,
        "fancy",
        ("budget_ws.backends.fancy", "FancyBackend", "no_such_distribution_xyz", "fancy"),
    )
    with pytest.raises(BackendNotInstalled, match=r"pip install 'budget-ws\[fancy\]'"):
        create_backend("fancy://host")


def test_out_of_range_url_options_are_refused() -> None:
    with pytest.raises(UnknownBackend, match="history_size"):
        create_backend("memory://?history_size=-1")
