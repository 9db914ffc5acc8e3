"""What a ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL may say.

budget_ws's own options and a short list of redis-py's connection options are accepted
in the query string; anything else is refused when the URL is read, naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import InvalidBackendOption
from ._options import Option, choice, flag, parse_query, refuse, seconds, seconds_range, text, whole

__all__ = [
    "BUDGET_WS_OPTIONS",
    "KEY_PREFIX",
    "REDIS_PY_OPTIONS",
    "SENTINEL_OPTIONS",
    "SENTINEL_SCHEMES",
    "SentinelTarget",
    "parse_redis_url",
    "parse_sentinel_address",
]


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
    "wait_replicas": whole(0),
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

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
"""Schemes naming Sentinels and a master name instead of a server."""

SENTINEL_PORT = 26379
"""Sentinel's default port, for a Sentinel named without one."""

SENTINEL_OPTIONS: dict[str, Option] = {
    "sentinel_username": text(),
    "sentinel_password": text(),
    "sentinel_timeout": seconds(),
}
"""How to reach the Sentinels themselves: their own credentials and socket timeout."""

_SENTINEL_KWARGS = {
    "sentinel_username": ("username",),
    "sentinel_password": ("password",),
    "sentinel_timeout": ("socket_timeout", "socket_connect_timeout"),
}
"""Each Sentinel option as redis-py's keywords for the connections to the Sentinels."""


def parse_redis_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split ``url`` into the server's address and ``RedisBackend``'s keyword arguments.

    redis-py's options come back under ``connection_options``; ``history_size`` and
    ``history_ttl`` stay apart for the caller to build a ``HistoryPolicy``.

    Raises:
        InvalidBackendOption: an option is unknown, repeated, malformed or out of range.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in SENTINEL_SCHEMES:
        return _parse_sentinel_url(url)
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
    if values.get("cluster") and values.get("wait_replicas"):
        raise refuse(
            f"{scheme}:// option", "wait_replicas", values["wait_replicas"], "only 0 on a cluster"
        )
    _gather_connection_options(values)
    return urlunsplit(parts._replace(query="")), values


def _gather_connection_options(values: dict[str, Any]) -> None:
    """Move redis-py's options under ``connection_options``, the Sentinels' further in."""
    redis_py = {**REDIS_PY_OPTIONS, **_TLS_OPTIONS}
    connection_options = {name: values.pop(name) for name in list(values) if name in redis_py}
    sentinel_kwargs: dict[str, Any] = {}
    for name, keywords in _SENTINEL_KWARGS.items():
        if name in values:
            value = values.pop(name)
            sentinel_kwargs.update(dict.fromkeys(keywords, value))
    if sentinel_kwargs:
        # redis-py's own name: Sentinel(sentinel_kwargs=...) connects to the Sentinels.
        connection_options["sentinel_kwargs"] = sentinel_kwargs
    if connection_options:
        values["connection_options"] = connection_options


@dataclass(frozen=True)
class SentinelTarget:
    """The Sentinels a ``redis+sentinel://`` URL names, and the master they watch."""

    sentinels: tuple[tuple[str, int], ...]
    """``(host, port)`` of each Sentinel, in the URL's order."""
    master_name: str
    """The name the Sentinels monitor the master under (``sentinel monitor NAME ...``)."""
    db: int | None
    """The database number in the path, if any."""
    tls: bool
    """Whether the master (and the Sentinels) are reached over TLS (``rediss+sentinel``)."""
    credentials: str
    """The master's ``user:password`` as written in the URL (percent-encoded), or ``""``."""

    @property
    def username(self) -> str | None:
        user = self.credentials.partition(":")[0]
        return unquote(user) if user else None

    @property
    def password(self) -> str | None:
        _, colon, password = self.credentials.partition(":")
        return unquote(password) if colon else None

    def node_url(self, host: str, port: int) -> str:
        """A plain URL of one data node (the master Sentinel named), with the credentials."""
        scheme = "rediss" if self.tls else "redis"
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        netloc = f"{self.credentials}@{where}" if self.credentials else where
        # Without a number in the path, a ``db`` option (redis-py's keyword) applies.
        return f"{scheme}://{netloc}" + (f"/{self.db}" if self.db is not None else "")

    def describe(self) -> str:
        """The Sentinels and the master name, for log lines and ``repr`` (no credentials)."""
        sentinels = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"{sentinels}/{self.master_name}"


def _parse_sentinel_url(url: str) -> tuple[str, dict[str, Any]]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    accepted = {**BUDGET_WS_OPTIONS, **REDIS_PY_OPTIONS, **SENTINEL_OPTIONS}
    del accepted["cluster"]
    if scheme == "rediss+sentinel":
        accepted.update(_TLS_OPTIONS)
    try:
        values = parse_query(scheme, parts.query, accepted)
    except InvalidBackendOption as refused:
        if refused.option != "cluster":
            raise
        raise InvalidBackendOption(
            f"{scheme}:// has no option 'cluster': Sentinel and Cluster exclude each other",
            option="cluster",
            accepted=refused.accepted,
        ) from None
    address = urlunsplit(parts._replace(query=""))
    target = parse_sentinel_address(address)
    if target.db is not None and "db" in values:
        raise refuse(f"{scheme}:// option", "db", values["db"], "nothing when the path names one")
    _gather_connection_options(values)
    return address, values


def parse_sentinel_address(url: str) -> SentinelTarget:
    """Read ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db]``.

    Raises:
        InvalidBackendOption: no Sentinel, a malformed host or port, no master name, a
            path that is not ``/name`` or ``/name/db``, or a query string (its options are
            read by :func:`parse_redis_url`, or given as arguments).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    owner = f"{scheme}:// URL"
    if parts.query:
        raise refuse(owner, "query", parts.query, "nothing here: give the options as arguments")
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_sentinel_address(owner, host) for host in hosts.split(","))
    name, _, database = parts.path.removeprefix("/").partition("/")
    if not name:
        raise refuse(
            owner,
            "master_name",
            "",
            "the name the Sentinels monitor, e.g. /mymaster or /mymaster/0",
        )
    database = database.rstrip("/")
    if database and not (database.isdigit() and database.isascii()):
        raise refuse(owner, "path", parts.path, "/MASTER_NAME or /MASTER_NAME/DB, e.g. /mymaster/0")
    return SentinelTarget(
        sentinels=sentinels,
        master_name=unquote(name),
        db=int(database) if database else None,
        tls=scheme == "rediss+sentinel",
        credentials=credentials,
    )


def _sentinel_address(owner: str, text: str) -> tuple[str, int]:
    accepted = "HOST or HOST:PORT, comma-separated, e.g. 10.0.0.1:26379,10.0.0.2:26379"
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise refuse(owner, "host", text, accepted) from None
    if not host or port == 0 or parts.username is not None or parts.password is not None:
        raise refuse(owner, "host", text, accepted)
    return host, port or SENTINEL_PORT


def _database_in_path(scheme: str, path: str) -> int | None:
    database = path.strip("/")
    if not database:
        return None
    if not (database.isdigit() and database.isascii()):
        raise refuse(f"{scheme}:// URL", "path", path, "/ and a database number, e.g. /0")
    return int(database)
