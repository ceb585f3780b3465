"""Quizzes through the ingest API: the answer key an admin stores is the one submissions meet;
a quiz scores once per user (every attempt graded and stored, the boards count the best or the
first, only what it adds); the answer hides the key until the last allowed attempt."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from contract import keys
from contract.auth import TokenIssuer
from contract.settings import Settings
from ingest import store
from ingest.api.app import create_app
from ingest.worker import ScoreWorker
from tests.helpers import asgi_client, bearer

QUIZ = {
    "title": "Basics",
    "courseId": "py",
    "questions": [
        {"questionId": "q1", "correctOption": "b", "points": 3},
        {"questionId": "q2", "correctOption": "a", "points": 2},
    ],
}


def submission_of(**answers: str) -> dict[str, Any]:
    return {
        "quizId": "quiz1",
        "actionId": str(uuid.uuid4()),
        "answers": [{"questionId": q, "selectedOption": o} for q, o in answers.items()],
    }


async def test_a_stored_quiz_is_graded_and_replaced_under_its_own_id(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, mongo: Any
) -> None:
    """Issue #8, defect 2: the replace_one upsert stored the quiz under a generated ObjectId, so
    every submission answered 404 ``unknown_quiz``."""
    admin = bearer(issuer.access_token(user_id="root", name="Root", roles=["admin"]))
    learner = bearer(issuer.access_token(user_id="ada", name="Ada"))
    lecture = {"lectureId": "l1", "title": "L1", "durationSeconds": 60}
    course = {"title": "Py", "sections": [{"sectionId": "s", "title": "S", "lectures": [lecture]}]}
    assert (await ingest.put("/api/v1/courses/py", json=course, headers=admin)).status_code == 200
    r = await ingest.put("/api/v1/quizzes/quiz1", json=QUIZ, headers=admin)
    assert (r.status_code, r.json()) == (200, {"quizId": "quiz1", "questions": 2})
    r = await ingest.post("/api/v1/quiz/submit", json=submission_of(q1="b", q2="c"), headers=learner)
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["scoreDelta"]) == ("queued", 3)
    assert await redis.xlen(keys.SCORE_STREAM) == 1

    changed = {**QUIZ, "questions": [{"questionId": "q1", "correctOption": "c", "points": 4}]}
    assert (await ingest.put("/api/v1/quizzes/quiz1", json=changed, headers=admin)).status_code == 200
    r = await ingest.post("/api/v1/quiz/submit", json=submission_of(q1="c"), headers=learner)
    # Graded against the new key (4 points); the boards count the best attempt: 4 - 3 more.
    assert (r.status_code, r.json()["scoreDelta"], r.json()["attempt"]) == (202, 1, 2)
    assert [d["_id"] async for d in mongo["quizzes"].find({})] == ["quiz1"]

    r = await ingest.post(
        "/api/v1/quiz/submit", json={**submission_of(q1="c"), "quizId": "nope"}, headers=learner
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_quiz")


# Five questions worth 1, 2, 3, 4, 5 points: any score 0..15 is reachable.
QUESTIONS = [{"questionId": f"q{i}", "correctOption": "a", "points": i} for i in range(1, 6)]


def answers_for(score: int) -> list[dict[str, str]]:
    """Answers that score exactly ``score`` (greedy over the points 5..1)."""
    chosen: list[dict[str, str]] = []
    left = score
    for i in range(5, 0, -1):
        right = i <= left
        left -= i if right else 0
        chosen.append({"questionId": f"q{i}", "selectedOption": "a" if right else "b"})
    assert left == 0
    return chosen


def submission(score: int, quiz_id: str = "quiz1", action_id: str | None = None) -> dict[str, Any]:
    return {"quizId": quiz_id, "actionId": action_id or str(uuid.uuid4()), "answers": answers_for(score)}


async def put_quiz(
    http: httpx.AsyncClient, issuer: TokenIssuer, quiz_id: str = "quiz1", **extra: Any
) -> None:
    admin = bearer(issuer.access_token(user_id="root", name="Root", roles=["admin"]))
    body = {"title": "Basics", "questions": QUESTIONS, **extra}
    r = await http.put(f"/api/v1/quizzes/{quiz_id}", json=body, headers=admin)
    assert r.status_code == 200, r.text


async def increments(redis: Any) -> list[tuple[str, int]]:
    entries = [json.loads(f["d"]) for _, f in await redis.xrange(keys.SCORE_STREAM)]
    return [(e["userId"], e["increment"]) for e in entries]


@pytest.fixture
def ada(issuer: TokenIssuer) -> dict[str, str]:
    return bearer(issuer.access_token(user_id="ada", name="Ada", region="EU"))


async def test_the_best_attempt_counts_and_only_its_improvement(
    settings: Settings,
    ingest: httpx.AsyncClient,
    issuer: TokenIssuer,
    redis: Any,
    mongo: Any,
    ada: dict[str, str],
) -> None:
    await put_quiz(ingest, issuer)
    answers = []
    for score in (5, 7, 6, 7):
        r = await ingest.post("/api/v1/quiz/submit", json=submission(score), headers=ada)
        answers.append((r.status_code, r.json()["status"], r.json()["scoreDelta"], r.json()["attempt"]))
    assert answers == [
        (202, "queued", 5, 1),
        (202, "queued", 2, 2),
        (200, "graded", 0, 3),
        (200, "graded", 0, 4),
    ]
    assert await increments(redis) == [("ada", 5), ("ada", 2)]
    stored = sorted(
        [(a["attempt"], a["score"]) async for a in mongo[store.QUIZ_ATTEMPTS].find({"userId": "ada"})]
    )
    assert stored == [(1, 5), (2, 7), (3, 6), (4, 7)]
    # Through the worker: the board holds the best attempt, 7, on the learner's own boards.
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.handle(await redis.xrange(keys.SCORE_STREAM))
    for board in ("global", "region:EU"):
        top = await worker.boards.top(board, 10)
        assert [(row.user_id, row.score) for row in top.rows] == [("ada", 7)]


async def test_the_first_attempt_counts_when_so_configured(
    settings: Settings, redis: Any, mongo: Any, issuer: TokenIssuer, ada: dict[str, str]
) -> None:
    async with asgi_client(create_app(settings.replace(quiz_counting="first")), "http://ingest") as http:
        await put_quiz(http, issuer)
        deltas = [
            (await http.post("/api/v1/quiz/submit", json=submission(s), headers=ada)).json()["scoreDelta"]
            for s in (4, 9)
        ]
    assert deltas == [4, 0]
    assert await increments(redis) == [("ada", 4)]


async def test_a_retried_submission_answers_what_it_did_and_counts_nothing_again(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, mongo: Any, ada: dict[str, str]
) -> None:
    await put_quiz(ingest, issuer)
    body = submission(6)
    first = await ingest.post("/api/v1/quiz/submit", json=body, headers=ada)
    again = await ingest.post("/api/v1/quiz/submit", json=body, headers=ada)
    assert (first.status_code, first.json()["scoreDelta"]) == (202, 6)
    assert (
        again.status_code,
        again.json()["status"],
        again.json()["scoreDelta"],
        again.json()["attempt"],
    ) == (
        200,
        "duplicate",
        6,
        1,
    )
    assert await increments(redis) == [("ada", 6)]
    assert await mongo[store.QUIZ_ATTEMPTS].count_documents({"userId": "ada"}) == 1


async def test_fresh_action_ids_do_not_replay_a_quiz(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, ada: dict[str, str]
) -> None:
    """The cheat of issue #10: the same (perfect) answers again and again, each with a new actionId."""
    await put_quiz(ingest, issuer)
    for _ in range(5):
        r = await ingest.post("/api/v1/quiz/submit", json=submission(15), headers=ada)
        assert r.status_code in (200, 202)
    assert await increments(redis) == [("ada", 15)]


