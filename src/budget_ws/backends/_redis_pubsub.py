"""Pub/sub connections of the Redis backend: one per server, or per cluster node."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..errors import BackendUnavailable
from ._supervisor import cause_of
from ._supervisor import describe as describe_error

if TYPE_CHECKING:
    from ._redis_sentinel import SentinelMaster

__all__ = [
    "DeadConnection",
    "Shard",
    "address_of",
    "cause_of",
    "describe",
    "is_outage",
    "with_host",
]

logger = logging.getLogger("budget_ws.backend.redis")


class Shard:
    """One pub/sub connection: to the server, or to one cluster node.

    redis-py must not reconnect and resubscribe behind our back here: a silent reconnect
    would hide the gap that only the backend knows how to fill. So retries are off, and
    any failure ends the supervisor's task group, which reconnects everything.

    Behind Sentinel (``sentinel`` given), the connection goes to the master the Sentinels
    named when it opened, and counts as dead once they name another.
    """

    def __init__(
        self,
        url: str,
        *,
        sharded: bool,
        on_message: Callable[[str, bytes], None],
        on_confirmed: Callable[[str], None],
        still_wanted: Callable[[str], bool],
        health_check_interval: float,
        operation_timeout: float,
        connection_options: Mapping[str, Any],
        sentinel: SentinelMaster | None = None,
    ) -> None:
        self._url = url
        self._sharded = sharded
        self._on_message = on_message
        self._on_confirmed = on_confirmed
        self._still_wanted = still_wanted
        self._health_check_interval = health_check_interval
        self._operation_timeout = operation_timeout
        self._connection_options = connection_options
        self._sentinel = sentinel
        self._client: Any = None
        self._pubsub: Any = None
        self._pong = anyio.Event()
        self.address = address_of(url)
        """Where the connection goes, ``host:port`` or a socket path, for log lines."""

    async def open(self) -> None:
        """Connect and check the server answers."""
        try:
            await self._open()
        except Exception as exc:
            raise ShardLost(self.address, exc) from exc

    async def _open(self) -> None:
        options = {
            "socket_connect_timeout": self._operation_timeout,
            **self._connection_options,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self._client = aioredis.Redis.from_url(self._url, **options)
        self._pubsub = self._client.pubsub()
        await self._pubsub.ping()  # connects, and fails now if the server is away
        if self._sentinel is not None:
            with anyio.fail_after(self._operation_timeout):
                await self._sentinel.settle(self._client, self.address)

    async def subscribe(self, channel: str) -> None:
        if self._sharded:
            await self._pubsub.ssubscribe(channel)
        else:
            await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._sentinel is not None:
            self._sentinel.forget(channel)
        if self._sharded:
            await self._pubsub.sunsubscribe(channel)
        else:
            await self._pubsub.unsubscribe(channel)

    async def listen(self) -> None:
        """Hand every message on; ends only by raising :class:`ShardLost`."""
        try:
            await self._listen()
        except Exception as exc:
            raise ShardLost(self.address, exc) from exc

    async def _listen(self) -> None:
        pubsub = self._pubsub
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = _text(message["type"])
            if kind in ("message", "smessage"):
                channel = _text(message["channel"])
                if self._sentinel is not None:
                    self._sentinel.heard(channel, message["data"])
                self._on_message(channel, message["data"])
            elif kind in ("subscribe", "ssubscribe"):
                self._on_confirmed(_text(message["channel"]))
            elif kind in ("unsubscribe", "sunsubscribe"):
                channel = _text(message["channel"])
                if self._still_wanted(channel):
                    # Redis dropped a subscription we did not give up: on a cluster, the
                    # channel's slot moved to another node. Reconnect to the new owner.
                    raise DeadConnection(f"Redis unsubscribed {channel!r} (slot moved?)")
            elif kind == "pong":
                self._pong.set()

    async def check_health(self) -> None:
        """Ping every interval; a connection that stops answering counts as dead."""
        try:
            await self._check_health()
        except Exception as exc:
            raise ShardLost(self.address, exc) from exc

    async def _check_health(self) -> None:
        while True:
            await anyio.sleep(self._health_check_interval)
            self._pong = anyio.Event()
            with anyio.fail_after(self._operation_timeout):
                await self._pubsub.ping()
            with anyio.move_on_after(self._operation_timeout):
                await self._pong.wait()
            if not self._pong.is_set():
                # The address, not the URL: a URL may hold a password, and this is logged.
                raise DeadConnection(f"no pong from {self.address}")
            if self._sentinel is not None:
                # A demoted master answers pings, and may keep its clients for a while.
                await self._sentinel.confirm(self.address)

    async def close(self) -> None:
        for resource in (self._pubsub, self._client):
            if resource is not None:
                try:
                    await resource.aclose()
                except Exception:
                    logger.debug(
                        "closing a pub/sub connection failed",
                        exc_info=True,
                        extra={
                            "budget_ws_event": "pubsub_close_failed",
                            "budget_ws_address": self.address,
                        },
                    )


def address_of(url: str) -> str:
    """``host:port`` of a Redis URL, or its socket path, for log lines (no credentials).

    A ``redis+sentinel://`` URL gives its Sentinels and the master's name.
    """
    parts = urlsplit(url)
    if "," in parts.netloc or parts.scheme.lower().endswith("+sentinel"):
        sentinels = parts.netloc.rpartition("@")[2]
        return f"sentinels {sentinels}{parts.path.rstrip('/')}"
    return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path


def with_host(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class DeadConnection(Exception):
    """The pub/sub connection stopped answering pings."""


class ShardLost(DeadConnection):
    """A pub/sub connection failed; names where it went, for a log line that says so."""

    def __init__(self, address: str, cause: BaseException) -> None:
        super().__init__(f"{address}: {describe(cause)}")
        self.address = address
        self.cause = cause


_OUTAGES = (RedisError, OSError, TimeoutError, DeadConnection, BackendUnavailable)


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` is a lost, refused or silent server (logged without a traceback).

    Anything else that breaks the pub/sub connection is a bug, and keeps its traceback.
    """
    cause = cause_of(error)
    if isinstance(cause, ShardLost):
        cause = cause_of(cause.cause)
    return isinstance(cause, _OUTAGES)


def describe(error: BaseException) -> str:
    """One line for a log: the cause's type and message, with its errno if it has one."""
    cause = cause_of(error)
    if isinstance(cause, ShardLost):
        return str(cause)
    return describe_error(cause)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
