"""Watched coverage in the Lua step, against a real Redis (and MongoDB for a refilled hash).

The store takes the wall-clock time of every batch as an argument, so these tests play a whole
viewing session in milliseconds: what counts is the time the pings claim, never the test's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from contract import keys
from contract.progress import Ping, PingResult
from contract.settings import Settings
from ingest.flusher import Flusher
from store.clients import redis_client
from store.progress import CompleteStatus, ProgressStore

T0 = 1_700_000_000_000  # ms; every ping below says how long after it arrived


@pytest.fixture
async def store(settings: Settings, redis: Any, mongo: Any) -> AsyncIterator[ProgressStore]:
    client = redis_client(settings.redis_url)
    yield ProgressStore.of(client, settings, db=mongo)
    await client.aclose()


class Viewer:
    """One user's devices pinging lectures of course ``c1`` (l1 → l2 → l3, 100 s each)."""

    ORDER = ("l1", "l2", "l3")

    def __init__(self, store: ProgressStore, user: str = "ana") -> None:
        self.store = store
        self.user = user
        self.seq = 0

    async def ping(self, lecture: str, position: float, at_s: float, device: str = "phone") -> PingResult:
        self.seq += 1
        i = self.ORDER.index(lecture)
        ping = Ping(
            self.user,
            "c1",
            lecture,
            float(position),
            self.seq,
            100.0,
            origin=device,
            prev=self.ORDER[i - 1] if i else "",
        )
        (result,) = await self.store.save([ping], T0 + int(at_s * 1000))
        return result

    async def watch(self, lecture: str, start: float, end: float, at_s: float, every_s: float = 5.0) -> float:
        """Play ``lecture`` from ``start`` to ``end`` at 1x from ``at_s``, pinging every ``every_s``
        (and at the start and the end, as the page does). Returns the time it ends."""
        position, now = start, at_s
        await self.ping(lecture, position, now)
        while position < end:
            step = min(every_s, end - position)
            position, now = position + step, now + step
            await self.ping(lecture, position, now)
        return now

    async def field(self, name: str) -> str | None:
        found: str | None = await self.store.redis.hget(keys.progress(self.user, "c1"), name)
        return found


async def test_watching_covers_what_was_played_and_completes_at_95_percent(store: ProgressStore) -> None:
    ana = Viewer(store)
    end = await ana.watch("l1", 0, 90, 0)
    assert (await ana.field("i:l1"), await ana.field("w:l1")) == ("0-90", "90")
    assert await ana.field("c:l1") is None  # 90 %
    result = await ana.ping("l1", 95, end + 5)
    assert result.completed
    assert result.first_watch_ms == T0  # the first counted second began with the first ping
    assert await ana.field("p:l1") is not None  # not yet on the stream: the caller sends it
    assert not (await ana.ping("l1", 100, end + 10)).completed  # once


async def test_seeking_to_the_end_resumes_there_and_completes_nothing(store: ProgressStore) -> None:
    ana = Viewer(store)
    await ana.ping("l1", 0, 0)
    result = await ana.ping("l1", 100, 1)
    assert (result.moved, result.completed, result.implausible) == (True, False, True)
    assert (await ana.field("pos"), await ana.field("w:l1"), await ana.field("x:l1")) == ("100.0", None, "1")
    # Waiting at the end and pinging again covers nothing either: nothing was played there.
    assert not (await ana.ping("l1", 100, 200)).completed
    assert await ana.field("w:l1") is None


async def test_pings_faster_than_real_time_do_not_count(store: ProgressStore) -> None:
    ana = Viewer(store)
    # A burst: +2 s of video every 10 ms. Only what 2x real time allows could count.
    results = [await ana.ping("l1", 2.0 * n, n / 100) for n in range(51)]
    assert not any(r.completed for r in results)
    assert sum(r.implausible for r in results) >= 49
    assert float(await ana.field("w:l1") or 0) <= 0.5 * 2 + 2  # at most 0.5 s x 2, plus the slack
    # Slack is spent, not granted per ping: many small steps cannot add up past the rate.
    bo = Viewer(store, "bo")
    for n in range(200):
        await bo.ping("l1", 0.5 * n, n / 1000)
    assert float(await bo.field("w:l1") or 0) <= 0.2 * 2 + 2


async def test_a_lecture_watched_at_the_maximum_rate_with_jitter_completes(store: ProgressStore) -> None:
    ana = Viewer(store)
    # 2x playback, pings every 5 s of wall time, each arriving up to 0.3 s early or late.
    jitter = [0.0, 0.3, -0.3, 0.2, -0.2, 0.1, 0.3, -0.3, 0.0, 0.2, -0.1]
    for n, late in enumerate(jitter):
        result = await ana.ping("l1", min(100.0, 10.0 * n), 5.0 * n + late)
    assert result.completed
    assert await ana.field("x:l1") is None


async def test_two_devices_count_only_their_own_consecutive_advances(store: ProgressStore) -> None:
    ana = Viewer(store)
    await ana.ping("l1", 0, 0, device="phone")
    await ana.ping("l1", 50, 1, device="laptop")
    await ana.ping("l1", 5, 5, device="phone")
    await ana.ping("l1", 55, 6, device="laptop")
    # Interleaved, the hash's previous ping is always the other device's: 50 -> 5 and 5 -> 55
    # would be a seek back and an implausible jump. Each device's own steps count.
    assert await ana.field("i:l1") == "0-5,50-55"
    assert await ana.field("w:l1") == "10"
    # Two devices playing different halves at once cover it, but not faster than real time:
    # it completes only once that much could have been watched since the first counted second.
    for n in range(1, 10):  # phone: 5 -> 50 from 5 s; laptop: 55 -> 100 from 6 s
        await ana.ping("l1", 5 + 5 * n, 5 + 5 * n, device="phone")
        await ana.ping("l1", 55 + 5 * n, 6 + 5 * n, device="laptop")
    assert await ana.field("i:l1") == "0-100"
    assert await ana.field("c:l1") is not None  # 51 s x 2 + slack >= 95: plausible, completes


