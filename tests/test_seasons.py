"""Seasons that end well: a closed weekly/monthly board is archived once by racing workers,
announced once on ``stream:board_closed``, its keys expire, and the reads answer from the archive
(real Redis and MongoDB; the rollover's clock is injected, nothing waits for a week to pass)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from contract import keys
from contract.events import BoardClosed, ScoreAction
from contract.seasons import is_closed, period_end, recent_periods
from contract.settings import Settings
from ingest import store
from ingest.rebuild import rebuild_board
from ingest.seasons import Seasons
from ingest.worker import ScoreWorker
from store import archive
from store.archive import BOARD_ARCHIVE, ArchiveCache, Archived
from store.board_results import CLOSED
from tests.eventually import eventually

WEEK = "weekly:2026-W47"  # Monday 16 to Sunday 22 November 2026
MONTH = "monthly:2026-11"
IN_WEEK = dt.datetime(2026, 11, 18, 12, tzinfo=dt.UTC)
WEEK_END = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
USERS = 105  # more than the archive keeps (season_archive_size = 100)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(season_retention_s=2, season_grace_s=60.0)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def action(user: int, increment: int, when: dt.datetime) -> ScoreAction:
    return ScoreAction(
        action_id=str(uuid.uuid4()), user_id=f"u{user:03d}", name=f"User {user}", increment=increment,
        ts_ms=int(when.timestamp() * 1000), region="EU", avatar_url=f"https://a.example/{user}.png",
    )  # fmt: skip


def score_of(user: int) -> int:
    """User 0 scores most: user n ranks n + 1."""
    return 1000 - 3 * user


def test_periods_close_at_their_end() -> None:
    assert period_end(WEEK) == WEEK_END
    assert period_end(MONTH) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert period_end("monthly:2026-12") == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert period_end("global") is None and period_end("region:EU") is None
    assert not is_closed(WEEK, WEEK_END + dt.timedelta(seconds=59), grace_s=60)
    assert is_closed(WEEK, WEEK_END + dt.timedelta(seconds=60), grace_s=60)
    assert not is_closed("global", WEEK_END, grace_s=0)
    assert recent_periods(dt.datetime(2026, 1, 2, tzinfo=dt.UTC), weeks=2, months=2) == [
        "weekly:2025-W52", "weekly:2025-W51", "monthly:2025-12", "monthly:2025-11",
    ]  # fmt: skip


async def test_a_closed_week_is_archived_once_announced_once_and_read_after_its_keys_expired(
    settings: Settings, redis: Any, mongo: Any, ingest: httpx.AsyncClient
) -> None:
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.apply([action(u, score_of(u), IN_WEEK) for u in range(USERS)])
    assert await redis.smembers(keys.SEASON_BOARDS) == {WEEK, MONTH}
    clock = Clock(WEEK_END + dt.timedelta(seconds=30))  # closed, but within the grace
    racers = [Seasons(redis=redis, db=mongo, settings=settings, now=clock) for _ in range(2)]
    assert await racers[0].roll() == []

    clock.now = WEEK_END + dt.timedelta(seconds=61)
    rolled = await asyncio.gather(*(r.roll() for r in racers))
    assert rolled == [[WEEK], [WEEK]]  # both went through every step; one archive came out
    docs = [d async for d in mongo[BOARD_ARCHIVE].find({})]
    assert [d["_id"] for d in docs] == [WEEK]
    doc = docs[0]
    assert (doc["rankedUsers"], len(doc["entries"]), doc["periodEnd"]) == (USERS, 100, "2026-11-23T00:00:00Z")
    assert doc["entries"][0] == {
        "rank": 1, "userId": "u000", "name": "User 0", "avatarUrl": "https://a.example/0.png", "score": 1000,
    }  # fmt: skip
    assert [e["userId"] for e in doc["entries"]] == [f"u{u:03d}" for u in range(100)]
    assert [e["score"] for e in doc["entries"]] == [score_of(u) for u in range(100)]
    assert await racers[1].roll() == []  # nothing left to roll over: the week left the registry
    assert await redis.smembers(keys.SEASON_BOARDS) == {MONTH}

    events = await redis.xrange(keys.BOARD_CLOSED_STREAM)
    assert len(events) == 1
    event = msgspec.json.decode(events[0][1]["d"], type=BoardClosed)
    assert (event.board, event.ranked_users, event.period_end) == (WEEK, USERS, "2026-11-23T00:00:00Z")
    assert [(e.rank, e.user_id, e.score) for e in event.top[:2]] == [(1, "u000", 1000), (2, "u001", 997)]
    await racers[0].close(WEEK)  # a retry of every step (a worker that crashed after the event)
    assert len(await redis.xrange(keys.BOARD_CLOSED_STREAM)) == 1

    # Its keys expire (the retention is 2 s here: none is kept for good, -1; -2 is one already
    # gone on a slow machine); the action guards carry their own TTL.
    week = keys.board_keys(WEEK)
    ttls = [await redis.ttl(k) for k in (week.zset, week.version, week.members, week.closed)]
    assert all(t == -2 or 0 <= t <= 2 for t in ttls), ttls
    await eventually(
        lambda: redis.exists(week.zset, week.version, week.members, week.closed), until=lambda n: n == 0
    )

    page = (await ingest.get("/api/v1/scores/leaderboard", params={"board": WEEK, "limit": 100})).json()
    assert (page["board"], page["rankedUsers"], len(page["entries"])) == (WEEK, USERS, 100)
    assert page["entries"][2] == {
        "rank": 3, "userId": "u002", "name": "User 2", "avatarUrl": "https://a.example/2.png", "score": 994,
    }  # fmt: skip
    assert page["closedAt"] == "2026-11-23T00:01:01.000Z"
    short = (await ingest.get("/api/v1/scores/leaderboard", params={"board": WEEK})).json()
    assert [e["userId"] for e in short["entries"]] == [f"u{u:03d}" for u in range(10)]

    r = await ingest.get("/api/v1/scores/rank/u049", params={"board": WEEK})
    assert (r.status_code, r.json()) == (200, {"board": WEEK, "userId": "u049", "rank": 50, "score": 853})
    r = await ingest.get("/api/v1/scores/around/u001", params={"board": WEEK, "range": 2})
    around = r.json()
    assert r.status_code == 200
    assert [e["userId"] for e in around["above"]] == ["u000"]
    assert around["self"]["rank"] == 2
    assert [e["userId"] for e in around["below"]] == ["u002", "u003"]
    r = await ingest.get("/api/v1/scores/around/u099", params={"board": WEEK, "range": 2})
    assert [e["rank"] for e in r.json()["below"]] == []  # the last archived entry
    r = await ingest.get("/api/v1/scores/rank/u103", params={"board": WEEK})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "beyond_archive")
    assert "final score 691" in r.json()["error"]["message"]
    r = await ingest.get("/api/v1/scores/around/u103", params={"board": WEEK})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "beyond_archive")
    r = await ingest.get("/api/v1/scores/rank/nobody", params={"board": WEEK})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_ranked")

    # Reads and a late action after the expiry bring no key back (the archive is final).
    await worker.apply([action(201, 9000, IN_WEEK)])
    assert await rebuild_board(worker.boards, mongo, WEEK, force=True) == 0
    assert [r.user_id for r in (await worker.boards.top("global", 1)).rows] == ["u201"]
    assert await redis.keys(f"{{board:{WEEK}}}*") == []
    assert (await ingest.get("/api/v1/scores/leaderboard", params={"board": WEEK})).json()["entries"][0][
        "userId"
    ] == "u000"

    # The month: rolled over at its own end, found by its live keys with no registry entry.
    await redis.srem(keys.SEASON_BOARDS, MONTH)
    clock.now = dt.datetime(2026, 12, 1, 0, 1, 1, tzinfo=dt.UTC)
    assert await racers[0].roll() == [MONTH]
    month = await mongo[BOARD_ARCHIVE].find_one({"_id": MONTH})
    # The late action counted on the month (it was open): u201's 9000 leads it.
    assert [e["userId"] for e in month["entries"][:3]] == ["u201", "u000", "u001"]
    assert month["rankedUsers"] == USERS + 1
    assert len(await redis.xrange(keys.BOARD_CLOSED_STREAM)) == 2


async def test_a_board_redis_lost_is_archived_from_mongodb(
    settings: Settings, redis: Any, mongo: Any
) -> None:
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.apply([action(u, score_of(u), IN_WEEK) for u in range(3)])
    await redis.delete(*(await redis.keys(f"{{board:{WEEK}}}*")))
    seasons = Seasons(redis=redis, db=mongo, settings=settings, now=lambda: WEEK_END + dt.timedelta(hours=1))
    assert WEEK in await seasons.roll()
    doc = await mongo[BOARD_ARCHIVE].find_one({"_id": WEEK})
    assert [(e["userId"], e["score"]) for e in doc["entries"]] == [
        ("u000", 1000),
        ("u001", 997),
        ("u002", 994),
    ]


async def test_a_late_action_changes_nothing_on_a_closed_board(
    settings: Settings, redis: Any, mongo: Any
) -> None:
    """Between the close and the expiry: the board is frozen, the action counts everywhere else."""
    settings = settings.replace(season_retention_s=3600)
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.apply([action(u, score_of(u), IN_WEEK) for u in range(2)])
    seasons = Seasons(redis=redis, db=mongo, settings=settings, now=lambda: WEEK_END + dt.timedelta(hours=1))
    assert await seasons.roll() == [WEEK]
    version = await worker.boards.version(WEEK)
    await worker.apply([action(7, 5000, IN_WEEK)])
    top = await worker.boards.top(WEEK, 10)
    assert (top.version, [r.user_id for r in top.rows]) == (version, ["u000", "u001"])
    assert [r.user_id for r in (await worker.boards.top("global", 1)).rows] == ["u007"]
    assert [r.user_id for r in (await worker.boards.top(MONTH, 1)).rows] == ["u007"]
    assert [r.status for r in await worker.boards.apply_many([(WEEK, "x", "u008", 1)])] == [CLOSED]
    assert await mongo[store.BOARD_TOTALS].find_one({"_id": store.total_id(WEEK, "u007")}) is None
    assert 3500 < await redis.ttl(keys.board_keys(WEEK).zset) <= 3600
    assert WEEK not in await redis.smembers(keys.SEASON_BOARDS)


class CrashBeforeSave(ScoreWorker):
    """A worker that dies after applying its batch to the boards and before saving the totals."""

    async def _persist(self, *args: Any) -> None:
        raise ConnectionError("killed between the apply and the save")


async def test_a_batch_retried_after_its_board_closed_still_saves_that_boards_total(
    settings: Settings, redis: Any, mongo: Any, ingest: httpx.AsyncClient
) -> None:
    """A worker crashed after applying an action and before saving it; the week closed before
    the retry. The retry saves the week's total (the close counted the action) and the reads
    that need it after the expiry (beyond_archive's final score) have it."""
    settings = settings.replace(season_archive_size=1)
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.apply([action(0, 500, IN_WEEK), action(1, 20, IN_WEEK)])
    late = action(1, 30, IN_WEEK)
    with pytest.raises(ConnectionError):
        await CrashBeforeSave(redis=redis, db=mongo, settings=settings).apply([late])
    seasons = Seasons(redis=redis, db=mongo, settings=settings, now=lambda: WEEK_END + dt.timedelta(hours=1))
    assert await seasons.roll() == [WEEK]
    assert (await mongo[BOARD_ARCHIVE].find_one({"_id": WEEK}))["rankedUsers"] == 2

    await worker.apply([late])  # the retry
    totals = mongo[store.BOARD_TOTALS]
    assert (await totals.find_one({"_id": store.total_id(WEEK, "u001")}))["score"] == 50
    assert (await totals.find_one({"_id": store.total_id("global", "u001")}))["score"] == 50
    assert [r.score for r in (await worker.boards.top(WEEK, 2)).rows] == [500, 50]

    await eventually(lambda: redis.exists(keys.board_keys(WEEK).version), until=lambda n: n == 0)
    r = await ingest.get("/api/v1/scores/rank/u001", params={"board": WEEK})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "beyond_archive")
    assert "final score 50" in r.json()["error"]["message"]


async def test_the_gateways_archive_cache_reads_each_archive_once_and_keeps_the_newest(mongo: Any) -> None:
    for week in ("2026-W45", "2026-W46", "2026-W47"):
        made = Archived(board=f"weekly:{week}", version=7, ranked_users=0, closed_at_ms=1, entries=[])
        assert await archive.insert(mongo, made)
    cache = ArchiveCache(mongo, size=2, miss_ttl_s=3600)
    now = WEEK_END + dt.timedelta(hours=1)
    assert await cache.get("weekly:2026-W48", now) is None  # not ended: no read
    assert await cache.get("global", now) is None
    assert cache.reads == 0
    for week in ("2026-W45", "2026-W46", "2026-W47", "2026-W47", "2026-W46"):
        found = await cache.get(f"weekly:{week}", now)
        assert found is not None and (found.board, found.version) == (f"weekly:{week}", 7)
    assert cache.reads == 3
    assert (await cache.get("weekly:2026-W45", now)) is not None  # the oldest left the cache
    assert cache.reads == 4
    assert await cache.get("weekly:2026-W40", now) is None  # no archive: looked up once per TTL
    assert await cache.get("weekly:2026-W40", now) is None
    assert cache.reads == 5
