"""A copy of one board's ranking inside the rank bench, kept current from the board's events, so
the bench knows each watched viewer's true place after every event without asking the gateway.

It loads the whole ZSET once (atomically with the version), then, per board event, reads only the
users the event names (HMGET of their members, ZMSCORE of those members: two commands per event,
counted in :attr:`BoardMirror.commands` so the bench can take them out of Redis's figures). The
order is Redis's own: score, then the member string (ZREVRANGE: both descending), so ties come
out as the board ranks them (who reached the score first is ahead).

A read may already see a later event's change; the place then moves at the earlier event's time,
which makes a measured delay longer, never shorter.
"""

from __future__ import annotations

import bisect
from typing import Any

from contract.keys import board_keys, decode_member

# rank, score, gapToNext (None, None, None: not ranked), as in the rank event.
TruePlace = tuple[int | None, int | None, int | None]


class BoardMirror:
    def __init__(self, redis: Any, board: str) -> None:
        self.redis = redis
        self.keys = board_keys(board)
        self.version = 0
        self.commands = 0
        self._sorted: list[tuple[int, str]] = []  # ascending (score, member)
        self._entry: dict[str, tuple[int, str]] = {}  # userId -> its (score, member)

    async def load(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.keys.version)
        pipe.zrange(self.keys.zset, 0, -1, withscores=True)
        version, rows = await pipe.execute()
        self.commands += 4  # MULTI, GET, ZRANGE, EXEC
        self.version = int(version or 0)
        self._sorted = sorted((int(score), member) for member, score in rows)
        self._entry = {decode_member(member)[0]: (score, member) for score, member in self._sorted}

    async def apply(self, version: int, users: list[str]) -> None:
        """Board event: the board is at ``version``, ``users`` changed."""
        if version <= self.version or not users:
            self.version = max(self.version, version)
            return
        self.version = version
        members = await self.redis.hmget(self.keys.members, users)
        found = [(u, m) for u, m in zip(users, members, strict=True) if m is not None]
        self.commands += 1
        if not found:
            return
        scores = await self.redis.zmscore(self.keys.zset, [m for _, m in found])
        self.commands += 1
        for (user, member), score in zip(found, scores, strict=True):
            if score is None:
                continue
            old = self._entry.get(user)
            if old is not None:
                at = bisect.bisect_left(self._sorted, old)
                if at < len(self._sorted) and self._sorted[at] == old:
                    del self._sorted[at]
            new = (int(score), member)
            bisect.insort(self._sorted, new)
            self._entry[user] = new

    def place(self, user: str) -> TruePlace:
        entry = self._entry.get(user)
        if entry is None:
            return (None, None, None)
        at = bisect.bisect_left(self._sorted, entry)
        rank = len(self._sorted) - at
        if rank == 1:
            return (1, entry[0], None)
        return (rank, entry[0], self._sorted[at + 1][0] - entry[0])
