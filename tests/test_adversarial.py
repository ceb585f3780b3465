"""A cheating client, end to end against the real stack (ingest API, worker and gateway as
processes): each trick is refused, counted once, or flagged, and an honest learner beside the
cheater is untouched (their totals, their progress, no flags).

Eve cheats; Bob is honest. Every test reads the results through the public API only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from contract.auth import TokenIssuer
from devstack.processes import Stack
from tests.eventually import eventually
from tests.helpers import bearer

LECTURE_S = 4.0  # c1's lecture is short: an honest viewer covers it in a few seconds at 2x


def course(lecture_id: str, duration_s: float) -> dict[str, Any]:
    lecture = {"lectureId": lecture_id, "title": lecture_id, "durationSeconds": duration_s, "marks": 5}
    return {"title": "Integrity 101", "sections": [{"sectionId": "s1", "title": "S", "lectures": [lecture]}]}


COURSES = {"c1": course("intro", LECTURE_S), "c2": course("long", 600.0)}
QUIZ_MIN_MS_PER_QUESTION = 1000
QUESTIONS = [{"questionId": f"q{i}", "correctOption": "a", "points": 2} for i in range(3)]


class Client:
    """One person (or service) talking to the ingest API and the gateway."""

    def __init__(self, http: httpx.AsyncClient, stack: Stack, token: str) -> None:
        self.http = http
        self.stack = stack
        self.token = token

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=bearer(self.token))

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(path, json=body, headers=bearer(self.token))

    async def put(self, path: str, body: Any) -> httpx.Response:
        return await self.http.put(path, json=body, headers=bearer(self.token))

    async def submit(self, quiz_id: str, correct: int = 3, action_id: str | None = None) -> httpx.Response:
        answers = [{"questionId": f"q{i}", "selectedOption": "a" if i < correct else "b"} for i in range(3)]
        body = {"quizId": quiz_id, "actionId": action_id or str(uuid.uuid4()), "answers": answers}
        return await self.post("/api/v1/quiz/submit", body)

    async def progress(self, course_id: str = "c1") -> dict[str, Any]:
        r = await self.get(f"/api/v1/progress/{course_id}")
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    def ws(self) -> Any:
        url = self.stack.gateway_url.replace("http://", "ws://") + f"/api/v1/ws?access_token={self.token}"
        return connect(url)


async def ping(ws: ClientConnection, lecture: str, position: float, seq: int) -> None:
    course_id = "c1" if lecture == "intro" else "c2"
    message = {
        "type": "progress",
        "courseId": course_id,
        "lectureId": lecture,
        "position": position,
        "seq": seq,
    }
    await ws.send(json.dumps(message))
    while True:
        answer = json.loads(await ws.recv(decode=True))
        if answer["type"] == "ack" and answer["seq"] == seq:
            return
        assert answer["type"] != "error", answer


async def total(http: httpx.AsyncClient, user_id: str, board: str = "global") -> int | None:
    r = await http.get(f"/api/v1/scores/rank/{user_id}", params={"board": board})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    score: int = r.json()["score"]
    return score


async def flags_of(admin: Client, user_id: str) -> list[dict[str, Any]]:
    r = await admin.get("/api/v1/admin/flags", status="open", userId=user_id)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


class World:
    def __init__(self, stack: Stack, http: httpx.AsyncClient, issuer: TokenIssuer) -> None:
        self.stack = stack
        self.http = http
        self.admin = Client(http, stack, issuer.access_token(user_id="root", name="Root", roles=["admin"]))
        self.scorer = Client(http, stack, issuer.access_token(user_id="svc", name="Svc", roles=["scorer"]))
        self.issuer = issuer

    async def learner(self, user_id: str, name: str) -> Client:
        r = await self.http.post("/api/v1/auth/login", json={"userId": user_id, "name": name, "region": "eu"})
        assert r.status_code == 200, r.text
        return Client(self.http, self.stack, r.json()["accessToken"])

    async def settled(self) -> None:
        """Wait until the worker has applied everything queued so far: a marker user's action,
        queued last, shows on the board (the stream is consumed in order)."""
        marker = f"m{uuid.uuid4().hex[:8]}"
        await self.learner(marker, "Marker")
        body = {"userId": marker, "scoreIncrement": 1, "actionId": str(uuid.uuid4())}
        r = await self.scorer.post("/api/v1/scores/update", body)
        assert r.status_code == 202, r.text
        await eventually(lambda: total(self.http, marker), until=lambda t: t == 1)

    async def quiz(self, quiz_id: str) -> None:
        r = await self.admin.put(f"/api/v1/quizzes/{quiz_id}", {"title": quiz_id, "questions": QUESTIONS})
        assert r.status_code == 200, r.text

    async def courses(self) -> None:
        for course_id, body in COURSES.items():
            r = await self.admin.put(f"/api/v1/courses/{course_id}", body)
            assert r.status_code == 200, r.text

    async def honest_user_untouched(
        self, bob: Client, *, score: int, completed: list[str] | None = None
    ) -> None:
        assert await eventually(lambda: total(self.http, "bob"), until=lambda t: t == score) == score
        assert await flags_of(self.admin, "bob") == []
        if completed is not None:
            assert (await bob.progress())["completedLectures"] == completed


@pytest.fixture
async def world(stack: Stack, issuer: TokenIssuer) -> AsyncIterator[World]:
    stack.start("ingest.api")
    stack.start(
        "ingest.worker",
        flag_burst_actions=4,
        flag_burst_window_s=600.0,
        flag_block_s=600,
        flag_quiz_min_ms_per_question=QUIZ_MIN_MS_PER_QUESTION,
    )
    stack.start("gateway")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        yield World(stack, http, issuer)


async def test_a_learner_cannot_raise_a_score_directly(world: World) -> None:
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    for body in (
        {"scoreIncrement": 1000, "actionId": str(uuid.uuid4())},
        {"userId": "eve", "scoreIncrement": 1000, "actionId": str(uuid.uuid4())},
        {"userId": "bob", "scoreIncrement": 1, "actionId": str(uuid.uuid4())},  # nor anyone else's
    ):
        r = await eve.post("/api/v1/scores/update", body)
        assert r.status_code in (400, 403), r.text
        if "userId" in body:
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    r = await world.scorer.post(
        "/api/v1/scores/update", {"userId": "bob", "scoreIncrement": 7, "actionId": str(uuid.uuid4())}
    )
    assert r.status_code == 202, r.text
    await world.honest_user_untouched(bob, score=7)
    await world.settled()
    assert await total(world.http, "eve") is None
    assert (await bob.get("/api/v1/scores/rank/bob")).json()["rank"] == 1


async def test_quiz_replays_with_fresh_action_ids_count_once(world: World) -> None:
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    await world.quiz("qz")
    first = await eve.submit("qz", correct=1)
    assert first.status_code == 202, first.text
    for _ in range(3):  # the same quiz again and again, each time a new actionId
        r = await eve.submit("qz", correct=3)
        assert r.status_code in (200, 202, 409), r.text  # 409: out of attempts
    assert (await bob.submit("qz", correct=3)).status_code == 202
    await world.settled()
    assert await total(world.http, "eve") == 6  # the best attempt, once
    await world.honest_user_untouched(bob, score=6)

    # The audit log is written in the batch after the boards: wait for it, then it says the same.
    async def audited() -> int:
        r = await world.admin.get("/api/v1/admin/audit", userId="eve")
        return sum(i["increment"] for i in r.json()["items"])

    assert await eventually(audited, until=lambda n: n >= 6) == 6


async def test_a_quiz_answered_faster_than_humanly_possible_is_flagged(world: World) -> None:
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    await world.quiz("qz")
    for learner in (eve, bob):
        assert (await learner.get("/api/v1/quizzes/qz")).status_code == 200  # the clock starts
    assert (await eve.submit("qz")).status_code == 202  # at once: the answers came from elsewhere
    await asyncio.sleep(len(QUESTIONS) * QUIZ_MIN_MS_PER_QUESTION / 1000 + 0.2)  # bob reads them
    assert (await bob.submit("qz")).status_code == 202
    [flag] = await eventually(lambda: flags_of(world.admin, "eve"), until=lambda f: len(f) >= 1)
    assert flag["rule"] == "quiz_too_fast" and flag["evidence"]["questions"] == 3
    await world.settled()
    await world.honest_user_untouched(bob, score=6)


async def test_an_action_id_reused_for_another_user_counts_for_both(world: World) -> None:
    """Eve learns the actionId of bob's next award and gets it sent for herself first, hoping
    bob's own is then refused as a duplicate."""
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    reused = str(uuid.uuid4())
    for user_id, points in (("eve", 3), ("bob", 8)):
        body = {"userId": user_id, "scoreIncrement": points, "actionId": reused}
        r = await world.scorer.post("/api/v1/scores/update", body)
        assert (r.status_code, r.json()["status"]) == (202, "queued"), r.text
    again = {"userId": "bob", "scoreIncrement": 8, "actionId": reused}  # a retry IS a duplicate
    r = await world.scorer.post("/api/v1/scores/update", again)
    assert (r.status_code, r.json()["status"]) == (200, "duplicate")
    await world.settled()
    assert await total(world.http, "eve") == 3
    await world.honest_user_untouched(bob, score=8)
    assert eve.token != bob.token


