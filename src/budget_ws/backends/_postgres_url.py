"""What a ``postgresql://`` URL may say, read strictly.

budget_ws's own options and a short list of libpq-style connection options (passed on to
asyncpg) are accepted in the query string; anything else is refused when the URL is read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from ._options import Option, choice, parse_query, seconds, seconds_range, text, whole
from ._postgres_schema import check_schema_name

__all__ = ["BUDGET_WS_OPTIONS", "SCHEMA", "parse_postgres_url"]

SCHEMA = Option(check_schema_name, "a lower-case SQL name: a-z, 0-9 and _, at most 63")

BUDGET_WS_OPTIONS: dict[str, Option] = {
    "schema": SCHEMA,
    "history_size": whole(0),
    "history_ttl": seconds(),
    "topic_ttl": seconds(),
    "operation_timeout": seconds(),
    "health_check_interval": seconds(),
    "reconnect_delay": seconds_range(),
    "max_connections": whole(1),
    "clean_up_interval": seconds(),
}
"""Options read by :class:`~budget_ws.backends.postgresql.PostgresBackend` itself."""

DRIVER_OPTIONS: dict[str, Option] = {
    "sslmode": choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "application_name": text(),
}
"""Connection options left in the URL for asyncpg."""


def parse_postgres_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split ``url`` into asyncpg's DSN and ``PostgresBackend``'s keyword arguments.

    ``history_size`` and ``history_ttl`` stay apart for the caller's ``HistoryPolicy``.

    Raises:
        InvalidBackendOption: an option is unknown, repeated, malformed or out of range.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    values = parse_query(scheme, parts.query, {**BUDGET_WS_OPTIONS, **DRIVER_OPTIONS})
    driver = {name: values.pop(name) for name in list(values) if name in DRIVER_OPTIONS}
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(driver), ""))
    return dsn, values
