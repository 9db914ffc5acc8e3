"""The tables and functions the PostgreSQL backend keeps in its own schema.

Created or migrated only by an explicit step (:func:`migrate`, or ``python -m budget_ws
migrate URL``), never as a side effect of connecting: a web app's database user often
may not create tables, and a schema change belongs in a deployment, not a first request.

- ``topics``: one row per topic, its epoch and last offset. Publishing updates the row,
  so concurrent transactions publishing to one topic take turns on its row lock: offsets
  are given in commit order, and a rolled-back publish leaves no gap.
- ``events``: the history, one row per kept event, trimmed by size when publishing and
  by age by each worker's periodic clean-up.
- ``publish()`` does all of a publish in one statement, so a transactional publish adds
  one round trip to the app's transaction; ``NOTIFY`` is sent only when it commits.
- From version 2 on, presence tables and functions (:mod:`._postgres_presence`).

Each version adds to the one before with statements that change nothing when run again,
so one migration creates a schema or upgrades an older one in place.
"""

from __future__ import annotations

import re

from ._postgres_presence import presence_schema_sql

__all__ = [
    "NOTIFY_LIMIT",
    "SCHEMA_VERSION",
    "check_schema_name",
    "clean_up_sql",
    "event_sql",
    "history_sql",
    "migration_sql",
    "publish_sql",
]

SCHEMA_VERSION = 2
"""The version :func:`migration_sql` brings a database to; a backend refuses others."""

NOTIFY_LIMIT = 7999
"""Bytes a ``NOTIFY`` payload may hold; larger events are announced, then read from the
table (``pg_notify`` refuses 8000 bytes and more)."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(name: str) -> str:
    """A lower-case SQL identifier: safe to put into statements without quoting rules."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise ValueError(name)
    return name


def migration_sql(schema: str, version: int = SCHEMA_VERSION) -> str:
    """Create or upgrade ``schema``'s tables and functions; idempotent, one transaction.

    Args:
        schema: The schema's name.
        version: The version to bring it to (an older one only to test upgrades).
    """
    steps = [_history_sql(schema), presence_schema_sql(schema)][:version]
    return "\n".join(
        [
            *steps,
            f"""
INSERT INTO {schema}.schema_version (version)
    SELECT 0 WHERE NOT EXISTS (SELECT FROM {schema}.schema_version);
UPDATE {schema}.schema_version SET version = {version};
""",
        ]
    )


