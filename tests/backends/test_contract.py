"""What every backend must do (see budget_ws.backends.base)."""

from __future__ import annotations

import uuid

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budget_ws import Backend, Listener, Position
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(contract_anyio_backend: str) -> str:
    """Each backend runs on the event loops it supports (see conftest.CASES)."""
    return contract_anyio_backend


def fresh_topic() -> str:
    return f"contract:{uuid.uuid4().hex}"


async def test_backend_and_listener_satisfy_the_protocols(
    backend: Backend, listener: RecordingListener
) -> None:
    assert isinstance(backend, Backend)
    assert isinstance(listener, Listener)


async def test_offsets_start_at_one_and_grow_by_one_per_topic(backend: Backend) -> None:
    topic, other = fresh_topic(), fresh_topic()
    positions = [await backend.publish(topic, b"x") for _ in range(3)]
    assert [position.offset for position in positions] == [1, 2, 3]
    assert len({position.epoch for position in positions}) == 1
    assert (await backend.publish(other, b"y")).offset == 1


async def test_subscribers_get_every_payload_in_order(
    backend: Backend, listener: RecordingListener
) -> None:
    topic, other = fresh_topic(), fresh_topic()
    second = RecordingListener()
    await backend.subscribe(topic, listener)
    await backend.subscribe(topic, second)
    payloads = [b'{"n":%d}' % number for number in range(5)]
    published = [await backend.publish(topic, payload) for payload in payloads]
    await backend.publish(other, b"not for us")
    for recorder in (listener, second):
        with anyio.fail_after(5):
            await recorder.wait_for(5)
        assert recorder.delivered == [
            (topic, position, payload) for position, payload in zip(published, payloads)
        ]


async def test_unsubscribe_stops_delivery(backend: Backend, listener: RecordingListener) -> None:
    topic = fresh_topic()
    await backend.subscribe(topic, listener)
    await backend.publish(topic, b"1")
    with anyio.fail_after(5):
        await listener.wait_for(1)
    await backend.unsubscribe(topic, listener)
    await backend.unsubscribe(topic, listener)  # twice is harmless
    await backend.unsubscribe(fresh_topic(), listener)
    marker = RecordingListener()
    await backend.subscribe(topic, marker)
    await backend.publish(topic, b"2")
    with anyio.fail_after(5):
        await marker.wait_for(1)
    assert [payload for _, _, payload in listener.delivered] == [b"1"]


async def test_history_is_all_or_nothing(backend: Backend) -> None:
    topic = fresh_topic()
    empty = await backend.history(topic, None, 100)
    assert (empty.recovered, empty.position.offset, list(empty.items)) == (False, 0, [])
    at_start = await backend.history(topic, Position(0, empty.position.epoch), 100)
    assert at_start.recovered

    positions = [await backend.publish(topic, b"%d" % number) for number in range(1, 6)]
    top = positions[-1]
    epoch = top.epoch

    fresh = await backend.history(topic, None, 100)
    assert (fresh.recovered, fresh.position, list(fresh.items)) == (False, top, [])

    at_top = await backend.history(topic, top, 100)
    assert (at_top.recovered, at_top.position, list(at_top.items)) == (True, top, [])

    missed = await backend.history(topic, positions[1], 100)
    assert missed.recovered
    assert list(missed.items) == [(Position(n, epoch), b"%d" % n) for n in (3, 4, 5)]

    from_zero = await backend.history(topic, Position(0, epoch), 100)
    assert [position.offset for position, _ in from_zero.items] == [1, 2, 3, 4, 5]

    for after, limit in [
        (Position(2, "another epoch"), 100),
        (Position(99, epoch), 100),
        (positions[0], 3),
    ]:
        refused = await backend.history(topic, after, limit)
        assert (refused.recovered, refused.position, list(refused.items)) == (False, top, [])


async def test_concurrent_publishers_get_distinct_contiguous_offsets(
    backend: Backend, listener: RecordingListener
) -> None:
    topic = fresh_topic()
    await backend.subscribe(topic, listener)

    async def publish_many(worker: int) -> None:
        for number in range(20):
            await backend.publish(topic, b"%d-%d" % (worker, number))

    async with anyio.create_task_group() as task_group:
        for worker in range(5):
            task_group.start_soon(publish_many, worker)
    with anyio.fail_after(5):
        await listener.wait_for(100)
    assert [position.offset for _, position, _ in listener.delivered] == list(range(1, 101))
    history = await backend.history(topic, Position(0, listener.delivered[0][1].epoch), 100)
    assert [payload for _, payload in history.items] == [
        payload for _, _, payload in listener.delivered
    ]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300))
async def test_payloads_are_opaque_bytes(backend: Backend, payload: bytes) -> None:
    topic = fresh_topic()
    position = await backend.publish(topic, payload)
    recovery = await backend.history(topic, Position(0, position.epoch), 10)
    assert list(recovery.items) == [(position, payload)]
