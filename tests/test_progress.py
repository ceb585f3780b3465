"""Video progress on real processes: WebSocket pings, resume before and after a flush,
ordering, cross-device sync, completion and unlocking, the HTTP fallback, bad pings."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from contract import keys
from contract.auth import TokenIssuer
from contract.events import completion_event_decoder
from contract.progress import ResumePoint
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import free_port, redis_server
from tests.eventually import eventually
from tests.helpers import bearer
from tests.test_gateway_ws import recv, recv_type, ws_url

COURSE = {
    "title": "Python in a day",
    "sections": [
        {
            "sectionId": "basics",
            "title": "Basics",
            "lectures": [
                {"lectureId": "intro", "title": "Intro", "durationSeconds": 100, "marks": 0},
                {"lectureId": "vars", "title": "Variables", "durationSeconds": 200, "marks": 5},
            ],
        },
        {
            "sectionId": "control",
            "title": "Control flow",
            "lectures": [{"lectureId": "loops", "title": "Loops", "durationSeconds": 300, "marks": 10}],
        },
    ],
}


async def put_course(http: httpx.AsyncClient, issuer: TokenIssuer, course_id: str = "py") -> httpx.Response:
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    return await http.put(f"/api/v1/courses/{course_id}", json=COURSE, headers=bearer(admin))


async def progress(http: httpx.AsyncClient, token: str, course_id: str = "py") -> dict[str, Any]:
    r = await http.get(f"/api/v1/progress/{course_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def ping(
    ws: ClientConnection, lecture: str, position: float, seq: int, course: str = "py"
) -> dict[str, Any]:
    await ws.send(
        json.dumps(
            {"type": "progress", "courseId": course, "lectureId": lecture, "position": position, "seq": seq}
        )
    )
    return await recv_type(ws, "ack") if course == "py" else await recv(ws)


async def ping_counters(stack: Stack) -> tuple[int, int]:
    """The gateway's own counts of stored pings and of the Redis round trips that stored them."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{stack.gateway_url}/metrics")).text
    found = [
        re.search(rf"^scorecast_gateway_progress_{name}_total (\S+)$", text, re.M)
        for name in ("pings", "round_trips")
    ]
    assert all(found), text
    pings, round_trips = (int(float(m.group(1))) for m in found if m)
    return pings, round_trips


@pytest.fixture
def token(issuer: TokenIssuer) -> str:
    return issuer.access_token(user_id="ada", name="Ada", region="EU", tz="Europe/Paris")


async def test_course_put_is_admin_only_validated_and_readable(
    stack: Stack, issuer: TokenIssuer, token: str
) -> None:
    stack.start("ingest.api")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        r = await http.put("/api/v1/courses/py", json=COURSE, headers=bearer(token))
        assert r.status_code == 403
        r = await put_course(http, issuer)
        assert r.status_code == 200
        assert (r.json()["lectureCount"], r.json()["totalMarks"]) == (3, 15)
        assert (await http.get("/api/v1/courses/py")).json()["sections"][1]["lectures"][0][
            "lectureId"
        ] == "loops"
        admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
        twice = {**COURSE, "sections": [COURSE["sections"][0], COURSE["sections"][0]]}
        for body, code in (
            (twice, "duplicate_lecture"),
            ({"title": "x", "sections": []}, "empty_course"),
            ({"title": "x"}, "invalid_body"),
            ({**COURSE, "sections": [{"sectionId": "s", "title": "t", "lectures": [
                {"lectureId": "a.b", "title": "dotted", "durationSeconds": 5}]}]}, "invalid_body"),
        ):  # fmt: skip
            r = await http.put("/api/v1/courses/other", json=body, headers=bearer(admin))
            assert (r.status_code, r.json()["error"]["code"]) == (400, code)
        assert (await http.get("/api/v1/courses/other")).status_code == 404


async def unflushed(redis: Any) -> int:
    """Keys dirty or still being flushed (the flusher moves a batch to the in-flight set first)."""
    return int(await redis.scard(keys.PROGRESS_DIRTY)) + int(await redis.scard(keys.PROGRESS_INFLIGHT))