def _history_sql(schema: str) -> str:
    """Version 1: the topics, their history and publishing."""
    return f"""
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version integer NOT NULL
);

-- Every publish updates its topic's row. No index on what changes, and room left in
-- each page, so that the update stays a heap-only tuple (no index entry per publish);
-- the clean-up scans this small table instead.
CREATE TABLE IF NOT EXISTS {schema}.topics (
    topic text PRIMARY KEY,
    epoch text NOT NULL,
    last_offset bigint NOT NULL,
    touched_at timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 50);

CREATE TABLE IF NOT EXISTS {schema}.events (
    topic text NOT NULL,
    "offset" bigint NOT NULL,
    payload bytea NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (topic, "offset")
);
CREATE INDEX IF NOT EXISTS events_expires_at ON {schema}.events (expires_at);

-- A topic's position, created (offset 0, a new epoch) when it has none yet, so that a
-- subscriber's position and the first publish share one epoch.
CREATE OR REPLACE FUNCTION {schema}.position(p_topic text, OUT epoch text, OUT last_offset bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    SELECT t.epoch, t.last_offset INTO epoch, last_offset
        FROM {schema}.topics t WHERE t.topic = p_topic;
    IF NOT FOUND THEN
        INSERT INTO {schema}.topics AS t (topic, epoch, last_offset)
            VALUES (p_topic, substr(md5(random()::text || clock_timestamp()::text), 1, 16), 0)
            ON CONFLICT (topic) DO UPDATE SET touched_at = t.touched_at
            RETURNING t.epoch, t.last_offset INTO epoch, last_offset;
    END IF;
END
$$;

-- One publish: the next offset (the row lock is held until the transaction ends), the
-- history row, trimming, and the NOTIFY every worker's listener receives on commit:
-- "<offset> <epoch> <topic length> <topic>" then "=" and the payload in base64, or
-- nothing when the event is too large to carry (listeners read it from the table).
CREATE OR REPLACE FUNCTION {schema}.publish(
    p_topic text, p_payload bytea, p_keep integer, p_ttl double precision,
    OUT epoch text, OUT "offset" bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    announcement text;
    message text;
    too_large boolean;
BEGIN
    INSERT INTO {schema}.topics AS t (topic, epoch, last_offset)
        VALUES (p_topic, substr(md5(random()::text || clock_timestamp()::text), 1, 16), 1)
        ON CONFLICT (topic) DO UPDATE
            SET last_offset = t.last_offset + 1, touched_at = clock_timestamp()
        RETURNING t.epoch, t.last_offset INTO epoch, "offset";
    announcement := "offset" || ' ' || epoch || ' ' || length(p_topic) || ' ' || p_topic;
    message := announcement || '=' || translate(encode(p_payload, 'base64'), E'\\n', '');
    too_large := octet_length(message) > {NOTIFY_LIMIT};
    IF too_large THEN
        message := announcement;
    END IF;
    -- An event too large to carry is kept for listeners to read, whatever the history
    -- size says (then only until it expires).
    IF p_keep > 0 OR too_large THEN
        INSERT INTO {schema}.events (topic, "offset", payload, expires_at)
            VALUES (p_topic, "offset", p_payload,
                    clock_timestamp() + make_interval(secs => p_ttl));
    END IF;
    IF p_keep > 0 THEN
        DELETE FROM {schema}.events e
            WHERE e.topic = p_topic AND e."offset" <= "offset" - p_keep;
    END IF;
    PERFORM pg_notify('{schema}', message);
END
$$;
"""


def publish_sql(schema: str, placeholders: tuple[str, str, str, str]) -> str:
    """``SELECT epoch, offset`` of a publish; placeholders in the driver's style."""
    topic, payload, keep, ttl = placeholders
    # Typed, so that any driver's parameter types resolve to the function's.
    arguments = (
        f"CAST({topic} AS text), CAST({payload} AS bytea), "
        f"CAST({keep} AS integer), CAST({ttl} AS double precision)"
    )
    return f'SELECT epoch, "offset" FROM {schema}.publish({arguments})'


def history_sql(schema: str) -> str:
    """The topic's position and at most ``$3`` unexpired events after offset ``$2``.

    One statement, so position and events come from one snapshot. The first row carries
    the position; event columns are null when nothing is kept after ``$2``.
    """
    return f"""
SELECT p.epoch, p.last_offset, e."offset", e.payload
FROM {schema}.position($1) p
LEFT JOIN LATERAL (
    SELECT ev."offset", ev.payload FROM {schema}.events ev
    WHERE ev.topic = $1 AND ev."offset" > $2 AND ev.expires_at > clock_timestamp()
    ORDER BY ev."offset" LIMIT $3
) e ON true
ORDER BY e."offset"
"""


def event_sql(schema: str) -> str:
    """The payload of the event at offset ``$2`` of topic ``$1`` in epoch ``$3``."""
    return (
        f"SELECT e.payload FROM {schema}.events e JOIN {schema}.topics t USING (topic)"
        f' WHERE e.topic = $1 AND e."offset" = $2 AND t.epoch = $3'
        " AND e.expires_at > clock_timestamp()"
    )


def clean_up_sql(schema: str) -> tuple[str, str]:
    """Delete expired events; then topics idle for ``$1`` seconds, with what they kept.

    A topic deleted this way starts a new epoch at its next publish: its subscribers'
    positions can no longer be recovered, and they are told to resync.
    """
    return (
        f"DELETE FROM {schema}.events WHERE expires_at <= clock_timestamp()",
        f"""WITH idle AS (
            DELETE FROM {schema}.topics
            WHERE touched_at < clock_timestamp() - make_interval(secs => $1)
            RETURNING topic
        )
        DELETE FROM {schema}.events WHERE topic IN (SELECT topic FROM idle)""",
    )
