"""Quizzes through the ingest API: the answer key an admin stores is the one submissions meet."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from contract import keys
from contract.auth import TokenIssuer
from tests.helpers import bearer

QUIZ = {
    "title": "Basics",
    "courseId": "py",
    "questions": [
        {"questionId": "q1", "correctOption": "b", "points": 3},
        {"questionId": "q2", "correctOption": "a", "points": 2},
    ],
}


def submission(**answers: str) -> dict[str, Any]:
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
    r = await ingest.put("/api/v1/quizzes/quiz1", json=QUIZ, headers=admin)
    assert (r.status_code, r.json()) == (200, {"quizId": "quiz1", "questions": 2})
    r = await ingest.post("/api/v1/quiz/submit", json=submission(q1="b", q2="c"), headers=learner)
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["correct"], r.json()["total"], r.json()["scoreDelta"]) == (
        "queued",
        1,
        2,
        3,
    )
    assert await redis.xlen(keys.SCORE_STREAM) == 1

    changed = {**QUIZ, "questions": [{"questionId": "q1", "correctOption": "c", "points": 4}]}
    assert (await ingest.put("/api/v1/quizzes/quiz1", json=changed, headers=admin)).status_code == 200
    r = await ingest.post("/api/v1/quiz/submit", json=submission(q1="c"), headers=learner)
    assert (r.status_code, r.json()["scoreDelta"], r.json()["total"]) == (202, 4, 1)
    assert [d["_id"] async for d in mongo["quizzes"].find({})] == ["quiz1"]

    r = await ingest.post(
        "/api/v1/quiz/submit", json={**submission(q1="c"), "quizId": "nope"}, headers=learner
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_quiz")
