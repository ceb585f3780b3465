"""Progress over HTTP: the fallback of the WebSocket ping, explicit completion, the resume view.

Writes go to Redis first (the same Lua step as the gateway's pings); the flusher takes them to
MongoDB. The resume view is MongoDB's document merged with the Redis hash, Redis winning: one
pipelined Redis read and one ``find_one``, issued together.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.auth import Claims
from contract.courses import CourseMeta
from contract.errors import BadRequest
from contract.http import JSONResponse, decode_body
from contract.messages import ProgressCompleteRequest, ProgressSaveRequest
from contract.progress import Ping, ProgressView, completion_event, emit_completions, merge
from ingest.api.courses import course_id_param, course_meta
from ingest.api.state import IngestState, authenticate, state
from ingest.store import PROGRESS, progress_id


def lecture_of(meta: CourseMeta, lecture_id: str) -> float:
    duration = meta.durations.get(lecture_id)
    if duration is None:
        raise BadRequest(f"course {meta.course_id!r} has no lecture {lecture_id!r}", code="unknown_lecture")
    return duration


async def emit_completion(
    st: IngestState, claims: Claims, meta: CourseMeta, lecture_id: str, now_ms: int
) -> None:
    event = completion_event(claims, meta, lecture_id, now_ms)
    await emit_completions(st.redis, [event])


async def view(st: IngestState, user_id: str, meta: CourseMeta) -> ProgressView:
    live, doc = await asyncio.gather(
        st.progress.read(user_id, meta.course_id),
        st.mongo[PROGRESS].find_one({"_id": progress_id(user_id, meta.course_id)}),
    )
    return merge(meta, doc, live)


async def save(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    body = await decode_body(request, ProgressSaveRequest, max_bytes=st.settings.max_body_bytes)
    meta = await course_meta(st, body.course_id)
    duration = lecture_of(meta, body.lecture_id)
    now_ms = int(time.time() * 1000)
    ping = Ping(
        user_id=claims.sub,
        course_id=body.course_id,
        lecture_id=body.lecture_id,
        position=min(body.position, duration),
        seq=body.seq if body.seq is not None else now_ms,
        duration=duration,
        origin="http",
    )
    (result,) = await st.progress.save([ping], now_ms)
    if result.completed:
        await emit_completion(st, claims, meta, body.lecture_id, now_ms)
    return JSONResponse({"message": "synced"})


async def complete(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    body = await decode_body(request, ProgressCompleteRequest, max_bytes=st.settings.max_body_bytes)
    meta = await course_meta(st, body.course_id)
    lecture_of(meta, body.lecture_id)
    now_ms = int(time.time() * 1000)
    if await st.progress.complete(claims.sub, meta.course_id, body.lecture_id, now_ms):
        await emit_completion(st, claims, meta, body.lecture_id, now_ms)
    current = await view(st, claims.sub, meta)
    return JSONResponse({"message": "completed", "completionPercentage": current.completion_percentage})


async def read(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    meta = await course_meta(st, course_id_param(request))
    return JSONResponse(await view(st, claims.sub, meta))


routes: list[BaseRoute] = [
    Route("/api/v1/progress/save", save, methods=["POST"]),
    Route("/api/v1/progress/complete", complete, methods=["POST"]),
    Route("/api/v1/progress/{course_id}", read, methods=["GET"]),
]
