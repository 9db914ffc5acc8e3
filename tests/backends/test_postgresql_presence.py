"""The PostgreSQL backend's signals and presence beyond the contract: the schema upgrade,
several workers, expiry, a lost listening connection, and how failures surface."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import asyncpg
import pytest
from tests.support.postgres import POSTGRES_DSN
from tests.support.signals import Signals

from budget_ws import BackendError, BackendUnavailable, Position, SchemaNotReady
from budget_ws.backends import PresenceRow
from budget_ws.backends._postgres_schema import migration_sql
from budget_ws.backends.postgresql import SIGNAL_LIMIT, PostgresBackend
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


async def admin(query: str, *arguments: object) -> object:
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        return await connection.fetchval(query, *arguments)
    finally:
        await connection.close()


def row(user: str, connections: int = 1, topic: str = "t", info: bytes = b"{}") -> PresenceRow:
    return PresenceRow(topic, "ignored: the writer's id is stored", user, connections, info)


def users(rows: Sequence[PresenceRow]) -> dict[tuple[str, str], int]:
    return {(stored.worker, stored.user): stored.connections for stored in rows}


@asynccontextmanager
async def version_1_schema() -> AsyncIterator[str]:
    """A schema as budget_ws with schema version 1 left it, with one event published."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(migration_sql(schema, 1))
        await connection.execute(f"SELECT * FROM {schema}.publish('t', 'kept', 10, 600)")
        yield schema
    finally:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.close()


# The schema: version 2 upgrades version 1 in place ------------------------------------------


async def test_a_worker_refuses_a_version_1_schema_and_names_the_migrate_command() -> None:
    async with version_1_schema() as schema:
        backend = PostgresBackend(POSTGRES_DSN, schema=schema)
        with pytest.raises(SchemaNotReady, match="schema version 1") as raised:
            await backend.__aenter__()
        assert "python -m budget_ws migrate" in str(raised.value)
        assert "needs version 2" in str(raised.value)
        assert backend.status()["connected"] is False


async def test_migrating_a_version_1_schema_keeps_its_history_and_adds_presence() -> None:
    async with version_1_schema() as schema:
        assert await admin(f"SELECT to_regclass('{schema}.presence')") is None
        backend = PostgresBackend(POSTGRES_DSN, schema=schema)
        for _ in range(2):  # and again: nothing changes
            assert await backend.migrate() == 2
        assert await admin(f"SELECT array_agg(version) FROM {schema}.schema_version") == [2]
        async with backend:
            epoch = await admin(f"SELECT epoch FROM {schema}.topics WHERE topic = 't'")
            assert isinstance(epoch, str)
            recovery = await backend.history("t", Position(0, epoch), 10)
            assert recovery.recovered
            assert [payload for _, payload in recovery.items] == [b"kept"]
            assert (await backend.publish("t", b"next")).offset == 2
            assert not await backend.presence_write("w", 1, 30, [row("alice")], replace=True)
            assert users((await backend.presence_read("t")).rows) == {("w", "alice"): 1}


async def test_a_newer_schema_is_not_migrated_back(postgres_schema: str) -> None:
    await admin(f"UPDATE {postgres_schema}.schema_version SET version = 3")
    with pytest.raises(SchemaNotReady, match=r"schema version 3.*newer"):
        await PostgresBackend(POSTGRES_DSN, schema=postgres_schema).migrate()
    assert await admin(f"SELECT version FROM {postgres_schema}.schema_version") == 3


# Signals --------------------------------------------------------------------------------


async def test_signals_reach_every_worker_in_order_and_never_as_events(
    postgres_schema: str,
) -> None:
    async with (
        PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as first,
        PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as second,
    ):
        heard = [Signals(), Signals()]
        await first.listen_signals(heard[0])
        await second.listen_signals(heard[1])
        events = RecordingListener()
        await second.subscribe("t", events)
        # Payloads that look like an event's announcement, or hold any bytes.
        sent = [b"1 e 1 t=AA==", b"", bytes(range(256)), b"last"]
        for payload in sent[:2]:
            await first.signal(payload)
        published = await first.publish("t", b"an event")
        for payload in sent[2:]:
            await second.signal(payload)
        for signals in heard:
            await signals.wait_for(len(sent))
            assert signals.received == sent
        with anyio.fail_after(5):
            await events.wait_for(1)
        assert events.delivered == [("t", published, b"an event")]


