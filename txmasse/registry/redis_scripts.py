"""
The Lua scripts behind L{txmasse.registry.redis}: each registry operation is
one script, so it is atomic and costs one round trip; but for a lookup,
which is one plain C{HGETALL} whenever the client can decide on its answer
alone, and this module's C{LOOKUP} otherwise.

Keys of namespace NS all start with C{masse:{NS}:} (the braces keep them in
one Redis Cluster slot):

  - C{n:NAME}: hash, instance id -> C{@EXPIRY RECORD}: an expiry (ms,
    server clock) that the lease's is never before, and the record as
    stored (its JSON, after its freshness stamp if it has one), so that a
    lookup can be one C{HGETALL}; a heartbeat rewrites that expiry only
    once it is less than half a ttl ahead
  - C{exp}: sorted set, C{NAME/INSTANCE} -> lease expiry (ms, server clock):
    the expiries in order, for sweeps; every script that sets one sets both
  - C{names}: sorted set of the names that have instances, for prefix ranges
  - C{seq}: number of the last event published on the channel C{events};
    one that is garbage starts again from 1 (readers take it as 0)
  - C{gone} / C{gonet}: tombstones, instance id -> C{left} or C{timedout}
    and when, so a reconnecting watcher learns which it was: kept ten
    minutes (L{GONE_SECONDS}) and at most L{GONE_CAP} of them, the oldest
    evicted first, so they stay bounded whatever the churn

No script runs long: finds and listings read at most L{SCAN_CHUNK} names
(and L{RECORD_CHUNK} records) per call, and the client calls again from
where the last call stopped; a heartbeat extends at most a few hundred
leases per call.

Time comes from the Redis server (C{TIME}), never from the clients, so
clocks that disagree cannot expire a lease early. (A client's C{HGETALL}
lookup takes a record as live only while its expiry is clearly ahead of
the server's clock as the client last heard it; anything closer, it asks
this module's C{LOOKUP}, which decides on the server's own.) An expired
instance is removed and announced by the first script that meets it, in
the same atomic step, so its timeout is announced exactly once.

Someone else may write garbage under these keys: a C{n:NAME} key that is
not a hash is skipped (and reported, so the client can warn), and records
go back with the name and instance they are stored under, so the client can
skip one stored where it does not belong.
"""

import hashlib

import attrs

GONE_CAP = 10_000
"""Most tombstones a namespace keeps: one more evicts the oldest."""

GONE_SECONDS = 600
"""How long a tombstone is kept (if not evicted first)."""

SCAN_CHUNK = 400
"""Most names one find or listing call reads: each call stays well under 1 ms."""

RECORD_CHUNK = 50
"""A find or listing call stops once it has this many records."""


@attrs.frozen
class Script:
    """
    A Lua script and the SHA1 digest that EVALSHA names it by.
    """

    source: str
    sha: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        source = self.source
        for name, value in _CONSTANTS.items():
            source = source.replace(f"@{name}@", str(value))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "sha", hashlib.sha1(source.encode()).hexdigest())


_CONSTANTS = {
    "GONE_CAP": GONE_CAP,
    "GONE_SECONDS": GONE_SECONDS,
    "SCAN_CHUNK": SCAN_CHUNK,
    "RECORD_CHUNK": RECORD_CHUNK,
}


