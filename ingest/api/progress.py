"""Progress over HTTP: the fallback of the WebSocket ping, explicit completion, the resume view.

Writes go to Redis first (the same Lua step as the gateway's pings); the flusher takes them to
MongoDB. The resume view is MongoDB's document merged with the Redis hash, Redis winning: one
pipelined Redis read and one ``find_one``, issued together.

Coverage over HTTP: consecutive saves of one device count (the body's ``deviceId``, else the
token's ``jti``). ``POST /progress/complete`` completes only an unlocked lecture (403
``lecture_locked``) that is covered like a ping would complete it, or one marked ``completable``
in the course (else 409 ``not_watched``); an already completed lecture answers 200 again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.auth import Claims
from contract.bodies import ProgressCompleteRequest, ProgressSaveRequest
from contract.courses import CourseMeta
from contract.errors import BadRequest, Conflict, Forbidden
from contract.http import JSONResponse, decode_body
from contract.progress import Ping, ProgressView, completion_event, merge, who
from ingest.api.courses import course_id_param, course_meta
from ingest.api.state import IngestState, authenticate, state
from ingest.store import PROGRESS, progress_id
from store.progress import CompleteStatus, emit_completions

log = logging.getLogger("scorecast.ingest.progress")


def lecture_of(meta: CourseMeta, lecture_id: str) -> float:
    duration = meta.durations.get(lecture_id)
    if duration is None:
        raise BadRequest(f"course {meta.course_id!r} has no lecture {lecture_id!r}", code="unknown_lecture")
    return duration


async def emit_completion(
    st: IngestState, claims: Claims, meta: CourseMeta, lecture_id: str, now_ms: int, first_watch_ms: int
) -> None:
    """Queue the completion; a failure is logged, not answered: the completion is stored with its
    marker and the flusher queues it (same event id)."""
    event = completion_event(claims, meta, lecture_id, now_ms, first_watch_ms=first_watch_ms)
    try:
        await emit_completions(st.redis, [event], partitions=st.settings.stream_partition_count)
    except Exception:
        log.warning("queueing the completion of %s failed; the flusher will", lecture_id, exc_info=True)


async def view(st: IngestState, user_id: str, meta: CourseMeta) -> ProgressView:
    live, doc = await asyncio.gather(
        st.progress.read(user_id, meta.course_id),
        st.mongo[PROGRESS].find_one({"_id": progress_id(user_id, meta.course_id)}),
    )
    return merge(meta, doc, live)


async def save(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    body = await decode_body(request, ProgressSaveRequest, max_bytes=st.settings.max_body_bytes)
    meta = await course_meta(st, body.course_id)
    duration = lecture_of(meta, body.lecture_id)
    now_ms = int(time.time() * 1000)
    ping = Ping(
        user_id=claims.sub,
        course_id=body.course_id,
        lecture_id=body.lecture_id,
        position=min(body.playhead, duration),
        seq=body.seq if body.seq is not None else now_ms,
        duration=duration,
        origin="http",
        device=f"http:{body.device_id or claims.jti}",
        prev=meta.previous_lecture(body.lecture_id),
        who=who(claims),
    )
    (result,) = await st.progress.save([ping], now_ms)
    if result.completed:
        await emit_completion(st, claims, meta, body.lecture_id, now_ms, result.first_watch_ms)
    return JSONResponse({"message": "synced"})


async def complete_lecture(st: IngestState, claims: Claims, body: ProgressCompleteRequest) -> float:
    """Complete a lecture for the learner of ``claims`` (the service of ``POST
    /api/v1/progress/complete`` and GraphQL's ``completeLecture``); returns the course's new
    completion percentage. Completing a completed lecture again changes nothing.

    Raises NotFound (``unknown_course``), BadRequest (``unknown_lecture``), Forbidden
    (``lecture_locked``), Conflict (``not_watched``).
    """
    meta = await course_meta(st, body.course_id)
    duration = lecture_of(meta, body.lecture_id)
    now_ms = int(time.time() * 1000)
    done = await st.progress.complete(
        claims.sub,
        meta.course_id,
        body.lecture_id,
        now_ms,
        prev=meta.previous_lecture(body.lecture_id),
        completable=body.lecture_id in meta.completable,
        need_s=st.settings.complete_threshold * duration,
        who=who(claims),
    )
    if done.status == CompleteStatus.LOCKED:
        raise Forbidden(
            f"lecture {body.lecture_id!r} is locked until the lecture before it is completed",
            code="lecture_locked",
        )
    if done.status == CompleteStatus.NOT_COVERED:
        raise Conflict(
            f"lecture {body.lecture_id!r} has not been watched far enough to complete "
            f"({st.settings.complete_threshold:.0%} of it, at most real time)",
            code="not_watched",
        )
    if done.status == CompleteStatus.NEW:
        await emit_completion(st, claims, meta, body.lecture_id, now_ms, done.first_watch_ms)
    current = await view(st, claims.sub, meta)
    return current.completion_percentage


async def complete(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    body = await decode_body(request, ProgressCompleteRequest, max_bytes=st.settings.max_body_bytes)
    percentage = await complete_lecture(st, claims, body)
    return JSONResponse({"message": "completed", "completionPercentage": percentage})


async def progress_of(st: IngestState, user_id: str, course_id: str) -> ProgressView:
    """``user_id``'s resume view of ``course_id``. Raises NotFound (``unknown_course``)."""
    return await view(st, user_id, await course_meta(st, course_id))


async def read(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    return JSONResponse(await progress_of(st, claims.sub, course_id_param(request)))


routes: list[BaseRoute] = [
    Route("/api/v1/progress/save", save, methods=["POST"]),
    Route("/api/v1/progress/complete", complete, methods=["POST"]),
    Route("/api/v1/progress/{course_id}", read, methods=["GET"]),
]
