"""The Lua steps of watch progress and the Redis hash they keep: a ping, an explicit completion,
and the flusher's check that a hash it wrote is still at the revision it read.

Redis hash ``progress:{user:<id>}:<courseId>`` (one cluster slot per user):

- ``lecture``, ``pos``, ``seq``: the resume point, last-writer-wins by ``seq`` (an older seq
  never moves it; a repeat of the current seq is a retransmission and changes nothing, except
  that a device that had not sent it — a resend on a new connection — counts on from it; both
  are acked);
- ``i:<lectureId>``: what was actually watched, merged ``start-end`` intervals in seconds
  rounded down to 0.1 s (``0-12.5,20-30``), at most ``MAX_INTERVALS`` of them;
- ``w:<lectureId>``: the seconds those intervals cover (monotonic: intervals only grow);
- ``f:<lectureId>``: when the first counted interval of the lecture began (epoch ms);
- ``x:<lectureId>``: how many implausible advances (faster than real time) the lecture saw —
  seeks forward and cheating alike; a signal for anomaly rules, it earns nothing;
- ``c:<lectureId>``: set once, when the lecture completed (epoch ms);
- ``p:<lectureId>``: the completion is not yet on the completion stream (hole 1): set in the
  same Lua step as ``c:``, holding who completed it (``tz``, ``name``, ``region`` as JSON);
  deleted only after the XADD succeeded. The flusher emits any left behind, with the same
  deterministic event id, so a crash between the two steps loses nothing and doubles nothing;
- ``rev``: bumped on every change, so the flusher can tell "flushed" from "changed since".

Coverage comes from consecutive pings of ONE device (a WebSocket connection, or the HTTP
client's ``deviceId``), kept in ``device:{user:<id>}:<device>`` (lecture, position, time, seq,
credit; it expires after ``coverage_max_gap_s``, so a ping after a long silence starts afresh).
The advance from the device's previous ping on the same lecture counts as watched only when it is
within the device's credit: ``max_playback_rate`` seconds per second of wall-clock time since
that ping, plus the slack left over from earlier pings (at most ``coverage_slack_s``: it absorbs
network jitter; spent, not granted per ping, so a burst of small steps cannot add up). A seek is
an implausible advance: the resume point moves, nothing is covered. A lecture completes by itself
once ``complete_threshold`` of its duration is covered AND that much could have been watched
since its first counted second at ``max_playback_rate`` plus one slack — so many devices (or
connections) in parallel, each with its own credit, still cannot complete faster than real time.

A locked lecture (its predecessor in course order not completed) stores the resume point but
covers nothing and cannot complete. The lock is read from the hash's ``c:`` fields; a hash that
expired (24 h after a flush) is first refilled from MongoDB's ``progress`` document
(``hydration``, passed by the caller): without it a step answers "missing" instead of applying.

A changed hash loses its TTL (PERSIST) until the flusher has written it to MongoDB and
restored the TTL (:data:`FLUSHED`), so expiry never drops an unflushed position.
:class:`store.progress.ProgressStore` registers and calls these scripts.
"""

from __future__ import annotations

from contract import keys
from contract.progress import MAX_INTERVALS