async def test_concurrent_submissions_of_one_user_count_the_best_once(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, mongo: Any, ada: dict[str, str]
) -> None:
    await put_quiz(ingest, issuer)
    scores = [3, 11, 7, 15, 1, 9, 15, 12, 5, 14]
    replies = await asyncio.gather(
        *(ingest.post("/api/v1/quiz/submit", json=submission(s), headers=ada) for s in scores)
    )
    assert all(r.status_code in (200, 202) for r in replies), [r.text for r in replies]
    assert sum(r.json()["scoreDelta"] for r in replies) == 15
    assert sum(increment for _, increment in await increments(redis)) == 15
    assert sorted(r.json()["attempt"] for r in replies) == list(range(1, 11))


async def test_the_count_survives_redis_losing_its_state(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, ada: dict[str, str]
) -> None:
    """The per-user quiz state in Redis expired or was lost: MongoDB's attempts stand in."""
    await put_quiz(ingest, issuer, maxAttempts=4)
    assert (await ingest.post("/api/v1/quiz/submit", json=submission(8), headers=ada)).status_code == 202
    await redis.delete(keys.quiz_tally("ada", "quiz1"))
    same = await ingest.post("/api/v1/quiz/submit", json=submission(8), headers=ada)
    assert (same.json()["scoreDelta"], same.json()["attempt"]) == (0, 2)
    await redis.delete(keys.quiz_tally("ada", "quiz1"))
    better = await ingest.post("/api/v1/quiz/submit", json=submission(10), headers=ada)
    assert (better.json()["scoreDelta"], better.json()["attempt"], better.json()["attemptsLeft"]) == (2, 3, 1)
    assert await increments(redis) == [("ada", 8), ("ada", 2)]


