"""The PostgreSQL backend beyond the contract: schema, large events, outages, URLs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from tests.support.postgres import POSTGRES_DSN, migrated_schema, own_postgres, url_of

from budget_ws import (
    BackendUnavailable,
    InvalidBackendOption,
    Position,
    SchemaNotReady,
    create_backend,
)
from budget_ws.backends.postgresql import HistoryPolicy, PostgresBackend
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio

LARGE = bytes(range(256)) * 40  # 10 KiB: more than a NOTIFY can carry, base64 or not


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


@pytest.fixture
async def backend(postgres_schema: str) -> AsyncIterator[PostgresBackend]:
    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as opened:
        yield opened


async def admin(query: str, *arguments: object, dsn: str = POSTGRES_DSN) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(query, *arguments)
    finally:
        await connection.close()


# URLs and options ------------------------------------------------------------------------


def test_a_url_gives_the_backend_with_its_options() -> None:
    backend = create_backend(
        "postgres://app:secret@db.internal:5433/budget?schema=events&history_size=50"
        "&history_ttl=30&topic_ttl=600&reconnect_delay=0.1,2&max_connections=4"
        "&application_name=web"
    )
    assert isinstance(backend, PostgresBackend)
    assert backend.schema == "events"
    assert backend.history_policy == HistoryPolicy(size=50, ttl=30)
    assert (backend.topic_ttl, backend.reconnect_delay, backend.max_connections) == (
        600,
        (0.1, 2),
        4,
    )
    assert backend.url == "postgresql://app:secret@db.internal:5433/budget?application_name=web"
    assert "secret" not in repr(backend)
    assert repr(backend) == "PostgresBackend(postgresql://db.internal:5433/budget, schema='events')"


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("schema=Budget", "schema"),
        ("schema=a;drop", "schema"),
        ("history_size=-1", "history_size"),
        ("sslmode=sometimes", "sslmode"),
        ("password_file=x", "password_file"),
        ("schema=a&schema=b", "schema"),
    ],
)
def test_a_bad_option_is_refused_by_name(query: str, option: str) -> None:
    with pytest.raises(InvalidBackendOption) as raised:
        create_backend(f"postgresql://127.0.0.1/test?{query}")
    assert raised.value.option == option


def test_bad_arguments_are_refused_by_name() -> None:
    for arguments, option in (
        ({"schema": "1st"}, "schema"),
        ({"operation_timeout": 0}, "operation_timeout"),
        ({"reconnect_delay": (2.0, 1.0)}, "reconnect_delay"),
        ({"max_connections": 0}, "max_connections"),
    ):
        with pytest.raises(InvalidBackendOption) as raised:
            PostgresBackend(**arguments)  # type: ignore[arg-type]
        assert raised.value.option == option


# Schema ---------------------------------------------------------------------------------


async def test_a_database_without_the_schema_is_refused_with_the_step_to_run() -> None:
    backend = PostgresBackend(POSTGRES_DSN, schema="never_migrated")
    with pytest.raises(SchemaNotReady, match="python -m budget_ws migrate"):
        await backend.__aenter__()
    assert backend.status()["connected"] is False


async def test_migrating_twice_and_at_once_is_safe(postgres_schema: str) -> None:
    backend = PostgresBackend(POSTGRES_DSN, schema=postgres_schema)
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(backend.migrate)
    async with backend:
        assert (await backend.publish("t", b"x")).offset == 1
    assert await admin(f"SELECT count(*) FROM {postgres_schema}.schema_version") == 1


async def test_an_unreachable_server_is_unavailable_not_a_hang() -> None:
    backend = PostgresBackend("postgresql://postgres@127.0.0.1:1/test", operation_timeout=1)
    with pytest.raises(BackendUnavailable, match="could not reach PostgreSQL"):
        await backend.__aenter__()
    with pytest.raises(BackendUnavailable, match="could not connect"):
        await backend.migrate()


async def test_a_schema_dropped_under_a_running_backend_is_named(postgres_schema: str) -> None:
    async with PostgresBackend(POSTGRES_DSN, schema=postgres_schema) as backend:
        await admin(f"DROP SCHEMA {postgres_schema} CASCADE")
        with pytest.raises(SchemaNotReady, match="migrate"):
            await backend.publish("t", b"x")


# Events too large for NOTIFY -------------------------------------------------------------


@pytest.mark.parametrize("history_size", [100, 0])
async def test_events_too_large_to_notify_arrive_in_order_from_the_table(
    history_size: int,
) -> None:
    async with migrated_schema() as schema:
        url = url_of(schema, history_size=history_size)
        async with create_backend(url) as backend:
            listener = RecordingListener()
            await backend.subscribe("t", listener)
            payloads = [b"small 1", LARGE, b"small 2", LARGE + b"!", b"small 3"]
            for payload in payloads:
                await backend.publish("t", payload)
            with anyio.fail_after(5):
                await listener.wait_for(len(payloads))
            assert [payload for _, _, payload in listener.delivered] == payloads
            assert [position.offset for _, position, _ in listener.delivered] == [1, 2, 3, 4, 5]
            assert listener.resyncs == []
            # Fetching what NOTIFY could not carry is not a gap.
            assert backend.status()["gaps_filled"] == 0


# Outages -------------------------------------------------------------------------------


async def test_a_killed_listening_connection_reconnects_and_fills_the_gap(
    postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = PostgresBackend(
        POSTGRES_DSN,
        schema=postgres_schema,
        reconnect_delay=(0.2, 0.2),
        connection_options={"server_settings": {"application_name": postgres_schema}},
    )
    async with backend:
        listener = RecordingListener()
        await backend.subscribe("t", listener)
        await backend.publish("t", b"1")
        with anyio.fail_after(5):
            await listener.wait_for(1)
        with caplog.at_level(logging.INFO, "budget_ws.backend.postgresql"):
            killed = await admin(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                postgres_schema,
            )
            assert killed == 1
            # Published while the listener is down: only the table has them.
            for payload in (b"2", b"3", b"4"):
                await backend.publish("t", payload)
            with anyio.fail_after(10):
                await listener.wait_for(4)
                while backend.status()["gaps_filled"] < 1:  # noqa: ASYNC110 - polls a state
                    await anyio.sleep(0.05)
        assert [payload for _, _, payload in listener.delivered] == [b"1", b"2", b"3", b"4"]
        assert listener.resyncs == []
        status = backend.status()
        assert status["reconnects"] >= 1
        assert status["events_recovered"] == 3
        events = [getattr(record, "budget_ws_event", None) for record in caplog.records]
        assert "pubsub_lost" in events
        assert "pubsub_restored" in events
        assert not any(record.exc_info for record in caplog.records)  # an outage, not a bug


async def test_a_restarted_server_loses_nothing_it_committed() -> None:
    with own_postgres() as server:
        await PostgresBackend(server.dsn).migrate()
        backend = PostgresBackend(
            server.dsn, reconnect_delay=(0.1, 0.5), operation_timeout=2, health_check_interval=1
        )
        async with backend:
            listener = RecordingListener()
            await backend.subscribe("t", listener)
            published: list[Position] = [await backend.publish("t", b"before")]
            server.stop("immediate")
            with pytest.raises(BackendUnavailable):
                await backend.publish("t", b"while down")
            server.start()
            # Publishes fail for a bounded time, then succeed on the restarted server.
            with anyio.fail_after(10):
                while True:
                    try:
                        published.append(await backend.publish("t", b"after"))
                        break
                    except BackendUnavailable:
                        await anyio.sleep(0.1)
            published.append(await backend.publish("t", b"after 2"))
            with anyio.fail_after(10):
                await listener.wait_for(len(published))
            assert [position for _, position, _ in listener.delivered] == published
            assert [position.offset for position in published] == [1, 2, 3]
            assert listener.resyncs == []


async def test_a_server_that_lost_its_data_makes_listeners_resync() -> None:
    with own_postgres() as server:
        await PostgresBackend(server.dsn).migrate()
        backend = PostgresBackend(server.dsn, reconnect_delay=(0.1, 0.5), operation_timeout=2)
        async with backend:
            listener = RecordingListener()
            await backend.subscribe("t", listener)
            for payload in (b"1", b"2"):
                await backend.publish("t", payload)
            with anyio.fail_after(5):
                await listener.wait_for(2)
            # Someone truncates the topic's state: its next event starts a new epoch.
            await admin("TRUNCATE budget_ws.topics, budget_ws.events", dsn=server.dsn)
            fresh = await backend.publish("t", b"anew")
            with anyio.fail_after(5):
                await listener.wait_for(3, resyncs=1)
            assert fresh.offset == 1
            assert listener.resyncs == [("t", Position(0, fresh.epoch))]
            assert listener.delivered[-1] == ("t", fresh, b"anew")


async def test_expired_events_and_idle_topics_are_cleaned_up(postgres_schema: str) -> None:
    backend = PostgresBackend(
        POSTGRES_DSN,
        schema=postgres_schema,
        history=HistoryPolicy(size=10, ttl=0.2),
        topic_ttl=0.5,
        clean_up_interval=0.2,
    )
    async with backend:
        first = await backend.publish("t", b"1")
        await backend.publish("t", b"2")
        with anyio.fail_after(10):
            while await admin(f"SELECT count(*) FROM {postgres_schema}.topics"):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert await admin(f"SELECT count(*) FROM {postgres_schema}.events") == 0
        again = await backend.publish("t", b"3")
        assert again.offset == 1
        assert again.epoch != first.epoch


async def test_history_keeps_the_newest_events_within_its_size(postgres_schema: str) -> None:
    backend = PostgresBackend(POSTGRES_DSN, schema=postgres_schema, history=HistoryPolicy(size=3))
    async with backend:
        positions = [await backend.publish("t", b"%d" % number) for number in range(6)]
        kept = await backend.history("t", positions[2], 10)
        assert kept.recovered
        assert [payload for _, payload in kept.items] == [b"3", b"4", b"5"]
        assert not (await backend.history("t", positions[1], 10)).recovered
        assert not (await backend.history("t", positions[2], 2)).recovered  # over the limit
        assert await admin(f"SELECT count(*) FROM {postgres_schema}.events") == 3


async def test_notifications_budget_ws_did_not_send_are_ignored(
    backend: PostgresBackend, postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    listener = RecordingListener()
    await backend.subscribe("t", listener)
    with caplog.at_level(logging.WARNING, "budget_ws.backend.postgresql"):
        for junk in ("hello", "1 e 9 t", "x e 1 t=AA==", "1 e 1 t=%%%"):
            await admin("SELECT pg_notify($1, $2)", postgres_schema, junk)
        position = await backend.publish("t", b"real")
        with anyio.fail_after(5):
            await listener.wait_for(1)
    assert listener.delivered == [("t", position, b"real")]
    foreign = [
        r for r in caplog.records if getattr(r, "budget_ws_event", "") == "foreign_notification"
    ]
    assert len(foreign) >= 3


# The migration command -------------------------------------------------------------------


def test_the_migrate_command_creates_the_schema_once_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from budget_ws.__main__ import main

    schema = f"test_cli_{uuid.uuid4().hex[:12]}"
    try:
        for _ in range(2):  # safe to run again
            assert main(["migrate", url_of(schema)]) == 0
            assert f"schema={schema!r}): schema at version 2" in capsys.readouterr().out
    finally:
        anyio.run(admin, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", 1, "could not connect to PostgreSQL"),
        ("postgresql://127.0.0.1/test?schema=No", 2, "schema accepts"),
        ("nosuch://x", 2, "no backend handles"),
        ("memory://", 0, "keeps no schema: nothing to migrate"),
    ],
)
def test_the_migrate_command_explains_what_it_cannot_do(
    url: str, status: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from budget_ws.__main__ import main

    assert main(["migrate", url]) == status
    assert says in capsys.readouterr().err
