"""The Redis side of a board: atomic idempotent apply, reads, and the rebuild commit.

Every operation touches the keys of one board only (one hash tag, one cluster slot), so it
runs unchanged on Redis Cluster. A board "exists" while its version key exists AND it has its
ranking (the ZSET and its members hash) or the marker of a board that has no member (set by a
rebuild that found none, cleared by the first apply). A version without either means Redis lost
the ranking (a DEL, an eviction), so "empty" and "lost" never look alike. Every script, and
:meth:`BoardStore.exists`, use this one test; an apply on a missing board answers
:data:`MISSING` and the caller rebuilds it from MongoDB first, reads report ``exists=False``.

Callers pass a ``redis.asyncio.Redis`` (or ``RedisCluster``) created with
``decode_responses=True``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contract.errors import Unavailable
from contract.keys import SEQ_CEILING, SEQ_DIGITS, BoardKeys, board_keys, decode_member, user_profile
from store.clients import is_cluster, queue_script

APPLIED, ALREADY_APPLIED, MISSING = 1, 0, -1
# Users one rank script call looks up at most (3 commands each): Redis runs a script to its end,
# so a tick's lookups of a board go as several calls in the same round trip.
STANDINGS_PER_CALL = 500
# On a Redis Cluster, the script calls of one standings read in flight at once (each its own command).
CLUSTER_CALLS_IN_FLIGHT = 16
# A period board that closed (see ingest.seasons): its standings are final, the step changes nothing.
CLOSED = -2
STAGING_TTL_S = 3600

# The one test of "the board exists", shared by every script below.
_EXISTS_FN = """
local function board_exists(zset, version, members, empty)
  if redis.call('EXISTS', version) == 0 then return false end
  if redis.call('EXISTS', empty) == 1 then return true end
  return redis.call('EXISTS', zset, members) == 2
end
"""

# KEYS: zset, version, members, empty. Returns 1 when the board exists.
_EXISTS = _EXISTS_FN + "return board_exists(KEYS[1], KEYS[2], KEYS[3], KEYS[4]) and 1 or 0"

# KEYS: zset, version, members, guard, empty, closed. ARGV: userId, increment, guard ttl (s).
# Returns {status, total, seq[, guard]}: seq is the board version at which the user reached total.
# The guard holds "<version>:<total>" (the total this action reached): a retried batch learns
# from it what an action it applied before a crash did (the audit log). A rebuild's guard
# holds the version alone (the rebuild counted that action). A closed board (ingest.seasons)
# answers CLOSED to a new action, but ALREADY_APPLIED to one applied before the close: a batch
# retried after a crash between its apply and its save still saves that board's final total.
_APPLY = (
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
_TOP = (
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
_AROUND = (
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
_RANKS = (
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
# guards mark actions the staged totals already count, with the total each reached (see _APPLY).
# Staging keys carry a TTL (a rebuilder that dies leaves nothing behind); RENAME moves the TTL
# along, so the committed keys are made persistent. A board committed without rows gets the
# empty marker, so it exists.
_COMMIT_REBUILD = (
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
_FREEZE = (
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


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyResult:
    board: str
    status: int
    total: int
    seq: int
    # The total the action reached when it was applied: ``total`` for APPLIED; for
    # ALREADY_APPLIED what its guard remembers (None when a rebuild counted it).
    reached: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One ranked member: rank is 1-based."""

    rank: int
    user_id: str
    score: int


@dataclasses.dataclass(frozen=True, slots=True)
class Top:
    board: str
    version: int
    rows: list[Row]
    exists: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Final:
    """A closed board's standings: its top rows and how many users it ranked."""

    board: str
    version: int
    ranked: int
    rows: list[Row]


@dataclasses.dataclass(frozen=True, slots=True)
class Around:
    board: str
    version: int
    exists: bool
    self_row: Row | None
    above: list[Row]
    below: list[Row]


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """A user's place on a board: 1-based rank, score, and the score of the member one rank up
    (None at #1). All None while the user is not ranked."""

    rank: int | None
    score: int | None
    above: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Standings:
    """The places of several users on one board, read atomically at ``version``.

    ``unread``: on a Redis Cluster, the users of a call whose node did not answer (a master down,
    its slots moving): no places then; ask again later. Empty otherwise.
    """

    board: str
    version: int
    exists: bool
    places: dict[str, Standing]
    unread: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """A member's display details, and the region whose board their scores go to."""

    name: str
    avatar_url: str | None
    region: str | None = None


def _reached(reply: Sequence[Any]) -> int | None:
    if int(reply[0]) == APPLIED:
        return int(reply[1])
    if len(reply) > 3:
        _, sep, total = str(reply[3]).partition(":")
        if sep:
            return int(total)
    return None