_COMMON = r"""
local P = ARGV[1]
local GONE_SECONDS = @GONE_SECONDS@
local GONE_CAP = @GONE_CAP@
local SCAN_CHUNK = @SCAN_CHUNK@
local RECORD_CHUNK = @RECORD_CHUNK@
local MAXSEQ = '9223372036854775807'
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A stored record without its lease expiry in front: the record as
-- stored before the expiry was kept there, and as events and replies carry it.
local function plain(rec)
  if string.byte(rec, 1) == 64 then -- '@'
    local space = string.find(rec, ' ', 1, true)
    if space then
      return string.sub(rec, space + 1)
    end
  end
  return rec
end
-- What the hash keeps for a record whose lease ends at ms.
local function expiring(rec, ms)
  return '@' .. ms .. ' ' .. plain(rec)
end
-- The expiry a hash entry carries, or nil (none, or garbage).
local function expiryOf(rec)
  return tonumber(string.match(rec, '^@(%d+) '))
end
-- Runs command on the hash of name's records: true and its reply, or
-- false if the key holds another type (written by someone else), so that
-- one bad key does not fail every script that meets it.
local function onRecords(name, command, ...)
  local reply = redis.pcall(command, P .. 'n:' .. name, ...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'WRONGTYPE', 1, true) then
      return false
    end
    error(reply)
  end
  return true, reply
end
-- Numbers events from 1. A counter that is garbage (not a count, another
-- type, spent) starts again from 1; if it may not be reset (an ACL without
-- SET), the event is numbered past every count, so that a watcher catching
-- up applies it rather than lose it.
local function announce(kind, rec)
  local seq = redis.pcall('INCR', P .. 'seq')
  if type(seq) ~= 'number' or seq < 1 then
    if redis.pcall('SET', P .. 'seq', 1).ok then
      seq = 1
    else
      seq = MAXSEQ
    end
  end
  redis.call('PUBLISH', P .. 'events', seq .. ' ' .. kind .. ' ' .. rec)
end
-- The event counter as stored (false if none), or -1 if the key holds
-- another type: the client checks it.
local function counter()
  local seq = redis.pcall('GET', P .. 'seq')
  if type(seq) == 'table' then
    return -1
  end
  return seq
end
local function drop(name, inst, kind, now)
  local hkey = P .. 'n:' .. name
  redis.call('ZREM', P .. 'exp', name .. '/' .. inst)
  local isHash, rec = onRecords(name, 'HGET', inst)
  if not isHash then
    return
  end
  redis.call('HDEL', hkey, inst)
  if redis.call('EXISTS', hkey) == 0 then
    redis.call('ZREM', P .. 'names', name)
  end
  if rec then
    redis.call('HSET', P .. 'gone', inst, kind)
    redis.call('ZADD', P .. 'gonet', now, inst)
    -- The oldest past the cap, if any (commands the documented ACL allows).
    for _, old in ipairs(redis.call('ZRANGE', P .. 'gonet', 0, -GONE_CAP - 1)) do
      redis.call('ZREM', P .. 'gonet', old)
      redis.call('HDEL', P .. 'gone', old)
    end
    announce(kind, plain(rec))
  end
end
-- A stored record without its expiry and freshness stamp (see
-- txmasse.registry.freshness).
local function body(rec)
  rec = plain(rec)
  if string.sub(rec, 1, 1) == '{' then
    return rec
  end
  local space = string.find(rec, ' ', 1, true)
  if not space then
    return rec
  end
  return string.sub(rec, space + 1)
end
local function expired(name, inst, now)
  local score = redis.call('ZSCORE', P .. 'exp', name .. '/' .. inst)
  return (not score) or tonumber(score) <= now
end
-- Appends the live records of name to out, each as one string saying
-- where it is stored: "#NAME:#INSTANCE:" (their lengths), NAME, INSTANCE,
-- then the JSON (one reply item a record: each item costs the client more
-- than its bytes). Given left, also the ms each has left. Times out the
-- expired ones it meets. A name whose key is not a hash goes to bad instead.
local function live(name, now, out, left, bad)
  local isHash, all = onRecords(name, 'HGETALL')
  if not isHash then
    bad[#bad + 1] = name
    return
  end
  for i = 1, #all, 2 do
    local score = redis.call('ZSCORE', P .. 'exp', name .. '/' .. all[i])
    if (not score) or tonumber(score) <= now then
      drop(name, all[i], 'timedout', now)
    else
      out[#out + 1] = #name .. ':' .. #all[i] .. ':' .. name .. all[i] .. plain(all[i + 1])
      if left then
        left[#left + 1] = tonumber(score) - now
      end
    end
  end
end
-- Does live() for the names starting with prefix that match pattern,
-- reading at most SCAN_CHUNK names after cursor (from the first if it is
-- ''), and stopping once it has RECORD_CHUNK records. Returns the last
-- name read, or '' if no name is left to read.
local function matching(prefix, pattern, cursor, now, out, left, bad)
  local low, high = '-', '+'
  if prefix ~= '' then
    low, high = '[' .. prefix, '[' .. prefix .. '\255'
  end
  if cursor ~= '' then
    low = '(' .. cursor
  end
  local names = redis.call('ZRANGEBYLEX', P .. 'names', low, high, 'LIMIT', 0, SCAN_CHUNK)
  local start = #out
  for i, name in ipairs(names) do
    if string.find(name, pattern) then
      live(name, now, out, left, bad)
      if #out - start >= RECORD_CHUNK and i < #names then
        return name
      end
    end
  end
  if #names < SCAN_CHUNK then
    return ''
  end
  return names[#names]
end
-- Appends to out the names live() skipped and the records it found, each
-- list after its length: bad count, name..., record count, record...
local function listed(out, records, bad)
  out[#out + 1] = #bad
  for _, name in ipairs(bad) do
    out[#out + 1] = name
  end
  out[#out + 1] = #records
  for _, value in ipairs(records) do
    out[#out + 1] = value
  end
  return out
end
"""