# Lua shared by the ping and the explicit completion.
_LIB = f"""
local function split(s)
  local out = {{}}
  for part in string.gmatch(s .. '\\31', '([^\\31]*)\\31') do out[#out + 1] = part end
  return out
end
-- A missing hash is refilled from MongoDB first (``hydration``: field, value pairs); answers
-- false when the caller must load them and call again.
local function hydrated(h, hydration, ttl)
  if redis.call('EXISTS', h) == 1 then return true end
  if hydration == '' then return false end
  local pairs_ = split(hydration)
  redis.call('HSET', h, unpack(pairs_))
  redis.call('EXPIRE', h, tonumber(ttl))  -- a change PERSISTs it; a refused call leaves no litter
  return true
end
-- Down to 0.1 s (the epsilon undoes binary fractions: 2.3 * 10 = 22.999...): never past the
-- position pinged, and adjacent intervals still meet exactly.
local function round1(x) return math.floor(x * 10 + 1e-6) / 10 end
local function fmt(x) return (string.gsub(string.format('%.1f', x), '%.0$', '')) end
-- ``s`` (merged intervals, covering ``total`` seconds) with [a, b] added: the new string and the
-- seconds covered, or nil when that would exceed the interval budget.
local function merge(s, total, a, b)
  a, b = round1(a), round1(b)
  -- The common case: playback goes on inside the last interval; extend it in place.
  local head, x, y = string.match(s, '^(.-)([%d%.]+)-([%d%.]+)$')
  x, y = tonumber(x), tonumber(y)
  if x and a >= x and a <= y then
    if b <= y then return s, total end
    return head .. fmt(x) .. '-' .. fmt(b), round1(total + b - y)
  end
  local list = {{}}
  for x, y in string.gmatch(s, '([%d%.]+)-([%d%.]+)') do list[#list + 1] = {{tonumber(x), tonumber(y)}} end
  list[#list + 1] = {{a, b}}
  table.sort(list, function(p, q) return p[1] < q[1] end)
  local out = {{}}
  for _, iv in ipairs(list) do
    local top = out[#out]
    if top and iv[1] <= top[2] then
      if iv[2] > top[2] then top[2] = iv[2] end
    else
      out[#out + 1] = {{iv[1], iv[2]}}
    end
  end
  if #out > {MAX_INTERVALS} then return nil end
  local parts, total = {{}}, 0
  for _, iv in ipairs(out) do
    total = total + iv[2] - iv[1]
    parts[#parts + 1] = fmt(iv[1]) .. '-' .. fmt(iv[2])
  end
  return table.concat(parts, ','), round1(total)
end
-- Whether ``lecture`` is covered enough to complete at ``now``: ``need`` seconds covered, and
-- that much watchable at ``rate`` since its first counted second (plus ``slack``).
local function covered(h, lecture, need, now, rate, slack)
  if tonumber(redis.call('HGET', h, 'w:' .. lecture) or '0') < need then return false end
  local first = tonumber(redis.call('HGET', h, 'f:' .. lecture) or now)
  return (now - first) / 1000 * rate + slack >= need
end
local function locked(h, prev)
  return prev ~= '' and redis.call('HEXISTS', h, 'c:' .. prev) == 0
end
"""

