"""REBUILD: a board's Redis keys from its durable truth in MongoDB (``board_totals``).

Used by the worker (a board missing when an action arrives, or an admin's forced rebuild) and by
the read API (a board key missing when read). The commit is atomic per board (staging keys +
RENAME in one Lua step); without ``force`` it does nothing when the board came back meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

from contract.boardstore import BoardStore
from contract.keys import board_keys
from ingest import store


async def rebuild_board(boards: BoardStore, db: Any, board: str, *, force: bool) -> bool:
    """Load ``board`` from MongoDB into Redis. Returns whether the Redis board was replaced.

    The new version is at least the epoch in milliseconds, so versions never go backwards across
    a Redis flush and gateways holding an older version re-read the board.
    """
    if not force and await boards.exists(board):
        return False
    current = int(await boards.redis.get(board_keys(board).version) or 0)
    version = max(current + 1, int(time.time() * 1000))
    cursor = db[store.BOARD_TOTALS].find({"board": board}, {"userId": 1, "score": 1, "seq": 1, "_id": 0})
    rows = [(doc["userId"], int(doc["score"]), int(doc.get("seq", 0))) async for doc in cursor]
    return await boards.stage_and_commit(board, rows, version=version, force=force)
