"""REBUILD: a board's Redis keys from its durable truth in MongoDB.

Used by the worker (a board missing when an action arrives, or an admin's forced rebuild) and by
the read API (a board key missing when read). The commit is atomic per board (staging keys +
RENAME in one Lua step); without ``force`` it does nothing when the board came back meanwhile.

``board_totals`` is exact for every user whose actions are all marked ``applied`` (the worker
marks an action applied only after its total reached MongoDB). A user with an action still in
flight (``applied: false``: a worker is between its Redis step and MongoDB, or died there, or
Redis lost the stream entry) may or may not be counted there, so that user's total is summed from
``score_events`` instead, and the commit sets the guards of those in-flight actions: whichever
worker finishes them later finds them applied. So a rebuild racing a batch neither loses nor
doubles an action.
"""

from __future__ import annotations

import time
from typing import Any

from contract.boardstore import BoardStore
from ingest import store


async def rebuild_board(boards: BoardStore, db: Any, board: str, *, force: bool) -> int:
    """Load ``board`` from MongoDB into Redis. Returns the committed version, 0 if none.

    The new version is at least the epoch in milliseconds, so versions never go backwards across
    a Redis flush and gateways holding an older version re-read the board.
    """
    if not force and await boards.exists(board):
        return 0
    events = db[store.SCORE_EVENTS]
    # In-flight actions are read before the totals: an action marked applied in between is
    # counted by its user's sum below, whether or not the totals read saw it.
    in_flight = [d async for d in events.find({"boards": board, "applied": False}, {"userId": 1})]
    totals = {
        doc["userId"]: (int(doc["score"]), int(doc.get("seq", 0)))
        async for doc in db[store.BOARD_TOTALS].find({"board": board}, {"userId": 1, "score": 1, "seq": 1})
    }
    summed: dict[str, tuple[int, int]] = {}
    if in_flight:
        users = sorted({d["userId"] for d in in_flight})
        async for d in events.find(
            {"userId": {"$in": users}, "boards": board}, {"userId": 1, "increment": 1, "tsMs": 1}
        ):
            score, last = summed.get(d["userId"], (0, 0))
            summed[d["userId"]] = (score + int(d["increment"]), max(last, int(d["tsMs"])))
    top_seq = max((seq for _, seq in totals.values()), default=0)
    # Users summed here reached their totals last: they rank after equal totals, in time order.
    by_time = sorted(summed.items(), key=lambda kv: (kv[1][1], kv[0]))
    for i, (user_id, (score, _)) in enumerate(by_time, start=1):
        totals[user_id] = (score, top_seq + i)
    current = await boards.version(board)
    version = max(current + 1, int(time.time() * 1000), top_seq + len(by_time) + 1)
    return await boards.stage_and_commit(
        board,
        ((user_id, score, seq) for user_id, (score, seq) in totals.items()),
        version=version,
        force=force,
        counted=[d["_id"] for d in in_flight],
    )
