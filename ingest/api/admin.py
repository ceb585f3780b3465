"""Admin reads of the audit log and the anomaly flags, and clearing a user's flags.

- ``GET /api/v1/admin/audit?userId=&since=&limit=&cursor=``: score changes newest first
  (``since``: ISO 8601 or epoch milliseconds; ``limit`` 1..500, default 50; ``cursor``: the
  ``next`` of the previous page).
- ``GET /api/v1/admin/flags?status=open|cleared&userId=&limit=``: flags newest first.
- ``POST /api/v1/admin/flags/{userId}/clear``: lifts the user's block, marks their open flags
  cleared.

All need role ``admin``; bad input answers 400.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.bodies import AuditPage, FlagItem, FlagPage
from contract.errors import BadRequest
from contract.http import JSONResponse, path_param
from contract.wire import ID_PATTERN, Id
from ingest import anomaly, audit, store
from ingest.api.state import authenticate, state

MAX_LIMIT = 500


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIMIT}", code="bad_query")
    return int(raw)


def _user_id(request: Request) -> str | None:
    raw = request.query_params.get("userId")
    if raw is None:
        return None
    try:
        user_id: str = msgspec.convert(raw, Id)
    except msgspec.ValidationError:
        raise BadRequest(f"userId must match {ID_PATTERN}", code="bad_query") from None
    return user_id


def parse_since(raw: str) -> int:
    """``since`` as epoch milliseconds: ISO 8601 (naive means UTC) or an integer of ms."""
    if raw.isdigit():
        return int(raw)
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest("since must be an ISO 8601 time or epoch milliseconds", code="bad_query") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


async def audit_log(request: Request) -> Response:
    st = state(request)
    await authenticate(request, role="admin")
    since = request.query_params.get("since")
    items, next_cursor = await audit.page(
        st.mongo,
        user_id=_user_id(request),
        since_ms=parse_since(since) if since is not None else None,
        limit=_limit(request, 50),
        cursor=request.query_params.get("cursor") or None,
    )
    return JSONResponse(AuditPage(items=items, next=next_cursor))


def flag_item(doc: dict[str, Any]) -> FlagItem:
    until = doc.get("blockedUntilMs")
    return FlagItem(
        user_id=doc["userId"],
        rule=doc["rule"],
        evidence=dict(doc.get("evidence") or {}),
        ts=audit.iso(int(doc["tsMs"])),
        status=doc["status"],
        blocked_until=audit.iso(int(until)) if until else None,
    )


async def flags(request: Request) -> Response:
    st = state(request)
    await authenticate(request, role="admin")
    status = request.query_params.get("status", anomaly.OPEN)
    if status not in (anomaly.OPEN, anomaly.CLEARED):
        raise BadRequest("status must be open or cleared", code="bad_query")
    query: dict[str, Any] = {"status": status}
    user_id = _user_id(request)
    if user_id is not None:
        query["userId"] = user_id
    cursor = st.mongo[store.FLAGS].find(query).sort([("tsMs", -1), ("_id", -1)]).limit(_limit(request, 100))
    return JSONResponse(FlagPage(items=[flag_item(d) async for d in cursor]))


async def clear(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request, role="admin")
    user_id: str = path_param(request, "user_id", Id)
    cleared = await anomaly.clear(st.redis, st.mongo, user_id, by=claims.sub)
    return JSONResponse({"userId": user_id, "cleared": cleared})


routes: list[BaseRoute] = [
    Route("/api/v1/admin/audit", audit_log, methods=["GET"]),
    Route("/api/v1/admin/flags", flags, methods=["GET"]),
    Route("/api/v1/admin/flags/{user_id}/clear", clear, methods=["POST"]),
]