async def test_pings_resume_before_and_after_a_flush(
    stack: Stack, issuer: TokenIssuer, token: str, redis: Any, mongo: Any
) -> None:
    stack.start("ingest.api")
    stack.start("gateway")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http, connect(ws_url(stack, token)) as ws:
        await put_course(http, issuer)
        assert await ping(ws, "intro", 41.0, 1) == {"type": "ack", "seq": 1}
        assert await ping(ws, "intro", 42.5, 2) == {"type": "ack", "seq": 2}  # within the slack
        before = await progress(http, token)
        assert (before["lastWatchedLecture"], before["lastPosition"]) == ("intro", 42.5)
        assert before["watchTimes"] == {"intro": 1.5}  # seconds covered, not the playhead
        assert await mongo["progress"].count_documents({}) == 0  # only in Redis so far

        flusher = stack.start("ingest.flusher")
        await eventually(lambda: unflushed(redis), until=lambda n: n == 0)
        doc = await mongo["progress"].find_one({"_id": "ada|py"})
        assert (ResumePoint.of_document(doc), doc["w_intro"], doc["i_intro"]) == (
            ResumePoint(2, "intro", 42.5),
            1.5,
            "41-42.5",
        )
        assert await redis.ttl(keys.progress("ada", "py")) > 0  # flushed: may expire again
        await redis.delete(keys.progress("ada", "py"))  # as if it expired: MongoDB has it
        after = await progress(http, token)
        assert (after["lastWatchedLecture"], after["lastPosition"]) == ("intro", 42.5)
        flusher.stop()


async def test_out_of_order_and_duplicate_seqs_never_move_the_resume_point_back(
    stack: Stack, issuer: TokenIssuer, token: str
) -> None:
    stack.start("ingest.api")
    stack.start("gateway")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http, connect(ws_url(stack, token)) as ws:
        await put_course(http, issuer)
        await ping(ws, "vars", 50.0, 5)
        assert await ping(ws, "intro", 10.0, 3) == {"type": "ack", "seq": 3}  # late: acked, ignored
        assert await ping(ws, "vars", 99.0, 5) == {"type": "ack", "seq": 5}  # duplicate seq
        view = await progress(http, token)
        assert (view["lastWatchedLecture"], view["lastPosition"]) == ("vars", 50.0)
        # Nothing was watched: a late ping, a repeat and a seek back cover nothing (and "vars" is
        # locked until "intro" completes).
        assert view["watchTimes"] == {}
        await ping(ws, "vars", 20.0, 6)
        view = await progress(http, token)
        assert (view["lastPosition"], view["watchTimes"]) == (20.0, {})


async def test_the_same_users_other_connection_follows_live(
    stack: Stack, issuer: TokenIssuer, token: str
) -> None:
    stack.start("ingest.api")
    stack.start("gateway")
    other_user = issuer.access_token(user_id="bo", name="Bo")
    async with (
        httpx.AsyncClient(base_url=stack.ingest_url) as http,
        connect(ws_url(stack, token)) as phone,
        connect(ws_url(stack, token)) as laptop,
        connect(ws_url(stack, other_user)) as stranger,
    ):
        await put_course(http, issuer)
        for ws in (phone, laptop, stranger):  # all three registered before the ping
            await ws.send(json.dumps({"type": "ping"}))
            assert await recv(ws) == {"type": "pong"}
        await ping(phone, "vars", 77.0, 100)
        moved = await recv(laptop)
        assert moved == {
            "type": "progress",
            "courseId": "py",
            "lectureId": "vars",
            "position": 77.0,
            "seq": 100,
        }
        await stranger.send(json.dumps({"type": "ping"}))
        assert await recv(stranger) == {"type": "pong"}  # nothing about Ada's video came first
        await phone.send(json.dumps({"type": "ping"}))
        assert await recv(phone) == {"type": "pong"}  # not echoed to the device that sent it