def _rows(flat: Sequence[Any], first_rank: int) -> list[Row]:
    rows = []
    for i in range(0, len(flat), 2):
        user_id, _ = decode_member(str(flat[i]))
        rows.append(Row(rank=first_rank + i // 2, user_id=user_id, score=int(float(flat[i + 1]))))
    return rows


def _standings(board: str, users: Sequence[str], reply: Sequence[Any]) -> Standings:
    version = int(reply[0])
    if version < 0:
        return Standings(board=board, version=0, exists=False, places={})
    places = {}
    for i, user_id in enumerate(users):
        rank0, score, above = reply[1 + 3 * i : 4 + 3 * i]
        if int(rank0) < 0:
            places[user_id] = Standing(rank=None, score=None, above=None)
        else:
            places[user_id] = Standing(
                rank=int(rank0) + 1, score=int(float(score)), above=int(float(above)) if above != "" else None
            )
    return Standings(board=board, version=version, exists=True, places=places)


class BoardStore:
    """Board operations on one Redis client (``decode_responses=True``)."""

    def __init__(self, redis: Any, *, guard_ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self._guard_ttl_s = guard_ttl_s
        self._apply = redis.register_script(_APPLY)
        self._top = redis.register_script(_TOP)
        self._around = redis.register_script(_AROUND)
        self._commit = redis.register_script(_COMMIT_REBUILD)
        self._exists = redis.register_script(_EXISTS)
        self._ranks = redis.register_script(_RANKS)
        self._freeze = redis.register_script(_FREEZE)

    async def apply_many(self, items: Iterable[tuple[str, str, str, int]]) -> list[ApplyResult]:
        """Apply (board, eventId, userId, increment) steps in one pipelined round trip.

        ``eventId`` names the action on the board's applied-action guard: the action's
        ``score_events`` id (``keys.user_action(userId, actionId)``; a bare actionId for events
        stored before actionIds were per user). Each step is atomic and idempotent per
        (board, eventId). A step on a missing board answers status MISSING, a step on a closed
        period board CLOSED, and neither changes anything.
        """
        steps = list(items)
        if not steps:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for board, event_id, user_id, increment in steps:
            keys = board_keys(board)
            await queue_script(
                pipe,
                self._apply,
                [keys.zset, keys.version, keys.members, keys.guard(event_id), keys.empty, keys.closed],
                [user_id, increment, self._guard_ttl_s],
            )
        replies = await pipe.execute()
        return [
            ApplyResult(board=step[0], status=int(r[0]), total=int(r[1]), seq=int(r[2]), reached=_reached(r))
            for step, r in zip(steps, replies, strict=True)
        ]

    async def top(self, board: str, limit: int) -> Top:
        keys = board_keys(board)
        reply = await self._top(keys=[keys.zset, keys.version, keys.members, keys.empty], args=[limit])
        if int(reply[0]) < 0:
            return Top(board=board, version=0, rows=[], exists=False)
        return Top(board=board, version=int(reply[0]), rows=_rows(reply[1:], 1))

    async def around(self, board: str, user_id: str, *, above: int, below: int) -> Around:
        keys = board_keys(board)
        reply = await self._around(
            keys=[keys.zset, keys.version, keys.members, keys.empty], args=[user_id, above, below]
        )
        version = int(reply[0])
        if version < 0:
            return Around(board=board, version=0, exists=False, self_row=None, above=[], below=[])
        if int(reply[1]) < 0:
            return Around(board=board, version=version, exists=True, self_row=None, above=[], below=[])
        rank0, first = int(reply[1]), int(reply[2])
        rows = _rows(reply[3:], first + 1)
        mine = rank0 - first
        return Around(
            board=board,
            version=version,
            exists=True,
            self_row=rows[mine],
            above=rows[:mine],
            below=rows[mine + 1 :],
        )

    async def standings(self, lookups: Mapping[str, Sequence[str]]) -> list[Standings]:
        """The places of users on boards ({board: [userId, ...]}): one script call per board (and
        per :data:`STANDINGS_PER_CALL` users, so no call holds Redis long). One
        :class:`Standings` per call, in order: a board's calls may read different versions.

        One Redis: one pipelined round trip, and a Redis that does not answer raises. A Redis
        Cluster: a board is one slot, so each call is a batch of its slot, sent whole (EVAL) to
        the master owning it, as its own command (at most :data:`CLUSTER_CALLS_IN_FLIGHT` at
        once): while a master is down only the calls of its slots fail, answered ``unread``,
        and the others' places still count. Not a cluster pipeline: one of those fails whole
        when a node refuses, and its retry closes every connection of the client (redis-py 8.1).

        A missing board (see the module docstring) answers ``exists=False`` and no places.
        """
        boards = [
            (board, users[i : i + STANDINGS_PER_CALL])
            for board, users in lookups.items()
            for i in range(0, len(users), STANDINGS_PER_CALL)
        ]
        if not boards:
            return []
        if is_cluster(self.redis):
            return await self._cluster_standings(boards)
        if len(boards) == 1:
            # One call (a gateway's own lane, usually): the script alone, one round trip, where a
            # pipeline of scripts first asks SCRIPT EXISTS in a round trip of its own.
            board, users = boards[0]
            keys = board_keys(board)
            board_set = [keys.zset, keys.version, keys.members, keys.empty]
            return [_standings(board, users, await self._ranks(keys=board_set, args=list(users)))]
        pipe = self.redis.pipeline(transaction=False)
        for board, users in boards:
            keys = board_keys(board)
            board_set = [keys.zset, keys.version, keys.members, keys.empty]
            await queue_script(pipe, self._ranks, board_set, list(users))
        replies = await pipe.execute()
        return [
            _standings(board, users, reply) for (board, users), reply in zip(boards, replies, strict=True)
        ]

    async def _cluster_standings(self, calls: list[tuple[str, Sequence[str]]]) -> list[Standings]:
        # The slot map first, once (a no-op when it is current): left to the concurrent calls, a
        # client reading it (its first command, or after a node failed) has been seen to hand one
        # of them a connection it was closing (AttributeError on its writer, redis-py 8.1).
        await self.redis.initialize()
        gate = asyncio.Semaphore(CLUSTER_CALLS_IN_FLIGHT)

        async def call(board: str, users: Sequence[str]) -> Any:
            keys = board_keys(board)
            async with gate:
                return await self.redis.execute_command(
                    "EVAL", _RANKS, 4, keys.zset, keys.version, keys.members, keys.empty, *users
                )

        replies = await asyncio.gather(*(call(b, u) for b, u in calls), return_exceptions=True)
        found = []
        for (board, users), reply in zip(calls, replies, strict=True):
            if isinstance(reply, asyncio.CancelledError):
                raise reply
            if isinstance(reply, BaseException):
                found.append(Standings(board=board, version=0, exists=False, places={}, unread=tuple(users)))
            else:
                found.append(_standings(board, users, reply))
        return found

    async def exists(self, board: str) -> bool:
        """Whether the board is in Redis (see the module docstring: a lost ranking is missing)."""
        keys = board_keys(board)
        return bool(await self._exists(keys=[keys.zset, keys.version, keys.members, keys.empty]))

    async def version(self, board: str) -> int:
        """The board's version, 0 when the board is missing."""
        return int(await self.redis.get(board_keys(board).version) or 0)

    async def freeze(self, board: str, limit: int) -> Final | None:
        """Close ``board`` for good (every later apply answers CLOSED) and return its final top
        ``limit``; idempotent. None, changing nothing, when the board is missing in Redis."""
        keys = board_keys(board)
        reply = await self._freeze(
            keys=[keys.zset, keys.version, keys.members, keys.empty, keys.closed], args=[limit]
        )
        if int(reply[0]) < 0:
            return None
        return Final(board=board, version=int(reply[0]), ranked=int(reply[1]), rows=_rows(reply[2:], 1))

    async def expire(self, board: str, ttl_s: int) -> None:
        """Let the keys of a closed board go in ``ttl_s`` (a key that expires already keeps its
        time: a second rollover pass does not put the end off). Its action guards are not
        touched: each carries its own TTL (``action_guard_ttl_s``)."""
        keys = board_keys(board)
        pipe = self.redis.pipeline(transaction=False)
        for key in (keys.zset, keys.version, keys.members, keys.empty, keys.closed):
            pipe.expire(key, ttl_s, nx=True)
        await pipe.execute()

    async def stage_and_commit(
        self,
        board: str,
        rows: Iterable[tuple[str, int, int]],
        *,
        version: int,
        force: bool,
        counted: Sequence[tuple[str, int | None]] = (),
    ) -> int:
        """Replace ``board`` with (userId, score, seq) rows, atomically at the commit.

        ``counted`` are (actionId, the total it reached or None) the rows already include: the
        commit sets their guards, so a later apply of one of them is a no-op. Without ``force``
        the commit is a no-op when the board came back meanwhile. Returns the committed version,
        or 0 when nothing changed. Raises Unavailable when Redis lost the staged rows before the
        commit (nothing is committed; the caller retries).
        """
        keys: BoardKeys = board_keys(board)
        # Concurrent rebuilds of one board (the read API and a worker, say) stage apart.
        staging = keys.staging(secrets.token_hex(8))
        chunk: list[tuple[str, int, int]] = []
        staged = 0
        for row in rows:
            staged += 1
            chunk.append(row)
            if len(chunk) >= 1000:
                await self._stage(staging, chunk)
                chunk = []
        if chunk:
            await self._stage(staging, chunk)
        keyset = [keys.zset, keys.version, keys.members, *staging, keys.empty]
        keyset += [keys.guard(action_id) for action_id, _ in counted]
        reached = ["" if total is None else total for _, total in counted]
        committed = int(
            await self._commit(keys=keyset, args=[version, int(force), self._guard_ttl_s, staged, *reached])
        )
        if committed < 0:
            raise Unavailable(f"Redis lost the staged rebuild of {board}; retry")
        return committed

    async def _stage(self, staging: tuple[str, str], chunk: list[tuple[str, int, int]]) -> None:
        zset, members_key = staging
        members = {f"{SEQ_CEILING - seq:0{SEQ_DIGITS}d}{user_id}": score for user_id, score, seq in chunk}
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(zset, members)
        pipe.hset(members_key, mapping={m[SEQ_DIGITS:]: m for m in members})
        pipe.expire(zset, STAGING_TTL_S)
        pipe.expire(members_key, STAGING_TTL_S)
        await pipe.execute()

    async def cache_profiles(self, profiles: Mapping[str, Profile], *, ttl_s: int) -> None:
        """Write display details into the ``user:<id>`` hashes (one round trip on one Redis).

        On a Redis Cluster, a profile whose node is down is simply not cached this time.
        """
        if not profiles:
            return

        def mapping(profile: Profile) -> dict[str, str]:
            return {
                "name": profile.name,
                "avatarUrl": profile.avatar_url or "",
                "region": profile.region or "",
            }

        if is_cluster(self.redis):

            async def cache(user_id: str, profile: Profile) -> None:
                await self.redis.hset(user_profile(user_id), mapping=mapping(profile))
                await self.redis.expire(user_profile(user_id), ttl_s)

            await asyncio.gather(*(cache(u, p) for u, p in profiles.items()), return_exceptions=True)
            return
        pipe = self.redis.pipeline(transaction=False)
        for user_id, profile in profiles.items():
            pipe.hset(user_profile(user_id), mapping=mapping(profile))
            pipe.expire(user_profile(user_id), ttl_s)
        await pipe.execute()

    async def profiles(self, user_ids: Sequence[str]) -> dict[str, Profile]:
        """Cached display details of members, from the ``user:<id>`` hashes (one round trip)."""
        return (await self.profiles_read(user_ids))[0]

    async def profiles_read(self, user_ids: Sequence[str]) -> tuple[dict[str, Profile], set[str]]:
        """(cached profiles, the members whose profile could not be read).

        One Redis: one pipelined round trip, and a Redis that does not answer raises. A Redis
        Cluster spreads the ``user:<id>`` hashes over every node: one HMGET each, concurrently,
        so while a node is down only the members it holds read as not cached (their caller falls
        back) and a board on a live node still shows. Not a cluster pipeline: one of those fails
        whole when a node refuses, and its retry closes every connection of the client, cutting
        the commands other requests have in flight on the live nodes (redis-py 8.1).
        """
        if not user_ids:
            return {}, set()
        fields = ("name", "avatarUrl", "region")
        replies: list[Any]
        if is_cluster(self.redis):
            replies = await asyncio.gather(
                *(self.redis.hmget(user_profile(u), *fields) for u in user_ids), return_exceptions=True
            )
        else:
            pipe = self.redis.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.hmget(user_profile(user_id), *fields)
            replies = await pipe.execute()
        found: dict[str, Profile] = {}
        unread: set[str] = set()
        for user_id, reply in zip(user_ids, replies, strict=True):
            if isinstance(reply, asyncio.CancelledError):
                raise reply
            if isinstance(reply, BaseException):
                unread.add(user_id)
            elif reply[0] is not None:
                name, avatar, region = reply
                found[user_id] = Profile(name=name, avatar_url=avatar or None, region=region or None)
        return found, unread

    async def scoring_profile(self, user_id: str) -> Profile | None:
        """The cached profile of ``user_id`` when it is complete enough to place a score.

        None when not cached, or cached before profiles carried the region (no ``region``
        field): the caller reads MongoDB ``users`` then, so a score never misses its region board.
        """
        name, avatar, region = await self.redis.hmget(user_profile(user_id), "name", "avatarUrl", "region")
        if name is None or region is None:
            return None
        return Profile(name=name, avatar_url=avatar or None, region=region or None)
