"""The PostgreSQL backend: history in a table, fan-out by ``LISTEN``/``NOTIFY``.

Each publish is one call of a function in budget_ws's schema: it takes the topic's next
offset under the topic row's lock, keeps the event in the history table and sends a
``NOTIFY`` that PostgreSQL delivers to every worker's listener only when the transaction
commits, in commit order. Published inside the app's own transaction
(``publish(..., within=session)``), an event is delivered if and only if the app's
writes commit, with no gap in offsets when they roll back.

Each worker holds one listening connection, supervised like the Redis backend's pub/sub:
after a break it reconnects with jittered backoff and fills every topic's gap from the
table, or tells listeners to resync. The schema is created only by the explicit
:meth:`PostgresBackend.migrate` step (``python -m budget_ws migrate URL``).

Signals (:class:`~budget_ws.backends.SignalBackend`) travel on the same channel as the
events, marked so that no topic's notification can be taken for one, and presence
(:class:`~budget_ws.backends.PresenceBackend`) lives in tables of the schema (see
:mod:`._postgres_presence`).

Requires asyncpg (``pip install 'budget-ws[postgres]'``) and runs on asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import asyncpg
from typing_extensions import Self

from ..errors import (
    BackendError,
    BackendUnavailable,
    SchemaNotReady,
    TransactionalPublishUnsupported,
)
from ._options import check_link_arguments, refuse
from ._policy import HistoryPolicy, gather_history, policy_for
from ._postgres_notifications import (
    SIGNAL_LIMIT,
    Announcement,
    read_notification,
    signal_message,
)
from ._postgres_presence import forget_sql, read_sql, snapshot_of, write_arguments, write_sql
from ._postgres_schema import (
    SCHEMA_VERSION,
    check_schema_name,
    clean_up_sql,
    event_sql,
    history_sql,
    migration_sql,
    publish_sql,
)
from ._postgres_url import SCHEMA, parse_postgres_url
from ._sequencer import Sequencer
from ._signals import SignalListeners
from ._supervisor import Supervised, Supervisor, cause_of, describe
from .base import Listener, Position, PresenceRow, PresenceSnapshot, Recovery

__all__ = ["SIGNAL_LIMIT", "HistoryPolicy", "PostgresBackend"]

logger = logging.getLogger("budget_ws.backend.postgresql")
"""Lines about the listening connection and gaps; see ``docs/reference/logging.md``."""

_SCHEMA_ERRORS = (
    asyncpg.exceptions.UndefinedFunctionError,
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.InvalidSchemaNameError,
)
"""What a database without budget_ws's schema (or with an older one) answers."""

_SCHEMA_SQLSTATES = frozenset({"42883", "42P01", "3F000"})
"""The same, as SQLSTATE codes, which every driver's errors carry."""


class _ListenerClosed(ConnectionError):
    """The listening connection was closed under us (the server ended it)."""


_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
    BackendUnavailable,
)
"""Errors of a lost, refused or silent server (logged without a traceback)."""


