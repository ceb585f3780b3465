"""The Redis side of a board: atomic idempotent apply, reads, and the rebuild commit.

Every operation touches the keys of one board only (one hash tag, one cluster slot), so it
runs unchanged on Redis Cluster. A board "exists" while its version key exists AND it has its
ranking (the ZSET and its members hash) or the marker of a board that has no member (set by a
rebuild that found none, cleared by the first apply). A version without either means Redis lost
the ranking (a DEL, an eviction), so "empty" and "lost" never look alike. Every script
(:mod:`store.board_lua`), and :meth:`BoardStore.exists`, use this one test; an apply on a
missing board answers :data:`~store.board_results.MISSING` and the caller rebuilds it from
MongoDB first, reads report ``exists=False``.

Callers pass a ``redis.asyncio.Redis`` (or ``RedisCluster``) created with
``decode_responses=True``. What the operations answer: :mod:`store.board_results`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contract.errors import Unavailable
from contract.keys import SEQ_CEILING, SEQ_DIGITS, BoardKeys, board_keys, decode_member, user_profile
from store.board_lua import APPLY, AROUND, COMMIT_REBUILD, EXISTS, FREEZE, RANKS, TOP
from store.board_results import APPLIED, ApplyResult, Around, Final, Profile, Row, Standing, Standings, Top
from store.clients import is_cluster, queue_script

# Users one rank script call looks up at most (3 commands each): Redis runs a script to its end,
# so a tick's lookups of a board go as several calls in the same round trip.
STANDINGS_PER_CALL = 500
# On a Redis Cluster, the script calls of one standings read in flight at once (each its own command).
CLUSTER_CALLS_IN_FLIGHT = 16
STAGING_TTL_S = 3600


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
        self._apply = redis.register_script(APPLY)
        self._top = redis.register_script(TOP)
        self._around = redis.register_script(AROUND)
        self._commit = redis.register_script(COMMIT_REBUILD)
        self._exists = redis.register_script(EXISTS)
        self._ranks = redis.register_script(RANKS)
        self._freeze = redis.register_script(FREEZE)

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
                    "EVAL", RANKS, 4, keys.zset, keys.version, keys.members, keys.empty, *users
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
