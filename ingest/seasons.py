"""Seasons that end well: the worker rolls each closed period board over, once.

Every ``season_check_interval_s`` (and with a clock of its own, ``now``, so tests move time
instead of waiting), a worker looks at the period boards that may still have live keys: the
registry ``keys.SEASON_BOARDS`` (the worker adds a period board each time it publishes it), and
the ``board_weeks_back`` weeks / ``board_months_back`` months before the current ones (boards
scored before the registry existed). A board whose period ended ``season_grace_s`` ago or more
is rolled over, each step idempotent so racing workers and a retry after a crash agree:

1. freeze: one Lua step sets the board's closed marker (every later apply answers CLOSED: a late
   action changes nothing there, and still counts on its other boards) and reads the final top
   ``season_archive_size`` and the number of ranked users; a board Redis lost is rebuilt from
   MongoDB first;
2. archive: ``insert_one`` with ``_id`` = the board into ``board_archive`` (``store.archive``),
   names and avatars as they are now; DuplicateKeyError means another worker was first, and its
   archive stands;
3. announce: one Lua step XADDs a ``BoardClosed`` to ``stream:board_closed`` and sets the
   board's sent marker, unless the marker is there: one event per board and period;
4. expire: the board's keys get ``season_retention_s`` (EXPIRE NX: a second pass keeps the
   first deadline), its action guards at most that (EXPIRE LT); reads answer from the archive
   once they are gone;
5. the board leaves the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from contract import keys
from contract.bodies import LeaderboardEntry
from contract.events import BoardClosed
from contract.seasons import is_closed, period_end, recent_periods
from contract.settings import Settings
from contract.wire import json_encoder
from ingest import store
from ingest.rebuild import rebuild_board
from store import archive
from store.archive import Archived
from store.board_results import Profile, Row
from store.boards import BoardStore

log = logging.getLogger("scorecast.seasons")

# KEYS: sent marker, stream (one slot). ARGV: entry JSON, marker ttl (s), stream max length.
# Returns 1 when the event was added, 0 when it was before.
_ANNOUNCE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'd', ARGV[1])
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[2]))
return 1
"""

