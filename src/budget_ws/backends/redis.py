"""The Redis backend: fan-out across workers and hosts, history in Redis Streams.

Each publish is one server-side script: it assigns the topic's next offset (creating the
topic's epoch when absent), appends the payload to the topic's stream, and publishes it
with its position, so every worker sees events in history order. Each worker holds one
pub/sub connection for all its topics, supervised: when it breaks, the backend reconnects
with jittered backoff, subscribes again and fills every topic's gap from the stream, or
tells its listeners to resync when the stream cannot cover the gap. Behind Redis Sentinel,
it follows the master through a failover (see ``_redis_sentinel``). Signals travel on one
more channel of that connection, without history; presence is kept by ``_redis_presence``.

Requires redis-py (``pip install 'budget-ws[redis]'``) and runs on asyncio.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
from redis import __version__ as redis_version
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from typing_extensions import Self

from ..errors import BackendError, BackendNotInstalled, BackendUnavailable
from ._options import check_link_arguments, refuse
from ._policy import HistoryPolicy, gather_history, policy_for
from ._redis_calls import TopicCalls
from ._redis_presence import PresenceStore
from ._redis_pubsub import (
    DeadConnection,
    Shard,
    ShardLost,
    address_of,
    cause_of,
    describe,
    is_outage,
    with_host,
)
from ._redis_sentinel import SentinelMaster
from ._redis_url import KEY_PREFIX, SENTINEL_SCHEMES, parse_redis_url, parse_sentinel_address
from ._sequencer import Sequencer
from ._signals import SignalListeners
from ._supervisor import Supervised, Supervisor
from .base import Listener, Position, PresenceRow, PresenceSnapshot, Recovery

__all__ = ["SHARDED_PUBSUB", "HistoryPolicy", "RedisBackend"]

logger = logging.getLogger("budget_ws.backend.redis")
"""Lines about Redis connections and gaps; the table is in ``docs/reference/logging.md``."""

SHARDED_PUBSUB = hasattr(aioredis.client.PubSub, "ssubscribe")
"""Whether the installed redis-py has sharded pub/sub on asyncio (8.0 and later), which a
Redis Cluster needs; a single server works with redis-py 5.0.1 and later."""


class RedisBackend(Supervised):
    """Fans events out through Redis pub/sub and keeps their history in Redis Streams.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL of the server (or of one node
            of a cluster, with ``cluster=True``), or a ``redis+sentinel://`` (or
            ``rediss+sentinel://``) URL of the Sentinels and the master's name,
            ``redis+sentinel://[[user]:password@]host:26379,host:26379/mymaster/0``.
        key_prefix: Prefix of every key and channel.
        history: Default history policy of every topic.
        history_overrides: Policies for topics matching shell-style patterns, first match
            wins, e.g. ``{"chat:*": HistoryPolicy(size=100, ttl=60)}``.
        topic_ttl: Seconds an idle topic keeps its offset and epoch; after that its next
            event starts a new epoch and resuming clients resync.
        cluster: Connect to a Redis Cluster; fan-out then uses sharded pub/sub.
        operation_timeout: Seconds a publish, subscribe or history read may take before
            :class:`~budget_ws.BackendUnavailable` is raised.
        health_check_interval: Seconds between pings on the pub/sub connection; no answer
            within ``operation_timeout`` counts as a dead connection.
        reconnect_delay: Smallest and largest delay between reconnection attempts; each
            delay is drawn at random up to an exponentially growing cap (full jitter).
        max_connections: Commands (publishes, history reads) in flight at once, and the
            size of redis-py's connection pool; more wait for a free connection, within
            ``operation_timeout``.
        wait_replicas: Replicas that must hold each publish (Redis ``WAIT``, for up to a
            third of ``operation_timeout``) before ``publish()`` returns; fewer raise
            :class:`~budget_ws.BackendUnavailable`. A publish that returned is then kept
            by a failover to one of those replicas (Sentinel); not on a cluster.
        connection_options: Extra keyword arguments for redis-py's client; behind
            Sentinel, those under ``sentinel_kwargs`` are for the connections to the
            Sentinels (redis-py's ``Sentinel(sentinel_kwargs=...)``).

    Raises:
        InvalidBackendOption: An argument is out of range, a ``redis+sentinel://`` URL
            is malformed, or it comes with ``cluster=True``.

    .. versionchanged:: Unreleased
        ``redis+sentinel://`` and ``rediss+sentinel://`` URLs, and ``wait_replicas``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = "budget_ws",
        history: HistoryPolicy | None = None,
        history_overrides: Mapping[str, HistoryPolicy] | None = None,
        topic_ttl: float = 86400.0,
        cluster: bool = False,
        operation_timeout: float = 5.0,
        health_check_interval: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.05, 5.0),
        max_connections: int = 50,
        wait_replicas: int = 0,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            KEY_PREFIX.parse(key_prefix)
        except ValueError:
            raise refuse("RedisBackend", "key_prefix", key_prefix, KEY_PREFIX.accepted) from None
        check_link_arguments(
            "RedisBackend",
            durations={
                "topic_ttl": topic_ttl,
                "operation_timeout": operation_timeout,
                "health_check_interval": health_check_interval,
            },
            reconnect_delay=reconnect_delay,
            max_connections=max_connections,
        )
        self._sentinel_target = (
            parse_sentinel_address(url)
            if urlsplit(url).scheme.lower() in SENTINEL_SCHEMES
            else None
        )
        if self._sentinel_target is not None and cluster:
            accepted = "False with Sentinel: Sentinel and Cluster exclude each other"
            raise refuse("RedisBackend", "cluster", cluster, accepted)
        if not isinstance(wait_replicas, int) or wait_replicas < 0 or (cluster and wait_replicas):
            accepted = "a whole number >= 0, and only 0 on a cluster"
            raise refuse("RedisBackend", "wait_replicas", wait_replicas, accepted)
        self._sentinel: SentinelMaster | None = None
        self.url = url
        self.key_prefix = key_prefix
        self.history_policy = history or HistoryPolicy()
        self.history_overrides = dict(history_overrides or {})
        self.topic_ttl = topic_ttl
        self.cluster = cluster
        self.operation_timeout = operation_timeout
        self.health_check_interval = health_check_interval
        self.reconnect_delay = reconnect_delay
        self.max_connections = max_connections
        self.wait_replicas = wait_replicas
        self._connection_options = dict(connection_options or {})
        self._calls = TopicCalls(
            key_prefix=key_prefix,
            cluster=cluster,
            topic_ttl=topic_ttl,
            operation_timeout=operation_timeout,
            max_connections=max_connections,
            wait_replicas=wait_replicas,
        )
        self._presence = PresenceStore(self._calls, key_prefix)
        # Beside every topic channel (``prefix:{topic}``), never one of them.
        self._signal_channel = f"{key_prefix}:signals"
        self._signal_listeners = SignalListeners(logger)
        # Set when Redis confirmed the signal channel on the current connection; None
        # while nobody listens.
        self._signals_confirmed: anyio.Event | None = None
        self._client: Any = None
        self._shards: dict[str, Shard] = {}
        self._unsubscribing: Counter[str] = Counter()
        self._topics = Sequencer(
            history=self.history,
            gap_limit=lambda topic: self._policy(topic).size,
            start_fill=self._start_fill,
            logger=logger,
            server="Redis",
        )
        # Per topic: set when Redis confirmed the subscription on the current connection.
        self._confirmed: dict[str, anyio.Event] = {}
        self._shard_group: anyio.abc.TaskGroup | None = None
        self._link = Supervisor(
            sequencer=self._topics,
            connect=self._connect,
            disconnect=self._disconnect,
            confirmed=self._wait_confirmed,
            link="Redis pub/sub",
            address=self._address,
            describe=describe,
            is_outage=is_outage,
            reconnect_delay=reconnect_delay,
            logger=logger,
        )

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """Create a backend from a URL; its options go in the query string.

        ``redis://host:6379/0?key_prefix=app&history_size=500&history_ttl=60&cluster=1``.
        budget_ws's options are the constructor's (``history_size`` and ``history_ttl``
        make the default :class:`HistoryPolicy`; ``reconnect_delay=LOW,HIGH``); redis-py's
        ``db``, ``socket_timeout``, ``socket_connect_timeout``, ``socket_keepalive``,
        ``client_name`` and, for ``rediss://``, ``ssl_cert_reqs``, ``ssl_check_hostname``
        and ``ssl_ca_certs`` are passed to its client.

        Behind Sentinel:
        ``redis+sentinel://:password@host1:26379,host2:26379/mymaster/0?sentinel_password=s``;
        the credentials are the master's, ``sentinel_username``, ``sentinel_password``
        and ``sentinel_timeout`` are for the Sentinels; ``cluster`` is refused.

        Raises:
            InvalidBackendOption: An option is unknown, given twice, malformed or out of
                range; the message names it and what it accepts.
        """
        address, options = parse_redis_url(url)
        return cls(address, **gather_history(options))

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        if self._sentinel_target is not None:
            where = self._sentinel_target.describe()
            return f"RedisBackend({parts.scheme}://{where} sentinel, prefix={self.key_prefix!r})"
        where = parts.hostname or parts.path
        port = f":{parts.port}" if parts.port else ""
        kind = "cluster" if self.cluster else "server"
        return f"RedisBackend({parts.scheme}://{where}{port} {kind}, prefix={self.key_prefix!r})"

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Connect; fails with :class:`~budget_ws.BackendUnavailable` if Redis is unreachable."""
        if self._client is not None:
            raise BackendError("this RedisBackend is already open")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise BackendError(
                "the Redis backend runs on asyncio (redis-py's client); "
                "use the memory backend on trio"
            ) from None
        if self.cluster and not SHARDED_PUBSUB:
            raise BackendNotInstalled(
                "a Redis Cluster needs sharded pub/sub on asyncio, which redis-py has from "
                f"8.0 on (this is {redis_version}): pip install -U 'redis>=8'"
            )
        options = {
            **self._connection_options,
            "decode_responses": False,
            "max_connections": self.max_connections,
        }
        if self.cluster:
            # Scripts go to the nodes directly (see _redis_calls), whose connections
            # redis-py never retries; the cluster client's retries serve its slot map.
            self._client = RedisCluster.from_url(self.url, **options)
            try:
                with anyio.fail_after(self.operation_timeout):
                    await self._client.initialize()
            except (RedisError, OSError, TimeoutError) as exc:
                await self._client.aclose()
                self._client = None
                raise BackendUnavailable(f"could not reach the Redis cluster: {exc}") from exc
        elif self._sentinel_target is not None:
            # Publishes go wherever the Sentinels name the master, never retried either.
            self._sentinel = SentinelMaster(
                self._sentinel_target,
                connection_options=self._connection_options,
                operation_timeout=self.operation_timeout,
                max_connections=self.max_connections,
            )
            self._client = self._sentinel.client
        else:
            # redis-py would send a command again after a connection error (redis-py 8
            # does by default): a publish whose reply was lost would run twice.
            options["retry"] = Retry(NoBackoff(), 0)
            self._client = aioredis.Redis.from_url(self.url, **options)
        self._calls.client = self._client
        try:
            await self._link.start("Redis", repr(self), self.operation_timeout)
        except BackendUnavailable:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection; from any task, any number of times."""
        with anyio.CancelScope(shield=True):
            await self._link.stop()
            await self._close_shards()
            self._signal_listeners.clear()
            self._signals_confirmed = None
            if self._client is not None:
                self._calls.client = None
                sentinel, self._sentinel = self._sentinel, None
                await (sentinel.aclose() if sentinel is not None else self._client.aclose())
                self._client = None

    # Keys ------------------------------------------------------------------------------

    def _keys(self, topic: str) -> tuple[str, str, str]:
        return self._calls.keys(topic)

    def _policy(self, topic: str) -> HistoryPolicy:
        return policy_for(topic, self.history_policy, self.history_overrides)

    def _topic_of(self, channel: str) -> str:
        return channel[len(self.key_prefix) + 2 : -1]

    # Publishing and history ------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> Position:
        """Assign the next offset, append to the stream and fan out: one round trip.

        Raises:
            BackendUnavailable: Redis failed or did not answer; when the reply was lost,
                the event may have been published (see ``docs/topics/redis-outages.md``).
        """
        policy = self._policy(topic)
        return await self._calls.publish(topic, payload, size=policy.size, ttl=policy.ttl)

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        """Read what ``topic`` holds after ``after``; all of it or nothing."""
        return await self._calls.history(topic, after, limit, ttl=self._policy(topic).ttl)

    # Subscriptions ---------------------------------------------------------------------

    async def subscribe(self, topic: str, listener: Listener) -> None:
        """Deliver ``topic`` to ``listener``; returns once Redis confirmed the subscription."""
        if not self._topics.add(topic, listener):
            await self._wait_confirmed(topic)
            return
        self._confirmed[topic] = anyio.Event()
        try:
            if self._link.connected:
                await self._send_subscribe(self._keys(topic)[2], [topic])
            await self._wait_confirmed(topic)
            # Everything published from here on reaches us; what came before is history.
            recovery = await self.history(topic, None, 0)
        except BaseException:
            if self._topics.remove(topic, listener):
                del self._confirmed[topic]
                await self._send_unsubscribe_quietly(topic)
            raise
        self._topics.start(topic, recovery.position)

    async def _wait_confirmed(self, topic: str) -> None:
        try:
            with anyio.fail_after(self.operation_timeout):
                while True:
                    confirmed = self._confirmed.get(topic)
                    if confirmed is None:
                        return  # unsubscribed meanwhile
                    await confirmed.wait()
                    if confirmed is self._confirmed.get(topic):
                        return
        except TimeoutError:
            raise BackendUnavailable(
                f"Redis did not confirm the subscription to {topic!r} within "
                f"{self.operation_timeout:g} s"
            ) from None

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        """Stop delivering ``topic`` to ``listener``; the last one unsubscribes in Redis."""
        if self._topics.remove(topic, listener):
            del self._confirmed[topic]
            await self._send_unsubscribe_quietly(topic)

    def _shard_key(self, channel: str) -> str:
        # A cluster needs one pub/sub connection per node owning subscribed channels.
        if not self.cluster:
            return ""
        node = self._client.get_node_from_key(channel)
        return str(node.name)

    async def _send_subscribe(self, channel: str, topics: Sequence[str]) -> None:
        """Subscribe ``channel`` (of ``topics``, none for signals) on the live connection."""
        try:
            shard = await self._shard_for(channel)
            with anyio.fail_after(self.operation_timeout):
                await shard.subscribe(channel)
        except (RedisError, OSError, TimeoutError, DeadConnection) as exc:
            # The health check notices the broken connection; reconnecting subscribes again.
            logger.warning(
                "budget_ws: subscribing %s failed: %s",
                topics or "signals",
                exc,
                extra={
                    "budget_ws_event": "pubsub_subscribe_failed",
                    "budget_ws_topic_names": list(topics),
                    "budget_ws_error": describe(exc),
                },
            )

    async def _send_unsubscribe_quietly(self, topic: str) -> None:
        if not self._link.connected:
            return
        channel = self._keys(topic)[2]
        shard = self._shards.get(self._shard_key(channel))
        if shard is None:
            return
        self._unsubscribing[channel] += 1
        try:
            with anyio.fail_after(self.operation_timeout):
                await shard.unsubscribe(channel)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "budget_ws: unsubscribing %r failed: %s",
                topic,
                exc,
                extra={
                    "budget_ws_event": "pubsub_unsubscribe_failed",
                    "budget_ws_topic": topic,
                    "budget_ws_error": describe(exc),
                },
            )

    # Signals and presence (SignalBackend, PresenceBackend) -----------------------------

    async def signal(self, payload: bytes) -> None:
        """Publish ``payload`` to every worker's signal listener: one round trip, sent once.

        Raises:
            BackendUnavailable: Redis failed or did not answer; when the reply was lost,
                the signal may have been sent.
        """
        await self._calls.signal(self._signal_channel, payload)

    async def listen_signals(self, listener: Callable[[bytes], None]) -> None:
        """Hand every signal to ``listener``; returns once Redis confirmed the subscription.

        The signal channel is subscribed again after every reconnect; what was signalled
        meanwhile is lost (no history), as the contract allows.
        """
        if self._client is None:
            raise BackendError("the Redis backend is not open: use `async with backend:`")
        added = self._signal_listeners.add(listener)
        if self._signals_confirmed is None:
            self._signals_confirmed = anyio.Event()
            if self._link.connected:
                await self._send_subscribe(self._signal_channel, [])
        try:
            with anyio.fail_after(self.operation_timeout):
                while (confirmed := self._signals_confirmed) is not None:
                    await confirmed.wait()
                    if confirmed is self._signals_confirmed:
                        return
        except TimeoutError:
            if added:  # as if never called; one given before still listens
                self._signal_listeners.discard(listener)
            if not self._signal_listeners:
                self._signals_confirmed = None
            raise BackendUnavailable(
                f"Redis did not confirm the signal subscription within {self.operation_timeout:g} s"
            ) from None

    async def presence_write(
        self, worker: str, seq: int, ttl: float, rows: Sequence[PresenceRow], *, replace: bool
    ) -> bool:
        """Store ``worker``'s rows and liveness (Redis's clock), sweep dead workers: one
        round trip, sent once; see :class:`~budget_ws.backends.PresenceBackend`."""
        return await self._presence.write(worker, seq, ttl, rows, replace=replace)

    async def presence_read(self, topic: str) -> PresenceSnapshot:
        """The rows of ``topic`` from workers alive now, with their ``seq``."""
        return await self._presence.read(topic)

    async def presence_forget(self, worker: str) -> None:
        """Delete every row of ``worker`` and its liveness."""
        await self._presence.forget(worker)

    # The supervised listener -----------------------------------------------------------

    async def _connect(self, task_group: anyio.abc.TaskGroup, attempt: int) -> None:
        """Open the pub/sub connections under the supervisor and subscribe every topic."""
        if self.cluster and attempt:
            # Slots may have moved: learn the cluster's current layout first.
            with anyio.fail_after(self.operation_timeout):
                await self._client.nodes_manager.initialize()
        self._shard_group = task_group
        channels = [self._keys(topic)[2] for topic in self._topics]
        await self._shard_for("" if self.cluster else None)
        for channel in channels:
            shard = await self._shard_for(channel)
            with anyio.fail_after(self.operation_timeout):
                await shard.subscribe(channel)
        # Last, with no await after a "no": listen_signals() subscribes by itself once
        # the link is up, and the link is up as soon as this returns.
        if self._signals_confirmed is not None:
            shard = await self._shard_for(self._signal_channel)
            with anyio.fail_after(self.operation_timeout):
                await shard.subscribe(self._signal_channel)

    async def _disconnect(self) -> None:
        self._shard_group = None
        self._unsubscribing.clear()
        for topic, stale in list(self._confirmed.items()):
            # Wake whoever waits on the old event, to wait on the new one.
            self._confirmed[topic] = anyio.Event()
            stale.set()
        if self._signals_confirmed is not None:
            stale, self._signals_confirmed = self._signals_confirmed, anyio.Event()
            stale.set()
        await self._close_shards()

    def _address(self, error: BaseException | None) -> str:
        cause = cause_of(error) if error is not None else None
        return cause.address if isinstance(cause, ShardLost) else address_of(self.url)

    async def _shard_for(self, channel: str | None) -> Shard:
        """The pub/sub connection for ``channel``, opened (and supervised) on first use."""
        if self.cluster and channel:
            key = self._shard_key(channel)
        elif self.cluster:
            node = self._client.get_random_node()
            key = str(node.name)
        else:
            key = ""
        shard = self._shards.get(key)
        if shard is not None:
            return shard
        if self._shard_group is None:
            raise DeadConnection("the pub/sub connections are being re-established")
        connection_options = self._connection_options
        if self.cluster:
            host, port = key.rsplit(":", 1)
            url = with_host(self.url, host, int(port))
        elif self._sentinel is not None:
            # Asked at every (re)connect: after a failover, the new master.
            url = await self._sentinel.master_url()
            connection_options = self._sentinel.node_options
        else:
            url = self.url
        shard = Shard(
            url,
            sharded=self.cluster,
            on_message=self._on_message,
            on_confirmed=self._on_confirmed,
            still_wanted=self._still_wanted,
            health_check_interval=self.health_check_interval,
            operation_timeout=self.operation_timeout,
            connection_options=connection_options,
            sentinel=self._sentinel,
        )
        self._shards[key] = shard
        with anyio.fail_after(self.operation_timeout):
            await shard.open()
        self._shard_group.start_soon(shard.listen)
        self._shard_group.start_soon(shard.check_health)
        return shard

    async def _close_shards(self) -> None:
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()

    def _still_wanted(self, channel: str) -> bool:
        """Whether an unsubscribe notice from Redis concerns a channel we did not give up."""
        if channel == self._signal_channel:
            return self._signals_confirmed is not None
        if self._unsubscribing[channel] > 0:
            self._unsubscribing[channel] -= 1
            return False
        return self._topic_of(channel) in self._topics

    def _on_confirmed(self, channel: str) -> None:
        if channel == self._signal_channel:
            confirmed = self._signals_confirmed
        else:
            confirmed = self._confirmed.get(self._topic_of(channel))
        if confirmed is not None:
            confirmed.set()

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == self._signal_channel:
            self._signal_listeners.hand_out(data)
            return
        offset, epoch, payload = data.split(b" ", 2)
        position = Position(int(offset), epoch.decode())
        self._topics.receive(self._topic_of(channel), position, payload)

    def _start_fill(self, topic: str) -> None:
        # Under the supervisor: if the fill fails, everything reconnects and the
        # reconnection fills this topic's gap again.
        self._link.start_soon(self._topics.fill_live_gap, topic)