async def test_seeking_to_the_end_completes_nothing(world: World) -> None:
    await world.courses()
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    async with eve.ws() as eve_ws, bob.ws() as bob_ws:
        await ping(eve_ws, "intro", 0.0, 1)
        await ping(bob_ws, "intro", 0.0, 1)
        await ping(eve_ws, "intro", LECTURE_S, 2)  # the seek bar dragged to the end
        for seq, position in ((2, LECTURE_S / 2), (3, LECTURE_S)):
            await asyncio.sleep(LECTURE_S / 2)  # Bob plays it at 1x: real time has to pass for that
            await ping(bob_ws, "intro", position, seq)
    await world.honest_user_untouched(bob, score=10, completed=["intro"])
    view = await eve.progress()
    assert view["completedLectures"] == [] and view["lastPosition"] == LECTURE_S  # resumes there
    r = await eve.post("/api/v1/progress/complete", {"courseId": "c1", "lectureId": "intro"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_watched"
    await world.settled()
    assert await total(world.http, "eve") is None


async def test_a_burst_of_pings_with_implausible_advances_covers_nothing(world: World) -> None:
    await world.courses()
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    async with eve.ws() as eve_ws:
        for n in range(31):  # +20 s of video every few milliseconds
            await ping(eve_ws, "long", 20.0 * n, n + 1)
    view = await eve.progress("c2")
    assert view["completedLectures"] == []
    assert view["watchTimes"].get("long", 0) <= 10  # what 2x of the burst's wall time allows, at most
    r = await eve.post("/api/v1/progress/complete", {"courseId": "c2", "lectureId": "long"})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_watched")
    await world.settled()
    assert await total(world.http, "eve", board="course:c2") is None
    assert (await bob.progress())["completedLectures"] == []


async def test_a_burst_of_successful_actions_is_flagged_and_blocked(world: World) -> None:
    eve = await world.learner("eve", "Eve")
    bob = await world.learner("bob", "Bob")
    for i in range(6):
        await world.quiz(f"qz{i}")
    for i in range(6):  # six quizzes aced in a row, as fast as the API answers
        assert (await eve.submit(f"qz{i}")).status_code == 202
    for i in range(2):
        assert (await bob.submit(f"qz{i}")).status_code == 202
    [flag] = await eventually(lambda: flags_of(world.admin, "eve"), until=lambda f: len(f) >= 1)
    assert flag["rule"] == "burst" and "blockedUntil" in flag
    blocked = await eventually(lambda: eve.submit("qz0"), until=lambda r: r.status_code == 403)
    assert blocked.json()["error"]["code"] == "temporarily_blocked"
    assert blocked.json()["error"]["until"] == flag["blockedUntil"]
    await world.honest_user_untouched(bob, score=12)
    assert (await bob.submit("qz2")).status_code == 202  # bob scores on

    r = await world.admin.post("/api/v1/admin/flags/eve/clear")
    assert r.json() == {"userId": "eve", "cleared": 1}
    await world.quiz("qz9")
    assert (await eve.submit("qz9")).status_code == 202
