"""Presence in Redis: who is on which topic through which worker, alive on Redis's clock.

Every call is one script, so a write is atomic and a read sees all of it or none. Keys:

- ``<prefix>:{~presence}:workers``, a sorted set: each worker, scored by the millisecond
  (Redis ``TIME``) until which it is alive; one clock for every worker, whatever theirs say.
- ``<prefix>:{~presence}:seqs``, a hash: each worker's ``seq`` of its latest write.
- ``<prefix>:{~presence}:topic:<topic>``, a hash: ``<worker>\\0<user>`` to
  ``<connections> <info>``. Topic, user and worker names hold no NUL.
- ``<prefix>:{~presence}:worker:<worker>``, a set of ``<topic>\\0<user>``: the rows a worker
  has, to delete them (replace, forget, sweep) without looking at every topic.

All of them share one hash tag, so on a cluster every script finds its keys on one node.
The price is that one node holds and serves all presence of the app. That is enough: a
row is per user, topic and worker, and each worker writes its changes in batches (the
manager's interval), unlike topics, whose events a cluster spreads over its nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._redis_calls import Script, SentOnce, TopicCalls
from .base import PresenceRow, PresenceSnapshot

__all__ = ["PresenceStore"]

SWEEP_ROWS = 1000
"""Rows of expired workers one write deletes at most: bounds how long a script blocks
Redis when a worker with many rows died; later writes delete the rest."""

_DROP = """
local NUL = string.char(0)
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
-- Deletes up to `limit` rows of `worker` (every row without a limit); returns how many.
local function drop(base, worker, limit)
  local index = base .. ':worker:' .. worker
  local members
  if limit then
    members = redis.call('SPOP', index, limit)
  else
    members = redis.call('SMEMBERS', index)
    redis.call('DEL', index)
  end
  for _, member in ipairs(members) do
    local cut = string.find(member, NUL, 1, true)
    redis.call('HDEL', base .. ':topic:' .. string.sub(member, 1, cut - 1),
      worker .. NUL .. string.sub(member, cut + 1))
  end
  return #members
end
"""

# KEYS: workers, seqs. ARGV: base, worker, seq, ttl (ms), "1" to replace, sweep budget,
# then topic, user, value ("" deletes) per row. Returns 1 if the worker was alive.
_WRITE = (
    _DROP
    + """
local base, worker = ARGV[1], ARGV[2]
local now = now_ms()
local alive_until = redis.call('ZSCORE', KEYS[1], worker)
local known = alive_until and tonumber(alive_until) > now
local budget = tonumber(ARGV[6])
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)) do
  if budget <= 0 then break end
  if dead ~= worker then
    budget = budget - drop(base, dead, budget)
    if redis.call('EXISTS', base .. ':worker:' .. dead) == 0 then
      redis.call('ZREM', KEYS[1], dead)
      redis.call('HDEL', KEYS[2], dead)
    end
  end
end
-- An expired worker's old rows must not come back to life with it.
if ARGV[5] == '1' or not known then
  drop(base, worker, nil)
end
local index = base .. ':worker:' .. worker
for i = 7, #ARGV, 3 do
  local rows = base .. ':topic:' .. ARGV[i]
  local field, member = worker .. NUL .. ARGV[i + 1], ARGV[i] .. NUL .. ARGV[i + 1]
  if ARGV[i + 2] == '' then
    redis.call('HDEL', rows, field)
    redis.call('SREM', index, member)
  else
    redis.call('HSET', rows, field, ARGV[i + 2])
    redis.call('SADD', index, member)
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), worker)
redis.call('HSET', KEYS[2], worker, ARGV[3])
if known then
  return 1
end
return 0
"""
)

# KEYS: workers, seqs. ARGV: base, topic. Returns {live workers, seqs, the topic's rows}.
# The rows come back as one string, `worker NUL user NUL value` joined by NUL (a value is
# `<connections> <info>`, and JSON holds no raw NUL): one bulk string for the client to
# read instead of two per row, which is most of the time of a read of thousands of rows.
_READ = """
local now = redis.call('TIME')
local alive = redis.call('ZRANGEBYSCORE', KEYS[1],
  string.format('(%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)), '+inf')
local rows = redis.call('HGETALL', ARGV[1] .. ':topic:' .. ARGV[2])
return {alive, redis.call('HGETALL', KEYS[2]), table.concat(rows, string.char(0))}
"""

# KEYS: workers, seqs. ARGV: base, worker.
_FORGET = (
    _DROP
    + """
drop(ARGV[1], ARGV[2], nil)
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 0
"""
)

WRITE = Script(_WRITE)
READ = Script(_READ)
FORGET = Script(_FORGET)

_WRITE_ONCE = SentOnce(
    "the rows may or may not have been stored (not retried: the answer to a second try "
    "could say the worker was alive when it was not)",
    "nothing was stored",
)


class PresenceStore:
    """Presence writes, reads and forgets of one key prefix: one script call each."""

    def __init__(self, calls: TopicCalls, key_prefix: str) -> None:
        self._calls = calls
        self._base = f"{key_prefix}:{{~presence}}"
        self._keys = [f"{self._base}:workers", f"{self._base}:seqs"]

    async def write(
        self, worker: str, seq: int, ttl: float, rows: Sequence[PresenceRow], *, replace: bool
    ) -> bool:
        """Store ``worker``'s rows, keep it alive ``ttl`` more seconds, sweep dead workers."""
        arguments: list[Any] = [
            self._base,
            worker,
            seq,
            max(1, round(ttl * 1000)),
            "1" if replace else "0",
            SWEEP_ROWS,
        ]
        for row in rows:
            value = b"%d %s" % (row.connections, row.info) if row.connections > 0 else b""
            arguments += [row.topic, row.user, value]
        known = await self._calls.call(
            WRITE, self._keys, arguments, about=f"presence of worker {worker!r}", once=_WRITE_ONCE
        )
        return bool(known)

    async def read(self, topic: str) -> PresenceSnapshot:
        """The rows of ``topic`` from workers alive now, and every live worker's ``seq``."""
        alive, seqs, stored = await self._calls.call(
            READ, self._keys, [self._base, topic], about=f"presence of topic {topic!r}"
        )
        live = {_text(worker) for worker in alive}
        snapshot_seqs = {
            _text(worker): int(seq) for worker, seq in _pairs(seqs) if _text(worker) in live
        }
        rows: list[PresenceRow] = []
        parts = stored.split(b"\0") if stored else []
        for index in range(0, len(parts), 3):
            worker = parts[index].decode()
            if worker in live:
                connections, _, info = parts[index + 2].partition(b" ")
                user = parts[index + 1].decode()
                rows.append(PresenceRow(topic, worker, user, int(connections), info))
        return PresenceSnapshot(rows, snapshot_seqs)

    async def forget(self, worker: str) -> None:
        """Delete ``worker``'s rows and liveness; running it twice is harmless."""
        await self._calls.call(
            FORGET, self._keys, [self._base, worker], about=f"presence of worker {worker!r}"
        )


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
