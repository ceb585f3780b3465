"""Learner statistics: ``GET /api/v1/stats/student`` and ``GET /api/v1/stats/course-progress``.

The longest streak and totals are kept on write (``ingest.achievements``); the current streak and
the last active day are read from the active days, in the learner's time zone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.auth import Claims
from contract.courses import COURSES
from contract.http import JSONResponse
from contract.progress import percentage
from contract.streaks import zone
from ingest.achievements import streak_summary
from ingest.api.state import IngestState, authenticate, state
from ingest.store import PROGRESS, STATS


async def student_stats(st: IngestState, claims: Claims) -> dict[str, Any]:
    """``{currentStreak, longestStreak, lastActiveDate, totalCompleted}`` of the learner of
    ``claims`` (REST and GraphQL's ``studentStats``)."""
    doc = await st.mongo[STATS].find_one({"_id": claims.sub}, {"tz": 1, "totalCompleted": 1}) or {}
    today = dt.datetime.now(zone(doc.get("tz") or claims.tz)).date()
    current, longest, last = await streak_summary(st.mongo, claims.sub, today)
    return {
        "currentStreak": current,
        "longestStreak": longest,
        "lastActiveDate": last.isoformat() if last else None,
        "totalCompleted": int(doc.get("totalCompleted", 0)),
    }


async def student(request: Request) -> Response:
    claims = await authenticate(request)
    return JSONResponse(await student_stats(state(request), claims))


async def course_progress_of(st: IngestState, user_id: str) -> list[dict[str, Any]]:
    """``[{courseId, progress}]``: ``user_id``'s share of completed lectures of every course they
    started (REST and GraphQL's ``courseProgress``)."""
    docs = [
        d async for d in st.mongo[PROGRESS].find({"userId": user_id}, {"courseId": 1, "completedLectures": 1})
    ]
    counts = {
        c["_id"]: int(c["lectureCount"])
        async for c in st.mongo[COURSES].find(
            {"_id": {"$in": [d["courseId"] for d in docs]}}, {"lectureCount": 1}
        )
    }
    return [
        {
            "courseId": d["courseId"],
            "progress": percentage(len(set(d.get("completedLectures", []))), counts[d["courseId"]]),
        }
        for d in docs
        if d["courseId"] in counts
    ]


async def course_progress(request: Request) -> Response:
    claims = await authenticate(request)
    return JSONResponse(await course_progress_of(state(request), claims.sub))


routes: list[BaseRoute] = [
    Route("/api/v1/stats/student", student, methods=["GET"]),
    Route("/api/v1/stats/course-progress", course_progress, methods=["GET"]),
]
