"""Completions become durable history: activity heatmap, streaks in the learner's zone, stats."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from typing import Any

import httpx

from contract import keys
from contract.auth import Claims, TokenIssuer
from contract.courses import CourseMeta
from contract.events import stream_entry_decoder
from contract.progress import completion_event
from contract.settings import Settings
from contract.wire import json_encoder
from ingest.achievements import Achievements, record_activity, record_streak, streak_summary
from ingest.store import ACTIVITY
from tests.helpers import bearer

COURSE = CourseMeta(
    course_id="py",
    title="Python",
    lecture_order=["intro", "a", "b", "c", "d"],
    durations=dict.fromkeys(["intro", "a", "b", "c", "d"], 60.0),
    marks=dict.fromkeys(["intro", "a", "b", "c", "d"], 3),
)


def at(day: int, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC).timestamp() * 1000)


def event(user: str, lecture: str, ts_ms: int, tz: str = "UTC") -> Any:
    claims = Claims(sub=user, name=user.title(), exp=0, iat=0, jti="", region="EU", tz=tz)
    return completion_event(claims, COURSE, lecture, ts_ms)


def entry(e: Any, n: int) -> tuple[str, dict[str, str]]:
    return (f"{n}-0", {"d": json_encoder.encode(e).decode()})


async def test_the_day_of_a_completion_is_the_learners_day(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    late_evening_utc = at(23, 23, 30)
    await achievements.apply(event("tokyo", "intro", late_evening_utc, "Asia/Tokyo"))
    await achievements.apply(event("newyork", "intro", late_evening_utc, "America/New_York"))
    days = {d["userId"]: d["date"] async for d in mongo[ACTIVITY].find({})}
    assert days == {"tokyo": "2026-11-24", "newyork": "2026-11-23"}
    assert (await streak_summary(mongo, "tokyo", dt.date(2026, 11, 24)))[2] == dt.date(2026, 11, 24)
    assert (await streak_summary(mongo, "newyork", dt.date(2026, 11, 24)))[2] == dt.date(2026, 11, 23)


async def test_a_missed_day_resets_the_current_streak_and_keeps_the_longest(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    for day, lecture in ((1, "a"), (2, "b"), (3, "c"), (5, "d")):
        await achievements.apply(event("ada", lecture, at(day, 12)))
    assert await streak_summary(mongo, "ada", dt.date(2026, 11, 5)) == (1, 3, dt.date(2026, 11, 5))
    assert await streak_summary(mongo, "ada", dt.date(2026, 11, 7)) == (0, 3, dt.date(2026, 11, 5))
    stats = await mongo["student_stats"].find_one({"_id": "ada"})
    assert stats["totalCompleted"] == 4


async def test_a_streak_crosses_midnight_in_the_learners_zone(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    # 14:00 and 16:00 UTC on the same UTC day are two different days in Tokyo (23:00, 01:00).
    await achievements.apply(event("ken", "a", at(10, 14), "Asia/Tokyo"))
    await achievements.apply(event("ken", "b", at(10, 16), "Asia/Tokyo"))
    assert await streak_summary(mongo, "ken", dt.date(2026, 11, 11)) == (2, 2, dt.date(2026, 11, 11))
    await achievements.apply(event("utc", "a", at(10, 14)))
    await achievements.apply(event("utc", "b", at(10, 16)))
    assert (await streak_summary(mongo, "utc", dt.date(2026, 11, 10)))[:2] == (1, 1)


async def test_a_redelivered_event_counts_once(redis: Any, mongo: Any, settings: Settings) -> None:
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    done = event("ada", "intro", at(20, 9))
    for n in range(3):
        assert await achievements.handle([entry(done, n)]) == set()
    day = await mongo[ACTIVITY].find_one({"userId": "ada"})
    assert day["events"] == [done.event_id]
    stats = await mongo["student_stats"].find_one({"_id": "ada"})
    assert (stats["totalCompleted"], stats["longestStreak"]) == (1, 1)
    assert (await streak_summary(mongo, "ada", dt.date(2026, 11, 20)))[0] == 1
    progress = await mongo["progress"].find_one({"_id": "ada|py"})
    assert progress["completedLectures"] == ["intro"]
    actions = [stream_entry_decoder.decode(f["d"]) for _, f in await redis.xrange(keys.SCORE_STREAM)]
    assert {a.action_id for a in actions} == {done.event_id}  # the worker counts an actionId once
    assert actions[0].course_id == "py"
    assert actions[0].increment == settings.completion_score
    assert await achievements.handle([("9-0", {"d": "{broken"})]) == {"9-0"}


async def test_a_watched_completion_tells_the_anomaly_rules_how_fast_it_was_covered(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    await mongo["courses"].insert_one(
        {"_id": "py", "title": "Python", "sections": [{"sectionId": "s", "title": "S", "lectures": [
            {"lectureId": "intro", "title": "I", "durationSeconds": 60},
            {"lectureId": "a", "title": "A", "durationSeconds": 60, "completable": True}]}]}
    )  # fmt: skip
    claims = Claims(sub="eve", name="Eve", exp=0, iat=0, jti="")
    watched = completion_event(claims, COURSE, "intro", at(3, 12, 1), first_watch_ms=at(3, 12))
    read = completion_event(claims, COURSE, "a", at(3, 13))  # completable: never watched
    for e in (watched, read):
        await achievements.apply(e)
    actions = {
        a.action_id: a
        for a in (stream_entry_decoder.decode(f["d"]) for _, f in await redis.xrange(keys.SCORE_STREAM))
    }
    assert (actions[watched.event_id].covered_s, actions[watched.event_id].watch_ms) == (57.0, 60_000)
    assert (actions[read.event_id].covered_s, actions[read.event_id].watch_ms) == (None, None)


async def test_activities_of_consecutive_days_in_reverse_order_make_a_streak_of_two(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    # Hole 5: a late (or redelivered) event of an earlier day used to be ignored.
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    await achievements.apply(event("ada", "b", at(12, 9)))
    await achievements.apply(event("ada", "a", at(11, 9)))  # the earlier day arrives last
    assert await streak_summary(mongo, "ada", dt.date(2026, 11, 12)) == (2, 2, dt.date(2026, 11, 12))


async def test_concurrent_marks_of_consecutive_days_lose_no_day(mongo: Any) -> None:
    # Hole 5: two writers (consumers, /heatmap/mark) each read the streak and wrote it back.
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=n) for n in range(6)]

    async def mark(day: dt.date) -> None:
        await record_activity(mongo, "bo", day, f"e-{day}")
        await record_streak(mongo, "bo", day, "UTC")

    await asyncio.gather(*(mark(day) for day in days))
    assert await streak_summary(mongo, "bo", days[-1]) == (6, 6, days[-1])
    assert (await mongo["student_stats"].find_one({"_id": "bo"}))["longestStreak"] == 6


async def test_heatmap_mark_and_data(ingest: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    token = issuer.access_token(user_id="ada", name="Ada", tz="Pacific/Auckland")
    for _ in range(2):
        r = await ingest.post("/api/v1/progress/heatmap/mark", headers=bearer(token))
        assert r.json() == {"message": "marked"}
    today = dt.datetime.now(zoneinfo.ZoneInfo("Pacific/Auckland")).date().isoformat()
    r = await ingest.get("/api/v1/progress/heatmap/data", params={"days": 7}, headers=bearer(token))
    assert r.json() == [{"date": today, "count": 2}]
    stats = (await ingest.get("/api/v1/stats/student", headers=bearer(token))).json()
    assert stats == {"currentStreak": 1, "longestStreak": 1, "lastActiveDate": today, "totalCompleted": 0}
    for params, code in (
        ({"days": 0}, "bad_query"),
        ({"days": 400}, "bad_query"),
        ({"tz": "Nowhere/City"}, "bad_timezone"),
    ):
        r = await ingest.get("/api/v1/progress/heatmap/data", params=params, headers=bearer(token))
        assert (r.status_code, r.json()["error"]["code"]) == (400, code)


async def test_history_needs_a_token(ingest: httpx.AsyncClient) -> None:
    for method, path in (
        ("POST", "/api/v1/progress/heatmap/mark"),
        ("GET", "/api/v1/progress/heatmap/data"),
        ("GET", "/api/v1/stats/student"),
        ("GET", "/api/v1/stats/course-progress"),
        ("GET", "/api/v1/progress/py"),
    ):
        r = await ingest.request(method, path)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), path
