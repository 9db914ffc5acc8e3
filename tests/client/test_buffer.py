"""The bounded buffer between the client's reader and the app."""

from __future__ import annotations

import asyncio

import pytest

from budget_ws.client._buffer import Buffer

pytestmark = pytest.mark.anyio


async def test_put_waits_for_room() -> None:
    buffer: Buffer[int] = Buffer(2)
    assert await buffer.put(1)
    assert await buffer.put(2)
    third = asyncio.create_task(buffer.put(3))
    await asyncio.sleep(0.01)
    assert not third.done()
    assert len(buffer) == 2
    assert await buffer.get() == 1
    assert await asyncio.wait_for(third, 1) is True
    assert [await buffer.get(), await buffer.get()] == [2, 3]


async def test_items_come_out_before_the_end() -> None:
    buffer: Buffer[int] = Buffer(5)
    await buffer.put(1)
    buffer.end(LookupError("gone"))
    buffer.end()  # the first end counts
    assert buffer.ended
    assert await buffer.get() == 1
    with pytest.raises(LookupError):
        await buffer.get()
    assert await buffer.put(2) is False


async def test_a_normal_end_stops_iteration_and_wakes_a_waiting_put() -> None:
    buffer: Buffer[int] = Buffer(1)
    await buffer.put(1)
    waiting = asyncio.create_task(buffer.put(2))
    await asyncio.sleep(0.01)
    assert buffer.clear() == [1]
    buffer.end()
    assert await asyncio.wait_for(waiting, 1) in (True, False)
    getter = Buffer[int](1)
    task = asyncio.create_task(getter.get())
    await asyncio.sleep(0.01)
    getter.end()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 1)


async def test_extend_goes_beyond_the_capacity() -> None:
    buffer: Buffer[int] = Buffer(1)
    buffer.extend([1, 2, 3])
    assert [await buffer.get() for _ in range(3)] == [1, 2, 3]
