"""Publishing inside the app's transaction: delivered if and only if it commits."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from tests.support.postgres import POSTGRES_DSN, migrated_schema, url_of

from budget_ws import (
    ConnectionManager,
    Event,
    MemoryBackend,
    Position,
    SchemaNotReady,
    TransactionalBackend,
    TransactionalPublishUnsupported,
)
from budget_ws.backends.postgresql import PostgresBackend
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio

DRIVERS = ("asyncpg", "psycopg")
"""SQLAlchemy's async PostgreSQL drivers: the publish must work through either."""


class FactCreated(Event, name="budget_fact_created", register=False):
    fact_id: int


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


@pytest.fixture
async def backend(postgres_schema: str) -> AsyncIterator[PostgresBackend]:
    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as opened:
        yield opened


@pytest.fixture(params=DRIVERS)
async def engine(
    postgres_schema: str, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    """The app's own engine, with a table of facts beside budget_ws's schema."""
    created = create_async_engine(POSTGRES_DSN.replace("postgresql", f"postgresql+{request.param}"))
    async with created.begin() as connection:
        await connection.execute(text(f"CREATE TABLE {postgres_schema}.facts (id int)"))
    yield created
    await created.dispose()


async def facts(engine: AsyncEngine, schema: str) -> list[int]:
    async with engine.connect() as connection:
        rows = await connection.execute(text(f"SELECT id FROM {schema}.facts ORDER BY id"))
        return [row[0] for row in rows]


async def settle(backend: PostgresBackend, topic: str) -> Position:
    """Publish a marker and wait until the listener got it: all before it was delivered."""
    return await backend.publish(topic, b"marker")


async def test_a_committed_session_delivers_and_a_rolled_back_one_does_not(
    backend: PostgresBackend, engine: AsyncEngine, postgres_schema: str
) -> None:
    listener = RecordingListener()
    await backend.subscribe("budget:1", listener)
    async with AsyncSession(engine) as session:
        await session.execute(text(f"INSERT INTO {postgres_schema}.facts VALUES (1)"))
        rolled_back = await backend.publish_within(session, "budget:1", b"fact 1")
        await session.rollback()
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(text(f"INSERT INTO {postgres_schema}.facts VALUES (2)"))
        committed = await backend.publish_within(session, "budget:1", b"fact 2")
        assert listener.delivered == []  # not before the commit
    marker = await settle(backend, "budget:1")
    with anyio.fail_after(5):
        await listener.wait_for(2)
    # The rolled-back event's offset went to the committed one: no gap for clients.
    assert rolled_back == committed == Position(1, committed.epoch)
    assert listener.delivered == [
        ("budget:1", committed, b"fact 2"),
        ("budget:1", marker, b"marker"),
    ]
    assert await facts(engine, postgres_schema) == [2]
    recovery = await backend.history("budget:1", Position(0, committed.epoch), 10)
    assert [payload for _, payload in recovery.items] == [b"fact 2", b"marker"]


async def test_an_async_connection_and_a_savepoint_rolled_back(
    backend: PostgresBackend, engine: AsyncEngine
) -> None:
    listener = RecordingListener()
    await backend.subscribe("t", listener)
    async with engine.connect() as connection:
        first = await backend.publish_within(connection, "t", b"kept")
        savepoint = await connection.begin_nested()
        await backend.publish_within(connection, "t", b"undone with the savepoint")
        await savepoint.rollback()
        second = await backend.publish_within(connection, "t", b"kept too")
        await connection.commit()
    with anyio.fail_after(5):
        await listener.wait_for(2)
    assert listener.delivered == [("t", first, b"kept"), ("t", second, b"kept too")]
    assert (first.offset, second.offset) == (1, 2)


async def test_an_asyncpg_connection_needs_an_open_transaction(backend: PostgresBackend) -> None:
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        with pytest.raises(TransactionalPublishUnsupported, match="open transaction"):
            await backend.publish_within(connection, "t", b"x")
        listener = RecordingListener()
        await backend.subscribe("t", listener)
        async with connection.transaction():
            position = await backend.publish_within(connection, "t", b"in a transaction")
        with anyio.fail_after(5):
            await listener.wait_for(1)
        assert listener.delivered == [("t", position, b"in a transaction")]
        assert position.offset == 1  # the refused publish took no offset
    finally:
        await connection.close()


async def test_a_database_without_the_schema_is_named_not_a_driver_error(
    engine: AsyncEngine,
) -> None:
    unmigrated = PostgresBackend(POSTGRES_DSN, schema="never_migrated")
    async with AsyncSession(engine) as session:
        with pytest.raises(SchemaNotReady, match="never_migrated"):
            await unmigrated.publish_within(session, "t", b"x")
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        async with connection.transaction():
            with pytest.raises(SchemaNotReady, match="migrate"):
                await unmigrated.publish_within(connection, "t", b"x")
    finally:
        await connection.close()


async def test_anything_else_is_refused(backend: PostgresBackend) -> None:
    for transaction in (object(), "postgresql://", None):
        with pytest.raises(TransactionalPublishUnsupported, match="AsyncSession"):
            await backend.publish_within(transaction, "t", b"x")


async def test_a_publish_waits_for_the_transaction_holding_its_topic(
    backend: PostgresBackend,
) -> None:
    """Offsets in commit order: a second publisher to the topic waits for the first."""
    connection = await asyncpg.connect(POSTGRES_DSN)
    second: list[Position] = []

    async def publish_second() -> None:
        second.append(await backend.publish("t", b"second"))

    try:
        async with anyio.create_task_group() as group:
            async with connection.transaction():
                first = await backend.publish_within(connection, "t", b"first")
                group.start_soon(publish_second)
                await anyio.sleep(0.3)
                assert second == [], "the topic row is locked until the commit"
        assert second == [Position(first.offset + 1, first.epoch)]
    finally:
        await connection.close()


# Through the manager --------------------------------------------------------------------


async def test_the_manager_publishes_within_a_session(
    postgres_schema: str, engine: AsyncEngine
) -> None:
    async with ConnectionManager(url_of(postgres_schema)) as manager:
        listener = RecordingListener()
        await manager.backend.subscribe("budget:1", listener)
        async with AsyncSession(engine) as session, session.begin():
            position = await manager.publish(
                FactCreated(fact_id=7), topic="budget:1", within=session
            )
        with anyio.fail_after(5):
            await listener.wait_for(1)
        [(_, delivered, payload)] = listener.delivered
        assert delivered == position
        assert b'"budget_fact_created"' in payload
        assert manager.stats().published == 1


async def test_a_backend_that_cannot_is_a_clear_error_not_a_plain_publish() -> None:
    assert isinstance(PostgresBackend(), TransactionalBackend)
    assert not isinstance(MemoryBackend(), TransactionalBackend)
    listener = RecordingListener()
    async with ConnectionManager(MemoryBackend()) as manager:
        await manager.backend.subscribe("budget:1", listener)
        with pytest.raises(TransactionalPublishUnsupported, match="PostgreSQL backend can"):
            await manager.publish(FactCreated(fact_id=1), topic="budget:1", within=object())
    assert listener.delivered == []


# Concurrent transactions ------------------------------------------------------------------

TOPICS = ("a", "b", "c")

transactions = st.lists(
    st.tuples(
        st.lists(st.sampled_from(TOPICS), min_size=1, max_size=4),  # its publishes
        st.booleans(),  # commits, or rolls back
        st.integers(min_value=0, max_value=3),  # milliseconds it lingers before ending
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=transactions, seed=st.integers(0, 2**16))
async def test_listeners_see_exactly_the_committed_events_in_offset_order(
    plan: list[tuple[list[str], bool, int]], seed: int
) -> None:
    async with migrated_schema() as schema:
        publisher = PostgresBackend(POSTGRES_DSN, schema=schema, max_connections=10)
        elsewhere = PostgresBackend(POSTGRES_DSN, schema=schema)  # another worker
        async with publisher, elsewhere:
            listener = RecordingListener()
            for topic in TOPICS:
                await elsewhere.subscribe(topic, listener)
            committed: list[bytes] = []
            shuffle = random.Random(seed)

            async def run(index: int, topics: list[str], commits: bool, linger: int) -> None:
                await anyio.sleep(shuffle.random() / 100)
                # Two transactions taking topics in opposite orders deadlock; PostgreSQL
                # then aborts one, which publishes nothing (found fast here: 20 ms).
                settings = {"deadlock_timeout": "20ms"}
                connection = await asyncpg.connect(POSTGRES_DSN, server_settings=settings)
                try:
                    transaction = connection.transaction()
                    await transaction.start()
                    payloads = [b"%d:%d" % (index, number) for number in range(len(topics))]
                    try:
                        for topic, payload in zip(topics, payloads):
                            await publisher.publish_within(connection, topic, payload)
                            await anyio.sleep(shuffle.random() / 1000)
                    except asyncpg.exceptions.DeadlockDetectedError:
                        commits = False
                    await anyio.sleep(linger / 1000)
                    if commits:
                        await transaction.commit()
                        committed.extend(payloads)
                    else:
                        await transaction.rollback()
                finally:
                    await connection.close()

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    for index, (topics, commits, linger) in enumerate(plan):
                        group.start_soon(run, index, topics, commits, linger)
                markers = {topic: await publisher.publish(topic, b"end") for topic in TOPICS}
                await listener.wait_for(len(committed) + len(TOPICS))
            assert listener.resyncs == []
            for topic in TOPICS:
                got = [(position, payload) for name, position, payload in listener.delivered
                       if name == topic]  # fmt: skip
                assert [position.offset for position, _ in got] == list(range(1, len(got) + 1))
                assert got[-1] == (markers[topic], b"end")
            delivered = [payload for _, _, payload in listener.delivered if payload != b"end"]
            assert sorted(delivered) == sorted(committed)
