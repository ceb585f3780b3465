"""Quizzes graded by the server: the client sends answers, never a score.

``PUT /api/v1/quizzes/{quizId}`` (role admin) stores the answer key in MongoDB;
``POST /api/v1/quiz/submit`` grades every submission and stores it (``quiz_attempts``), but the
boards count ONE attempt per user and quiz: the best (default) or the first
(``QUIZ_COUNTING``), and only what it adds. A first attempt scoring 5 adds 5, a second scoring 7
adds 2, a third scoring 6 adds nothing.

The count is one atomic step per (user, quiz): a Lua script holds the counted score and the
number of attempts in a Redis hash in the score stream's cluster slot, and checks that state,
XADDs the increment and moves the state together. Concurrent submissions of one user cannot both
count the same improvement, and a process dying around the step leaves all of it or none. The
increment's actionId is UUID5 of (user, quiz, counted score), so the same improvement queued
twice (a retry after Redis lost the state) is counted once by the worker. The submission's own
actionId is remembered with its outcome: a retried submission answers what the first did.

The answer never says per submission how many answers were right (a learner could find the key
one question at a time): ``correct``, ``total`` and ``score`` come only with the quiz's last
allowed attempt (``maxAttempts``), and never when ``QUIZ_REVEAL_CORRECT`` is off. Past
``maxAttempts`` a submission is refused (409 ``attempts_exhausted``).

``GET /api/v1/quizzes/{quizId}`` (any learner) answers the questions without the key and starts
the learner's clock for that quiz (a Redis record, first fetch wins, ``quiz_start_ttl_s``): a
submission carries the time since then (server clock; a client's own timestamp is never
trusted) to the worker's ``quiz_too_fast`` rule. With ``quiz_require_start`` a submission
without a fetch first is refused (409 ``quiz_not_started``); without it, such a submission is
not timed. Only a submission that adds points reaches the worker (and its rules).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract import keys
from contract.auth import Claims
from contract.bodies import QuizGraded, QuizIn, QuizOut, QuizQuestionOut, QuizSubmitRequest
from contract.errors import Conflict, NotFound
from contract.events import ScoreAction
from contract.http import JSONResponse, decode_body, path_param
from contract.wire import Id, json_encoder
from ingest import store
from ingest.api.client import ClientInfo
from ingest.api.courses import course_meta
from ingest.api.metrics import counted
from ingest.api.scores import action_for, check_block, check_rate, queue_has_room, request_client
from ingest.api.state import IngestState, authenticate, state

QUIZZES = "quizzes"
# Names the increments a quiz grants: UUID5(namespace, "<userId>|<quizId>|<counted score>").
QUIZ_ACTIONS = uuid.UUID("6f1c1d4e-9a51-4c7e-8f43-5b0a8d0c2e71")
NEVER = -1  # counted score of a quiz the user never submitted
OK, DUPLICATE, EXHAUSTED, CONFLICT = 0, 1, 2, 3
MAX_TRIES = 32  # each CONFLICT means another submission counted: bounded by their number

# KEYS: submission guard, (user, quiz) state hash, score stream (one cluster slot).
# ARGV: expected counted score, expected attempts, new counted score, entry JSON ('' = nothing to
# queue), delta, max attempts (0 = unlimited), ttl (s).
# The state the caller computed from must still hold (else CONFLICT with the current state); a
# missing hash means the caller's state came from MongoDB. XADD runs before any write, so an
# XADD that fails leaves nothing behind.
_COUNT_ATTEMPT = f"""
local seen = redis.call('GET', KEYS[1])
if seen then return {{{DUPLICATE}, seen}} end
local st = redis.call('HMGET', KEYS[2], 'best', 'n')
local n = tonumber(ARGV[2])
if st[1] then
  n = tonumber(st[2])
  if st[1] ~= ARGV[1] or st[2] ~= ARGV[2] then return {{{CONFLICT}, st[1], st[2]}} end
end
local max = tonumber(ARGV[6])
if max > 0 and n >= max then return {{{EXHAUSTED}, tostring(n)}} end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[3], '*', 'd', ARGV[4]) end
redis.call('HSET', KEYS[2], 'best', ARGV[3], 'n', n + 1)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
local outcome = ARGV[5] .. ':' .. (n + 1)
redis.call('SET', KEYS[1], outcome, 'EX', tonumber(ARGV[7]))
return {{{OK}, outcome}}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Tally:
    """What the boards count of one user's quiz: the counted score (NEVER before any attempt)
    and the number of attempts so far."""

    counted: int
    attempts: int

    def after(self, score: int, *, best: bool) -> tuple[int, int]:
        """(new counted score, points it adds) after an attempt scoring ``score``."""
        if self.counted == NEVER:
            return score, score
        if best and score > self.counted:
            return score, score - self.counted
        return self.counted, 0


