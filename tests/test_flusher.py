"""The flusher against the real servers: outages, crashes and late pings lose nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient, UpdateOne
from redis.asyncio.client import Pipeline

from contract import keys
from contract.auth import Claims, TokenIssuer
from contract.courses import CourseMeta
from contract.events import completion_event_decoder
from contract.progress import Ping, ResumePoint, completion_event
from contract.settings import Settings
from contract.wire import json_encoder
from devstack.processes import Stack
from devstack.servers import free_port, mongo_server
from ingest.achievements import Achievements
from ingest.flusher import Flusher, operations
from ingest.store import PROGRESS
from store.progress import ProgressStore
from tests.eventually import eventually
from tests.helpers import bearer, both_redis
from tests.test_progress import COURSE, progress

COURSE_META = CourseMeta(
    course_id="py",
    title="Python",
    lecture_order=["intro", "a"],
    durations={"intro": 60.0, "a": 60.0},
    marks={"intro": 3, "a": 3},
)


def store_of(redis: Any, settings: Settings) -> ProgressStore:
    return ProgressStore.of(redis, settings)


async def dirty_count(redis: Any, settings: Settings) -> int:
    """Keys in the dirty set, over all its buckets (one on one Redis, several on a cluster)."""
    return sum([await redis.scard(bucket) for bucket, _ in keys.dirty_buckets(settings.dirty_bucket_count)])


async def dirty_keys(redis: Any, settings: Settings) -> set[str]:
    found: set[str] = set()
    for bucket, _ in keys.dirty_buckets(settings.dirty_bucket_count):
        found |= await redis.smembers(bucket)
    return found


def pings(n_users: int, seq: int, lecture: str = "l1") -> list[Ping]:
    return [Ping(f"u{i}", "c1", lecture, float(seq * 10 + i), seq, 1000.0) for i in range(n_users)]


async def assert_flushed(db: Any, n_users: int, seq: int) -> None:
    docs = {d["_id"]: d async for d in db[PROGRESS].find({})}
    assert len(docs) == n_users
    for i in range(n_users):
        doc = docs[f"u{i}|c1"]
        assert ResumePoint.of_document(doc) == ResumePoint(seq, "l1", float(seq * 10 + i))


@both_redis
async def test_mongodb_down_during_a_flush_then_back_loses_nothing(
    redis: Any, settings: Settings, tmp_path: Path
) -> None:
    mongo = mongo_server(free_port(), tmp_path / "mongo").start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, serverSelectionTimeoutMS=1000)
    try:
        store = store_of(redis, settings)
        flusher = Flusher(redis=redis, db=client.scorecast, settings=settings)
        await store.save(pings(30, 1), now_ms=1)
        mongo.stop()
        with pytest.raises(Exception):  # noqa: B017 - any pymongo error: the server is gone
            await flusher.flush_once()
        assert await dirty_count(redis, settings) == 30
        await store.save(pings(30, 2), now_ms=2)  # the gateway keeps accepting pings meanwhile
        mongo.start()
        assert await flusher.flush_once() == 30
        await assert_flushed(client.scorecast, 30, 2)
        assert await dirty_count(redis, settings) == 0
    finally:
        await client.close()
        mongo.stop()


class PingDuringWrite(Flusher):
    """A flusher during whose MongoDB write one more ping lands in Redis."""

    def __init__(self, store: ProgressStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store_ = store
        self.pinged = False

    async def write(self, ops: list[UpdateOne]) -> None:
        await self.store_.save([Ping("u0", "c1", "l1", 999.0, 99, 1000.0)], now_ms=3)
        self.pinged = True
        await super().write(ops)


@both_redis
async def test_a_ping_that_lands_during_a_flush_stays_dirty(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    store = store_of(redis, settings)
    await store.save(pings(3, 1), now_ms=1)
    assert await PingDuringWrite(store, redis=redis, db=mongo, settings=settings).flush_once() == 2
    assert await dirty_keys(redis, settings) == {keys.progress("u0", "c1")}
    assert await redis.ttl(keys.progress("u0", "c1")) == -1  # dirty: never expires
    assert await redis.ttl(keys.progress("u1", "c1")) > 0  # flushed: may expire
    assert await Flusher(redis=redis, db=mongo, settings=settings).flush_once() == 1
    doc = await mongo[PROGRESS].find_one({"_id": "u0|c1"})
    assert ResumePoint.of_document(doc) == ResumePoint(99, "l1", 999.0)


async def test_an_older_redis_copy_never_moves_mongodb_back(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    store = store_of(redis, settings)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    await store.save([Ping("u0", "c1", "l1", 500.0, 50, 1000.0)], now_ms=1)
    await flusher.flush_once()
    await redis.delete(keys.progress("u0", "c1"))  # expired; a stale device pings an old seq
    await store.save([Ping("u0", "c1", "l1", 5.0, 7, 1000.0)], now_ms=2)
    await flusher.flush_once()
    doc = await mongo[PROGRESS].find_one({"_id": "u0|c1"})
    assert ResumePoint.of_document(doc) == ResumePoint(50, "l1", 500.0)


async def test_an_older_resume_point_never_lands_on_another_users_document(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    """Issue #8, defect 1: the flush of ``zzz`` at seq 50 over MongoDB's seq 100 once modified
    ``b`` (a document without a resume point) on nx-27017."""
    legacy = {"lastWatchedLecture": "l9", "lastPosition": 900.0, "lastSeq": 100}
    await mongo[PROGRESS].insert_many(
        [
            {"_id": "zzz|c1", "userId": "zzz", "courseId": "c1", **legacy},
            {"_id": "a|c1", "userId": "a", "courseId": "c1", "lastSeq": 2},
            {"_id": "b|c1", "userId": "b", "courseId": "c1"},
        ]
    )
    before = {d["_id"]: d async for d in mongo[PROGRESS].find({"_id": {"$in": ["a|c1", "b|c1"]}})}
    await store_of(redis, settings).save([Ping("zzz", "c1", "l1", 5.0, 50, 1000.0)], now_ms=1)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    for _ in range(2):  # and a re-flush of the same values
        await redis.sadd(keys.PROGRESS_DIRTY, keys.progress("zzz", "c1"))
        assert await flusher.flush_once() == 1
    after = {d["_id"]: d async for d in mongo[PROGRESS].find({"_id": {"$in": ["a|c1", "b|c1"]}})}
    assert after == before
    doc = await mongo[PROGRESS].find_one({"_id": "zzz|c1"})
    assert ResumePoint.of_document(doc) == ResumePoint(100, "l9", 900.0)
    await store_of(redis, settings).save([Ping("zzz", "c1", "l2", 6.0, 101, 1000.0)], now_ms=2)
    await flusher.flush_once()
    doc = await mongo[PROGRESS].find_one({"_id": "zzz|c1"})
    assert ResumePoint.of_document(doc) == ResumePoint(101, "l2", 6.0)


async def test_two_devices_flushed_in_any_order_keep_the_newest_seq(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    """Last-writer-wins by seq in MongoDB, whatever order the flushes arrive in."""
    store = store_of(redis, settings)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    key = keys.progress("u0", "c1")
    for seq, lecture, position in ((7, "l2", 70.0), (3, "l1", 30.0), (12, "l1", 12.5), (9, "l3", 9.0)):
        await redis.delete(key)  # each flush carries only this device's point, as after an expiry
        await store.save([Ping("u0", "c1", lecture, position, seq, 1000.0)], now_ms=seq)
        await flusher.flush_once()
    doc = await mongo[PROGRESS].find_one({"_id": "u0|c1"})
    assert ResumePoint.of_document(doc) == ResumePoint(12, "l1", 12.5)


async def test_one_learners_resume_point_stays_out_of_anothers_progress(
    ingest: Any, issuer: TokenIssuer, redis: Any, mongo: Any, settings: Settings
) -> None:
    """Issue #8, defect 1 end to end: alice's document came from a completion (no resume point
    yet); rita's re-flush at her current seq once wrote rita's position into alice's document."""
    # "intro" completable: alice completes it by the explicit call, without watching.
    intro = {**COURSE["sections"][0]["lectures"][0], "completable": True}
    basics = {**COURSE["sections"][0], "lectures": [intro, *COURSE["sections"][0]["lectures"][1:]]}
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    course = {**COURSE, "sections": [basics, *COURSE["sections"][1:]]}
    assert (await ingest.put("/api/v1/courses/demo", json=course, headers=bearer(admin))).status_code == 200
    alice = issuer.access_token(user_id="alice", name="Alice")
    rita = issuer.access_token(user_id="rita", name="Rita")
    r = await ingest.post(
        "/api/v1/progress/complete", json={"courseId": "demo", "lectureId": "intro"}, headers=bearer(alice)
    )
    assert r.status_code == 200, r.text
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    for _, fields in await redis.xrange(keys.COMPLETION_STREAM):
        await achievements.apply(completion_event_decoder.decode(fields["d"]))
    assert await mongo[PROGRESS].find_one({"_id": "alice|demo"}) is not None
    await redis.delete(keys.progress("alice", "demo"))  # only alice's completion reaches MongoDB
    await redis.delete(keys.PROGRESS_DIRTY)

    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    save = {"courseId": "demo", "lectureId": "vars", "position": 7.0, "seq": 5}
    assert (await ingest.post("/api/v1/progress/save", json=save, headers=bearer(rita))).status_code == 200
    await flusher.flush_once()
    # rita's second device, its seq behind: more watch time, the same resume point, flushed again
    behind = {**save, "position": 30.0, "seq": 4}
    assert (await ingest.post("/api/v1/progress/save", json=behind, headers=bearer(rita))).status_code == 200
    await flusher.flush_once()
    await redis.delete(keys.progress("rita", "demo"), keys.progress("alice", "demo"))  # both expired

    mine = await progress(ingest, alice, "demo")
    assert (mine["lastWatchedLecture"], mine["lastPosition"], mine["watchTimes"]) == (None, 0.0, {})
    assert mine["completedLectures"] == ["intro"]
    hers = await progress(ingest, rita, "demo")
    assert (hers["lastWatchedLecture"], hers["lastPosition"]) == ("vars", 7.0)
    assert hers["watchTimes"] == {}  # "vars" is locked for rita: her saves covered nothing
    alice_doc = await mongo[PROGRESS].find_one({"_id": "alice|demo"})
    assert set(alice_doc) == {"_id", "userId", "courseId", "completedLectures", "unlockedLectures"}


