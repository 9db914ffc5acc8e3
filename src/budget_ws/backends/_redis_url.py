"""What a ``redis://``, ``rediss://`` or ``unix://`` URL may say, read strictly.

budget_ws's own options and a short list of redis-py's connection options are accepted
in the query string; anything else is refused when the URL is read, naming the option.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._options import Option, choice, flag, parse_query, refuse, seconds, seconds_range, text, whole

__all__ = ["BUDGET_WS_OPTIONS", "KEY_PREFIX", "REDIS_PY_OPTIONS", "parse_redis_url"]


def _key_prefix(value: str) -> str:
    if not value or "{" in value or "}" in value:
        raise ValueError
    return value


KEY_PREFIX = Option(_key_prefix, "a non-empty string without { or }")
"""The braces would break the hash tag that keeps each topic's keys on one cluster slot."""

BUDGET_WS_OPTIONS: dict[str, Option] = {
    "key_prefix": KEY_PREFIX,
    "history_size": whole(0),
    "history_ttl": seconds(),
    "topic_ttl": seconds(),
    "cluster": flag(),
    "operation_timeout": seconds(),
    "health_check_interval": seconds(),
    "reconnect_delay": seconds_range(),
    "max_connections": whole(1),
}
"""Options read by :class:`~budget_ws.backends.redis.RedisBackend` itself."""

REDIS_PY_OPTIONS: dict[str, Option] = {
    "db": whole(0),
    "socket_timeout": seconds(),
    "socket_connect_timeout": seconds(),
    "socket_keepalive": flag(),
    "client_name": text(),
}
"""redis-py connection options passed through to its client."""

_TLS_OPTIONS: dict[str, Option] = {
    "ssl_cert_reqs": choice("none", "optional", "required"),
    "ssl_check_hostname": flag(),
    "ssl_ca_certs": text(),
}
"""redis-py's TLS options, for ``rediss://`` only."""


def parse_redis_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split ``url`` into the server's address and ``RedisBackend``'s keyword arguments.

    redis-py's options come back under ``connection_options``; ``history_size`` and
    ``history_ttl`` stay apart for the caller to build a ``HistoryPolicy``.

    Raises:
        InvalidBackendOption: an option is unknown, repeated, malformed or out of range.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    accepted = {**BUDGET_WS_OPTIONS, **REDIS_PY_OPTIONS}
    if scheme == "rediss":
        accepted.update(_TLS_OPTIONS)
    values = parse_query(scheme, parts.query, accepted)
    database = values.get("db")
    if scheme in ("redis", "rediss"):
        in_path = _database_in_path(scheme, parts.path)
        if in_path is not None and database is not None:
            raise refuse(f"{scheme}:// option", "db", database, "nothing when the path names one")
        database = in_path if database is None else database
    if values.get("cluster") and database:
        raise refuse(f"{scheme}:// URL", "db", database, "only 0 on a cluster")
    redis_py = {**REDIS_PY_OPTIONS, **_TLS_OPTIONS}
    connection_options = {name: values.pop(name) for name in list(values) if name in redis_py}
    if connection_options:
        values["connection_options"] = connection_options
    return urlunsplit(parts._replace(query="")), values


def _database_in_path(scheme: str, path: str) -> int | None:
    database = path.strip("/")
    if not database:
        return None
    if not (database.isdigit() and database.isascii()):
        raise refuse(f"{scheme}:// URL", "path", path, "/ and a database number, e.g. /0")
    return int(database)
