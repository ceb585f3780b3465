"""A cheating client against the real stack (issue #10): every trick is refused, counted once or
flagged, and an honest learner next to the cheater is untouched.

Scoring tricks live here; the video tricks (seek-to-end, implausible ping bursts, locked
lectures) are played against an honest viewer in tests/test_watch_coverage.py."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from contract.auth import TokenIssuer
from devstack.processes import Stack
from tests.eventually import eventually
from tests.helpers import bearer, login, score, scorer_token

QUESTIONS = [{"questionId": f"q{i}", "correctOption": "a", "points": 5} for i in range(3)]


def answers(right: int) -> list[dict[str, str]]:
    return [{"questionId": f"q{i}", "selectedOption": "a" if i < right else "b"} for i in range(3)]


async def totals(http: httpx.AsyncClient) -> dict[str, int]:
    r = await http.get("/api/v1/scores/leaderboard", params={"board": "region:EU", "limit": 100})
    assert r.status_code == 200, r.text
    return {e["userId"]: e["score"] for e in r.json()["entries"]}


async def test_a_cheater_gains_nothing_and_an_honest_learner_is_untouched(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker", flag_burst_actions=5, flag_burst_window_s=60.0, flag_block_s=600)
    admin = bearer(issuer.access_token(user_id="root", name="Root", roles=["admin"]))
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        mallory = bearer(await login(http, "mallory", "Mallory", region="eu"))
        hana = bearer(await login(http, "hana", "Hana", region="eu"))
        quiz = {"title": "Q", "questions": QUESTIONS}
        assert (await http.put("/api/v1/quizzes/quiz1", json=quiz, headers=admin)).status_code == 200

        # 1. Direct increments with her own token, for herself or to lower a rival: refused.
        for user_id in ("mallory", "hana"):
            body = {"userId": user_id, "scoreIncrement": 1000, "actionId": str(uuid.uuid4())}
            r = await http.post("/api/v1/scores/update", json=body, headers=mallory)
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

        # 2. The perfect answers replayed with fresh actionIds: counted once.
        deltas = []
        for _ in range(5):
            body = {"quizId": "quiz1", "actionId": str(uuid.uuid4()), "answers": answers(3)}
            r = await http.post("/api/v1/quiz/submit", json=body, headers=mallory)
            assert r.status_code in (200, 202), r.text
            assert not {"correct", "total"} & r.json().keys()  # the key is not told per try
            deltas.append(r.json()["scoreDelta"])
        assert deltas == [15, 0, 0, 0, 0]
        honest = {"quizId": "quiz1", "actionId": str(uuid.uuid4()), "answers": answers(2)}
        assert (await http.post("/api/v1/quiz/submit", json=honest, headers=hana)).status_code == 202

        # 3. A burst of score actions (a leaked scorer token): flagged, then blocked.
        scorer = scorer_token(issuer)
        codes = [(await score(http, scorer, "mallory", 1)).status_code for _ in range(8)]
        assert set(codes) <= {202, 403}
        flags = await eventually(
            lambda: http.get("/api/v1/admin/flags", headers=admin),
            until=lambda r: any(f["userId"] == "mallory" for f in r.json()["items"]),
        )
        assert {(f["userId"], f["rule"]) for f in flags.json()["items"]} == {("mallory", "burst")}
        blocked = await score(http, scorer, "mallory", 1)
        assert (blocked.status_code, blocked.json()["error"]["code"]) == (403, "temporarily_blocked")

        # The honest learner keeps exactly what she earned; the cheater what was let through.
        want = {"hana": 10, "mallory": 15 + codes.count(202)}
        got: dict[str, Any] = await eventually(lambda: totals(http), until=lambda t: t == want)
        assert got == want
        assert (await score(http, scorer, "hana", 1)).status_code == 202  # not blocked
