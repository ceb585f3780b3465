"""Request shapes of the seed designs, accepted as documented aliases (README, "What the API adds"),
and leaderboard entries that always carry ``avatarUrl``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx

from contract import keys
from contract.auth import TokenIssuer
from contract.events import ScoreAction, stream_entry_decoder
from devstack.processes import Stack
from ingest.worker import event_doc
from tests.helpers import bearer
from tests.sse_client import sse
from tests.test_gateway_sse import apply, make_board, publish, wait_for
from tests.test_progress import progress, put_course


async def test_seed_002_scores_events_is_the_leaderboard_stream(
    stack: Stack, redis: Any, issuer: TokenIssuer
) -> None:
    store = await make_board(redis, scores={"ada": 4})
    stack.start("gateway")
    viewer = issuer.access_token(user_id="viewer", name="Viewer")
    async with sse(stack, viewer, path="/api/v1/scores/events") as reader:
        await wait_for(reader, {"ada": 4})
        assert reader.events[0]["event"] == "snapshot"
        version = await apply(store, "global", {"bo": 9})
        await publish(redis, "global", version)
        await wait_for(reader, {"bo": 9, "ada": 4})
        assert reader.events[-1]["event"] == "update"
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:
        r = await client.get("/api/v1/scores/events")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        # Not the fast path (a POST): Starlette's router knows the alias too.
        r = await client.post("/api/v1/scores/events", params={"access_token": viewer})
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_seed_001_watch_time_is_position(ingest: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    await put_course(ingest, issuer)
    token = issuer.access_token(user_id="ada", name="Ada")
    body = {"courseId": "py", "lectureId": "vars", "watchTime": 33.5}
    r = await ingest.post("/api/v1/progress/save", json=body, headers=bearer(token))
    assert (r.status_code, r.json()) == (200, {"message": "synced"})
    view = await progress(ingest, token)
    assert (view["lastWatchedLecture"], view["lastPosition"]) == ("vars", 33.5)
    for bad in (
        {"courseId": "py", "lectureId": "vars"},
        {"courseId": "py", "lectureId": "vars", "watchTime": 40.0, "position": 41.0},
        {"courseId": "py", "lectureId": "vars", "watchTime": -1},
    ):
        r = await ingest.post("/api/v1/progress/save", json=bad, headers=bearer(token))
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body"), bad
    r = await ingest.post("/api/v1/progress/save", json={**body, "watchTime": 50.0}, headers=bearer(token))
    assert r.status_code == 200
    assert (await progress(ingest, token))["lastPosition"] == 50.0


async def test_seed_004_quiz_timestamp_is_stored_never_scored(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, redis: Any, mongo: Any
) -> None:
    # The answer key is written straight to MongoDB: this test is about the submission's shape.
    await mongo["quizzes"].insert_one(
        {"_id": "q1", "title": "Q", "courseId": None, "key": {"a": "x", "b": "y"}, "points": {"a": 3, "b": 4}}
    )
    token = issuer.access_token(user_id="ada", name="Ada")
    sent: dict[str, Any] = {"quizId": "q1", "answers": [{"questionId": "a", "selectedOption": "x"}]}
    for n, (stamp, want_ms) in enumerate(
        (
            ("2023-10-27T10:00:00Z", 1698400800000),
            ("2023-10-27T12:00:00+02:00", 1698400800000),
            (1698400800123, 1698400800123),
        )
    ):
        body = {**sent, "actionId": str(uuid.uuid4()), "timestamp": stamp}
        r = await ingest.post("/api/v1/quiz/submit", json=body, headers=bearer(token))
        assert r.status_code in (200, 202), r.text
        attempt = await mongo["quiz_attempts"].find_one({"_id": keys.user_action("ada", body["actionId"])})
        assert attempt["clientTsMs"] == want_ms
        if n == 0:  # the attempt that scored: its action carries the client's timestamp too
            assert r.status_code == 202 and r.json()["scoreDelta"] == 3
            entries = await redis.xrange(keys.SCORE_STREAM)
            action = stream_entry_decoder.decode(entries[-1][1]["d"])
            assert isinstance(action, ScoreAction)
            assert (action.increment, action.client_ts_ms) == (3, want_ms)
            # The server's clock decides the board's period, not the client's (years ago here).
            now_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
            assert abs(action.ts_ms - now_ms) < 3_600_000
            assert event_doc(action)["clientTsMs"] == want_ms
    for bad in ("yesterday", "2023-10-27T10:00:00", -5, True):
        body = {**sent, "actionId": str(uuid.uuid4()), "timestamp": bad}
        r = await ingest.post("/api/v1/quiz/submit", json=body, headers=bearer(token))
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body"), bad


async def test_leaderboard_entries_carry_avatar_url_null(
    ingest: httpx.AsyncClient, redis: Any, issuer: TokenIssuer
) -> None:
    await make_board(redis, scores={"ada": 5, "bo": 3})
    await redis.hset(keys.user_profile("ada"), mapping={"name": "Ada", "avatarUrl": "https://a/b.png"})
    page = (await ingest.get("/api/v1/scores/leaderboard")).json()
    avatars = [(e["userId"], e["avatarUrl"]) for e in page["entries"]]
    assert avatars == [("ada", "https://a/b.png"), ("bo", None)]
    around = (await ingest.get("/api/v1/scores/around/bo")).json()
    assert around["self"]["avatarUrl"] is None
    assert around["above"][0]["avatarUrl"] == "https://a/b.png"
