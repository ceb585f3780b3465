"""The activity heatmap: ``POST /api/v1/progress/heatmap/mark`` and ``GET …/heatmap/data``.

One document per user per local day (``activity``, ``_id = "<userId>|<YYYY-MM-DD>"``), so a
year of history is at most 366 small documents read with one range query.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.http import JSONResponse
from contract.streaks import local_day, zone
from ingest.achievements import record_activity, record_streak
from ingest.api.leaderboards import int_param
from ingest.api.state import authenticate, state
from ingest.store import ACTIVITY


async def mark(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    day = local_day(int(time.time() * 1000), claims.tz)
    await record_activity(st.mongo, claims.sub, day, uuid.uuid4().hex)
    await record_streak(st.mongo, claims.sub, day, claims.tz)
    return JSONResponse({"message": "marked"})


async def data(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    days = int_param(request, "days", 365, 1, 366)
    today = dt.datetime.now(zone(request.query_params.get("tz", claims.tz))).date()
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