# The sent marker outlives the board's keys by this much: a worker that finds the board again
# while its keys live (its registry entry left after a crash) must not announce it twice.
SENT_MARKER_MARGIN_S = 24 * 3600


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Seasons:
    """The rollover of closed period boards (see the module docstring)."""

    def __init__(
        self,
        *,
        redis: Any,
        db: Any,
        settings: Settings,
        boards: BoardStore | None = None,
        now: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.boards = boards or BoardStore(redis, guard_ttl_s=settings.action_guard_ttl_s)
        self.now = now
        self._announce = redis.register_script(_ANNOUNCE_ONCE)

    async def run(self, stop: asyncio.Event) -> None:
        """Roll over every ``season_check_interval_s`` until ``stop`` is set; a failed pass (Redis
        or MongoDB away) is logged and tried again at the next one."""
        while not stop.is_set():
            try:
                rolled = await self.roll()
                if rolled:
                    log.info("rolled over %s", ", ".join(rolled))
            except Exception:
                log.warning("season rollover failed; trying again", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.season_check_interval_s)

    async def roll(self) -> list[str]:
        """One pass: roll over every closed period board with live keys. Returns their names."""
        now = self.now()
        due = [
            b
            for b in sorted(await self._candidates(now))
            if is_closed(b, now, grace_s=self.settings.season_grace_s)
        ]
        for board in due:
            await self.close(board)
        return due

    async def _candidates(self, now: dt.datetime) -> set[str]:
        registered = {str(b) for b in await self.redis.smembers(keys.SEASON_BOARDS)}
        s = self.settings
        recent = recent_periods(now, weeks=s.board_weeks_back, months=s.board_months_back)
        # One EXISTS per key in a pipeline: the boards live in different slots of a cluster.
        pipe = self.redis.pipeline(transaction=False)
        for board in recent:
            pipe.exists(keys.board_keys(board).version)
            pipe.exists(keys.board_keys(board).closed)
        found = await pipe.execute()
        live = {b for i, b in enumerate(recent) if found[2 * i] and not found[2 * i + 1]}
        return registered | live

    async def close(self, board: str) -> Archived:
        """Roll ``board`` over (steps 1-5 of the module docstring); returns its archive."""
        final = await archive.find(self.db, board)
        if final is None:
            final = await self._archive(board)
        await self._announce_once(final)
        await self.boards.expire(board, self.settings.season_retention_s)
        await self._expire_guards(board)
        await self.redis.srem(keys.SEASON_BOARDS, board)
        return final

    async def _expire_guards(self, board: str) -> None:
        """Bring the board's applied-action guards' expiry forward to the retention (EXPIRE LT:
        never later than their own ``action_guard_ttl_s``). They are named by the ``score_events``
        ids of the board's actions; one pipeline per thousand."""
        ttl_s = self.settings.season_retention_s
        if ttl_s >= self.settings.action_guard_ttl_s:
            return  # they are gone by then anyway
        board_keys = keys.board_keys(board)
        chunk: list[str] = []
        async for doc in self.db[store.SCORE_EVENTS].find({"boards": board}, {"_id": 1}):
            chunk.append(board_keys.guard(str(doc["_id"])))
            if len(chunk) >= 1000:
                await self._expire_keys(chunk, ttl_s)
                chunk = []
        if chunk:
            await self._expire_keys(chunk, ttl_s)

    async def _expire_keys(self, names: list[str], ttl_s: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.expire(name, ttl_s, lt=True)
        await pipe.execute()

    async def _archive(self, board: str) -> Archived:
        size = self.settings.season_archive_size
        frozen = await self.boards.freeze(board, size)
        if frozen is None:  # Redis lost it: MongoDB has its truth
            await rebuild_board(self.boards, self.db, board, force=False)
            frozen = await self.boards.freeze(board, size)
        if frozen is None:
            raise RuntimeError(f"{board} is missing in Redis after its rebuild")
        made = Archived(
            board=board,
            version=frozen.version,
            ranked_users=frozen.ranked,
            closed_at_ms=int(self.now().timestamp() * 1000),
            entries=await self._entries(frozen.rows),
        )
        if await archive.insert(self.db, made):
            return made
        first = await archive.find(self.db, board)  # another worker was first: its archive stands
        assert first is not None
        return first

    async def _entries(self, rows: Sequence[Row]) -> list[LeaderboardEntry]:
        """Rows with names and avatars: the Redis profile cache, MongoDB ``users`` for misses."""
        profiles = await self.boards.profiles([r.user_id for r in rows])
        missing = [r.user_id for r in rows if r.user_id not in profiles]
        if missing:
            async for doc in self.db[store.USERS].find({"_id": {"$in": missing}}):
                profiles[doc["_id"]] = Profile(
                    name=doc.get("name") or doc["_id"], avatar_url=doc.get("avatarUrl")
                )
        return [
            LeaderboardEntry(
                rank=r.rank,
                user_id=r.user_id,
                name=p.name if (p := profiles.get(r.user_id)) else r.user_id,
                score=r.score,
                avatar_url=p.avatar_url if p else None,
            )
            for r in rows
        ]

    async def _announce_once(self, final: Archived) -> bool:
        end = period_end(final.board)
        assert end is not None
        event = BoardClosed(
            board=final.board,
            period_end=end.isoformat().replace("+00:00", "Z"),
            version=final.version,
            ranked_users=final.ranked_users,
            top=final.entries[:10],
            closed_at_ms=final.closed_at_ms,
        )
        s = self.settings
        added = await self._announce(
            keys=[keys.board_closed_sent(final.board), keys.BOARD_CLOSED_STREAM],
            args=[
                json_encoder.encode(event),
                s.season_retention_s + SENT_MARKER_MARGIN_S,
                s.board_closed_stream_max_length,
            ],
        )
        return bool(int(added))
