"""A Redis Cluster moving a topic's slot to another node while the topic is in use."""

from __future__ import annotations

import itertools
import uuid

import anyio
import pytest
from redis import asyncio as aioredis

from budget_ws import Position
from budget_ws.backends.redis import SHARDED_PUBSUB, RedisBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio


class Progress:
    """Counts publishes; lets the test wait for the next ones instead of sleeping."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = anyio.Event()

    def add(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def more(self, number: int) -> None:
        goal = self.count + number
        with anyio.fail_after(20):
            while self.count < goal:
                await self._changed.wait()


# A cluster needs redis-py 8 (test_redis checks the refusal on older ones).
if SHARDED_PUBSUB:

    async def test_publishing_and_history_follow_a_topic_through_a_slot_migration(
        redis_cluster: str,
    ) -> None:
        topic = f"moving:{uuid.uuid4().hex[:8]}"
        async with RedisBackend(
            redis_cluster, key_prefix=f"test-{uuid.uuid4().hex[:12]}", cluster=True
        ) as backend:
            client = backend._client
            meta = backend._keys(topic)[0]
            slot = client.keyslot(meta)
            source = client.nodes_manager.get_node_from_slot(slot)
            target, bystander = [n for n in client.get_primaries() if n.name != source.name]
            admins = {
                node.name: aioredis.Redis(host=node.host, port=node.port)
                for node in (source, target, bystander)
            }
            ids = {name: await admin.cluster("MYID") for name, admin in admins.items()}
            positions = [await backend.publish(topic, b"0")]
            numbers = itertools.count(1)
            progress = Progress()
            stop = anyio.Event()

            async def publish() -> None:
                while not stop.is_set():
                    positions.append(await backend.publish(topic, b"%d" % next(numbers)))
                    progress.add()

            async def setslot(node: str, *arguments: object) -> None:
                await admins[node].execute_command("CLUSTER", "SETSLOT", slot, *arguments)

            # Idle connections to the target in redis-py's pool: its ASKING then goes out
            # on one connection and the command on another.
            neighbour = next(
                name
                for name in (f"neighbour:{number}" for number in itertools.count())
                if client.nodes_manager.get_node_from_slot(client.keyslot(backend._keys(name)[0]))
                is target
            )
            async with anyio.create_task_group() as task_group:
                for _ in range(20):
                    task_group.start_soon(backend.publish, neighbour, b"x")
            async with anyio.create_task_group() as task_group:
                for _ in range(4):
                    task_group.start_soon(publish)
                await progress.more(20)
                await setslot(target.name, "IMPORTING", ids[source.name])
                await setslot(source.name, "MIGRATING", ids[target.name])
                await progress.more(20)  # the keys are still on the source
                keys = await admins[source.name].execute_command(
                    "CLUSTER", "GETKEYSINSLOT", slot, 100
                )
                assert len(keys) == 2, keys  # the topic's meta hash and stream
                # One key at a time, as a reshard's batches may split a topic's keys:
                # while they are apart, its commands meet TRYAGAIN.
                for key in keys:
                    await admins[source.name].execute_command(
                        "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", key
                    )
                    await anyio.sleep(0.05)  # fault injection: a publish meets the split
                # The ASK window: the source sends every command to the target.
                await progress.more(20)
                during = await backend.history(topic, positions[0], 1000)
                assert during.recovered
                for node in (target, source, bystander):
                    await setslot(node.name, "NODE", ids[target.name])
                await progress.more(20)
                stop.set()
            # Learnt from MOVED: publishing goes straight to the new owner again.
            assert client.nodes_manager.get_node_from_slot(slot) is target
            after = await backend.history(topic, Position(0, positions[0].epoch), 1000)
            for admin in admins.values():
                await admin.aclose()
        offsets = sorted(position.offset for position in positions)
        assert offsets == list(range(1, len(positions) + 1)), "distinct, contiguous offsets"
        assert {position.epoch for position in positions} == {positions[0].epoch}
        assert after.recovered
        assert [position.offset for position, _ in after.items] == offsets
        assert len(during.items) >= 60
        assert during.items == after.items[1 : len(during.items) + 1]

    async def test_a_node_that_never_ran_the_scripts_gets_them(redis_cluster: str) -> None:
        # A node that becomes a topic's owner may never have run the scripts (or flushed
        # them): NOSCRIPT runs nothing, so the backend sends the script itself.
        async with RedisBackend(
            redis_cluster, key_prefix=f"test-{uuid.uuid4().hex[:12]}", cluster=True
        ) as backend:
            first = await backend.publish("flushed", b"1")
            for node in backend._client.get_primaries():
                admin = aioredis.Redis(host=node.host, port=node.port)
                await admin.script_flush()
                await admin.aclose()
            second = await backend.publish("flushed", b"2")
            recovery = await backend.history("flushed", first, 10)
        assert second.offset == first.offset + 1
        assert [payload for _, payload in recovery.items] == [b"2"]