class PostgresBackend(Supervised):
    """Fans events out through PostgreSQL ``NOTIFY`` and keeps their history in a table.

    Args:
        url: ``postgresql://user:password@host:5432/database`` of the server.
        schema: The schema holding budget_ws's tables and functions; its name is also the
            ``NOTIFY`` channel.
        history: Default history policy of every topic.
        history_overrides: Policies for topics matching shell-style patterns, first match
            wins, e.g. ``{"chat:*": HistoryPolicy(size=100, ttl=60)}``.
        topic_ttl: Seconds an idle topic keeps its offset and epoch; after that its next
            event starts a new epoch and resuming clients resync.
        operation_timeout: Seconds a publish, subscribe or history read may take before
            :class:`~budget_ws.BackendUnavailable` is raised.
        health_check_interval: Seconds between checks of the listening connection; no
            answer within ``operation_timeout`` counts as a dead connection.
        reconnect_delay: Smallest and largest delay between reconnection attempts (full
            jitter up to an exponentially growing cap).
        max_connections: Size of the pool that publishes and reads history.
        clean_up_interval: Seconds between deletions of expired events and idle topics.
        connection_options: Extra keyword arguments for ``asyncpg.connect``.

    Raises:
        InvalidBackendOption: An argument is out of range.
    """

    def __init__(
        self,
        url: str = "postgresql://127.0.0.1:5432/postgres",
        *,
        schema: str = "budget_ws",
        history: HistoryPolicy | None = None,
        history_overrides: Mapping[str, HistoryPolicy] | None = None,
        topic_ttl: float = 86400.0,
        operation_timeout: float = 5.0,
        health_check_interval: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.05, 5.0),
        max_connections: int = 10,
        clean_up_interval: float = 60.0,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            check_schema_name(schema)
        except ValueError:
            raise refuse("PostgresBackend", "schema", schema, SCHEMA.accepted) from None
        check_link_arguments(
            "PostgresBackend",
            durations={
                "topic_ttl": topic_ttl,
                "operation_timeout": operation_timeout,
                "health_check_interval": health_check_interval,
                "clean_up_interval": clean_up_interval,
            },
            reconnect_delay=reconnect_delay,
            max_connections=max_connections,
        )
        self.url = url
        self.schema = schema
        self.history_policy = history or HistoryPolicy()
        self.history_overrides = dict(history_overrides or {})
        self.topic_ttl = topic_ttl
        self.operation_timeout = operation_timeout
        self.health_check_interval = health_check_interval
        self.reconnect_delay = reconnect_delay
        self.max_connections = max_connections
        self.clean_up_interval = clean_up_interval
        self._connection_options = dict(connection_options or {})
        self._publish_sql = publish_sql(schema, ("$1", "$2", "$3", "$4"))
        self._history_sql = history_sql(schema)
        self._event_sql = event_sql(schema)
        self._presence_write_sql = write_sql(schema)
        self._presence_read_sql = read_sql(schema)
        self._presence_forget_sql = forget_sql(schema)
        self._signal_listeners = SignalListeners(logger)
        self._pool: Any = None
        self._listening: Any = None
        self._lost = anyio.Event()
        self._topics = Sequencer(
            history=self.history,
            gap_limit=lambda topic: self._policy(topic).size,
            start_fill=self._start_fill,
            logger=logger,
            server="PostgreSQL",
            fetch=self._fetch,
        )
        self._link = Supervisor(
            sequencer=self._topics,
            connect=self._connect,
            disconnect=self._disconnect,
            confirmed=self._confirmed,
            link="PostgreSQL listening",
            address=lambda error: self._address,
            describe=describe,
            is_outage=is_outage,
            reconnect_delay=reconnect_delay,
            logger=logger,
        )

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        """Create a backend from a URL; its options go in the query string.

        ``postgresql://app@db:5432/budget?schema=budget_ws&history_size=500``. budget_ws's
        options are the constructor's (``history_size`` and ``history_ttl`` make the
        default :class:`HistoryPolicy`; ``reconnect_delay=LOW,HIGH``); ``sslmode`` and
        ``application_name`` go to asyncpg.

        Raises:
            InvalidBackendOption: An option is unknown, given twice, malformed or out of
                range; the message names it and what it accepts.
        """
        dsn, options = parse_postgres_url(url)
        return cls(dsn, **gather_history(options))

    @property
    def _address(self) -> str:
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.hostname or 'localhost'}{port}{parts.path}"

    def __repr__(self) -> str:
        return f"PostgresBackend(postgresql://{self._address}, schema={self.schema!r})"

    def _policy(self, topic: str) -> HistoryPolicy:
        return policy_for(topic, self.history_policy, self.history_overrides)

    # Schema ------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Create or upgrade budget_ws's schema in the database; safe to run again.

        The explicit deployment step (``python -m budget_ws migrate URL`` runs it);
        concurrent runs take turns on an advisory lock.

        Returns:
            The schema version the database now has.

        Raises:
            BackendUnavailable: The database cannot be reached.
        """
        connection = await self._open_connection()
        try:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"budget_ws {self.schema}"
                )
                version = await self._version(connection)
                if version is not None and version > SCHEMA_VERSION:
                    raise SchemaNotReady(
                        f"the database at {self._address} has schema version {version} in "
                        f"{self.schema!r}, newer than this budget_ws's {SCHEMA_VERSION}: "
                        "migrate with the newer budget_ws, not this one"
                    )
                await connection.execute(migration_sql(self.schema))
        finally:
            await connection.close()
        return SCHEMA_VERSION

    async def _version(self, connection: Any) -> int | None:
        """The schema version the database holds, None without a schema."""
        table = f"{self.schema}.schema_version"
        if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            return None
        version: int | None = await connection.fetchval(f"SELECT max(version) FROM {table}")
        return version

    async def _check_schema(self) -> None:
        async with self._pool.acquire() as connection:
            version = await self._version(connection)
        if version != SCHEMA_VERSION:
            found = "no budget_ws schema" if version is None else f"schema version {version}"
            raise SchemaNotReady(
                f"the database at {self._address} has {found} in {self.schema!r}; this "
                f"budget_ws needs version {SCHEMA_VERSION}: run "
                f"`python -m budget_ws migrate 'postgresql://…?schema={self.schema}'` first"
            )

    # Lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Connect and check the schema.

        Raises:
            BackendUnavailable: PostgreSQL is unreachable.
            SchemaNotReady: The schema is missing or of another version.
        """
        if self._pool is not None:
            raise BackendError("this PostgresBackend is already open")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise BackendError(
                "the PostgreSQL backend runs on asyncio (asyncpg); use the memory backend on trio"
            ) from None
        try:
            with anyio.fail_after(self.operation_timeout):
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=0,
                    max_size=self.max_connections,
                    reset=_keep_session,
                    **self._connection_options,
                )
                await self._check_schema()
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, Exception) and is_outage(exc):
                raise BackendUnavailable(
                    f"could not reach PostgreSQL at {self._address}: {describe(exc)}"
                ) from exc
            raise
        try:
            await self._link.start("PostgreSQL", self._address, self.operation_timeout)
        except BackendUnavailable:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection; from any task, any number of times."""
        self._signal_listeners.clear()
        with anyio.CancelScope(shield=True):
            await self._link.stop()
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    with anyio.fail_after(self.operation_timeout):
                        await pool.close()
                except (Exception, TimeoutError):
                    pool.terminate()

    # Publishing and history --------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> Position:
        """Assign the next offset, keep the event and notify every worker: one round trip.

        Raises:
            BackendUnavailable: PostgreSQL failed or did not answer; when the reply was
                lost, the event may have been published.
            SchemaNotReady: The schema is missing.
        """
        policy = self._policy(topic)
        row = await self._call(
            f"publishing to {topic!r}",
            "fetchrow",
            self._publish_sql,
            topic,
            payload,
            policy.size,
            policy.ttl,
        )
        return Position(row["offset"], row["epoch"])

    async def publish_within(self, transaction: object, topic: str, payload: bytes) -> Position:
        """Publish as part of the app's open transaction: delivered if and only if it commits.

        ``transaction`` is SQLAlchemy's ``AsyncSession`` or ``AsyncConnection`` (any
        driver; the statement joins or begins its transaction, which the app commits), or
        an asyncpg connection inside ``async with connection.transaction():``. It must be
        connected to this backend's database. Until the transaction ends, other
        publishes to ``topic`` wait for the topic row's lock; the returned position is
        the event's only if the transaction commits.

        Errors of the statement are the driver's, and abort the app's transaction like
        any other statement of it, except a missing schema.

        Raises:
            TransactionalPublishUnsupported: ``transaction`` is none of the above, or an
                asyncpg connection with no transaction open.
            SchemaNotReady: The transaction's database has no budget_ws schema (or
                another version of it); the app's transaction is aborted.
        """
        try:
            return await self._publish_within(transaction, topic, payload)
        except Exception as exc:
            if not _is_schema_error(exc):
                raise
            raise SchemaNotReady(
                f"publishing to {topic!r} in the app's transaction failed: {describe(exc)}; "
                f"is the transaction's database the backend's, with schema {self.schema!r}? "
                "Run `python -m budget_ws migrate URL` on it"
            ) from exc

    async def _publish_within(self, transaction: object, topic: str, payload: bytes) -> Position:
        policy = self._policy(topic)
        arguments = (topic, payload, policy.size, policy.ttl)
        if isinstance(transaction, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
            if not transaction.is_in_transaction():
                raise TransactionalPublishUnsupported(
                    "publish(within=<asyncpg connection>) needs an open transaction "
                    "(async with connection.transaction(): ...); outside one the event "
                    "would be published at once, whatever happens to the app's writes"
                )
            row = await transaction.fetchrow(self._publish_sql, *arguments)
            assert row is not None  # the function returns one row
            return Position(row["offset"], row["epoch"])
        sqlalchemy = _sqlalchemy_execute(transaction)
        if sqlalchemy is None:
            raise TransactionalPublishUnsupported(
                f"publish(within=...) takes SQLAlchemy's AsyncSession or AsyncConnection, "
                f"or an asyncpg connection, not {type(transaction).__qualname__}"
            )
        names = (":topic", ":payload", ":keep", ":ttl")
        statement = publish_sql(self.schema, names)
        values = {"topic": topic, "payload": payload, "keep": policy.size, "ttl": policy.ttl}
        epoch, offset = await sqlalchemy(statement, values)
        return Position(offset, epoch)

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        """Read what ``topic`` holds after ``after``; all of it or nothing."""
        offset = after.offset if after is not None else 0
        rows = await self._call(
            f"reading the history of {topic!r}",
            "fetch",
            self._history_sql,
            topic,
            offset,
            limit if after is not None else 0,
        )
        top = Position(rows[0]["last_offset"], rows[0]["epoch"])
        if after is None or after.epoch != top.epoch or after.offset > top.offset:
            return Recovery(False, top)
        missing = top.offset - after.offset
        if missing == 0:
            return Recovery(True, top)
        items = [
            (Position(row["offset"], top.epoch), bytes(row["payload"]))
            for row in rows
            if row["offset"] is not None
        ]
        if missing > limit or len(items) != missing or items[0][0].offset != offset + 1:
            return Recovery(False, top)
        return Recovery(True, top, items)

    async def _fetch(self, topic: str, position: Position) -> bytes | None:
        """One event announced without its payload (too large for ``NOTIFY``)."""
        payload = await self._call(
            f"reading event {position.offset} of {topic!r}",
            "fetchval",
            self._event_sql,
            topic,
            position.offset,
            position.epoch,
        )
        return None if payload is None else bytes(payload)

    async def _call(self, doing: str, method: str, query: str, *arguments: Any) -> Any:
        pool = self._pool
        if pool is None:
            raise BackendError("this PostgresBackend is not open: use `async with backend:`")
        try:
            with anyio.fail_after(self.operation_timeout):
                return await getattr(pool, method)(query, *arguments)
        except _SCHEMA_ERRORS as exc:
            raise SchemaNotReady(
                f"{doing} failed: {describe(exc)}; run `python -m budget_ws migrate URL`"
            ) from exc
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Idle pooled connections may be as dead as this one: open new ones next time.
            await pool.expire_connections()
            raise BackendUnavailable(f"{doing} failed: {describe(exc)}") from exc

    # Subscriptions -----------------------------------------------------------------------

    async def subscribe(self, topic: str, listener: Listener) -> None:
        """Deliver ``topic`` to ``listener``; returns once events after now reach it."""
        if not self._topics.add(topic, listener):
            await self._wait_listening(repr(topic))
            return
        try:
            await self._wait_listening(repr(topic))
            # The channel carries every topic: from here on nothing is missed, and what
            # came before is history.
            recovery = await self.history(topic, None, 0)
        except BaseException:
            self._topics.remove(topic, listener)
            raise
        self._topics.start(topic, recovery.position)

    async def _wait_listening(self, what: str) -> None:
        try:
            with anyio.fail_after(self.operation_timeout):
                await self._link.wait_connected()
        except TimeoutError:
            raise BackendUnavailable(
                f"PostgreSQL is not listening for {what} within {self.operation_timeout:g} s"
            ) from None

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        """Stop delivering ``topic`` to ``listener``; unknown pairs are ignored."""
        self._topics.remove(topic, listener)

    # Signals and presence (SignalBackend, PresenceBackend) -----------------------------

    async def signal(self, payload: bytes) -> None:
        """Notify every worker's listening connection, this one's included: one round trip.

        Raises:
            BackendError: ``payload`` is larger than :data:`SIGNAL_LIMIT` bytes, more
                than a ``NOTIFY`` carries.
            BackendUnavailable: PostgreSQL failed or did not answer; when the reply was
                lost, the signal may have been sent.
        """
        message = signal_message(payload)
        await self._call("sending a signal", "execute", _NOTIFY_SQL, self.schema, message)

    async def listen_signals(self, listener: Callable[[bytes], None]) -> None:
        """Hand every signal to ``listener``; returns once the channel is listened to.

        A listening connection that breaks listens again when it reconnects; the signals
        sent in between are lost.

        Raises:
            BackendUnavailable: The channel is not listened to within ``operation_timeout``.
        """
        if self._pool is None:
            raise BackendError("this PostgresBackend is not open: use `async with backend:`")
        added = self._signal_listeners.add(listener)
        try:
            await self._wait_listening("signals")
        except BaseException:
            if added:
                self._signal_listeners.discard(listener)
            raise

    async def presence_write(
        self, worker: str, seq: int, ttl: float, rows: Sequence[PresenceRow], *, replace: bool
    ) -> bool:
        """Store ``worker``'s rows in one statement; see
        :class:`~budget_ws.backends.PresenceBackend`.

        Raises:
            BackendUnavailable: PostgreSQL failed or did not answer; when the reply was
                lost, the write may have happened.
            SchemaNotReady: The schema is missing.
        """
        arguments = write_arguments(worker, seq, ttl, rows, replace=replace)
        alive = await self._call(
            f"writing the presence of worker {worker!r}",
            "fetchval",
            self._presence_write_sql,
            *arguments,
        )
        return bool(alive)

    async def presence_read(self, topic: str) -> PresenceSnapshot:
        """The rows of ``topic`` from live workers, and every live worker's ``seq``."""
        records = await self._call(
            f"reading the presence of {topic!r}", "fetch", self._presence_read_sql, topic
        )
        return snapshot_of(topic, records)

    async def presence_forget(self, worker: str) -> None:
        """Delete ``worker``'s rows and liveness in one statement."""
        await self._call(
            f"forgetting the presence of worker {worker!r}",
            "execute",
            self._presence_forget_sql,
            worker,
        )

    # The supervised listening connection ----------------------------------------------

    async def _open_connection(self) -> Any:
        try:
            return await asyncpg.connect(
                self.url, timeout=self.operation_timeout, **self._connection_options
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            raise BackendUnavailable(
                f"could not connect to PostgreSQL at {self._address}: {describe(exc)}"
            ) from exc

    async def _connect(self, task_group: anyio.abc.TaskGroup, attempt: int) -> None:
        self._lost = anyio.Event()
        connection = await asyncpg.connect(
            self.url, timeout=self.operation_timeout, **self._connection_options
        )
        self._listening = connection
        connection.add_termination_listener(self._on_terminated)
        with anyio.fail_after(self.operation_timeout):
            await connection.add_listener(self.schema, self._on_notification)
        task_group.start_soon(self._check_health, connection)
        task_group.start_soon(self._clean_up_periodically)

    async def _disconnect(self) -> None:
        connection, self._listening = self._listening, None
        if connection is not None:
            connection.terminate()

    async def _confirmed(self, topic: str) -> None:
        """One channel carries every topic: listening again covers them all."""

    def _on_terminated(self, connection: object) -> None:
        if connection is self._listening:
            self._lost.set()

    async def _check_health(self, connection: Any) -> None:
        while True:
            with anyio.move_on_after(self.health_check_interval):
                await self._lost.wait()
                raise _ListenerClosed("the listening connection was closed")
            with anyio.fail_after(self.operation_timeout):
                await connection.fetchval("SELECT 1")

    async def _clean_up_periodically(self) -> None:
        events, topics = clean_up_sql(self.schema)
        while True:
            await anyio.sleep(self.clean_up_interval * random.uniform(0.5, 1.5))
            try:
                await self._call("deleting expired events", "execute", events)
                await self._call("deleting idle topics", "execute", topics, self.topic_ttl)
            except BackendError as exc:
                logger.warning(
                    "budget_ws: PostgreSQL clean-up failed: %s",
                    exc,
                    extra={"budget_ws_event": "clean_up_failed", "budget_ws_error": str(exc)},
                )

    def _on_notification(self, connection: object, pid: int, channel: str, message: str) -> None:
        notification = read_notification(message)
        if isinstance(notification, Announcement):
            self._topics.receive(notification.topic, notification.position, notification.payload)
        elif notification is None:
            logger.warning(
                "budget_ws: ignored a notification on channel %r that budget_ws did not send",
                channel,
                extra={"budget_ws_event": "foreign_notification"},
            )
        else:
            self._signal_listeners.hand_out(notification)

    def _start_fill(self, topic: str) -> None:
        # Under the supervisor: a failed fill reconnects, and the reconnection fills again.
        self._link.start_soon(self._topics.fill_live_gap, topic)


_NOTIFY_SQL = "SELECT pg_notify($1, $2)"


def _is_schema_error(error: BaseException) -> bool:
    """Whether ``error``, or what it wraps (SQLAlchemy's ``orig``), is a missing schema."""
    seen: BaseException | None = error
    for _ in range(4):  # a driver error, wrapped by SQLAlchemy, and their causes
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) in _SCHEMA_SQLSTATES:
            return True
        wrapped = getattr(seen, "orig", None)
        seen = wrapped if isinstance(wrapped, BaseException) else seen.__cause__
    return False


async def _keep_session(connection: object) -> None:
    """Release a pooled connection as it is (asyncpg still rolls back an open transaction).

    asyncpg's default reset is one more round trip after every statement; the pool runs
    only budget_ws's own statements, which leave no session state behind.
    """


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` is a lost, refused or silent server rather than a bug."""
    return isinstance(cause_of(error), _OUTAGES)


def _sqlalchemy_execute(transaction: object) -> Any:
    """A function running the publish on a SQLAlchemy async session or connection, or None."""
    if "sqlalchemy" not in sys.modules:
        return None  # nothing can be a SQLAlchemy object
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if not isinstance(transaction, (AsyncSession, AsyncConnection)):
        return None

    async def execute(statement: str, values: dict[str, Any]) -> tuple[str, int]:
        result = await transaction.execute(text(statement), values)
        epoch, offset = result.one()
        return str(epoch), int(offset)

    return execute