async def test_watching_95_percent_completes_and_unlocks_the_next_lecture(
    stack: Stack, issuer: TokenIssuer, token: str, redis: Any, mongo: Any
) -> None:
    # A slack as long as the lecture lets this test "watch" it in milliseconds (test_coverage
    # and test_watch_coverage play real time at the default settings).
    stack.settings = stack.settings.replace(coverage_slack_s=1000.0)
    stack.start_all()
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http, connect(ws_url(stack, token)) as ws:
        await put_course(http, issuer)
        assert (await progress(http, token))["unlockedLectures"] == ["intro"]
        await ping(ws, "intro", 0.0, 1)
        await ping(ws, "intro", 90.0, 2)  # 90 %: not yet
        assert (await progress(http, token))["completedLectures"] == []
        await ping(ws, "intro", 95.0, 3)
        await ping(ws, "intro", 100.0, 4)  # completing twice counts once
        view = await progress(http, token)
        assert view["completedLectures"] == ["intro"]
        assert view["unlockedLectures"] == ["intro", "vars"]
        assert view["completionPercentage"] == 33.3
        events = await redis.xrange(keys.COMPLETION_STREAM)
        assert len(events) == 1
        event = completion_event_decoder.decode(events[0][1]["d"])
        assert (event.user_id, event.course_id, event.lecture_id, event.tz) == (
            "ada",
            "py",
            "intro",
            "Europe/Paris",
        )
        # The achievement consumer writes it through and scores the course board.
        doc = await eventually(lambda: mongo["progress"].find_one({"_id": "ada|py"}), until=bool)
        assert doc["completedLectures"] == ["intro"]
        assert doc["unlockedLectures"] == ["vars"]

        async def course_board() -> list[Any]:
            r = await http.get("/api/v1/scores/leaderboard", params={"board": "course:py"})
            return [(e["userId"], e["score"]) for e in r.json()["entries"]]

        assert await eventually(course_board, until=bool) == [("ada", 10)]
        stats = await eventually(
            lambda: http.get("/api/v1/stats/student", headers=bearer(token)),
            until=lambda r: r.json()["totalCompleted"] == 1,
        )
        assert stats.json()["currentStreak"] == 1
        listing = (await http.get("/api/v1/stats/course-progress", headers=bearer(token))).json()
        assert listing == [{"courseId": "py", "progress": 33.3}]


async def test_http_fallback_save_and_explicit_complete(
    stack: Stack, issuer: TokenIssuer, token: str
) -> None:
    stack.start("ingest.api")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await put_course(http, issuer)
        body = {"courseId": "py", "lectureId": "vars", "position": 12.0, "seq": 7}
        r = await http.post("/api/v1/progress/save", json=body, headers=bearer(token))
        assert (r.status_code, r.json()) == (200, {"message": "synced"})
        r = await http.post(
            "/api/v1/progress/save", json={**body, "position": 3.0, "seq": 6}, headers=bearer(token)
        )
        assert r.status_code == 200
        assert (await progress(http, token))["lastPosition"] == 12.0
        for lecture, status, code in (("intro", 409, "not_watched"), ("vars", 403, "lecture_locked")):
            body = {"courseId": "py", "lectureId": lecture}
            r = await http.post("/api/v1/progress/complete", json=body, headers=bearer(token))
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        for bad, status, code in (
            ({"courseId": "nope", "lectureId": "x", "position": 1}, 404, "unknown_course"),
            ({"courseId": "py", "lectureId": "x", "position": 1}, 400, "unknown_lecture"),
            ({"courseId": "py", "lectureId": "vars", "position": -1}, 400, "invalid_body"),
            ({"courseId": "py", "lectureId": "vars", "position": "1"}, 400, "invalid_body"),
        ):
            r = await http.post("/api/v1/progress/save", json=bad, headers=bearer(token))
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        assert (await http.post("/api/v1/progress/save", json=body)).status_code == 401
        assert (await http.get("/api/v1/progress/nope", headers=bearer(token))).status_code == 404


async def test_pings_for_unknown_courses_and_lectures_get_errors(
    stack: Stack, issuer: TokenIssuer, token: str
) -> None:
    stack.start("ingest.api")
    stack.start("gateway")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http, connect(ws_url(stack, token)) as ws:
        await put_course(http, issuer)
        error = await ping(ws, "intro", 1.0, 1, course="secret")
        assert (error["type"], error["code"], error["seq"]) == ("error", "unknown_course", 1)
        await ws.send(
            json.dumps({"type": "progress", "courseId": "py", "lectureId": "ghost", "position": 1, "seq": 2})
        )
        error = await recv(ws)
        assert (error["type"], error["code"], error["seq"]) == ("error", "unknown_lecture", 2)
        assert await ping(ws, "intro", 1.0, 3) == {"type": "ack", "seq": 3}  # still open and working