def tally_of_attempts(attempts: list[dict[str, Any]], *, best: bool) -> Tally:
    """The tally MongoDB's stored attempts imply (when Redis lost or expired the state)."""
    if not attempts:
        return Tally(NEVER, 0)
    ordered = sorted(attempts, key=lambda a: int(a["attempt"]))
    scores = [int(a["score"]) for a in ordered]
    counted = max(scores) if best else scores[0]
    return Tally(counted, int(ordered[-1]["attempt"]))


async def put_quiz(request: Request) -> Response:
    st = state(request)
    await authenticate(request, role="admin")
    quiz_id: str = path_param(request, "quiz_id", Id)
    body = await decode_body(request, QuizIn, max_bytes=st.settings.max_body_bytes)
    if body.course_id is not None:
        await course_meta(st, body.course_id)  # a quiz's points go to a real course board only
    # The _id inside the replacement too: nx-27017 stores a replace_one upsert without it under a
    # generated ObjectId (MongoDB would take the filter's _id).
    doc = {
        "_id": quiz_id,
        "title": body.title,
        "courseId": body.course_id,
        "key": {q.question_id: q.correct_option for q in body.questions},
        "points": {q.question_id: q.points for q in body.questions},
        "maxAttempts": body.max_attempts,
    }
    await st.mongo[QUIZZES].replace_one({"_id": quiz_id}, doc, upsert=True)
    return JSONResponse({"quizId": quiz_id, "questions": len(body.questions)})


