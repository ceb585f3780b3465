"""The Lua scripts of a board, and their protocol: the KEYS and ARGV each takes, what each
answers.

Every script touches the keys of one board only (one hash tag, one cluster slot) and opens with
the one test of "the board exists" (see :mod:`store.boards`). :class:`store.boards.BoardStore`
registers and calls them; the statuses the apply answers live in :mod:`store.board_results`.
"""

from __future__ import annotations

from contract.keys import SEQ_CEILING, SEQ_DIGITS
from store.board_results import ALREADY_APPLIED, APPLIED, CLOSED, MISSING

# The one test of "the board exists", shared by every script below.
_EXISTS_FN = """
local function board_exists(zset, version, members, empty)
  if redis.call('EXISTS', version) == 0 then return false end
  if redis.call('EXISTS', empty) == 1 then return true end
  return redis.call('EXISTS', zset, members) == 2
end
"""

# KEYS: zset, version, members, empty. Returns 1 when the board exists.
EXISTS = _EXISTS_FN + "return board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[4]) and 1 or 0"

# KEYS: zset, version, members, guard, empty, closed. ARGV: userId, increment, guard ttl (s).
# Returns {status, total, seq[, guard]}: seq is the board version at which the user reached total.
# The guard holds "<version>:<total>" (the total this action reached): a retried batch learns
# from it what an action it applied before a crash did (the audit log). A rebuild's guard
# holds the version alone (the rebuild counted that action). A closed board (ingest.seasons)
# answers CLOSED to a new action, but ALREADY_APPLIED to one applied before the close: a batch
# retried after a crash between its apply and its save still saves that board's final total.
APPLY = (
    _EXISTS_FN
    + f"""
if not board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[5]) then return {{{MISSING}, 0, 0}} end
local old = redis.call('HGET', KEYS[3], ARGV[1])
local total = 0
local seq = 0
if old then
  total = tonumber(redis.call('ZSCORE', KEYS[1], old) or '0')
  seq = {SEQ_CEILING} - tonumber(string.sub(old, 1, {SEQ_DIGITS}))
end
local guard = redis.call('GET', KEYS[4])
if guard then return {{{ALREADY_APPLIED}, total, seq, guard}} end
if redis.call('EXISTS', KEYS[6]) == 1 then return {{{CLOSED}, 0, 0}} end
local version = redis.call('INCR', KEYS[2])
total = total + tonumber(ARGV[2])
if old then redis.call('ZREM', KEYS[1], old) end
local member = string.format('%0{SEQ_DIGITS}d', {SEQ_CEILING} - version) .. ARGV[1]
redis.call('ZADD', KEYS[1], total, member)
redis.call('HSET', KEYS[3], ARGV[1], member)
redis.call('DEL', KEYS[5])
redis.call('SET', KEYS[4], version .. ':' .. total, 'EX', tonumber(ARGV[3]))
return {{{APPLIED}, total, version}}
"""
)

# KEYS: zset, version, members, empty. ARGV: limit. Returns {version, member1, score1, ...}
# atomically, or {-1} when the board is missing.
TOP = (
    _EXISTS_FN
    + """
if not board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[4]) then return {-1} end
local version = redis.call('GET', KEYS[2])
local rows = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
table.insert(rows, 1, tonumber(version))
return rows
"""
)

# KEYS: zset, version, members, empty. ARGV: userId, above, below.
# Returns {version, rank0 or -1, member1, score1, ...} for the window around the user, or {-1}
# when the board is missing.
AROUND = (
    _EXISTS_FN
    + """
if not board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[4]) then return {-1} end
local version = redis.call('GET', KEYS[2])
local member = redis.call('HGET', KEYS[3], ARGV[1])
if not member then return {tonumber(version), -1} end
local rank = redis.call('ZREVRANK', KEYS[1], member)
if not rank then return {tonumber(version), -1} end
local first = math.max(0, rank - tonumber(ARGV[2]))
local rows = redis.call('ZREVRANGE', KEYS[1], first, rank + tonumber(ARGV[3]), 'WITHSCORES')
table.insert(rows, 1, first)
table.insert(rows, 1, rank)
table.insert(rows, 1, tonumber(version))
return rows
"""
)

