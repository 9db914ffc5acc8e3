"""Redis behind Sentinel: where the master is, and what a failover may have cost.

Sentinel names the master; the backend publishes to it and listens on it. A failover
moves it, and two things can go wrong that no error reports:

- a master that lost its role keeps serving the connections it has. On a ``SENTINEL
  FAILOVER`` the old master stays a writable master for about ten seconds (until the
  Sentinels reconfigure it), so publishes sent to it succeed and are then lost, and a
  pub/sub connection on it hears nothing more. So the pub/sub health check asks the
  Sentinels where the master is, and both the pub/sub connection and the publishing
  client's connections leave a master the Sentinels no longer name.
- the promoted replica may lack the last events (replication is asynchronous), and
  then gives their offsets to other events. A worker that delivered a lost event would
  take the new one at that offset for a repeat and drop it. So, on the first connection
  to a master of another replication history, every topic whose last live event the new
  master does not hold, identical, is started over: a new epoch, and every subscriber is
  told to resync.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ._redis_calls import Script, run_script
from ._redis_pubsub import DeadConnection, address_of, describe
from ._redis_url import SentinelTarget

__all__ = ["SentinelMaster"]

logger = logging.getLogger("budget_ws.backend.redis")

SENTINEL_TIMEOUT = 1.0
"""Seconds to connect to one Sentinel and get its answer, unless ``sentinel_timeout``
says otherwise; a Sentinel that does not answer in time is passed for the next one."""

# KEYS: meta hash, stream. ARGV: epoch, offset, payload of the last event a worker heard.
# Deletes the topic's state when this server holds another history of that epoch, so the
# next publish or read starts a new epoch. Returns 1 when it did.
START_OVER_IF_FORKED_SCRIPT = """
if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then
  return 0
end
local entry = redis.call('XRANGE', KEYS[2], ARGV[2] .. '-1', ARGV[2] .. '-1')[1]
if entry then
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'p' and fields[i + 1] == ARGV[3] then
      return 0
    end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""
_START_OVER_IF_FORKED = Script(START_OVER_IF_FORKED_SCRIPT)


