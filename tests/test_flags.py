"""Anomaly flags on real processes: rules raise one flag per user, rule and window; blocks
refuse a flagged user's writes until an admin clears them; /metrics counts both."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from contract import keys
from contract.auth import TokenIssuer
from devstack.processes import Stack
from tests.eventually import eventually
from tests.helpers import bearer, login, scorer_token


async def score(
    http: httpx.AsyncClient, scorer: str, user_id: str, increment: int, action_id: str | None = None
) -> httpx.Response:
    body = {"userId": user_id, "scoreIncrement": increment, "actionId": action_id or str(uuid.uuid4())}
    return await http.post("/api/v1/scores/update", json=body, headers=bearer(scorer))


async def flags(http: httpx.AsyncClient, admin: str, status: str = "open") -> list[dict[str, Any]]:
    r = await http.get("/api/v1/admin/flags", params={"status": status}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no sample {name} {labels} in:\n{text}"
    return float(found.group(1))


async def test_a_burst_is_flagged_once_blocks_until_cleared_and_is_counted(
    stack: Stack, issuer: TokenIssuer, redis: Any
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker", flag_burst_actions=3, flag_burst_window_s=60.0, flag_block_s=600)
    scorer = scorer_token(issuer)
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        eve = await login(http, "eve", "Eve")
        await login(http, "bob", "Bob")
        assert (await score(http, scorer, "bob", 5)).status_code == 202
        for _ in range(6):
            assert (await score(http, scorer, "eve", 5)).status_code == 202
        open_flags = await eventually(lambda: flags(http, admin), until=lambda f: len(f) >= 1)
        await eventually(lambda: redis.exists(keys.score_block("eve")))
        blocked = await score(http, scorer, "eve", 5)
        assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "temporarily_blocked"
        until = blocked.json()["error"]["until"]
        assert until.endswith("Z")
        # A quiz submission is refused too, even one worth no points (a blocked user gets no
        # grading either: replaying answers to learn the key is what a block stops).
        quiz = {"title": "Q", "questions": [{"questionId": "q1", "correctOption": "a"}]}
        assert (await http.put("/api/v1/quizzes/qz", json=quiz, headers=bearer(admin))).status_code == 200
        wrong = {
            "quizId": "qz",
            "actionId": str(uuid.uuid4()),
            "answers": [{"questionId": "q1", "selectedOption": "b"}],
        }
        r = await http.post("/api/v1/quiz/submit", json=wrong, headers=bearer(eve))
        assert (r.status_code, r.json()["error"]["until"]) == (403, until)
        assert await flags(http, admin) == open_flags  # once per user, rule and window
        [flag] = open_flags
        assert (flag["userId"], flag["rule"], flag["status"], flag["blockedUntil"]) == (
            "eve",
            "burst",
            "open",
            until,
        )
        assert flag["evidence"]["actions"] == 4 and flag["evidence"]["max"] == 3

        # The honest user beside the cheater scores on and is not flagged.
        assert (await score(http, scorer, "bob", 5)).status_code == 202
        rank = await eventually(
            lambda: http.get("/api/v1/scores/rank/eve"),
            until=lambda r: r.status_code == 200 and r.json()["score"] == 30,
        )
        assert rank.json()["score"] == 30

        text = (await http.get("/metrics")).text
        assert metric(text, "scorecast_flags_raised_total", rule="burst") == 1
        assert metric(text, "scorecast_flags_raised_total", rule="jump") == 0
        assert metric(text, "scorecast_blocks_active") == 1
        assert metric(text, "scorecast_blocks_applied_total") == 1
        assert metric(text, "scorecast_flags_open") == 1
        assert metric(text, "scorecast_score_writes_total", endpoint="scores", outcome="blocked") >= 1
        assert metric(text, "scorecast_score_writes_total", endpoint="scores", outcome="accepted") == 8

        learner_clear = await http.post("/api/v1/admin/flags/eve/clear", headers=bearer(eve))
        assert learner_clear.status_code == 403
        cleared = await http.post("/api/v1/admin/flags/eve/clear", headers=bearer(admin))
        assert cleared.status_code == 200 and cleared.json() == {"userId": "eve", "cleared": 1}
        assert (await score(http, scorer, "eve", 5)).status_code == 202
        assert await flags(http, admin) == []
        assert [(f["userId"], f["status"]) for f in await flags(http, admin, "cleared")] == [
            ("eve", "cleared")
        ]
        text = (await http.get("/metrics")).text
        assert metric(text, "scorecast_blocks_active") == 0
        assert metric(text, "scorecast_flags_raised_total", rule="burst") == 1

        bad = await http.get("/api/v1/admin/flags", params={"status": "maybe"}, headers=bearer(admin))
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_query"
        assert (await http.post("/api/v1/admin/flags/a%7Db/clear", headers=bearer(admin))).status_code == 400


async def test_a_jump_far_above_the_users_and_the_boards_norm_is_flagged(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    scorer = scorer_token(issuer)
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "eve", "Eve")
        await login(http, "bob", "Bob")
        for _ in range(3):
            assert (await score(http, scorer, "bob", 10)).status_code == 202
            assert (await score(http, scorer, "eve", 10)).status_code == 202
        await eventually(lambda: http.get("/api/v1/scores/rank/eve"), until=lambda r: r.status_code == 200)
        assert (await score(http, scorer, "eve", 1000)).status_code == 202
        [flag] = await eventually(lambda: flags(http, admin), until=lambda f: len(f) >= 1)
    assert (flag["userId"], flag["rule"]) == ("eve", "jump")
    assert flag["evidence"]["increment"] == 1000 and flag["evidence"]["userMean"] == 10
    assert "blockedUntil" not in flag  # blocks are off by default: flags are for review


async def test_a_quiz_answered_faster_than_possible_is_flagged(stack: Stack, issuer: TokenIssuer) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker", flag_quiz_min_ms_per_question=60_000)
    eve = issuer.access_token(user_id="eve", name="Eve")
    bob = issuer.access_token(user_id="bob", name="Bob")
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    questions = [{"questionId": f"q{i}", "correctOption": "a", "points": 2} for i in range(3)]
    answers = [{"questionId": f"q{i}", "selectedOption": "a"} for i in range(3)]
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        put = await http.put(
            "/api/v1/quizzes/qz1", json={"title": "Q", "questions": questions}, headers=bearer(admin)
        )
        assert put.status_code == 200, put.text
        fetched = await http.get("/api/v1/quizzes/qz1", headers=bearer(eve))
        assert fetched.status_code == 200
        assert fetched.json()["questions"] == [{"questionId": f"q{i}", "points": 2} for i in range(3)]
        assert "correctOption" not in fetched.text
        for token in (eve, bob):  # bob never fetched it: not timed, not flagged
            body = {"quizId": "qz1", "actionId": str(uuid.uuid4()), "answers": answers}
            r = await http.post("/api/v1/quiz/submit", json=body, headers=bearer(token))
            assert r.status_code == 202, r.text
        await eventually(lambda: http.get("/api/v1/scores/rank/bob"), until=lambda r: r.status_code == 200)
        [flag] = await eventually(lambda: flags(http, admin), until=lambda f: len(f) >= 1)
    assert (flag["userId"], flag["rule"]) == ("eve", "quiz_too_fast")
    assert flag["evidence"]["questions"] == 3 and flag["evidence"]["minimumMs"] == 180_000


async def test_a_quiz_can_require_a_fetch_before_its_submission(stack: Stack, issuer: TokenIssuer) -> None:
    stack.start("ingest.api", quiz_require_start=True)
    eve = issuer.access_token(user_id="eve", name="Eve")
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    questions = [{"questionId": "q1", "correctOption": "a"}]
    body = {
        "quizId": "qz1",
        "actionId": str(uuid.uuid4()),
        "answers": [{"questionId": "q1", "selectedOption": "a"}],
    }
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        put = await http.put(
            "/api/v1/quizzes/qz1", json={"title": "Q", "questions": questions}, headers=bearer(admin)
        )
        assert put.status_code == 200
        r = await http.post("/api/v1/quiz/submit", json=body, headers=bearer(eve))
        assert r.status_code == 409 and r.json()["error"]["code"] == "quiz_not_started"
        assert (await http.get("/api/v1/quizzes/qz1", headers=bearer(eve))).status_code == 200
        assert (await http.post("/api/v1/quiz/submit", json=body, headers=bearer(eve))).status_code == 202
        assert (await http.get("/api/v1/quizzes/nope", headers=bearer(eve))).status_code == 404
