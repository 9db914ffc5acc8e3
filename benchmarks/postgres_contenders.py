"""The contenders of ``benchmarks/postgres.py``: how each publishes, how each receives.

- ``postgresql``: budget_ws's ``ConnectionManager`` on ``PostgresBackend`` (a schema of
  the run's own, created with ``migrate()`` and dropped afterwards);
- ``redis``: the same manager on ``RedisBackend`` (a key prefix of the run's own);
- ``broadcaster-postgres``: encode/broadcaster's ``Broadcast("postgresql://…")``
  (``pg_notify`` on one asyncpg connection, which also listens; a channel of its own).

The app side of a transactional publish is here too: a transaction that INSERTs one row
into an app table, with or without ``publish(..., within=...)`` in it, through asyncpg or
SQLAlchemy's ``AsyncSession``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
from typing_extensions import Self

from budget_ws import ConnectionManager, Event

__all__ = [
    "CONTENDERS",
    "DRIVERS",
    "LABELS",
    "BroadcasterPublisher",
    "BudgetWsPublisher",
    "Place",
    "Tick",
    "TransactionalApp",
    "drop_schemas",
    "prepare_schemas",
]

Contender = Literal["postgresql", "redis", "broadcaster-postgres"]
CONTENDERS: tuple[Contender, ...] = ("postgresql", "redis", "broadcaster-postgres")
LABELS = {"postgresql": "budget_ws PostgreSQL", "redis": "budget_ws Redis",
          "broadcaster-postgres": "broadcaster Postgres"}  # fmt: skip
DRIVERS = ("asyncpg", "sqlalchemy")
"""How the app's transaction is held: an asyncpg connection, or SQLAlchemy's AsyncSession."""


class Tick(Event, name="bench_tick", register=False):
    """The event every contender publishes (broadcaster: the same JSON, by hand)."""

    seq: int
    sent_at: int
    note: str


def tick_json(seq: int, sent_at: int, note: str) -> str:
    """What budget_ws encodes for a ``Tick``, for broadcaster's ``publish(channel, text)``."""
    data = {"seq": seq, "sent_at": sent_at, "note": note}
    return json.dumps({"event": "bench_tick", "data": data}, separators=(",", ":"))


@dataclass(frozen=True)
class Place:
    """Where one run's contenders live: the servers, and names of the run's own."""

    postgres_dsn: str
    """``postgresql://user@host:port/database``, no query."""
    redis_url: str
    """``redis://host:port/db``, no query."""
    tag: str

    @classmethod
    def new(cls, postgres_dsn: str, redis_url: str) -> Place:
        return cls(postgres_dsn, redis_url, f"bench_pg_{uuid.uuid4().hex[:10]}")

    @property
    def schema(self) -> str:
        """budget_ws's schema (and so its ``NOTIFY`` channel)."""
        return self.tag

    @property
    def app_schema(self) -> str:
        """The app's table lives here, apart from budget_ws's."""
        return f"{self.tag}_app"

    def topic(self, contender: str, name: int | str) -> str:
        """Topic ``name``: budget_ws's topic, or broadcaster's channel (one of the run's own)."""
        return f"{self.tag}_t{name}" if contender == "broadcaster-postgres" else f"t{name}"

    def url(self, contender: str, *, port: int | None = None, quiet: bool = False) -> str:
        """What the contender connects to; ``port`` replaces the server's (a proxy).

        ``quiet``: no health checks (they would be counted as round trips).
        """
        base = _at(self.redis_url if contender == "redis" else self.postgres_dsn, port)
        if contender == "broadcaster-postgres":
            return base
        options = f"schema={self.schema}" if contender == "postgresql" else f"key_prefix={self.tag}"
        if quiet:
            options += "&health_check_interval=3600"
        return f"{base}?{options}"

    def postgres_dsn_at(self, port: int | None) -> str:
        return _at(self.postgres_dsn, port)


def _at(url: str, port: int | None) -> str:
    """``url`` with its port replaced by ``port`` (a proxy's), if any."""
    if port is None:
        return url
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    address = f"{parts.hostname}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


def server_address(url: str) -> tuple[str, int]:
    """The host and port a PostgreSQL or Redis URL names."""
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5432
    return parts.hostname or "127.0.0.1", parts.port or default