class _NewestViewSentinel(Sentinel):
    """Asks every Sentinel where the master is, and believes the latest failover.

    redis-py's ``Sentinel`` takes the first answer. During a failover the Sentinels
    disagree for a while, and a Sentinel that is slow to answer may be the only one that
    knows; following whichever answers moves the connections back and forth, to a master
    that lost its role. The answer with the highest ``config-epoch`` names the master of
    the latest failover, and an answer older than one already seen is not believed. The
    Sentinel leading a failover raises the epoch before it names the new master, so at one
    epoch an answer without ``failover_in_progress`` is the newer.
    """

    _newest: tuple[tuple[int, bool], str, int] | None = None
    """``((config-epoch, settled), host, port)`` of the latest master any answer named."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        views: list[dict[str, Any]] = []
        errors: list[str] = []

        async def ask(sentinel: Any) -> None:
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisError, OSError) as exc:
                errors.append(describe(exc))
                return
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                views.append(state)

        async with anyio.create_task_group() as task_group:
            for sentinel in self.sentinels:
                task_group.start_soon(ask, sentinel)
        if not views:
            because = f": {'; '.join(errors)}" if errors else ""
            raise MasterNotFoundError(f"No master found for {service_name!r}{because}")
        state = max(views, key=_age)
        view = (_age(state), _text(state["ip"]), int(state["port"]))
        if self._newest is None or view[0] >= self._newest[0]:
            self._newest = view
        _, host, port = self._newest
        return host, port


class SentinelMaster:
    """The master the Sentinels name, the client that publishes to it, and what was heard.

    Args:
        target: The Sentinels and the master's name, from the URL.
        connection_options: redis-py's options for the master; ``sentinel_kwargs`` in
            it are the options for the Sentinels (credentials, ``socket_timeout``).
        operation_timeout: Seconds one question to the Sentinels may take in all.
        max_connections: Size of the publishing client's connection pool.
    """

    def __init__(
        self,
        target: SentinelTarget,
        *,
        connection_options: Mapping[str, Any],
        operation_timeout: float,
        max_connections: int,
    ) -> None:
        self.target = target
        self._operation_timeout = operation_timeout
        options = dict(connection_options)
        sentinel_options = dict(options.pop("sentinel_kwargs", None) or {})
        tls = {name: value for name, value in options.items() if name.startswith("ssl_")}
        if target.tls:
            tls["ssl"] = True
        self.node_options: dict[str, Any] = options
        """redis-py's options for a pub/sub connection to the master (its URL says the rest)."""
        sentinel_kwargs = {
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            **tls,
            **sentinel_options,
            # The Sentinels are asked in turn: a retry would only multiply a silent one's wait.
            "retry": Retry(NoBackoff(), 0),
        }
        master_options = {
            "db": target.db or 0,
            "username": target.username,
            "password": target.password,
            **tls,
            **options,
        }
        self._sentinel = _NewestViewSentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
        # redis-py would send a command again after a connection error: a publish whose
        # reply was lost would run twice. Never retried, as on a single server.
        self.client: Any = self._sentinel.master_for(
            target.master_name,
            **master_options,
            decode_responses=False,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),
        )
        """redis-py's client for publishes and history reads; it asks the Sentinels for
        the master whenever it opens a connection."""
        self._publishing_to: str | None = None
        self._history_id: str | None = None
        self._last_heard: dict[str, bytes] = {}

    async def master_url(self) -> str:
        """The URL of the master the Sentinels name now, for a pub/sub connection.

        Raises:
            BackendUnavailable: no Sentinel answered in time, or none names a master
                that is up (``MasterNotFoundError``, a redis-py ``ConnectionError``).
        """
        with anyio.fail_after(self._operation_timeout):
            host, port = await self._sentinel.discover_master(self.target.master_name)
        return self.target.node_url(_text(host), int(port))

    async def confirm(self, address: str) -> None:
        """Raise :class:`DeadConnection` if the Sentinels name another master than ``address``.

        A Sentinel that cannot answer proves nothing: the connection's own health check
        notices a master that is gone.
        """
        try:
            current = address_of(await self.master_url())
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug(
                "budget_ws: no Sentinel said where the master is: %s",
                describe(exc),
                extra={"budget_ws_event": "sentinel_unanswered", "budget_ws_error": describe(exc)},
            )
            return
        if current != address:
            await self._follow(current)
            raise DeadConnection(f"{address} is no longer the master: the Sentinels name {current}")

    async def settle(self, client: Any, address: str) -> None:
        """Run on a new pub/sub connection to ``address``, before it subscribes anything.

        Points the publishing client at this master, and, if its replication history is
        not the one of the last master, starts over every topic it holds another history
        of than this worker heard.
        """
        await self._follow(address)
        info = await client.info("replication")
        history_id = _text(info.get("master_replid", ""))
        previous, self._history_id = self._history_id, history_id
        if previous is None or previous == history_id:
            return
        for channel, message in list(self._last_heard.items()):
            offset, epoch, payload = message.split(b" ", 2)
            keys = [f"{channel}:meta", f"{channel}:log"]
            started_over = await run_script(
                client, _START_OVER_IF_FORKED, keys, [epoch, offset, payload], cluster=False
            )
            if started_over:
                # The channel is ``prefix:{topic}``; a key prefix holds no brace.
                topic = channel[channel.index("{") + 1 : -1]
                logger.warning(
                    "budget_ws: %s lacks events this worker delivered on %r (a failover to a "
                    "replica that was behind): the topic starts over, its subscribers resync",
                    address,
                    topic,
                    extra={
                        "budget_ws_event": "topic_forked",
                        "budget_ws_address": address,
                        "budget_ws_topic": topic,
                    },
                )

    def heard(self, channel: str, message: bytes) -> None:
        """Remember the last live message of ``channel``, to check the next master by."""
        if channel.endswith("}"):  # a topic's (``prefix:{topic}``); signals carry no position
            self._last_heard[channel] = message

    def forget(self, channel: str) -> None:
        self._last_heard.pop(channel, None)

    async def _follow(self, address: str) -> None:
        """Close the publishing client's connections when they may go to another master.

        redis-py asks the Sentinels only when it opens a connection: until then its pooled
        connections keep publishing to a master that may have lost its role.
        """
        previous, self._publishing_to = self._publishing_to, address
        if previous is not None and previous != address:
            await self.client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the publishing client and the connections to the Sentinels."""
        await self.client.aclose()
        # redis-py 5.0 has no Sentinel.aclose(): close its clients one by one.
        for sentinel in self._sentinel.sentinels:
            await sentinel.aclose()


def _age(state: dict[str, Any]) -> tuple[int, bool]:
    """How recent a Sentinel's view of the master is: its epoch, then whether it is settled."""
    flags = _text(state.get("flags", "")).split(",")
    return int(state.get("config-epoch", 0)), "failover_in_progress" not in flags


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
