"""The audit log: every change of a score, in MongoDB's ``audit`` collection.

One flat document per change:

- an applied score action (type ``score``, ``quiz`` or ``completion``, from the action's
  ``source``): ``_id = "<userId>|<actionId>"``, the boards it changed with the user's total on
  each before and after (``oldScores``/``newScores``, aligned with ``boards``; ``oldScore`` and
  ``newScore`` repeat the first board's, ``global`` for every action), the increment, the client's
  IP and user agent as the ingest API saw them, and the action's time (``tsMs``);
- a rebuild that changed a user's total on a board (type ``rebuild``):
  ``_id = "rebuild|<board>|<version>|<userId>"``, no actionId, IP or user agent.

Written by the worker in bulk, with ``$setOnInsert`` on ``_id``: a retried batch writes nothing
twice. An action the worker applied before it crashed is audited on the retry from what its
board guard remembers (see ``store.board_lua``); an action a rebuild counted instead is part
of that rebuild's entry.

Read newest first, keyset-paginated on ``(tsMs, _id)``; the cursor is opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import UpdateOne

from contract.bodies import AuditItem
from contract.errors import BadRequest
from contract.events import ScoreAction
from ingest import store
from store.board_results import ApplyResult

REBUILD = "rebuild"


def action_doc(action: ScoreAction, applied: Iterable[tuple[str, ApplyResult]]) -> dict[str, Any] | None:
    """The audit document of ``action`` from its (board, result) steps; None when it changed
    no board that it can account for (every step was counted by a rebuild)."""
    boards: list[str] = []
    old: list[int] = []
    new: list[int] = []
    for board, r in applied:
        if r.reached is None:
            continue
        boards.append(board)
        new.append(r.reached)
        old.append(r.reached - action.increment)
    if not boards:
        return None
    return {
        "_id": f"{action.user_id}|{action.action_id}",
        "actionId": action.action_id,
        "userId": action.user_id,
        "type": action.source,
        "boards": boards,
        "oldScores": old,
        "newScores": new,
        "oldScore": old[0],
        "newScore": new[0],
        "increment": action.increment,
        "ip": action.ip,
        "userAgent": action.user_agent,
        "tsMs": action.ts_ms,
    }


def rebuild_docs(
    board: str, version: int, before: Mapping[str, int], after: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One document per user whose total on ``board`` the rebuild changed."""
    now_ms = int(time.time() * 1000)
    docs = []
    for user_id in sorted(before.keys() | after.keys()):
        old, new = before.get(user_id, 0), after.get(user_id, 0)
        if old == new:
            continue
        docs.append(
            {
                "_id": f"{REBUILD}|{board}|{version}|{user_id}",
                "actionId": None,
                "userId": user_id,
                "type": REBUILD,
                "boards": [board],
                "oldScores": [old],
                "newScores": [new],
                "oldScore": old,
                "newScore": new,
                "increment": new - old,
                "ip": None,
                "userAgent": None,
                "tsMs": now_ms,
            }
        )
    return docs


async def write(db: Any, docs: list[dict[str, Any]]) -> None:
    """Insert ``docs`` once each (a document already there is left as it is)."""
    if not docs:
        return
    await db[store.AUDIT].bulk_write(
        [
            UpdateOne(
                {"_id": d["_id"]}, {"$setOnInsert": {k: v for k, v in d.items() if k != "_id"}}, upsert=True
            )
            for d in docs
        ],
        ordered=False,
    )


# ---------------------------------------------------------------- reads
def encode_cursor(ts_ms: int, doc_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts_ms, doc_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Raises BadRequest (``bad_cursor``) for anything :func:`encode_cursor` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts_ms, doc_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadRequest("cursor is not one this API returned", code="bad_cursor") from None
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or not isinstance(doc_id, str):
        raise BadRequest("cursor is not one this API returned", code="bad_cursor")
    return ts_ms, doc_id


def iso(ts_ms: int) -> str:
    when = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def item(doc: Mapping[str, Any]) -> AuditItem:
    return AuditItem(
        action_id=doc.get("actionId"),
        user_id=doc["userId"],
        type=doc["type"],
        boards=list(doc["boards"]),
        increment=int(doc["increment"]),
        old_score=int(doc["oldScore"]),
        new_score=int(doc["newScore"]),
        ip=doc.get("ip"),
        user_agent=doc.get("userAgent"),
        ts=iso(int(doc["tsMs"])),
    )


async def page(
    db: Any, *, user_id: str | None, since_ms: int | None, limit: int, cursor: str | None
) -> tuple[list[AuditItem], str | None]:
    """Up to ``limit`` changes, newest first, and the cursor of the next page (None at the end)."""
    query: dict[str, Any] = {}
    if user_id is not None:
        query["userId"] = user_id
    if since_ms is not None:
        query["tsMs"] = {"$gte": since_ms}
    if cursor is not None:
        ts_ms, doc_id = decode_cursor(cursor)
        query["$or"] = [{"tsMs": {"$lt": ts_ms}}, {"tsMs": ts_ms, "_id": {"$lt": doc_id}}]
    docs = [d async for d in db[store.AUDIT].find(query).sort([("tsMs", -1), ("_id", -1)]).limit(limit + 1)]
    more = len(docs) > limit
    docs = docs[:limit]
    next_cursor = encode_cursor(int(docs[-1]["tsMs"]), str(docs[-1]["_id"])) if more else None
    return [item(d) for d in docs], next_cursor
