"""Presence in PostgreSQL: who is on which topic through which worker, and who is alive.

The presence part of the schema (version 2 on), created by the migration step, and the
statements :class:`~budget_ws.backends.postgresql.PostgresBackend` runs on it, each one
round trip and atomic:

- ``presence_workers``: one row per writing worker, the ``seq`` of its latest write and
  until when it is alive (``alive_until``, by the server's clock). Rows of a worker past
  its ``alive_until`` are not read, and are deleted by the next write of any worker.
- ``presence``: one row per (topic, worker, user) with the user's connection count and
  the info bytes the core encoded.

Both tables are ``UNLOGGED``: presence is soft state that every worker rewrites whole
once a write tells it the database lost it (``presence_write`` returns false). Skipping
the write-ahead log spares the database a log record per heartbeat; a crash, or a
failover to a standby, empties the tables, which the managers then fill again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .base import PresenceRow, PresenceSnapshot

__all__ = [
    "forget_sql",
    "presence_schema_sql",
    "read_sql",
    "snapshot_of",
    "write_arguments",
    "write_sql",
]


def presence_schema_sql(schema: str) -> str:
    """Create or replace the presence tables and functions; idempotent."""
    return f"""
-- Every write of a worker updates its row (seq, alive_until): no index on either, and
-- half of each page left free, so that the update stays a heap-only tuple, as for
-- topics. The sweep scans this table of one row per worker instead of an index.
CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.presence_workers (
    worker text PRIMARY KEY,
    seq bigint NOT NULL,
    alive_until timestamptz NOT NULL
) WITH (fillfactor = 50);

-- A user opening or closing a tab updates connections (and maybe info) in place: no
-- index covers them, and room is left for the new version on the same page (HOT).
-- The primary key serves reads by topic, the worker index deletes by worker.
CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.presence (
    topic text NOT NULL,
    worker text NOT NULL,
    user_id text NOT NULL,
    connections integer NOT NULL,
    info bytea NOT NULL,
    PRIMARY KEY (topic, worker, user_id)
) WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS presence_by_worker ON {schema}.presence (worker);

-- One write of a worker. Locks are taken in one order everywhere, a worker's row before
-- its presence rows, and the sweep waits for no one (SKIP LOCKED: a locked worker is
-- being written, so alive again, or being swept by another write): writes, sweeps and
-- forgets of any workers at once cannot deadlock.
CREATE OR REPLACE FUNCTION {schema}.presence_write(
    p_worker text, p_seq bigint, p_ttl double precision, p_replace boolean,
    p_topics text[], p_users text[], p_connections integer[], p_infos bytea[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    was_alive boolean;
BEGIN
    SELECT w.alive_until > now() INTO was_alive
        FROM {schema}.presence_workers w WHERE w.worker = p_worker FOR UPDATE;
    INSERT INTO {schema}.presence_workers AS w (worker, seq, alive_until)
        VALUES (p_worker, p_seq, now() + make_interval(secs => p_ttl))
        ON CONFLICT (worker) DO UPDATE
            SET seq = excluded.seq, alive_until = excluded.alive_until;
    -- The writer never sweeps itself: its rows would be left without a worker row.
    WITH expired AS (
        SELECT w.worker FROM {schema}.presence_workers w
        WHERE w.alive_until <= now() AND w.worker <> p_worker
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM {schema}.presence_workers w USING expired e
        WHERE w.worker = e.worker
        RETURNING w.worker
    )
    DELETE FROM {schema}.presence p USING gone g WHERE p.worker = g.worker;
    -- A worker that was not alive has no rows any more, whether a sweep got to them yet
    -- or not.
    IF p_replace OR NOT coalesce(was_alive, false) THEN
        DELETE FROM {schema}.presence p WHERE p.worker = p_worker;
    END IF;
    DELETE FROM {schema}.presence p
        USING unnest(p_topics, p_users, p_connections) AS r(topic, user_id, connections)
        WHERE r.connections <= 0
            AND p.topic = r.topic AND p.worker = p_worker AND p.user_id = r.user_id;
    INSERT INTO {schema}.presence AS p (topic, worker, user_id, connections, info)
        SELECT r.topic, p_worker, r.user_id, r.connections, r.info
        FROM unnest(p_topics, p_users, p_connections, p_infos)
            AS r(topic, user_id, connections, info)
        WHERE r.connections > 0
        ON CONFLICT (topic, worker, user_id) DO UPDATE
            SET connections = excluded.connections, info = excluded.info
            WHERE (p.connections, p.info) IS DISTINCT FROM (excluded.connections, excluded.info);
    RETURN coalesce(was_alive, false);
END
$$;

CREATE OR REPLACE FUNCTION {schema}.presence_forget(p_worker text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.presence_workers w WHERE w.worker = p_worker;
    DELETE FROM {schema}.presence p WHERE p.worker = p_worker;
END
$$;
"""


def write_sql(schema: str) -> str:
    """Whether the worker was alive, after writing: arguments of :func:`write_arguments`."""
    return (
        f"SELECT {schema}.presence_write($1::text, $2::bigint, $3::double precision,"
        " $4::boolean, $5::text[], $6::text[], $7::integer[], $8::bytea[])"
    )


def write_arguments(
    worker: str, seq: int, ttl: float, rows: Iterable[PresenceRow], *, replace: bool
) -> tuple[Any, ...]:
    """The arguments of :func:`write_sql`, the rows as one array per column.

    A (topic, user) given twice keeps its last row, as a dict would: one statement may
    not upsert a row twice.
    """
    latest = {(row.topic, row.user): row for row in rows}.values()
    return (
        worker,
        seq,
        ttl,
        replace,
        [row.topic for row in latest],
        [row.user for row in latest],
        [row.connections for row in latest],
        [row.info for row in latest],
    )


def read_sql(schema: str) -> str:
    """Every live worker with its seq, and its rows of topic ``$1`` (null when none).

    One statement: rows and seqs come from one snapshot.
    """
    return f"""
SELECT w.worker, w.seq, p.user_id, p.connections, p.info
FROM {schema}.presence_workers w
LEFT JOIN {schema}.presence p ON p.worker = w.worker AND p.topic = $1
WHERE w.alive_until > now()
ORDER BY p.user_id, w.worker
"""


def snapshot_of(topic: str, records: Sequence[Mapping[str, Any]]) -> PresenceSnapshot:
    """The snapshot the rows of :func:`read_sql` describe."""
    rows = [
        PresenceRow(
            topic, record["worker"], record["user_id"], record["connections"], bytes(record["info"])
        )
        for record in records
        if record["user_id"] is not None
    ]
    return PresenceSnapshot(rows, {record["worker"]: record["seq"] for record in records})


def forget_sql(schema: str) -> str:
    """Delete every row of worker ``$1``."""
    return f"SELECT {schema}.presence_forget($1::text)"
