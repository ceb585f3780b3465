"""Redis Streams upkeep shared by the API and the consumers: the backlog, and trimming.

Both take a stream's name, so a stream partitioned into several keys is measured and trimmed key
by key. One stream key is one Redis Cluster slot, so each script touches one slot.

- :func:`trim_done` removes the entries every consumer group of the stream has delivered AND
  acknowledged (``XTRIM MINID`` to the oldest entry some group still needs), so a stream holds
  its backlog and little more.
- :class:`BacklogGauge` reads a stream's backlog (what the slowest group has not finished:
  undelivered + pending), kept per process for a moment so a burst of writes shares one read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

# KEYS: stream. Returns the entries its slowest group has not finished: the group's lag (entries
# not yet delivered) plus its pending entries (delivered, not acknowledged). Without a group yet,
# every entry waits; where Redis cannot tell the lag (a group created past deleted entries, an
# XDEL), the stream's length bounds it, pending entries included.
_BACKLOG = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local length = redis.call('XLEN', KEYS[1])
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return length end
local worst = 0
for _, group in ipairs(groups) do
  local g = {}
  for i = 1, #group, 2 do g[group[i]] = group[i + 1] end
  local backlog = length
  if type(g['lag']) == 'number' then backlog = g['lag'] + g['pending'] end
  if backlog > worst then worst = backlog end
end
return worst
"""

# KEYS: stream. Removes the entries before the oldest one some group still needs: its oldest
# pending entry, else its last delivered one (kept: one processed entry, so no arithmetic on ids).
# Nothing without a group. Returns the number of entries removed. Atomic, so a group cannot move
# between the reading and the trimming.
_TRIM_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, seq
end
-- ids compared as decimal strings: a millisecond or sequence part may exceed a Lua number's precision
local function less_num(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if ams ~= bms then return less_num(ams, bms) end
  return less_num(aseq, bseq)
end
local oldest = nil
for _, group in ipairs(groups) do
  local g = {}
  for i = 1, #group, 2 do g[group[i]] = group[i + 1] end
  local needed = g['last-delivered-id']
  if g['pending'] > 0 then
    local first = redis.call('XPENDING', KEYS[1], g['name'])[2]
    if less(first, needed) then needed = first end
  end
  if oldest == nil or less(needed, oldest) then oldest = needed end
end
return redis.call('XTRIM', KEYS[1], 'MINID', oldest)
"""


async def trim_done(redis: Any, stream: str) -> int:
    """Remove the entries of ``stream`` that every consumer group has delivered and acknowledged.
    Returns how many were removed. Safe at any time, from any number of processes."""
    removed: int = await redis.eval(_TRIM_DONE, 1, stream)
    return removed


async def backlog(redis: Any, stream: str) -> int:
    """The entries of ``stream`` its slowest consumer group has not finished (one round trip)."""
    found: int = await redis.eval(_BACKLOG, 1, stream)
    return found


class BacklogGauge:
    """Stream backlogs as last read, at most ``max_age_s`` old; concurrent callers share one read."""

    def __init__(self, redis: Any, *, max_age_s: float) -> None:
        self.redis = redis
        self.max_age_s = max_age_s
        self._read: dict[str, tuple[float, int]] = {}  # stream -> (monotonic time, backlog)
        self._inflight: dict[str, asyncio.Future[int]] = {}

    async def of(self, stream: str) -> int:
        """The backlog of ``stream``. Raises what Redis raises (the next call reads again)."""
        hit = self._read.get(stream)
        if hit is not None and time.monotonic() - hit[0] < self.max_age_s:
            return hit[1]
        pending = self._inflight.get(stream)
        if pending is None:
            pending = asyncio.ensure_future(self._measure(stream))
            self._inflight[stream] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(stream, None))
        # shield: one caller's cancellation must not cancel the read the others wait for
        return await asyncio.shield(pending)

    async def total(self, streams: Sequence[str]) -> int:
        """The backlogs of ``streams`` (the partitions of one stream) summed, read concurrently."""
        if len(streams) == 1:
            return await self.of(streams[0])
        return sum(await asyncio.gather(*(self.of(stream) for stream in streams)))

    async def _measure(self, stream: str) -> int:
        started = time.monotonic()
        found = await backlog(self.redis, stream)
        self._read[stream] = (started, found)
        return found