# KEYS: progress hash, presence counter, device state. ARGV[1]: the ping's fields joined by char 31
# (one argument keeps redis-py's per-argument packing off the hot path): lecture, position, seq,
# duration or '', threshold, now ms, userId, courseId, origin, minimum presence to publish,
# predecessor lecture or '', max playback rate, slack s, max gap ms, ttl s, the publish command
# (PUBLISH, or SPUBLISH on a cluster: the user's channel is in the slot of KEYS). ARGV[2]: who (JSON, kept
# in ``p:`` on completion). ARGV[3]: hydration pairs or ''.
# Returns {moved, completed, missing, implausible, first counted ms of the lecture}.
# The resume point moving is published on the user's channel only when another connection of the
# user may be listening (presence counter >= the minimum).
PING = (
    _LIB
    + f"""
local f = split(ARGV[1])
local lecture, pos_s, seq_s, duration_s, threshold, now_s = unpack(f, 1, 6)
local user, course, origin, min_presence = unpack(f, 7, 10)
local prev, rate, slack, gap_ms, ttl, publish = f[11], tonumber(f[12]), tonumber(f[13]), f[14], f[15], f[16]
local h, dev = KEYS[1], KEYS[3]
if not hydrated(h, ARGV[3], ttl) then return {{0, 0, 1, 0, 0}} end
local pos, seq, now = tonumber(pos_s), tonumber(seq_s), tonumber(now_s)
-- Everything this step reads of the hash, in one call; everything it writes, in one HSET.
local got = redis.call('HMGET', h, 'seq', 'rev', 'c:' .. lecture, 'i:' .. lecture, 'w:' .. lecture,
  'f:' .. lecture, 'c:' .. prev)
local current = tonumber(got[1] or '-1')
if seq == current then
  -- A retransmission changes nothing, but a resend on a new connection is that device's first
  -- ping: what it watches next counts from here.
  local seen = redis.call('GET', dev)
  if not seen or seq > tonumber(split(seen)[4]) then
    local state = lecture .. '\\31' .. pos_s .. '\\31' .. now_s .. '\\31' .. seq_s .. '\\31' .. slack
    redis.call('SET', dev, state, 'PX', gap_ms)
  end
  return {{0, 0, 0, 0, 0}}
end
local sets = {{}}
local function put(field, value) sets[#sets + 1] = field; sets[#sets + 1] = value end
local changed, moved, completed, implausible = 0, 0, 0, 0
if seq > current then
  put('lecture', lecture); put('pos', pos_s); put('seq', seq_s)
  changed, moved = 1, 1
end
local is_locked = prev ~= '' and not got[7]
-- What this device watched since its previous ping.
local last = redis.call('GET', dev)
local credit, from = slack, nil
local newer = true
if last then
  local l = split(last)
  if now - tonumber(l[3]) > tonumber(gap_ms) then
    -- silent too long (the key's TTL runs on Redis's clock; this on the callers'): start afresh
  elseif seq <= tonumber(l[4]) then
    newer = false
  else
    local allowed = tonumber(l[5]) + math.max(0, now - tonumber(l[3])) / 1000 * rate
    local advance = pos - tonumber(l[2])
    credit = math.min(slack, allowed)
    if l[1] == lecture and advance > 0 and not is_locked then
      if advance <= allowed then
        from, credit = {{tonumber(l[2]), tonumber(l[3])}}, math.min(slack, allowed - advance)
      else
        implausible = 1
        redis.call('HINCRBY', h, 'x:' .. lecture, 1)
        changed = 1
      end
    end
  end
end
if newer then
  redis.call('SET', dev, lecture .. '\\31' .. pos_s .. '\\31' .. now_s .. '\\31' .. seq_s .. '\\31' .. credit,
    'PX', gap_ms)
end
local covered_s, first = tonumber(got[5] or '0'), got[6]
if from then
  local merged, total = merge(got[4] or '', covered_s, from[1], pos)
  if merged then
    covered_s = total
    put('i:' .. lecture, merged); put('w:' .. lecture, fmt(total))
    if not first then
      first = string.format('%d', from[2])
      put('f:' .. lecture, first)
    end
    changed = 1
  end
end
-- Completes at the threshold covered, and no sooner than real time allows since the first
-- counted second (see ``covered`` in the library above).
local duration = tonumber(duration_s)
if duration and duration > 0 and not is_locked and not got[3] then
  local need = tonumber(threshold) * duration
  if covered_s >= need and (now - tonumber(first or now_s)) / 1000 * rate + slack >= need then
    put('c:' .. lecture, now_s); put('p:' .. lecture, ARGV[2])
    completed, changed = 1, 1
  end
end
if changed == 1 then
  put('rev', string.format('%d', (tonumber(got[2]) or 0) + 1)); put('upd', now_s)
  redis.call('HSET', h, unpack(sets))
  redis.call('PERSIST', h)
end
if moved == 1 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(min_presence) then
  -- ids are restricted to [A-Za-z0-9_-], so they need no JSON escaping
  local event = '{{"courseId":"' .. course .. '","lectureId":"' .. lecture .. '","position":' .. pos_s
    .. ',"seq":' .. seq_s .. ',"origin":"' .. origin .. '"}}'
  redis.call(publish, '{keys.USER_CHANNEL_PREFIX}' .. user .. '{keys.CHANNEL_END}', event)
end
return {{moved, completed, 0, implausible, completed == 1 and tonumber(first or '0') or 0}}
"""
)

# KEYS: progress hash. ARGV: lecture, now ms, predecessor or '', '1' when the lecture is completable
# without video, seconds to cover, rate, slack s, who (JSON), ttl s, hydration pairs or ''.
# Returns {status, first counted ms}; status: 1 newly completed, 0 already, -1 hash missing (load
# the hydration and call again), -2 locked, -3 not covered.
COMPLETE = (
    _LIB
    + """
local h, lecture, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
if not hydrated(h, ARGV[10], ARGV[9]) then return {-1, 0} end
if redis.call('HEXISTS', h, 'c:' .. lecture) == 1 then return {0, 0} end
if locked(h, ARGV[3]) then return {-2, 0} end
local need, rate, slack = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if ARGV[4] ~= '1' and not covered(h, lecture, need, now, rate, slack) then return {-3, 0} end
redis.call('HSET', h, 'c:' .. lecture, ARGV[2], 'p:' .. lecture, ARGV[8])
redis.call('HINCRBY', h, 'rev', 1)
redis.call('HSET', h, 'upd', ARGV[2])
redis.call('PERSIST', h)
return {1, tonumber(redis.call('HGET', h, 'f:' .. lecture) or '0')}
"""
)

# KEYS: progress hash. ARGV: flushed rev, ttl s. Returns 1 when the hash is still at that rev
# (it may expire again), 0 when it changed since (it must stay dirty).
FLUSHED = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if rev and rev ~= ARGV[1] then return 0 end
if rev then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""