async def get_quiz(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
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


async def quiz_elapsed_ms(st: IngestState, user_id: str, quiz_id: str) -> int | None:
    """Milliseconds since the user first fetched the quiz; None when no fetch is recorded.

    Raises Conflict (``quiz_not_started``) for the latter under ``quiz_require_start``.
    """
    started = await st.redis.get(keys.quiz_start(user_id, quiz_id))
    if started is None:
        if st.settings.quiz_require_start:
            raise Conflict(f"fetch quiz {quiz_id!r} before submitting it", code="quiz_not_started")
        return None
    return max(0, int(time.time() * 1000) - int(started))


async def current_tally(st: IngestState, user_id: str, quiz_id: str, *, best: bool) -> Tally:
    stream = keys.score_stream(user_id, st.settings.stream_partition_count)
    counted, attempts = await st.redis.hmget(keys.quiz_tally(user_id, quiz_id, stream=stream), "best", "n")
    if counted is not None and attempts is not None:
        return Tally(int(counted), int(attempts))
    stored = st.mongo[store.QUIZ_ATTEMPTS].find(
        {"userId": user_id, "quizId": quiz_id}, {"score": 1, "attempt": 1}
    )
    return tally_of_attempts([a async for a in stored], best=best)


async def count_attempt(
    st: IngestState, template: ScoreAction, quiz: dict[str, Any], score: int, submission_id: str
) -> tuple[int, int, int]:
    """Count one graded attempt atomically. Returns (status OK or DUPLICATE, delta, attempt number).

    ``template`` is the learner's score action (who, where from); the increment queued is a copy
    with the improvement and its deterministic actionId. Raises Conflict (``attempts_exhausted``)
    past the quiz's ``maxAttempts``.
    """
    user_id = template.user_id
    best = st.settings.quiz_counting == "best"
    max_attempts = int(quiz.get("maxAttempts") or 0)
    script = st.redis.register_script(_COUNT_ATTEMPT)
    # The user's partition of the score stream: the script's keys share its slot.
    stream = keys.score_stream(user_id, st.settings.stream_partition_count)
    for _ in range(MAX_TRIES):
        tally = await current_tally(st, user_id, quiz["_id"], best=best)
        counted, delta = tally.after(score, best=best)
        entry = ""
        if delta > 0:
            action_id = str(uuid.uuid5(QUIZ_ACTIONS, f"{user_id}|{quiz['_id']}|{counted}"))
            action = msgspec.structs.replace(template, action_id=action_id, increment=delta)
            entry = json_encoder.encode(action).decode()
        reply = await script(
            keys=[
                keys.quiz_submission(user_id, submission_id, stream=stream),
                keys.quiz_tally(user_id, quiz["_id"], stream=stream),
                stream,
            ],
            args=[
                tally.counted,
                tally.attempts,
                counted,
                entry,
                delta,
                max_attempts,
                st.settings.action_guard_ttl_s,
            ],
        )
        status = int(reply[0])
        if status == EXHAUSTED:
            raise Conflict(f"all {max_attempts} attempts of this quiz are used", code="attempts_exhausted")
        if status in (OK, DUPLICATE):
            counted_delta, _, attempt = str(reply[1]).partition(":")
            return status, int(counted_delta), int(attempt)
        # CONFLICT: another submission of this user and quiz counted meanwhile; decide again.
    raise Conflict("too many concurrent submissions of this quiz; retry", code="busy")


async def submit_quiz(
    st: IngestState, claims: Claims, body: QuizSubmitRequest, client: ClientInfo
) -> QuizGraded:
    """Grade, store and count one submission of the learner of ``claims`` (the service of
    ``POST /api/v1/quiz/submit`` and GraphQL's ``submitQuizAction``).

    Raises TemporarilyBlocked, NotFound (``unknown_quiz``), Conflict (``quiz_not_started``,
    ``attempts_exhausted``, ``busy``), TooManyRequests (``rate_limited``, ``queue_full``),
    Unavailable.
    """
    await check_block(st, claims.sub)  # before grading: a blocked user's attempt is not even stored
    quiz = await st.mongo[QUIZZES].find_one({"_id": body.quiz_id})
    if quiz is None:
        raise NotFound(f"no quiz {body.quiz_id!r}", code="unknown_quiz")
    answers = {a.question_id: a.selected_option for a in body.answers}
    correct = [q for q, option in quiz["key"].items() if answers.get(q) == option]
    score = min(sum(int(quiz["points"][q]) for q in correct), st.settings.max_score_increment)
    submission_id = body.action_id.lower()
    template = action_for(
        claims, submission_id, 0, course_id=quiz.get("courseId"), source="quiz", client=client
    )
    template = msgspec.structs.replace(
        template,
        quiz_elapsed_ms=await quiz_elapsed_ms(st, claims.sub, body.quiz_id),
        quiz_questions=len(quiz["key"]),
        client_ts_ms=body.client_ts_ms(),
    )
    await check_rate(st, claims.sub, claims.region)
    await queue_has_room(st)
    status, delta, attempt = await count_attempt(st, template, quiz, score, submission_id)
    # Stored after the count: a retry of this submission (same actionId) writes it again, so a
    # process dying in between loses no attempt the client still cares about.
    await st.mongo[store.QUIZ_ATTEMPTS].update_one(
        {"_id": keys.user_action(claims.sub, submission_id)},
        {
            "$setOnInsert": {
                "userId": claims.sub,
                "quizId": body.quiz_id,
                "attempt": attempt,
                "score": score,
                "correct": len(correct),
                "delta": delta,
                "answers": [[a.question_id, a.selected_option] for a in body.answers],
                "tsMs": int(time.time() * 1000),
                "clientTsMs": body.client_ts_ms(),  # the client's own clock (seed 004): audit only
            }
        },
        upsert=True,
    )
    max_attempts = quiz.get("maxAttempts")
    reveal = bool(max_attempts) and attempt >= int(max_attempts) and st.settings.quiz_reveal_correct
    word = "duplicate" if status == DUPLICATE else "queued" if delta > 0 else "graded"
    return QuizGraded(
        status=word,
        score_delta=delta,
        action_id=submission_id,
        attempt=attempt,
        attempts_left=max(0, int(max_attempts) - attempt) if max_attempts else None,
        correct=len(correct) if reveal else None,
        total=len(quiz["key"]) if reveal else None,
        score=score if reveal else None,
    )


async def submit(request: Request) -> Response:
    st = state(request)
    claims = await authenticate(request)
    body = await decode_body(request, QuizSubmitRequest, max_bytes=st.settings.max_body_bytes)
    graded = await submit_quiz(st, claims, body, request_client(request))
    return JSONResponse(graded, status_code=202 if graded.status == "queued" else 200)


routes: list[BaseRoute] = [
    Route("/api/v1/quizzes/{quiz_id}", put_quiz, methods=["PUT"]),
    Route("/api/v1/quizzes/{quiz_id}", get_quiz, methods=["GET"]),
    Route("/api/v1/quiz/submit", counted("quiz", submit), methods=["POST"]),
]