async def test_many_concurrent_pings_share_round_trips(stack: Stack, issuer: TokenIssuer) -> None:
    stack.start("ingest.api")
    stack.start("gateway")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await put_course(http, issuer)
        tokens = [issuer.access_token(user_id=f"u{i}", name=f"U{i}") for i in range(20)]
        sockets = [await connect(ws_url(stack, t)).__aenter__() for t in tokens]
        try:
            for round_ in range(5):
                await asyncio.gather(
                    *(ping(ws, "loops", 10.0 * round_ + i, round_ + 1) for i, ws in enumerate(sockets))
                )
            views = [await progress(http, t) for t in tokens]
            assert [v["lastPosition"] for v in views] == [40.0 + i for i in range(20)]
        finally:
            for ws in sockets:
                await ws.close()
    pings, round_trips = await ping_counters(stack)
    assert pings == 100
    assert round_trips < pings


@pytest.mark.usefixtures("ws_path")
async def test_a_burst_from_one_connection_is_acked_in_order_and_shares_round_trips(
    stack: Stack, issuer: TokenIssuer, token: str
) -> None:
    stack.start("ingest.api")
    stack.start("gateway", ws_rate_limit_burst=100)
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await put_course(http, issuer)
        async with connect(ws_url(stack, token)) as ws:
            fields = {"type": "progress", "courseId": "py", "lectureId": "loops"}
            burst = [json.dumps({**fields, "position": s, "seq": s}) for s in range(1, 41)]
            for message in burst:  # sent back to back, before any ack is read
                await ws.send(message)
            acks = [await recv_type(ws, "ack") for _ in burst]
            assert [a["seq"] for a in acks] == list(range(1, 41))
            # The connection stays usable after the burst.
            assert await ping(ws, "loops", 41.0, 41) == {"type": "ack", "seq": 41}
        view = await progress(http, token)
        assert (view["lastWatchedLecture"], view["lastPosition"]) == ("loops", 41.0)
    pings, round_trips = await ping_counters(stack)
    assert pings == 41
    assert round_trips < 41


async def test_presence_counts_the_users_open_connections(stack: Stack, token: str, redis: Any) -> None:
    stack.start("gateway")
    key = keys.presence("ada")
    async with connect(ws_url(stack, token)) as first:
        await first.send(json.dumps({"type": "ping"}))
        await recv(first)
        assert await redis.get(key) == "1"
        async with connect(ws_url(stack, token)) as second:
            await second.send(json.dumps({"type": "ping"}))
            await recv(second)
            assert await redis.get(key) == "2"
        assert await eventually(lambda: redis.get(key), until=lambda v: v == "1") == "1"
    assert await eventually(lambda: redis.get(key), until=lambda v: v == "0") == "0"


async def ping_reply(ws: ClientConnection, position: float, seq: int) -> dict[str, Any]:
    """Ping lecture ``intro`` of course ``py``; the next message, whatever it is."""
    fields = {"type": "progress", "courseId": "py", "lectureId": "intro"}
    await ws.send(json.dumps({**fields, "position": position, "seq": seq}))
    return await recv(ws)


async def test_redis_down_answers_pings_with_errors_and_the_connection_lives_on(
    settings: Settings, issuer: TokenIssuer, token: str, tmp_path: Path
) -> None:
    own = redis_server(free_port(), tmp_path / "redis").start()
    stack = Stack(settings.replace(redis_url=own.url, ws_max_violations=3), tmp_path)
    try:
        stack.start("ingest.api")
        stack.start("gateway")
        async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
            await put_course(http, issuer)
        async with connect(ws_url(stack, token)) as ws:
            assert await ping(ws, "intro", 10.0, 1) == {"type": "ack", "seq": 1}
            own.stop()
            # More failures than WS_MAX_VIOLATIONS: an outage is not the client's fault.
            for seq in range(2, 7):
                reply = await ping_reply(ws, 10.0 * seq, seq)
                assert (reply["type"], reply["code"], reply["seq"]) == ("error", "unavailable", seq), reply
            own.start()  # the same data directory: its AOF brings the first ping back
            reply = await eventually(lambda: ping_reply(ws, 70.0, 7), until=lambda r: r["type"] == "ack")
            assert reply == {"type": "ack", "seq": 7}
        async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
            view = await progress(http, token)
        assert (view["lastWatchedLecture"], view["lastPosition"]) == ("intro", 70.0)
    finally:
        stack.close()
        own.stop()