# ARGV: prefix, name, instance, record JSON, ttl in ms.
# Registers, heartbeats, updates, and writes back a record the store lost.
PUT = Script(
    _COMMON
    + r"""
local name, inst, rec, ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = nowMs()
local isHash, old = onRecords(name, 'HGET', inst)
if not isHash then
  return redis.error_reply(
    'ERR ' .. P .. 'n:' .. name .. ' is not a hash of records: cannot register there')
end
if old and expired(name, inst, now) then
  drop(name, inst, 'timedout', now)
  old = false
end
redis.call('HSET', P .. 'n:' .. name, inst, expiring(rec, now + ttl))
redis.call('ZADD', P .. 'exp', now + ttl, name .. '/' .. inst)
redis.call('ZADD', P .. 'names', 0, name)
redis.call('HDEL', P .. 'gone', inst)
redis.call('ZREM', P .. 'gonet', inst)
if not old then
  announce('joined', rec)
elseif body(old) ~= body(rec) then
  announce('updated', rec)
end
return 1
"""
)

# ARGV: prefix, name, instance. Releases a lease; late ones count as timed out.
REMOVE = Script(
    _COMMON
    + r"""
local name, inst = ARGV[2], ARGV[3]
local now = nowMs()
local isHash, present = onRecords(name, 'HEXISTS', inst)
if not isHash or present == 0 then
  return 0
end
if expired(name, inst, now) then
  drop(name, inst, 'timedout', now)
else
  drop(name, inst, 'left', now)
end
return 1
"""
)

# ARGV: prefix, name. Returns {the server's clock (ms), bad count,
# name..., record count, placed record...}.
LOOKUP = Script(
    _COMMON
    + r"""
local records, bad, now = {}, {}, nowMs()
live(ARGV[2], now, records, nil, bad)
return listed({now}, records, bad)
"""
)

# ARGV: prefix, literal prefix of the pattern, Lua pattern, cursor (''
# to start). Reads only the names under the literal prefix, at most
# SCAN_CHUNK of them. Returns {event counter, cursor to go on from ('' when
# done), bad count, name..., record count, placed record...}.
FIND = Script(
    _COMMON
    + r"""
local records, bad = {}, {}
local cursor = matching(ARGV[2], ARGV[3], ARGV[4], nowMs(), records, nil, bad)
return listed({counter(), cursor}, records, bad)
"""
)

# ARGV: prefix, instance... Returns the tombstone of each (or nil).
GONE = Script(
    _COMMON
    + r"""
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGET', P .. 'gone', ARGV[i])
end
return out
"""
)

# ARGV: prefix, literal prefix of the pattern, Lua pattern, cursor. Returns
# {cursor, bad count, name..., record count, placed record..., ms left on
# each lease...}.
LEASES = Script(
    _COMMON
    + r"""
local records, left, bad = {}, {}, {}
local cursor = matching(ARGV[2], ARGV[3], ARGV[4], nowMs(), records, left, bad)
local out = listed({cursor}, records, bad)
for _, ms in ipairs(left) do
  out[#out + 1] = ms
end
return out
"""
)