async def test_correct_is_told_only_after_the_last_allowed_attempt(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, ada: dict[str, str]
) -> None:
    """Hole 7: a per-submission ``correct`` lets a learner find the key one question at a time."""
    await put_quiz(ingest, issuer, "open")  # no maxAttempts: the count is never told
    r = await ingest.post("/api/v1/quiz/submit", json=submission(3, "open"), headers=ada)
    assert r.status_code == 202
    assert not {"correct", "total", "score"} & r.json().keys()

    await put_quiz(ingest, issuer, "exam", maxAttempts=2)
    first = (await ingest.post("/api/v1/quiz/submit", json=submission(3, "exam"), headers=ada)).json()
    assert not {"correct", "total", "score"} & first.keys()
    assert (first["attempt"], first["attemptsLeft"]) == (1, 1)
    last_body = submission(6, "exam")
    last = (await ingest.post("/api/v1/quiz/submit", json=last_body, headers=ada)).json()
    assert (last["attempt"], last["attemptsLeft"], last["correct"], last["total"], last["score"]) == (
        2,
        0,
        2,
        5,
        6,
    )
    # The last attempt retried answers the same; a further attempt is refused, not graded.
    again = (await ingest.post("/api/v1/quiz/submit", json=last_body, headers=ada)).json()
    assert (again["status"], again["correct"]) == ("duplicate", 2)
    r = await ingest.post("/api/v1/quiz/submit", json=submission(15, "exam"), headers=ada)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "attempts_exhausted")
    assert await increments(redis) == [("ada", 3), ("ada", 3), ("ada", 3)]


async def test_the_count_is_never_told_when_so_configured(
    settings: Settings, redis: Any, mongo: Any, issuer: TokenIssuer, ada: dict[str, str]
) -> None:
    async with asgi_client(create_app(settings.replace(quiz_reveal_correct=False)), "http://ingest") as http:
        await put_quiz(http, issuer, maxAttempts=1)
        r = await http.post("/api/v1/quiz/submit", json=submission(4), headers=ada)
    assert r.status_code == 202
    assert r.json()["attemptsLeft"] == 0
    assert not {"correct", "total", "score"} & r.json().keys()


async def test_concurrent_submissions_cannot_exceed_max_attempts(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, mongo: Any, ada: dict[str, str]
) -> None:
    await put_quiz(ingest, issuer, maxAttempts=2)
    replies = await asyncio.gather(
        *(ingest.post("/api/v1/quiz/submit", json=submission(s), headers=ada) for s in range(1, 9))
    )
    assert sorted(r.status_code for r in replies).count(409) == 6
    assert await mongo[store.QUIZ_ATTEMPTS].count_documents({"userId": "ada"}) == 2


async def test_a_quiz_names_an_existing_course(ingest: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    admin = bearer(issuer.access_token(user_id="root", name="Root", roles=["admin"]))
    body = {"title": "Basics", "questions": QUESTIONS, "courseId": "no-such-course"}
    r = await ingest.put("/api/v1/quizzes/quiz1", json=body, headers=admin)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_course")