async def prepare_schemas(place: Place) -> None:
    """budget_ws's schema (its documented ``migrate()`` step) and the app's table."""
    import asyncpg

    from budget_ws.backends.postgresql import PostgresBackend

    await PostgresBackend(place.postgres_dsn, schema=place.schema).migrate()
    connection = await asyncpg.connect(place.postgres_dsn)
    try:
        await connection.execute(
            f"CREATE SCHEMA {place.app_schema};"
            f"CREATE TABLE {place.app_schema}.facts (id bigserial PRIMARY KEY,"
            " topic text NOT NULL, seq bigint NOT NULL, note text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
    finally:
        await connection.close()


async def drop_schemas(place: Place) -> None:
    import asyncpg

    connection = await asyncpg.connect(place.postgres_dsn)
    try:
        for schema in (place.schema, place.app_schema):
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await connection.close()


# --------------------------------------------------------------------------------------
# Publishers


class BudgetWsPublisher:
    """``ConnectionManager.publish`` on the PostgreSQL or the Redis backend."""

    def __init__(self, url: str, note: str) -> None:
        self.manager = ConnectionManager(url, shutdown_timeout=1)
        self.note = note

    async def __aenter__(self) -> Self:
        await self.manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.manager.__aexit__(None, None, None)

    async def publish(self, seq: int, topic: str, within: object = None) -> int:
        sent_at = time.time_ns()
        await self.manager.publish(Tick(seq=seq, sent_at=sent_at, note=self.note), topic=topic,
                                   within=within)  # fmt: skip
        return sent_at


class BroadcasterPublisher:
    """encode/broadcaster's ``Broadcast.publish`` on its Postgres backend.

    Its backend publishes on its one connection, the one it also listens on, and asyncpg
    refuses a second operation on a connection while one is in progress
    (``InterfaceError``): concurrent publishes take turns on a lock here, as an app's
    would have to.
    """

    def __init__(self, dsn: str, note: str) -> None:
        from broadcaster import Broadcast

        self.broadcast = Broadcast(dsn)
        self.note = note
        self.lock = anyio.Lock()

    async def __aenter__(self) -> Self:
        await self.broadcast.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.broadcast.disconnect()

    async def publish(self, seq: int, topic: str, within: object = None) -> int:
        async with self.lock:
            sent_at = time.time_ns()
            await self.broadcast.publish(topic, tick_json(seq, sent_at, self.note))
        return sent_at

    async def concurrent_publish_errors(self, topic: str, attempts: int) -> tuple[int, str]:
        """Publish ``attempts`` times at once without the lock: how many failed, and why."""
        failed, first = 0, ""

        async def publish(seq: int) -> None:
            nonlocal failed, first
            try:
                await self.broadcast.publish(topic, tick_json(seq, time.time_ns(), self.note))
            except Exception as exc:  # the finding: what an app publishing at once gets
                failed += 1
                first = first or f"{type(exc).__module__}.{type(exc).__name__}: {exc}"

        async with anyio.create_task_group() as group:
            for seq in range(attempts):
                group.start_soon(publish, -1000 - seq)
        return failed, first


def publisher(contender: str, place: Place, note: str, *, port: int | None = None,
              quiet: bool = False) -> BudgetWsPublisher | BroadcasterPublisher:  # fmt: skip
    url = place.url(contender, port=port, quiet=quiet)
    if contender == "broadcaster-postgres":
        return BroadcasterPublisher(url, note)
    return BudgetWsPublisher(url, note)


# --------------------------------------------------------------------------------------
# The app's transaction


class TransactionalApp:
    """One request handler's database session: a transaction that INSERTs a fact.

    ``transact(seq, topic, publisher)`` runs ``BEGIN; INSERT …; [publish within it;]
    COMMIT``, the publish last (the topic row's lock is then held for the COMMIT only).
    ``publisher`` None: the same transaction without the publish.
    """

    def __init__(self, driver: str, dsn: str, app_schema: str, note: str) -> None:
        self.driver = driver
        self.dsn = dsn
        self.note = note
        values = "($1, $2, $3)" if driver == "asyncpg" else "(:topic, :seq, :note)"
        self.insert = f"INSERT INTO {app_schema}.facts (topic, seq, note) VALUES {values}"
        self._connection: Any = None
        self._engine: Any = None

    async def __aenter__(self) -> Self:
        if self.driver == "asyncpg":
            import asyncpg

            self._connection = await asyncpg.connect(self.dsn)
        else:
            from sqlalchemy.ext.asyncio import create_async_engine

            url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
            self._engine = create_async_engine(url, pool_size=1, max_overflow=0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()
        if self._engine is not None:
            await self._engine.dispose()

    async def transact(self, seq: int, topic: str, publisher: BudgetWsPublisher | None) -> None:
        if self._connection is not None:
            connection = self._connection
            async with connection.transaction():
                await connection.execute(self.insert, topic, seq, self.note)
                if publisher is not None:
                    await publisher.publish(seq, topic, within=connection)
            return
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import AsyncSession

        # A session per transaction, as a FastAPI dependency gives each request.
        async with AsyncSession(self._engine) as session, session.begin():
            await session.execute(text(self.insert),
                                  {"topic": topic, "seq": seq, "note": self.note})  # fmt: skip
            if publisher is not None:
                await publisher.publish(seq, topic, within=session)
