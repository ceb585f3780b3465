"""Courses: ``PUT /api/v1/courses/{courseId}`` (admin) and ``GET /api/v1/courses/{courseId}``.

The document keeps the denormalised ``lectureCount`` and ``totalMarks``; every write refreshes
the Redis course metadata that pings are validated against (see ``contract.courses``).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.bodies import CourseIn
from contract.courses import COURSES, CourseMeta, meta_from_doc
from contract.errors import BadRequest, NotFound
from contract.http import JSONResponse, decode_body, path_param
from contract.wire import KeyId
from ingest.api.state import IngestState, authenticate, state


def course_id_param(request: Request) -> str:
    course_id: str = path_param(request, "course_id", KeyId)
    return course_id


async def course_meta(st: IngestState, course_id: str) -> CourseMeta:
    """The course's metadata. Raises NotFound (``unknown_course``)."""
    meta = await st.catalog.get(course_id)
    if meta is None:
        raise NotFound(f"no course {course_id!r}", code="unknown_course")
    return meta


def public(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "courseId": doc["_id"],
        "title": doc["title"],
        "lectureCount": doc["lectureCount"],
        "totalMarks": doc["totalMarks"],
        "sections": doc["sections"],
    }


async def put_course(request: Request) -> Response:
    st = state(request)
    await authenticate(request, role="admin")
    course_id = course_id_param(request)
    body = await decode_body(request, CourseIn, max_bytes=st.settings.max_body_bytes * 16)
    lectures = [lecture.lecture_id for section in body.sections for lecture in section.lectures]
    if not lectures:
        raise BadRequest("a course needs at least one lecture", code="empty_course")
    if len(set(lectures)) != len(lectures):
        raise BadRequest("lectureIds must be unique within a course", code="duplicate_lecture")
    doc: dict[str, Any] = {
        "_id": course_id,  # in the replacement too: see ingest.api.quiz on nx-27017
        "title": body.title,
        "sections": msgspec.to_builtins(body.sections),
        "lectureCount": len(lectures),
        "totalMarks": sum(lec.marks for section in body.sections for lec in section.lectures),
        "updatedAt": time.time(),
    }
    await st.mongo[COURSES].replace_one({"_id": course_id}, doc, upsert=True)
    await st.catalog.put(meta_from_doc(doc))
    return JSONResponse(public(doc))


async def get_course(request: Request) -> Response:
    st = state(request)
    course_id = course_id_param(request)
    doc = await st.mongo[COURSES].find_one({"_id": course_id})
    if doc is None:
        raise NotFound(f"no course {course_id!r}", code="unknown_course")
    return JSONResponse(public(doc))


routes: list[BaseRoute] = [
    Route("/api/v1/courses/{course_id}", put_course, methods=["PUT"]),
    Route("/api/v1/courses/{course_id}", get_course, methods=["GET"]),
]
