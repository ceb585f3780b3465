"""The flusher against the real servers: outages, crashes and late pings lose nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, UpdateOne

from contract import keys
from contract.auth import TokenIssuer
from contract.messages import completion_event_decoder
from contract.progress import Ping, ProgressStore, ResumePoint
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import free_port, mongo_server
from ingest.achievements import Achievements
from ingest.flusher import Flusher
from ingest.store import PROGRESS
from tests.eventually import eventually
from tests.helpers import bearer
from tests.test_progress import progress, put_course


def store_of(redis: Any, settings: Settings) -> ProgressStore:
    return ProgressStore(redis, complete_threshold=0.95, ttl_s=settings.progress_ttl_s)


def pings(n_users: int, seq: int, lecture: str = "l1") -> list[Ping]:
    return [Ping(f"u{i}", "c1", lecture, float(seq * 10 + i), seq, 1000.0) for i in range(n_users)]


async def assert_flushed(db: Any, n_users: int, seq: int) -> None:
    docs = {d["_id"]: d async for d in db[PROGRESS].find({})}
    assert len(docs) == n_users
    for i in range(n_users):
        doc = docs[f"u{i}|c1"]
        position = float(seq * 10 + i)
        assert (ResumePoint.of_document(doc), doc["w_l1"]) == (ResumePoint(seq, "l1", position), position)


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
        assert await redis.scard(keys.PROGRESS_DIRTY) == 30
        await store.save(pings(30, 2), now_ms=2)  # the gateway keeps accepting pings meanwhile
        mongo.start()
        assert await flusher.flush_once() == 30
        await assert_flushed(client.scorecast, 30, 2)
        assert await redis.scard(keys.PROGRESS_DIRTY) == 0
    finally:
        await client.close()
        mongo.stop()


class PingDuringWrite(Flusher):
    """A flusher during whose MongoDB write one more ping lands in Redis."""

    def __init__(self, store: ProgressStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store_ = store

    async def write(self, ops: list[UpdateOne]) -> None:
        await self.store_.save([Ping("u0", "c1", "l1", 999.0, 99, 1000.0)], now_ms=3)
        await super().write(ops)


async def test_a_ping_that_lands_during_a_flush_stays_dirty(
    redis: Any, mongo: Any, settings: Settings
) -> None:
    store = store_of(redis, settings)
    await store.save(pings(3, 1), now_ms=1)
    assert await PingDuringWrite(store, redis=redis, db=mongo, settings=settings).flush_once() == 2
    assert await redis.smembers(keys.PROGRESS_DIRTY) == {keys.progress("u0", "c1")}
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
    assert (ResumePoint.of_document(doc), doc["w_l1"]) == (ResumePoint(50, "l1", 500.0), 500.0)


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
    assert (ResumePoint.of_document(doc), doc["w_l1"]) == (ResumePoint(100, "l9", 900.0), 5.0)
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
    assert (doc["w_l1"], doc["w_l2"], doc["w_l3"]) == (30.0, 70.0, 9.0)


async def test_one_learners_resume_point_stays_out_of_anothers_progress(
    ingest: Any, issuer: TokenIssuer, redis: Any, mongo: Any, settings: Settings
) -> None:
    """Issue #8, defect 1 end to end: alice's document came from a completion (no resume point
    yet); rita's re-flush at her current seq once wrote rita's position into alice's document."""
    await put_course(ingest, issuer, "demo")
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
    assert hers["watchTimes"] == {"vars": 30.0}
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