async def test_a_signal_too_large_for_notify_is_refused_before_sending(
    postgres_schema: str,
) -> None:
    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as backend:
        signals = Signals()
        await backend.listen_signals(signals)
        with pytest.raises(BackendError, match=f"at most {SIGNAL_LIMIT} bytes"):
            await backend.signal(b"x" * (SIGNAL_LIMIT + 1))
        await backend.signal(b"y" * SIGNAL_LIMIT)  # the largest fits
        await signals.wait_for(1)
        assert signals.received == [b"y" * SIGNAL_LIMIT]


async def test_a_failing_signal_listener_does_not_stop_the_others(
    postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(payload: bytes) -> None:
        raise RuntimeError("broken listener")

    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as backend:
        signals = Signals()
        await backend.listen_signals(broken)
        await backend.listen_signals(signals)
        await backend.listen_signals(signals)  # once is enough
        with caplog.at_level(logging.ERROR, "budget_ws.backend.postgresql"):
            await backend.signal(b"1")
            await backend.signal(b"2")
            await signals.wait_for(2)
        assert signals.received == [b"1", b"2"]
    failed = [r for r in caplog.records if getattr(r, "budget_ws_event", "") == "listener_failed"]
    assert len(failed) == 2


async def test_a_malformed_signal_is_ignored_as_foreign(
    postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as backend:
        signals = Signals()
        await backend.listen_signals(signals)
        with caplog.at_level(logging.WARNING, "budget_ws.backend.postgresql"):
            await admin("SELECT pg_notify($1, $2)", postgres_schema, "!not base64%")
            await backend.signal(b"real")
            await signals.wait_for(1)
    assert signals.received == [b"real"]
    assert any(
        getattr(record, "budget_ws_event", "") == "foreign_notification"
        for record in caplog.records
    )


async def test_signals_arrive_again_after_the_listening_connection_is_killed(
    postgres_schema: str,
) -> None:
    backend = PostgresBackend(
        POSTGRES_DSN,
        schema=postgres_schema,
        reconnect_delay=(0.1, 0.1),
        connection_options={"server_settings": {"application_name": postgres_schema}},
    )
    async with backend:
        signals = Signals()
        await backend.listen_signals(signals)
        await backend.presence_write("w", 1, 60, [row("alice", 2)], replace=True)
        await backend.signal(b"before")
        await signals.wait_for(1)
        killed = await admin(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            postgres_schema,
        )
        assert killed == 1
        with anyio.fail_after(10):
            while not (backend.status()["reconnects"] and backend.status()["connected"]):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        await backend.signal(b"after")
        await signals.wait_for(2)
        assert signals.received == [b"before", b"after"]
        # Presence is in tables: the listening connection has nothing to do with it.
        snapshot = await backend.presence_read("t")
        assert users(snapshot.rows) == {("w", "alice"): 2}
        assert snapshot.seqs == {"w": 1}


async def test_listening_to_signals_while_the_link_is_down_fails_and_registers_nothing(
    postgres_schema: str,
) -> None:
    backend = PostgresBackend(
        POSTGRES_DSN,
        schema=postgres_schema,
        operation_timeout=0.5,
        reconnect_delay=(1.5, 1.5),
        connection_options={"server_settings": {"application_name": postgres_schema}},
    )
    async with backend:
        await admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            postgres_schema,
        )
        with anyio.fail_after(5):
            while backend.status()["connected"]:  # noqa: ASYNC110 - polls a state
                await anyio.sleep(0.02)
        refused = Signals()
        with pytest.raises(BackendUnavailable, match="not listening for signals"):
            await backend.listen_signals(refused)
        with anyio.fail_after(5):
            await backend.wait_connected()
        heard = Signals()
        await backend.listen_signals(heard)
        await backend.signal(b"after")
        await heard.wait_for(1)
        assert refused.received == []


async def test_listening_to_signals_needs_an_open_backend(postgres_schema: str) -> None:
    backend = PostgresBackend(POSTGRES_DSN, schema=postgres_schema)
    with pytest.raises(BackendError, match="not open"):
        await backend.listen_signals(Signals())
    async with backend:
        pass
    with pytest.raises(BackendError, match="not open"):
        await backend.signal(b"x")


# Presence --------------------------------------------------------------------------------


@pytest.fixture
async def backend(postgres_schema: str) -> AsyncIterator[PostgresBackend]:
    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as opened:
        yield opened


async def test_an_expired_worker_is_not_read_and_is_swept_by_the_next_write(
    backend: PostgresBackend, postgres_schema: str
) -> None:
    assert not await backend.presence_write("short", 1, 0.3, [row("alice")], replace=True)
    assert not await backend.presence_write("long", 1, 60, [row("bob")], replace=True)
    snapshot = await backend.presence_read("t")
    assert users(snapshot.rows) == {("short", "alice"): 1, ("long", "bob"): 1}
    assert snapshot.seqs == {"short": 1, "long": 1}
    await anyio.sleep(0.5)
    snapshot = await backend.presence_read("t")
    assert users(snapshot.rows) == {("long", "bob"): 1}
    assert snapshot.seqs == {"long": 1}
    # Not read, but still stored until some worker writes.
    assert await admin(f"SELECT count(*) FROM {postgres_schema}.presence") == 2
    assert await backend.presence_write("long", 2, 60, [], replace=False)
    assert await admin(f"SELECT count(*) FROM {postgres_schema}.presence") == 1
    assert await admin(f"SELECT count(*) FROM {postgres_schema}.presence_workers") == 1
    # The expired worker comes back: it was not alive, its old rows are gone.
    assert not await backend.presence_write("short", 2, 60, [row("carol")], replace=False)
    assert users((await backend.presence_read("t")).rows) == {
        ("long", "bob"): 1,
        ("short", "carol"): 1,
    }


async def test_a_write_stores_the_last_row_of_a_user_given_twice(backend: PostgresBackend) -> None:
    rows = [row("alice", 1, info=b'{"v":1}'), row("bob"), row("alice", 3, info=b'{"v":2}')]
    await backend.presence_write("w", 1, 60, rows, replace=False)
    await backend.presence_write("w", 2, 60, [row("bob", 2), row("bob", 0)], replace=False)
    snapshot = await backend.presence_read("t")
    assert [(stored.user, stored.connections, stored.info) for stored in snapshot.rows] == [
        ("alice", 3, b'{"v":2}')
    ]


async def test_rows_and_seqs_of_other_topics_and_workers(backend: PostgresBackend) -> None:
    await backend.presence_write(
        "a", 4, 60, [row("alice"), row("alice", topic="other")], replace=True
    )
    await backend.presence_write("b", 7, 60, [row("bob", topic="other")], replace=True)
    snapshot = await backend.presence_read("t")
    assert list(snapshot.rows) == [PresenceRow("t", "a", "alice", 1, b"{}")]
    assert snapshot.seqs == {"a": 4, "b": 7}  # every live worker's
    await backend.presence_write("a", 5, 60, [row("carol", topic="other")], replace=True)
    assert list((await backend.presence_read("t")).rows) == []
    other = await backend.presence_read("other")
    assert users(other.rows) == {("a", "carol"): 1, ("b", "bob"): 1}
    await backend.presence_forget("b")
    other = await backend.presence_read("other")
    assert users(other.rows) == {("a", "carol"): 1}
    assert other.seqs == {"a": 5}


async def test_many_workers_writing_and_expiring_at_once_do_not_deadlock(
    backend: PostgresBackend,
) -> None:
    # Expiring at once, so that every write sweeps while others write or forget.
    async def work(worker: str) -> None:
        for seq in range(1, 16):
            rows = [row(f"user{seq % 3}", seq % 2, topic=f"t{seq % 2}"), row("everyone")]
            await backend.presence_write(worker, seq, 0.001, rows, replace=seq % 5 == 0)
            if seq % 7 == 0:
                await backend.presence_forget(worker)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for number in range(8):
                group.start_soon(work, f"w{number}")
    await anyio.sleep(0.01)
    assert not (await backend.presence_read("t")).seqs  # all expired


async def test_presence_calls_fail_as_backend_errors(postgres_schema: str) -> None:
    backend = PostgresBackend(POSTGRES_DSN, schema=postgres_schema, operation_timeout=0.5)
    async with backend:
        # A table locked by someone else: no answer within operation_timeout.
        locker = await asyncpg.connect(POSTGRES_DSN)
        try:
            async with locker.transaction():
                await locker.execute(f"LOCK TABLE {postgres_schema}.presence_workers")
                with pytest.raises(BackendUnavailable, match="reading the presence of 't'"):
                    await backend.presence_read("t")
                with pytest.raises(BackendUnavailable, match="writing the presence"):
                    await backend.presence_write("w", 1, 60, [row("alice")], replace=False)
        finally:
            await locker.close()
        # The timed-out write may have happened after all, once the lock was gone.
        await backend.presence_write("w", 2, 60, [row("alice")], replace=False)
        assert users((await backend.presence_read("t")).rows) == {("w", "alice"): 1}
        await admin(f"DROP TABLE {postgres_schema}.presence CASCADE")
        with pytest.raises(SchemaNotReady, match="migrate"):
            await backend.presence_read("t")
        with pytest.raises(SchemaNotReady, match="migrate"):
            await backend.presence_write("w", 2, 60, [], replace=False)
        with pytest.raises(SchemaNotReady, match="migrate"):
            await backend.presence_forget("w")
