"""Learner statistics: ``GET /api/v1/stats/student`` and ``GET /api/v1/stats/course-progress``.

The longest streak and totals are kept on write (``ingest.achievements``); the current streak and
the last active day are read from the active days, in the learner's time zone.
"""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.courses import COURSES
from contract.http import JSONResponse
from contract.progress import percentage
from contract.streaks import zone
from ingest.achievements import streak_summary
from ingest.api.state import authenticate, state
from ingest.store import PROGRESS, STATS


async def student(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    doc = await st.mongo[STATS].find_one({"_id": claims.sub}, {"tz": 1, "totalCompleted": 1}) or {}
    today = dt.datetime.now(zone(doc.get("tz") or claims.tz)).date()
    current, longest, last = await streak_summary(st.mongo, claims.sub, today)
    return JSONResponse(
        {
            "currentStreak": current,
            "longestStreak": longest,
            "lastActiveDate": last.isoformat() if last else None,
            "totalCompleted": int(doc.get("totalCompleted", 0)),
        }
    )


async def course_progress(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    docs = [
        d
        async for d in st.mongo[PROGRESS].find(
            {"userId": claims.sub}, {"courseId": 1, "completedLectures": 1}
        )
    ]
    counts = {
        c["_id"]: int(c["lectureCount"])
        async for c in st.mongo[COURSES].find(
            {"_id": {"$in": [d["courseId"] for d in docs]}}, {"lectureCount": 1}
        )
    }
    return JSONResponse(
        [
            {
                "courseId": d["courseId"],
                "progress": percentage(len(set(d.get("completedLectures", []))), counts[d["courseId"]]),
            }
            for d in docs
            if d["courseId"] in counts
        ]
    )


routes: list[BaseRoute] = [
    Route("/api/v1/stats/student", student, methods=["GET"]),
    Route("/api/v1/stats/course-progress", course_progress, methods=["GET"]),
]