# KEYS: zset, version, members, empty. ARGV: userId1, userId2, ...
# Returns {version, rank0, score, scoreAbove, ...} with three values per user (rank0 -1 and ''
# scores when unranked; scoreAbove '' at #1), or {-1} when the board is missing. Per user: HGET
# (its member), ZREVRANK, and one ZREVRANGE of the member one rank up and the user's own row
# (both scores in one command; at #1 the own row alone).
RANKS = (
    _EXISTS_FN
    + """
if not board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[4]) then return {-1} end
local out = {tonumber(redis.call('GET', KEYS[2]))}
for i = 1, #ARGV do
  local member = redis.call('HGET', KEYS[3], ARGV[i])
  local rank = member and redis.call('ZREVRANK', KEYS[1], member)
  if rank then
    out[#out + 1] = rank
    if rank > 0 then
      local rows = redis.call('ZREVRANGE', KEYS[1], rank - 1, rank, 'WITHSCORES')
      out[#out + 1] = rows[4]
      out[#out + 1] = rows[2]
    else
      out[#out + 1] = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
      out[#out + 1] = ''
    end
  else
    out[#out + 1] = -1
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
end
return out
"""
)

# KEYS: zset, version, members, staging zset, staging members, empty, guard1, guard2, ...
# ARGV: version, force (0/1), guard ttl (s), rows staged, total1, total2, ... (one per guard;
# '' = unknown). Returns -1, changing nothing, when rows were staged but the staging keys are
# gone (Redis flushed or restarted empty between staging and commit): committing would publish
# an empty board and mark its counted actions applied, losing their points.
# Returns the committed version, or 0 when the board came back meanwhile (without force). The
# guards mark actions the staged totals already count, with the total each reached (see APPLY).
# Staging keys carry a TTL (a rebuilder that dies leaves nothing behind); RENAME moves the TTL
# along, so the committed keys are made persistent. A board committed without rows gets the
# empty marker, so it exists.
COMMIT_REBUILD = (
    _EXISTS_FN
    + """
if ARGV[2] == '0' and board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[6]) then
  redis.call('DEL', KEYS[4], KEYS[5])
  return 0
end
if tonumber(ARGV[4]) > 0 and redis.call('EXISTS', KEYS[4], KEYS[5]) < 2 then
  redis.call('DEL', KEYS[4], KEYS[5])
  return -1
end
local version = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current > version then version = current end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[6])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[1])
  redis.call('PERSIST', KEYS[1])
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('RENAME', KEYS[5], KEYS[3])
  redis.call('PERSIST', KEYS[3])
end
if redis.call('EXISTS', KEYS[1], KEYS[3]) < 2 then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SET', KEYS[6], '1')
end
redis.call('SET', KEYS[2], version)
for i = 7, #KEYS do
  local reached = ARGV[i - 2]
  local value = version
  if reached and reached ~= '' then value = version .. ':' .. reached end
  redis.call('SET', KEYS[i], value, 'EX', tonumber(ARGV[3]))
end
return version
"""
)

# KEYS: zset, version, members, empty, closed. ARGV: limit. Closes a period board: sets the closed
# marker (every later apply answers CLOSED) and returns the final {version, ranked users, member1,
# score1, ...} in the same step, so no apply lands between the two; {-1} when the board is missing.
FREEZE = (
    _EXISTS_FN
    + """
if not board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[4]) then return {-1} end
redis.call('SET', KEYS[5], '1')
local rows = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
table.insert(rows, 1, redis.call('ZCARD', KEYS[1]))
table.insert(rows, 1, tonumber(redis.call('GET', KEYS[2])))
return rows
"""
)
