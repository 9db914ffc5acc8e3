"""The Redis backend's server-side Lua scripts: one round trip per publish or history read.

Each script touches only the keys of one topic, which share a hash tag, so it runs on one
cluster node (a signal's channel is its only key).
"""

__all__ = ["HISTORY_SCRIPT", "PUBLISH_SCRIPT", "SIGNAL_SCRIPT"]

# KEYS: meta hash, stream. ARGV: payload, history size, history ttl (ms), key ttl (ms),
# new epoch, channel, "1" for sharded pub/sub.
PUBLISH_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-1', 't', now_ms, 'p', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local message = offset .. ' ' .. epoch .. ' ' .. ARGV[1]
if ARGV[7] == '1' then
  redis.call('SPUBLISH', ARGV[6], message)
else
  redis.call('PUBLISH', ARGV[6], message)
end
return {offset, epoch}
"""

# KEYS: meta hash, stream. ARGV: after offset (-1: only the position), limit, history ttl
# (ms), key ttl (ms), new epoch. Returns {epoch, offset, oldest allowed ms, entries...}.
HISTORY_SCRIPT = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local after = tonumber(ARGV[1])
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
local entries = {}
if after >= 0 and after < top and top - after <= tonumber(ARGV[2]) then
  entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-1', top .. '-1')
end
return {epoch, top, oldest, entries}
"""

# KEYS: the signal channel (a key for a cluster's slot check). ARGV: payload, "1" for
# sharded pub/sub. A script, so that it goes the way of every call: sent once, and on a
# cluster to the node of the channel's slot, through a resharding.
SIGNAL_SCRIPT = """
if ARGV[2] == '1' then
  return redis.call('SPUBLISH', KEYS[1], ARGV[1])
end
return redis.call('PUBLISH', KEYS[1], ARGV[1])
"""
