"""Running the Redis backend's scripts: on one server, or on the cluster node of a topic.

A script call is sent once. redis-py's own retries are off for it (a server client gets
``retry`` with no retries, a cluster node's connections have none), because a publish
whose reply was lost may have run: sending it again would publish the event twice, at
two offsets. Whether to try again is the caller's decision (history reads may; a publish
may not).
"""

from __future__ import annotations

import hashlib
import inspect
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendError, BackendUnavailable
from ..position import Position
from ._redis_pubsub import describe
from ._redis_scripts import HISTORY_SCRIPT, PUBLISH_SCRIPT, SIGNAL_SCRIPT
from .base import Recovery

__all__ = ["Script", "SentOnce", "TopicCalls", "run_script"]


class Script:
    """A Lua script, run by its SHA1; a server that lacks it (NOSCRIPT) ran nothing."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class TopicCalls:
    """Publishes and history reads of topics, and signals: one script call each."""

    def __init__(
        self,
        *,
        key_prefix: str,
        cluster: bool,
        topic_ttl: float,
        operation_timeout: float,
        max_connections: int,
        wait_replicas: int = 0,
    ) -> None:
        self.key_prefix = key_prefix
        self.cluster = cluster
        self.topic_ttl = topic_ttl
        self.operation_timeout = operation_timeout
        self.wait_replicas = wait_replicas
        """Replicas that must hold a publish before it counts as done (Redis ``WAIT``)."""
        self.client: Any = None
        """redis-py's client while the backend is open, else None."""
        # redis-py's pools raise when full (redis-py 8: at 100); waiting here instead keeps
        # a burst of publishes from failing while Redis is healthy.
        self._free_connections = anyio.Semaphore(max_connections)

    def keys(self, topic: str) -> tuple[str, str, str]:
        """The topic's meta hash, stream and channel."""
        # One hash tag per topic: its keys and its shard channel share a cluster slot.
        base = f"{self.key_prefix}:{{{topic}}}"
        return f"{base}:meta", f"{base}:log", base

    async def publish(self, topic: str, payload: bytes, *, size: int, ttl: float) -> Position:
        """Assign the next offset, append to the stream and fan out: one round trip."""
        meta, log, channel = self.keys(topic)
        arguments = [
            payload,
            size,
            int(ttl * 1000),
            int(max(self.topic_ttl, ttl) * 1000),
            secrets.token_hex(4),
            channel,
            "1" if self.cluster else "0",
        ]
        result = await self._call(PUBLISH, [meta, log], arguments, topic, retry=False)
        offset, epoch = result
        return Position(int(offset), _text(epoch))

    async def history(
        self, topic: str, after: Position | None, limit: int, *, ttl: float
    ) -> Recovery:
        """Read what ``topic`` holds after ``after``; all of it or nothing."""
        meta, log, _ = self.keys(topic)
        arguments = [
            after.offset if after is not None else -1,
            limit,
            int(ttl * 1000),
            int(max(self.topic_ttl, ttl) * 1000),
            secrets.token_hex(4),
        ]
        # Reading history twice is harmless: a read may be tried again.
        epoch, top, oldest, entries = await self._call(
            HISTORY, [meta, log], arguments, topic, retry=True
        )
        position = Position(int(top), _text(epoch))
        if after is None or after.epoch != position.epoch or after.offset > position.offset:
            return Recovery(False, position)
        missing = position.offset - after.offset
        if missing == 0:
            return Recovery(True, position)
        if len(entries) != missing:
            return Recovery(False, position)
        items: list[tuple[Position, bytes]] = []
        expected = after.offset + 1
        for entry_id, fields in entries:
            values = _fields(fields)
            offset = int(_text(entry_id).split("-", 1)[0])
            if offset != expected or int(values[b"t"]) < int(oldest):
                return Recovery(False, position)
            items.append((Position(offset, position.epoch), values[b"p"]))
            expected += 1
        return Recovery(True, position, items)

    async def signal(self, channel: str, payload: bytes) -> None:
        """Publish ``payload`` on ``channel``, once: a signal sent twice would arrive twice."""
        sharded = "1" if self.cluster else "0"
        await self.call(SIGNAL, [channel], [payload, sharded], about="a signal", once=SIGNAL_ONCE)

    async def _call(
        self,
        script: Script,
        keys: Sequence[str],
        arguments: Sequence[Any],
        topic: str,
        *,
        retry: bool,
    ) -> Any:
        """A topic's script; a publish (``retry`` false) waits for ``wait_replicas``."""
        if retry:
            return await self.call(script, keys, arguments, about=f"topic {topic!r}")
        return await self.call(
            script,
            keys,
            arguments,
            about=f"topic {topic!r}",
            once=EVENT_ONCE,
            replicas=self.wait_replicas,
        )

    async def call(
        self,
        script: Script,
        keys: Sequence[str],
        arguments: Sequence[Any],
        *,
        about: str,
        once: SentOnce | None = None,
        replicas: int = 0,
    ) -> Any:
        """Run a script within ``operation_timeout``; every failure is a budget_ws error.

        Without ``once`` the call is tried once more after a connection error (a pooled
        connection may predate a Redis restart). With it, the call is never sent again:
        when its reply is lost, whether it ran is unknown, and running it twice could do
        it twice (publish an event at two offsets). The caller is told so.

        Raises:
            BackendError: The backend is not open.
            BackendUnavailable: Redis failed, or did not answer in time; the message
                names ``about``.
        """
        client = self.client
        if client is None:
            raise BackendError("the Redis backend is not open: use `async with backend:`")
        unknown = f"; {once.unknown}" if once is not None else ""
        try:
            with anyio.fail_after(self.operation_timeout):
                async with self._free_connections:
                    try:
                        if replicas:
                            # A third of the time for the replicas: a script the server
                            # lacks (NOSCRIPT) waits twice, and runs within the rest.
                            wait_ms = max(1, int(self.operation_timeout * 1000 / 3))
                            return await _run_acknowledged(
                                client, script, keys, arguments, replicas, wait_ms
                            )
                        return await run_script(client, script, keys, arguments, self.cluster)
                    except RedisConnectionError:
                        if once is not None:
                            raise
                        # A pooled connection may predate a Redis restart: one fresh try.
                        return await run_script(client, script, keys, arguments, self.cluster)
        except _NotAcknowledged as short:
            raise BackendUnavailable(
                f"only {short.replicas} of {replicas} replicas acknowledged the event of "
                f"{about} in time: it was published, but a failover to a replica may lose it"
            ) from None
        except TimeoutError:
            raise BackendUnavailable(
                f"Redis did not answer within {self.operation_timeout:g} s ({about}){unknown}"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if once is not None and _not_sent(exc):
                unknown = f"; {once.not_done}"
            raise BackendUnavailable(f"Redis failed for {about}: {describe(exc)}{unknown}") from exc
        except RedisError as exc:
            raise BackendUnavailable(f"Redis failed for {about}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SentOnce:
    """How to tell the caller of a call that is never sent twice what became of it."""

    unknown: str
    """Its reply was lost: it may have run."""
    not_done: str
    """It certainly did not run (it was never sent)."""


EVENT_ONCE = SentOnce(
    "the event may or may not have been published (not retried, so that it is never "
    "published twice)",
    "the event was not published",
)
SIGNAL_ONCE = SentOnce(
    "the signal may or may not have been sent (not retried, so that it never arrives twice)",
    "the signal was not sent",
)


async def run_script(
    client: Any, script: Script, keys: Sequence[str], arguments: Sequence[Any], cluster: bool
) -> Any:
    """Run ``script`` once where its keys live; retried only when it cannot have run."""
    if cluster:
        return await _run_on_cluster(client, script, keys, arguments)
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *arguments)
    except NoScriptError:
        return await client.eval(script.source, len(keys), *keys, *arguments)


class _NotAcknowledged(Exception):
    """Fewer replicas than asked for hold a publish that ran on the master."""

    def __init__(self, replicas: int) -> None:
        super().__init__(replicas)
        self.replicas = replicas


async def _run_acknowledged(
    client: Any,
    script: Script,
    keys: Sequence[str],
    arguments: Sequence[Any],
    replicas: int,
    wait_ms: int,
) -> Any:
    """Run ``script``, then ``WAIT`` for ``replicas`` to hold it, in one write.

    A master that lost its role to a replica has none left to acknowledge, so what it
    still accepts never counts as published.
    """
    result, acknowledged = await _run_and_wait(
        client, ("EVALSHA", script.sha, len(keys), *keys, *arguments), replicas, wait_ms
    )
    if isinstance(result, NoScriptError):  # the script did not run: send its source
        result, acknowledged = await _run_and_wait(
            client, ("EVAL", script.source, len(keys), *keys, *arguments), replicas, wait_ms
        )
    if isinstance(result, Exception):
        raise result
    if int(acknowledged) < replicas:
        raise _NotAcknowledged(int(acknowledged))
    return result


async def _run_and_wait(
    client: Any, command: tuple[Any, ...], replicas: int, wait_ms: int
) -> list[Any]:
    async with client.pipeline(transaction=False) as pipeline:
        pipeline.execute_command(*command)
        pipeline.execute_command("WAIT", replicas, wait_ms)
        replies: list[Any] = await pipeline.execute(raise_on_error=False)
    return replies


async def _run_on_cluster(
    client: Any, script: Script, keys: Sequence[str], arguments: Sequence[Any]
) -> Any:
    """Follow the topic's slot through a resharding; the caller's timeout bounds it.

    redis-py's cluster client sends ``ASKING`` on another pooled connection than the
    command it allows, so during a slot migration every call ends in "TTL exhausted".
    Here ``ASKING`` and the script share one connection and one write. Every error
    that makes a retry here (NOSCRIPT, ASK, MOVED, TRYAGAIN) means the script did not run.
    """
    slot = client.keyslot(keys[0])
    by_sha = ("EVALSHA", script.sha, len(keys), *keys, *arguments)
    by_source = ("EVAL", script.source, len(keys), *keys, *arguments)
    while True:
        node = client.nodes_manager.get_node_from_slot(slot)
        try:
            try:
                return await _send(node, [by_sha])
            except NoScriptError:
                return await _send(node, [by_source])
        except MovedError as redirect:  # first: redis-py's MovedError is an AskError
            moved = client.nodes_manager.move_slot(redirect)
            if inspect.isawaitable(moved):
                await moved
        except AskError as redirect:
            target = await _node_at(client, redirect.host or node.host, redirect.port)
            try:
                return await _send(target, [("ASKING",), by_source])
            except (AskError, TryAgainError):
                await anyio.sleep(0.01)  # the migration moved on: ask the slot map again
        except TryAgainError:
            await anyio.sleep(0.01)  # the topic's keys are between two nodes right now


async def _send(node: Any, commands: list[tuple[Any, ...]]) -> Any:
    """Send ``commands`` in one write on one connection; the last one's reply."""
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as refused:  # the connection stays in step: read on
                replies.append(refused)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await connection.disconnect()
        raise
    finally:
        node.release(connection)
    failure = next((reply for reply in replies if isinstance(reply, ResponseError)), None)
    if failure is not None:
        raise failure
    return replies[-1]


async def _node_at(client: Any, host: str, port: int) -> Any:
    host, port = client.nodes_manager.remap_host_port(host, port)
    node = client.get_node(host=host, port=port)
    if node is None:  # a node that joined since the slot map was read
        await client.nodes_manager.initialize()
        node = client.get_node(host=host, port=port)
    if node is None:
        raise ResponseError(f"ASK points to {host}:{port}, which is not in the cluster")
    return node


def _not_sent(error: BaseException) -> bool:
    """Whether a failed call certainly did not run its script."""
    # redis-py's words for a failed connect (5.0.1 to 8): nothing was sent.
    if "connecting to" in str(error):
        return True
    # Behind Sentinel: no master to send it to, or a demoted master refused to write
    # (redis-py then turns the ReadOnlyError into a ConnectionError).
    return isinstance(error, MasterNotFoundError) or isinstance(error.__context__, ReadOnlyError)


PUBLISH = Script(PUBLISH_SCRIPT)
HISTORY = Script(HISTORY_SCRIPT)
SIGNAL = Script(SIGNAL_SCRIPT)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _fields(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return {_bytes(key): value for key, value in fields.items()}
    pairs = list(fields)
    return dict(zip(pairs[::2], pairs[1::2], strict=True))
