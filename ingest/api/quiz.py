"""Quizzes graded by the server: the client sends answers, never a score.

``PUT /api/v1/quizzes/{quizId}`` (role admin) stores the answer key in MongoDB;
``POST /api/v1/quiz/submit`` grades and queues the points as a score action (``source: "quiz"``)
with the submission's actionId, so a resubmission is counted once.

``GET /api/v1/quizzes/{quizId}`` (any learner) answers the questions without the key and starts
the learner's clock for that quiz (a Redis record, first fetch wins, ``quiz_start_ttl_s``): a
submission carries the time since then (server clock; a client's own timestamp is never
trusted) to the worker's ``quiz_too_fast`` rule. With ``quiz_require_start`` a submission
without a fetch first is refused (409 ``quiz_not_started``); without it, such a submission is
not timed.
"""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract import keys
from contract.errors import Conflict, NotFound
from contract.http import JSONResponse, decode_body, path_param
from contract.messages import Id, QuizGraded, QuizIn, QuizOut, QuizQuestionOut, QuizSubmitRequest
from ingest.api.metrics import counted
from ingest.api.scores import action_for, check_block, check_rate, enqueue
from ingest.api.state import authenticate, state

QUIZZES = "quizzes"


async def put_quiz(request: Request) -> Response:
    st = state(request)
    authenticate(request, role="admin")
    quiz_id: str = path_param(request, "quiz_id", Id)
    body = await decode_body(request, QuizIn, max_bytes=st.settings.max_body_bytes)
    # The _id inside the replacement too: nx-27017 stores a replace_one upsert without it under a
    # generated ObjectId (MongoDB would take the filter's _id).
    doc = {
        "_id": quiz_id,
        "title": body.title,
        "courseId": body.course_id,
        "key": {q.question_id: q.correct_option for q in body.questions},
        "points": {q.question_id: q.points for q in body.questions},
    }
    await st.mongo[QUIZZES].replace_one({"_id": quiz_id}, doc, upsert=True)
    return JSONResponse({"quizId": quiz_id, "questions": len(body.questions)})


async def get_quiz(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    quiz_id: str = path_param(request, "quiz_id", Id)
    quiz = await st.mongo[QUIZZES].find_one({"_id": quiz_id})
    if quiz is None:
        raise NotFound(f"no quiz {quiz_id!r}", code="unknown_quiz")
    await st.redis.set(
        keys.quiz_start(claims.sub, quiz_id),
        int(time.time() * 1000),
        nx=True,
        ex=st.settings.quiz_start_ttl_s,
    )
    questions = [QuizQuestionOut(question_id=q, points=int(quiz["points"][q])) for q in quiz["key"]]
    return JSONResponse(
        QuizOut(quiz_id=quiz_id, title=quiz["title"], questions=questions, course_id=quiz.get("courseId"))
    )


async def quiz_elapsed_ms(request: Request, user_id: str, quiz_id: str) -> int | None:
    """Milliseconds since the user first fetched the quiz; None when no fetch is recorded.

    Raises Conflict (``quiz_not_started``) for the latter under ``quiz_require_start``.
    """
    st = state(request)
    started = await st.redis.get(keys.quiz_start(user_id, quiz_id))
    if started is None:
        if st.settings.quiz_require_start:
            raise Conflict(f"fetch quiz {quiz_id!r} before submitting it", code="quiz_not_started")
        return None
    return max(0, int(time.time() * 1000) - int(started))


async def submit(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    body = await decode_body(request, QuizSubmitRequest, max_bytes=st.settings.max_body_bytes)
    await check_block(st, claims.sub)
    quiz = await st.mongo[QUIZZES].find_one({"_id": body.quiz_id})
    if quiz is None:
        raise NotFound(f"no quiz {body.quiz_id!r}", code="unknown_quiz")
    answers = {a.question_id: a.selected_option for a in body.answers}
    correct = [q for q, option in quiz["key"].items() if answers.get(q) == option]
    delta = min(sum(int(quiz["points"][q]) for q in correct), st.settings.max_score_increment)
    action = action_for(
        claims, body.action_id, delta, course_id=quiz.get("courseId"), source="quiz", request=request
    )
    action = msgspec.structs.replace(
        action,
        quiz_elapsed_ms=await quiz_elapsed_ms(request, claims.sub, body.quiz_id),
        quiz_questions=len(quiz["key"]),
    )
    status = "graded"
    if delta > 0:
        await check_rate(st, claims.sub, claims.region)
        status = "queued" if await enqueue(st, action) else "duplicate"
    graded = QuizGraded(
        status=status,
        correct=len(correct),
        total=len(quiz["key"]),
        score_delta=delta,
        action_id=action.action_id,
    )
    return JSONResponse(graded, status_code=202 if status == "queued" else 200)


routes: list[BaseRoute] = [
    Route("/api/v1/quizzes/{quiz_id}", put_quiz, methods=["PUT"]),
    Route("/api/v1/quizzes/{quiz_id}", get_quiz, methods=["GET"]),
    Route("/api/v1/quiz/submit", counted("quiz", submit), methods=["POST"]),
]