async def test_many_pings_on_one_key_become_one_write(redis: Any, mongo: Any, settings: Settings) -> None:
    store = store_of(redis, settings)
    for seq in range(1, 101):
        await store.save([Ping("u0", "c1", "l1", float(seq), seq, 1000.0)], now_ms=seq)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    assert await flusher.flush_once() == 1
    assert flusher.writes == 1  # watch time and resume point: one upsert


@pytest.mark.timeout(120)
async def test_a_flusher_killed_mid_cycle_loses_nothing(
    stack: Stack, redis: Any, mongo: Any, settings: Settings
) -> None:
    store = store_of(redis, settings)
    users = 3000
    for start in range(0, users, 500):
        batch = [
            Ping(f"u{i}", "c1", "l1", float(10 + i), 1, 1000.0) for i in range(start, min(users, start + 500))
        ]
        await store.save(batch, now_ms=1)
    proc = stack.start("ingest.flusher", flush_batch_size=50, flush_interval_s=0.1)
    await eventually(lambda: redis.scard(keys.PROGRESS_DIRTY), until=lambda n: n < users, interval_s=0.01)
    proc.kill()
    left = await redis.scard(keys.PROGRESS_DIRTY)
    assert 0 < left < users, left
    await Flusher(redis=redis, db=mongo, settings=settings).flush_once()
    await assert_flushed(mongo, users, 1)
    assert await redis.scard(keys.PROGRESS_DIRTY) == 0