# ARGV: prefix, ttl in ms, stride (2 or 3), then name and instance of each
# lease (and with stride 3 its new freshness stamp). A heartbeat: extends
# the live leases named, without sending their records (it rewrites the
# expiry in front of each at every other heartbeat, and with stride 3 the
# stamp at each). Returns the
# positions (from 1) of those it could not extend: lost by the store, or
# expired (timed out here first); the client writes them back.
EXTEND = Script(
    _COMMON
    + r"""
local ttl, stride = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = nowMs()
local exp = P .. 'exp'
local missing, scored = {}, {}
for i = 4, #ARGV - stride + 1, stride do
  local name, inst = ARGV[i], ARGV[i + 1]
  local member = name .. '/' .. inst
  local score = redis.call('ZSCORE', exp, member)
  local live = score and tonumber(score) > now
  if live then
    local isHash, rec = onRecords(name, 'HGET', inst)
    live = isHash and rec
    if live then
      local kept = expiryOf(rec)
      if stride == 3 then
        rec = ARGV[i + 2] .. ' ' .. body(rec) -- a new stamp
        kept = nil
      end
      -- The hash's expiry may lag the lease's, never pass it: rewritten
      -- once less than half a ttl ahead, so every other heartbeat.
      if not kept or kept < now + ttl / 2 or kept > now + ttl then
        redis.call('HSET', P .. 'n:' .. name, inst, expiring(rec, now + ttl))
      end
    end
  end
  if live then
    scored[#scored + 1] = now + ttl
    scored[#scored + 1] = member
  else
    if score then
      drop(name, inst, 'timedout', now)
    end
    missing[#missing + 1] = (i - 4) / stride + 1
  end
end
if #scored > 0 then
  redis.call('ZADD', exp, 'XX', unpack(scored))
end
return missing
"""
)

# ARGV: prefix, most to remove. Times out expired leases, trims old
# tombstones. Returns {number timed out, ms until the next expiry or -1,
# the server's clock (ms)}.
SWEEP = Script(
    _COMMON
    + r"""
local now = nowMs()
local limit = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  local slash = string.find(member, '/', 1, true)
  if slash then
    drop(string.sub(member, 1, slash - 1), string.sub(member, slash + 1), 'timedout', now)
  else
    redis.call('ZREM', P .. 'exp', member)
  end
end
local cutoff = now - GONE_SECONDS * 1000
local old = redis.call('ZRANGEBYSCORE', P .. 'gonet', '-inf', cutoff, 'LIMIT', 0, limit)
for _, inst in ipairs(old) do
  redis.call('HDEL', P .. 'gone', inst)
  redis.call('ZREM', P .. 'gonet', inst)
end
local first = redis.call('ZRANGE', P .. 'exp', 0, 0, 'WITHSCORES')
local nextMs = -1
if #first == 2 then
  nextMs = math.max(0, tonumber(first[2]) - now)
end
return {#due, nextMs, now}
"""
)

# ARGV: prefix, then NAME, INSTANCE pairs. Returns, for each pair, its
# record JSON if it is stored and live (else nil), then its tombstone (or
# nil): a watcher checks the events it hears against them (see
# registry/checking.py). Times out the expired ones it meets.
STORED = Script(
    _COMMON
    + r"""
local now = nowMs()
local out = {}
for i = 2, #ARGV - 1, 2 do
  local name, inst = ARGV[i], ARGV[i + 1]
  local isHash, rec = onRecords(name, 'HGET', inst)
  if isHash and rec and expired(name, inst, now) then
    drop(name, inst, 'timedout', now)
    rec = false
  end
  out[#out + 1] = (isHash and rec and plain(rec)) or false
  out[#out + 1] = redis.call('HGET', P .. 'gone', inst)
end
return out
"""
)

ALL = (PUT, EXTEND, REMOVE, LOOKUP, FIND, GONE, LEASES, SWEEP, STORED)