async def test_devices_in_parallel_cannot_complete_faster_than_real_time(store: ProgressStore) -> None:
    ana = Viewer(store)
    # Twenty devices, each honestly "playing" 5 s of its own slice within the same 5 s.
    for d in range(20):
        await ana.ping("l1", 5 * d, 0, device=f"d{d}")
    for d in range(20):
        await ana.ping("l1", 5 * d + 5, 5, device=f"d{d}")
    assert await ana.field("w:l1") == "100"
    assert await ana.field("c:l1") is None  # covered, but 5 s x 2 + slack < 95 s
    assert not (await ana.ping("l1", 100, 20, device="d19")).completed
    assert (await ana.ping("l1", 100, 47, device="d19")).completed  # 47 s x 2 + 2 >= 95


async def test_a_locked_lecture_covers_and_completes_nothing_until_unlocked(store: ProgressStore) -> None:
    ana = Viewer(store)
    end = await ana.watch("l2", 0, 100, 0)
    assert (await ana.field("c:l2"), await ana.field("w:l2")) == (None, None)
    assert (await ana.field("lecture"), await ana.field("pos")) == ("l2", "100.0")  # it still resumes
    key = keys.progress("ana", "c1")
    done = await store.complete("ana", "c1", "l2", T0 + int(end * 1000), prev="l1", completable=True)
    assert done.status == CompleteStatus.LOCKED
    end = await ana.watch("l1", 0, 100, end)
    assert await ana.field("c:l1") is not None
    await ana.watch("l2", 0, 100, end)
    assert await ana.field("c:l2") is not None
    assert await store.redis.hget(key, "w:l2") == "100"


async def test_explicit_completion_needs_coverage_or_a_completable_lecture(store: ProgressStore) -> None:
    ana = Viewer(store)
    await ana.watch("l1", 0, 60, 0)

    async def complete(lecture: str, **kw: Any) -> int:
        prev = Viewer.ORDER[Viewer.ORDER.index(lecture) - 1] if lecture != "l1" else ""
        return (await store.complete("ana", "c1", lecture, T0 + 100_000, prev=prev, need_s=95, **kw)).status

    assert await complete("l1") == CompleteStatus.NOT_COVERED
    assert await complete("l1", completable=True) == CompleteStatus.NEW
    assert await complete("l1") == CompleteStatus.ALREADY
    assert await complete("l3", completable=True) == CompleteStatus.LOCKED
    assert await complete("l2", completable=True) == CompleteStatus.NEW
    assert await ana.field("p:l2") is not None


async def test_an_expired_hash_is_refilled_from_mongodb_so_old_completions_still_unlock(
    store: ProgressStore, redis: Any, mongo: Any, settings: Settings
) -> None:
    ana = Viewer(store)
    end = await ana.watch("l1", 0, 100, 0)
    end = await ana.watch("l2", 0, 40, end)
    await redis.hdel(keys.progress("ana", "c1"), "p:l1")  # as if the writer had queued it
    await Flusher(redis=redis, db=mongo, settings=settings).flush_once()
    doc = await mongo["progress"].find_one({"_id": "ana|c1"})
    assert (doc["completedLectures"], doc["i_l2"], doc["w_l2"]) == (["l1"], "0-40", 40.0)
    await redis.delete(keys.progress("ana", "c1"))  # expired, a day after the flush

    # l2 is still unlocked (l1's completion came back from MongoDB) and its coverage goes on.
    await ana.watch("l2", 40, 100, end + 3600)
    assert await ana.field("i:l2") == "0-100"
    assert await ana.field("c:l2") is not None
    assert await ana.field("p:l1") is None  # a refilled completion is not sent again


async def test_intervals_merge_and_stay_bounded(store: ProgressStore) -> None:
    ana = Viewer(store)
    at = 0.0
    for start in (50.0, 10.0, 30.0, 12.5):
        at = await ana.watch("l1", start, start + 5, at + 100)
    assert await ana.field("i:l1") == "10-17.5,30-35,50-55"
    assert await ana.field("w:l1") == "17.5"
    many = Viewer(store, "many")
    for n in range(150):  # 150 disjoint 0.3 s intervals: beyond 100 they are not kept
        await many.ping("l1", n * 0.6, n * 10, device=f"d{n}")
        await many.ping("l1", n * 0.6 + 0.3, n * 10 + 1, device=f"d{n}")
    assert len((await many.field("i:l1") or "").split(",")) == 100


async def test_covered_seconds_never_pass_the_furthest_position_pinged(store: ProgressStore) -> None:
    # Found by the simulation: rounding to the nearest 0.1 s answered 2.7 for a ping at 2.695.
    ana = Viewer(store)
    await ana.ping("l1", 0.0, 0)
    await ana.ping("l1", 2.695, 2)
    await ana.ping("l1", 4.3, 3)  # 4.3 * 10 is 42.99999... in binary: still 4.3
    assert (await ana.field("i:l1"), await ana.field("w:l1")) == ("0-4.3", "4.3")
    bo = Viewer(store, "bo")
    await bo.ping("l1", 0.0, 0)
    await bo.ping("l1", 2.695, 2)
    assert await bo.field("w:l1") == "2.6"