async def test_the_flusher_process_flushes_on_its_interval_and_on_sigterm(
    stack: Stack, redis: Any, mongo: Any, settings: Settings
) -> None:
    store = store_of(redis, settings)
    proc = stack.start("ingest.flusher", flush_interval_s=3600.0)  # only the final flush will run
    await eventually(lambda: asyncio.sleep(0, proc.log()), until=lambda log: "flusher running" in log)
    await store.save(pings(5, 1), now_ms=1)
    assert proc.stop() == 0
    await assert_flushed(mongo, 5, 1)


class Crash(BaseException):
    """The flusher process dies here (a BaseException: no handler of the flusher may catch it)."""


class DyingRedis(aioredis.Redis):
    """A real Redis client of a process that dies right after its ``crash_after``-th round trip
    to Redis (a command or a pipeline) completed, as a kill -9 between two steps would."""

    crash_after = 0

    def _tick(self) -> None:
        DyingRedis.crash_after -= 1
        if DyingRedis.crash_after == 0:
            raise Crash

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        result = await super().execute_command(*args, **options)
        self._tick()
        return result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
        return DyingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class DyingPipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> Any:
        result = await super().execute(raise_on_error)
        DyingRedis._tick(self)  # type: ignore[arg-type]
        return result


async def test_a_flusher_dying_at_any_step_loses_no_change(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    """Kill the flusher after each of its Redis round trips in turn (a ping lands during its
    MongoDB write); a fresh flusher then gets every key's newest state into MongoDB."""
    dying = DyingRedis.from_url(settings.redis_url, decode_responses=True)
    store = store_of(redis, settings)
    try:
        for crash_after in range(1, 50):
            await redis.flushdb()
            await mongo[PROGRESS].delete_many({})
            await store.save(pings(3, 1), now_ms=1)
            DyingRedis.crash_after = crash_after
            doomed = PingDuringWrite(store, redis=dying, db=mongo, settings=settings)
            try:
                await doomed.flush_once()
                finished = True
            except Crash:
                finished = False
            DyingRedis.crash_after = 0
            fresh = Flusher(redis=redis, db=mongo, settings=settings)
            await fresh.flush_once()
            await fresh.flush_once()  # a key that changed during a cycle is written by the next
            docs = {d["_id"]: ResumePoint.of_document(d) async for d in mongo[PROGRESS].find({})}
            newest = ResumePoint(99, "l1", 999.0) if doomed.pinged else ResumePoint(1, "l1", 10.0)
            assert docs == {
                "u0|c1": newest,
                "u1|c1": ResumePoint(1, "l1", 11.0),
                "u2|c1": ResumePoint(1, "l1", 12.0),
            }, crash_after
            for user in ("u0", "u1", "u2"):
                assert await redis.ttl(keys.progress(user, "c1")) > 0, (crash_after, user)
            if finished:
                return
        raise AssertionError("the flusher never finished a cycle")
    finally:
        await dying.aclose()


async def flushed_at(db: Any, n_users: int, seq: int) -> bool:
    try:
        await assert_flushed(db, n_users, seq)
    except (AssertionError, KeyError):
        return False
    return True


@pytest.mark.timeout(120)
async def test_the_flusher_process_writes_once_mongodb_is_back(
    stack: Stack, redis: Any, settings: Settings, tmp_path: Path
) -> None:
    mongo = mongo_server(free_port(), tmp_path / "mongo").start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, serverSelectionTimeoutMS=1000)
    db = client[settings.mongo_db]
    try:
        store = store_of(redis, settings)
        proc = stack.start("ingest.flusher", mongo_url=mongo.url, flush_interval_s=1.0)
        await store.save(pings(5, 1), now_ms=1)
        await eventually(lambda: flushed_at(db, 5, 1))
        mongo.stop()
        await store.save(pings(5, 2), now_ms=2)  # the next cycle meets the outage
        await eventually(lambda: asyncio.sleep(0, proc.log()), until=lambda log: "flush failed" in log)
        mongo.start()
        assert await eventually(lambda: flushed_at(db, 5, 2), timeout_s=60)
        # A key leaves the in-flight set only after its write: wait for both sets, not one then the other.
        await eventually(
            lambda: asyncio.gather(redis.scard(keys.PROGRESS_DIRTY), redis.scard(keys.PROGRESS_INFLIGHT)),
            until=lambda counts: list(counts) == [0, 0],
        )
    finally:
        await client.close()
        mongo.stop()


