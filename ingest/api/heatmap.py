"""The activity heatmap: ``POST /api/v1/progress/heatmap/mark`` and ``GET …/heatmap/data``.

One document per user per local day (``activity``, ``_id = "<userId>|<YYYY-MM-DD>"``), so a
year of history is at most 366 small documents read with one range query.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zoneinfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.errors import BadRequest
from contract.http import JSONResponse
from contract.streaks import local_day
from ingest.achievements import ACTIVITY, record_activity, record_streak
from ingest.api.scores import int_param
from ingest.api.state import authenticate, state


def zone_param(request: Request, default: str) -> str:
    tz = request.query_params.get("tz", default)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {tz!r}", code="bad_timezone") from None
    return tz


async def mark(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    day = local_day(int(time.time() * 1000), claims.tz)
    await record_activity(st.mongo, claims.sub, day, uuid.uuid4().hex)
    await record_streak(st.mongo, claims.sub, day, claims.tz)
    return JSONResponse({"message": "marked"})


async def data(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    days = int_param(request, "days", 365, 1, 366)
    tz = zone_param(request, claims.tz)
    today = dt.datetime.now(zoneinfo.ZoneInfo(tz)).date()
    first = (today - dt.timedelta(days=days - 1)).isoformat()
    cursor = (
        st.mongo[ACTIVITY]
        .find(
            {"userId": claims.sub, "date": {"$gte": first, "$lte": today.isoformat()}},
            {"_id": 0, "date": 1, "events": 1},
        )
        .sort("date", 1)
    )
    return JSONResponse([{"date": doc["date"], "count": len(doc["events"])} async for doc in cursor])


routes: list[BaseRoute] = [
    Route("/api/v1/progress/heatmap/mark", mark, methods=["POST"]),
    Route("/api/v1/progress/heatmap/data", data, methods=["GET"]),
]
