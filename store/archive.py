"""The archive of closed period boards in MongoDB, and the reads that answer from it.

``board_archive``: one document per closed period board, written once by the worker's rollover
(``ingest.seasons``) with ``insert_one`` on ``_id`` = the board: a second worker racing it gets
DuplicateKeyError and takes it for "already archived". Flat but for the entry list::

    {_id: "weekly:2026-W47", board, periodEnd: "2026-11-23T00:00:00Z", version, rankedUsers,
     closedAtMs, entries: [{rank, userId, name, avatarUrl, score}, ...]}   # the top N, rank order

Entries keep names and avatars as they were at the close. Once a closed board's Redis keys
expired, the leaderboard, rank and around reads answer from here (:class:`Archived`); a user
ranked below the archived top N is told so (``beyond_archive``) by the caller, which knows
the board's totals. Gateways read archives through :class:`ArchiveCache` (one read per board per
process: an archive never changes).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import time
from typing import Any

from pymongo.errors import DuplicateKeyError

from contract.bodies import AroundAnswer, LeaderboardEntry, LeaderboardPage, RankAnswer
from contract.errors import NotFound
from contract.seasons import period_end

BOARD_ARCHIVE = "board_archive"


def iso_ms(ts_ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Archived:
    """A closed board's final standings: its top entries and how many users it ranked."""

    board: str
    version: int
    ranked_users: int
    closed_at_ms: int
    entries: list[LeaderboardEntry]

    def doc(self) -> dict[str, Any]:
        end = period_end(self.board)
        return {
            "_id": self.board,
            "board": self.board,
            "periodEnd": end.isoformat().replace("+00:00", "Z") if end else None,
            "version": self.version,
            "rankedUsers": self.ranked_users,
            "closedAtMs": self.closed_at_ms,
            "entries": [
                {
                    "rank": e.rank,
                    "userId": e.user_id,
                    "name": e.name,
                    "avatarUrl": e.avatar_url,
                    "score": e.score,
                }
                for e in self.entries
            ],
        }

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Archived:
        return cls(
            board=doc["board"],
            version=int(doc["version"]),
            ranked_users=int(doc["rankedUsers"]),
            closed_at_ms=int(doc["closedAtMs"]),
            entries=[
                LeaderboardEntry(
                    rank=int(e["rank"]),
                    user_id=e["userId"],
                    name=e["name"],
                    score=int(e["score"]),
                    avatar_url=e.get("avatarUrl"),
                )
                for e in doc["entries"]
            ],
        )

    def page(self, limit: int) -> LeaderboardPage:
        """The leaderboard answer: ``updatedAt`` and ``closedAt`` are when it was rolled over."""
        closed = iso_ms(self.closed_at_ms)
        return LeaderboardPage(
            board=self.board,
            version=self.version,
            updated_at=closed,
            entries=self.entries[:limit],
            closed_at=closed,
            ranked_users=self.ranked_users,
        )

    def position(self, user_id: str) -> int | None:
        """The index of ``user_id`` in the archived entries, None when not among them."""
        return next((i for i, e in enumerate(self.entries) if e.user_id == user_id), None)

    def rank(self, user_id: str) -> RankAnswer:
        """Raises NotFound (``not_ranked``) when ``user_id`` is not among the archived entries."""
        e = self.entries[self._position(user_id)]
        return RankAnswer(board=self.board, user_id=user_id, rank=e.rank, score=e.score)

    def around(self, user_id: str, window: int) -> AroundAnswer:
        """``user_id`` with up to ``window`` archived entries either side (the last archived
        entry has none below, however many users the board ranked).

        Raises NotFound (``not_ranked``) when ``user_id`` is not among the archived entries.
        """
        i = self._position(user_id)
        return AroundAnswer(
            board=self.board,
            self=self.entries[i],
            above=self.entries[max(0, i - window) : i],
            below=self.entries[i + 1 : i + 1 + window],
        )

    def _position(self, user_id: str) -> int:
        i = self.position(user_id)
        if i is None:
            raise NotFound(f"{user_id} is not in the archive of {self.board}", code="not_ranked")
        return i


async def find(db: Any, board: str) -> Archived | None:
    """The archive of ``board``; None when it has none (not a period board, or not closed yet)."""
    if period_end(board) is None:
        return None
    doc = await db[BOARD_ARCHIVE].find_one({"_id": board})
    return None if doc is None else Archived.of(doc)


async def insert(db: Any, archived: Archived) -> bool:
    """Write the archive of a board once. Answers False when it was archived before (a racing
    worker, or a retry after a crash): the first archive stands."""
    try:
        await db[BOARD_ARCHIVE].insert_one(archived.doc())
    except DuplicateKeyError:
        return False
    return True


class ArchiveCache:
    """The archives of closed periods as a gateway reads them: each read from MongoDB once per
    process (an archive never changes), the newest ``size`` kept.

    Only a period board whose period ended by ``now`` is looked up: any other name answers None
    without I/O. A board without an archive yet (not rolled over, or never scored) is looked up
    again at most once per ``miss_ttl_s``, so a crowd subscribing to it costs MongoDB one read per
    interval. The caller bounds the names (``contract.boards.followable``: only the
    ``board_weeks_back``/``board_months_back`` past periods can be followed).
    """

    def __init__(self, db: Any, *, size: int, miss_ttl_s: float) -> None:
        self.db = db
        self.size = max(1, size)
        self.miss_ttl_s = miss_ttl_s
        self.reads = 0  # MongoDB reads so far (tests and metrics look)
        self._found: collections.OrderedDict[str, Archived] = collections.OrderedDict()
        self._missed: collections.OrderedDict[str, float] = collections.OrderedDict()  # -> until

    async def get(self, board: str, now: dt.datetime) -> Archived | None:
        """The archive of ``board``, None when it has none (yet). Raises what MongoDB raises."""
        end = period_end(board)
        if end is None or end > now:
            return None
        hit = self._found.get(board)
        if hit is not None:
            self._found.move_to_end(board)
            return hit
        clock = time.monotonic()
        if self._missed.get(board, 0.0) > clock:
            return None
        self.reads += 1
        found = await find(self.db, board)
        if found is None:
            self._missed[board] = clock + self.miss_ttl_s
            self._missed.move_to_end(board)
            _bound(self._missed, self.size)
            return None
        self._missed.pop(board, None)
        self._found[board] = found
        _bound(self._found, self.size)
        return found


def _bound(cache: collections.OrderedDict[str, Any], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