async def test_completions_reach_a_progress_document_the_flusher_created_first(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    """Found by the simulation: the usual order is a flushed ping first, a completion later. On
    nx-27017 ``$addToSet`` on an existing document that lacks the array changes nothing (MongoDB
    creates the array), so neither the achievement consumer nor the flusher ever stored
    ``completedLectures``/``unlockedLectures``: once Redis let the hash go, completions vanished
    and course progress read 0 %."""
    store = store_of(redis, settings)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    await store.save([Ping("ada", "py", "intro", 10.0, 1, 60.0)], now_ms=1)
    await flusher.flush_once()  # the document exists, without any completion
    lectures = [
        {"lectureId": lec, "title": lec, "durationSeconds": 60.0, "marks": 3} for lec in ("intro", "a")
    ]
    await mongo["courses"].insert_one({"_id": "py", "title": "Python", "sections": [{"lectures": lectures}]})
    achievements = Achievements(redis=redis, db=mongo, settings=settings)
    claims = Claims(sub="ada", name="Ada", exp=0, iat=0, jti="")
    done = completion_event(claims, COURSE_META, "intro", 1_000)
    assert await achievements.handle([("1-0", {"d": json_encoder.encode(done).decode()})]) == set()
    doc = await mongo[PROGRESS].find_one({"_id": "ada|py"})
    assert (doc.get("completedLectures"), doc.get("unlockedLectures")) == (["intro"], ["a"])
    # The flusher's own completion path on an existing document.
    await mongo[PROGRESS].bulk_write(operations(keys.progress("bob", "py"), {"w:intro": "5.0"}, 1.0))
    live = {"w:intro": "60.0", "c:intro": "2000", "lecture": "intro", "pos": "60.0", "seq": "2"}
    await mongo[PROGRESS].bulk_write(operations(keys.progress("bob", "py"), live, 2.0))
    assert (await mongo[PROGRESS].find_one({"_id": "bob|py"})).get("completedLectures") == ["intro"]


class StalledWrite(PingDuringWrite):
    """A flusher whose MongoDB write waits (an outage ending under it) while a ping lands."""

    async def write(self, ops: list[UpdateOne]) -> None:
        if not self.pinged:
            await asyncio.sleep(1.5)
        await super().write(ops)


async def test_what_changed_during_a_stalled_write_is_flushed_at_once(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    store = store_of(redis, settings)
    await store.save([Ping("u0", "c1", "l1", 10.0, 1, 1000.0)], now_ms=1)
    # Left in flight by a dead flusher: the new one's first cycle (at start) writes it.
    await redis.smove(keys.PROGRESS_DIRTY, keys.PROGRESS_INFLIGHT, keys.progress("u0", "c1"))
    flusher = StalledWrite(store, redis=redis, db=mongo, settings=settings.replace(flush_interval_s=3600.0))
    stop = asyncio.Event()
    task = asyncio.create_task(flusher.run(stop))
    try:

        async def resume_point() -> ResumePoint | None:
            doc = await mongo[PROGRESS].find_one({"_id": "u0|c1"})
            return ResumePoint.of_document(doc) if doc else None

        # Not an hour later: the ping that landed during the stalled write follows at once.
        assert await eventually(resume_point, until=lambda p: p == ResumePoint(99, "l1", 999.0))
    finally:
        stop.set()
        await task
