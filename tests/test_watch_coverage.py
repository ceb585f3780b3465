"""Completion by watched coverage, end to end on real processes at the default settings: honest
viewers complete, cheating clients do not, locked lectures earn nothing, and every completed
lecture scores the course board exactly once — even when its event was lost on the way."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from contract import keys
from contract.auth import TokenIssuer
from contract.events import completion_event_decoder
from contract.settings import Settings
from devstack.processes import Stack
from ingest.flusher import Flusher
from tests.eventually import eventually
from tests.helpers import bearer
from tests.test_gateway_ws import recv_type, ws_url

# "a" plays in 4 s at the default 2x; "reading" has no video; "long" cannot be watched in a test.
COURSE = {
    "title": "Short course",
    "sections": [
        {
            "sectionId": "s",
            "title": "Only",
            "lectures": [
                {"lectureId": "a", "title": "A", "durationSeconds": 8, "marks": 20},
                {
                    "lectureId": "reading",
                    "title": "Read",
                    "durationSeconds": 60,
                    "marks": 30,
                    "completable": True,
                },
                {"lectureId": "long", "title": "Long", "durationSeconds": 600, "marks": 50},
            ],
        }
    ],
}
STEP_S = 2.1  # wall-clock seconds between pings of an honest viewer at 2x: +4 s of video
# Two seconds of video, for what must complete at once (the slack covers it).
TINY = {
    "title": "Tiny",
    "sections": [
        {
            "sectionId": "s",
            "title": "Only",
            "lectures": [{"lectureId": "tiny", "title": "Tiny", "durationSeconds": 2, "marks": 20}],
        }
    ],
}


async def put_course(http: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    r = await http.put("/api/v1/courses/short", json=COURSE, headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert r.json()["sections"][0]["lectures"][1]["completable"] is True


class Device:
    """One WebSocket connection pinging course ``short``."""

    def __init__(self, ws: ClientConnection, seqs: list[int]) -> None:
        self.ws = ws
        self.seqs = seqs  # shared by the user's devices: seqs only grow per user

    async def ping(self, lecture: str, position: float) -> None:
        self.seqs[0] += 1
        message = {"type": "progress", "courseId": "short", "lectureId": lecture, "position": position}
        await self.ws.send(json.dumps({**message, "seq": self.seqs[0]}))
        assert (await recv_type(self.ws, "ack"))["seq"] == self.seqs[0]


async def view(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    r = await http.get("/api/v1/progress/short", headers=bearer(token))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def complete(http: httpx.AsyncClient, token: str, lecture: str) -> httpx.Response:
    body = {"courseId": "short", "lectureId": lecture}
    return await http.post("/api/v1/progress/complete", json=body, headers=bearer(token))


async def course_board(http: httpx.AsyncClient) -> dict[str, int]:
    r = await http.get("/api/v1/scores/leaderboard", params={"board": "course:short"})
    return {e["userId"]: e["score"] for e in r.json()["entries"]}


async def test_honest_viewers_complete_and_cheating_clients_do_not(
    stack: Stack, issuer: TokenIssuer, redis: Any, mongo: Any
) -> None:
    stack.start_all()
    # A group of the test's own that never acknowledges: the worker trims only what every group of
    # the stream has finished, so every completion event stays readable below.
    await redis.xgroup_create(keys.COMPLETION_STREAM, "test-observer", id="0", mkstream=True)
    honest, seeker, burster = (issuer.access_token(user_id=u, name=u.title()) for u in ("hana", "sam", "bea"))
    async with (
        httpx.AsyncClient(base_url=stack.ingest_url) as http,
        connect(ws_url(stack, honest)) as w1,
        connect(ws_url(stack, seeker)) as w2,
        connect(ws_url(stack, burster)) as w3,
    ):
        await put_course(http, issuer)
        hana, sam, bea = Device(w1, [0]), Device(w2, [0]), Device(w3, [0])
        # Hana plays "a" at 2x, pinging as the player does: at the start, then as it plays.
        await hana.ping("a", 0.0)
        for position in (4.0, 8.0):
            await asyncio.sleep(STEP_S)
            await hana.ping("a", position)
        # Sam seeks to the end; Bea sends a burst of pings racing through the video.
        await sam.ping("a", 0.0)
        await sam.ping("a", 8.0)
        for n in range(1, 21):
            await bea.ping("a", 0.4 * n)
        await bea.ping("long", 0.0)  # locked: plays, covers nothing

        hana_view, sam_view, bea_view = [await view(http, t) for t in (honest, seeker, burster)]
        assert (hana_view["completedLectures"], hana_view["watchTimes"]) == (["a"], {"a": 8.0})
        assert hana_view["unlockedLectures"] == ["a", "reading"]
        assert (sam_view["completedLectures"], sam_view["lastPosition"], sam_view["watchTimes"]) == (
            [],
            8.0,
            {},
        )
        assert bea_view["completedLectures"] == []
        assert bea_view["watchTimes"]["a"] < 7.6  # only what the slack and the elapsed time allow
        # The audit signal: implausible advances per user and lecture.
        assert await redis.hget(keys.progress("sam", "short"), "x:a") == "1"
        assert int(await redis.hget(keys.progress("bea", "short"), "x:a")) >= 1

        # The explicit completion refuses what was not watched.
        for token, lecture, status, code in (
            (seeker, "a", 409, "not_watched"),
            (burster, "a", 409, "not_watched"),
            (seeker, "reading", 403, "lecture_locked"),  # completable, but "a" is not completed
            (honest, "long", 403, "lecture_locked"),
        ):
            r = await complete(http, token, lecture)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (lecture, r.text)
        # Once unlocked, a lecture without video completes by the explicit call, and only once.
        for _ in range(2):
            r = await complete(http, honest, "reading")
            assert r.json() == {"message": "completed", "completionPercentage": 66.7}
        r = await complete(http, honest, "a")  # already completed by watching: fine, again
        assert r.status_code == 200

        # The course board: Hana's two lectures, exactly once each; nobody else.
        # (a generous wait: the worker process may still be starting on a loaded machine)
        board = await eventually(
            lambda: course_board(http), until=lambda b: b.get("hana", 0) >= 50, timeout_s=60
        )
        assert board == {"hana": 50}
        events = [
            completion_event_decoder.decode(f["d"]) for _, f in await redis.xrange(keys.COMPLETION_STREAM)
        ]
        assert sorted((e.user_id, e.lecture_id) for e in events) == [("hana", "a"), ("hana", "reading")]
        first_watch = next(e.first_watch_ms for e in events if e.lecture_id == "a")
        assert 0 < first_watch <= next(e.ts_ms for e in events if e.lecture_id == "a")
        sources = [d["source"] async for d in mongo["score_events"].find({"userId": "hana"})]
        assert sources == ["completion", "completion"]


async def test_two_devices_interleaving_count_only_their_own_consecutive_advances(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api")
    stack.start("gateway")
    token = issuer.access_token(user_id="duo", name="Duo")
    async with (
        httpx.AsyncClient(base_url=stack.ingest_url) as http,
        connect(ws_url(stack, token)) as w1,
        connect(ws_url(stack, token)) as w2,
    ):
        await put_course(http, issuer)
        seqs = [0]
        phone, laptop = Device(w1, seqs), Device(w2, seqs)
        await phone.ping("a", 0.0)
        await laptop.ping("a", 5.0)
        await asyncio.sleep(STEP_S)
        await phone.ping("a", 4.0)  # the phone's own 0 -> 4; from the laptop's 5 it is a seek back
        await laptop.ping("a", 8.0)  # the laptop's own 5 -> 8; from the phone's 4, a 4 s jump
        current = await view(http, token)
        assert current["watchTimes"] == {"a": 7.0}  # [0, 4] and [5, 8]
        assert current["completedLectures"] == []


async def test_http_fallback_counts_consecutive_saves_of_one_device(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api")
    token = issuer.access_token(user_id="web", name="Web")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await put_course(http, issuer)

        async def save(position: float, seq: int, device: str) -> None:
            body = {
                "courseId": "short",
                "lectureId": "a",
                "position": position,
                "seq": seq,
                "deviceId": device,
            }
            r = await http.post("/api/v1/progress/save", json=body, headers=bearer(token))
            assert r.status_code == 200, r.text

        await save(0.0, 1, "tab-1")
        await save(5.0, 2, "tab-2")
        await asyncio.sleep(STEP_S)
        await save(4.0, 3, "tab-1")
        await save(8.0, 4, "tab-2")
        assert (await view(http, token))["watchTimes"] == {"a": 7.0}
        r = await http.post(
            "/api/v1/progress/save",
            json={"courseId": "short", "lectureId": "a", "position": 1, "deviceId": "bad id!"},
            headers=bearer(token),
        )
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body")


async def test_a_completion_whose_event_was_lost_is_queued_by_the_flusher(
    stack: Stack, issuer: TokenIssuer, redis: Any, mongo: Any, settings: Settings
) -> None:
    # Hole 1: the completion guard was set, then the XADD failed (or the process died): every
    # retry saw the lecture completed and its points, streak and totals never happened.
    stack.start("ingest.api")
    token = issuer.access_token(user_id="lost", name="Lost", tz="Asia/Tokyo")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
        assert (await http.put("/api/v1/courses/tiny", json=TINY, headers=bearer(admin))).status_code == 200

        async def save(position: float, seq: int) -> httpx.Response:
            body = {"courseId": "tiny", "lectureId": "tiny", "position": position, "seq": seq}
            return await http.post("/api/v1/progress/save", json=body, headers=bearer(token))

        assert (await save(0.0, 1)).status_code == 200
        await redis.set(keys.COMPLETION_STREAM, "not a stream")  # every XADD fails (WRONGTYPE)
        await save(2.0, 2)  # covered [0, 2] within the slack: completes; its event cannot be queued
        await redis.delete(keys.COMPLETION_STREAM)
        assert (await save(2.0, 3)).status_code == 200  # a retry
        assert await redis.xlen(keys.COMPLETION_STREAM) == 0

    await Flusher(redis=redis, db=mongo, settings=settings).flush_once()
    events = [completion_event_decoder.decode(f["d"]) for _, f in await redis.xrange(keys.COMPLETION_STREAM)]
    assert [(e.user_id, e.course_id, e.lecture_id, e.tz, e.name, e.marks) for e in events] == [
        ("lost", "tiny", "tiny", "Asia/Tokyo", "Lost", 20)
    ]
    # Queued once: the marker is gone, a second flush sends nothing more.
    await redis.sadd(keys.PROGRESS_DIRTY, keys.progress("lost", "tiny"))
    await Flusher(redis=redis, db=mongo, settings=settings).flush_once()
    assert await redis.xlen(keys.COMPLETION_STREAM) == 1
