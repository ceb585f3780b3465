"""REBUILD: a board's Redis keys from its durable truth in MongoDB.

Used by the worker (a board missing when an action arrives, or an admin's forced rebuild) and by
the read API (a board key missing when read). The commit is atomic per board (staging keys +
RENAME in one Lua step); without ``force`` it does nothing when the board came back meanwhile.

``board_totals`` is exact for every user whose actions are all marked ``applied`` (the worker
marks an action applied only after its total reached MongoDB). A user with an action still in
flight (``applied: false``: a worker is between its Redis step and MongoDB, or died there, or
Redis lost the stream entry) may or may not be counted there, so that user's total is summed from
``score_events`` instead, and the commit sets the guards of those in-flight actions: whichever
worker finishes them later finds them applied. An action stored after the in-flight read is left
out of that sum (it has no guard: its worker applies it to the rebuilt board). So a rebuild racing
a batch neither loses nor doubles an action.

A closed period board that was archived (``ingest.seasons``) is never rebuilt: its archive is
its final truth, and a rebuild would bring back keys meant to expire.

A rebuild that changes a user's total is audited (type ``rebuild``, ``ingest.audit``): against
the Redis board it replaces when there was one (a forced rebuild), else against
``board_totals`` (the in-flight actions it counted).
"""

from __future__ import annotations

import time
from typing import Any

from contract.keys import board_keys, decode_member
from ingest import audit, store
from store import archive
from store.boards import BoardStore


async def rebuild_board(boards: BoardStore, db: Any, board: str, *, force: bool) -> int:
    """Load ``board`` from MongoDB into Redis. Returns the committed version, 0 if none.

    The new version is at least the epoch in milliseconds, so versions never go backwards across
    a Redis flush and gateways holding an older version re-read the board. An archived board
    is not rebuilt (0).
    """
    if not force and await boards.exists(board):
        return 0
    if await archive.find(db, board) is not None:
        return 0
    events = db[store.SCORE_EVENTS]
    # In-flight actions are read before the totals: an action marked applied in between is
    # counted by its user's sum below, whether or not the totals read saw it.
    in_flight = [
        d async for d in events.find({"boards": board, "applied": False}, {"userId": 1, "increment": 1})
    ]
    totals = {
        doc["userId"]: (int(doc["score"]), int(doc.get("seq", 0)))
        async for doc in db[store.BOARD_TOTALS].find({"board": board}, {"userId": 1, "score": 1, "seq": 1})
    }
    summed: dict[str, tuple[int, int]] = {}
    # The total each in-flight action reached, in time order of the user's actions: its guard
    # remembers it, so the worker that finishes the action audits it as its own change.
    reached: dict[str, int] = {}
    if in_flight:
        pending = {d["_id"] for d in in_flight}
        users = sorted({d["userId"] for d in in_flight})
        history = [
            d
            async for d in events.find(
                {"userId": {"$in": users}, "boards": board},
                {"userId": 1, "increment": 1, "tsMs": 1, "applied": 1},
            )
            # An action stored after the in-flight read (another worker's new batch) is not
            # counted: the commit sets no guard for it, so its worker applies it afterwards.
            if d.get("applied") or d["_id"] in pending
        ]
        for d in sorted(history, key=lambda d: (int(d["tsMs"]), str(d["_id"]))):
            score, last = summed.get(d["userId"], (0, 0))
            summed[d["userId"]] = (score + int(d["increment"]), max(last, int(d["tsMs"])))
            if d["_id"] in pending:
                reached[d["_id"]] = summed[d["userId"]][0]
    before = await _totals_before(boards, board, force, totals, in_flight)
    top_seq = max((seq for _, seq in totals.values()), default=0)
    # Users summed here reached their totals last: they rank after equal totals, in time order.
    by_time = sorted(summed.items(), key=lambda kv: (kv[1][1], kv[0]))
    for i, (user_id, (score, _)) in enumerate(by_time, start=1):
        totals[user_id] = (score, top_seq + i)
    current = await boards.version(board)
    version = max(current + 1, int(time.time() * 1000), top_seq + len(by_time) + 1)
    committed = await boards.stage_and_commit(
        board,
        ((user_id, score, seq) for user_id, (score, seq) in totals.items()),
        version=version,
        force=force,
        counted=[(d["_id"], reached.get(d["_id"])) for d in in_flight],
    )
    if committed:
        # The in-flight actions are audited as themselves (above): the rebuild's own entries
        # are what it changed besides them.
        after = {user_id: score for user_id, (score, _) in totals.items()}
        for d in in_flight:
            after[d["userId"]] -= int(d["increment"])
        old = {
            user_id: after.get(user_id, 0) if score is None else score for user_id, score in before.items()
        }
        await audit.write(db, audit.rebuild_docs(board, committed, old, after))
    return committed


async def _totals_before(
    boards: BoardStore,
    board: str,
    force: bool,
    totals: dict[str, tuple[int, int]],
    in_flight: list[dict[str, Any]],
) -> dict[str, int | None]:
    """Each user's total before the rebuild, without the in-flight actions.

    A forced rebuild replaces the Redis board: its totals, less the in-flight actions Redis had
    applied already (their guards exist). A missing board had MongoDB's totals, whose in-flight
    part is not known (a worker may have died between the totals and marking them applied), so
    a user with actions in flight counts as unchanged (None).
    """
    keys = board_keys(board)
    if force and await boards.exists(board):
        before: dict[str, int | None] = dict(await redis_totals(boards, board))
        if in_flight:
            guards = await boards.redis.mget([keys.guard(d["_id"]) for d in in_flight])
            for d, guard in zip(in_flight, guards, strict=True):
                known = before.get(d["userId"])
                if guard is not None and known is not None:
                    before[d["userId"]] = known - int(d["increment"])
        return before
    before = {user_id: score for user_id, (score, _) in totals.items()}
    for d in in_flight:
        before[d["userId"]] = None
    return before


async def redis_totals(boards: BoardStore, board: str) -> dict[str, int]:
    """Every user's total on the Redis board (empty when the board is missing)."""
    rows = await boards.redis.zrange(board_keys(board).zset, 0, -1, withscores=True)
    return {decode_member(str(member))[0]: int(float(score)) for member, score in rows}
