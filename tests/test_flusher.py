"""The flusher against the real servers: outages, crashes and late pings lose nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, UpdateOne

from contract import keys
from contract.progress import Ping, ProgressStore
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import free_port, mongo_server
from ingest.flusher import Flusher
from ingest.store import PROGRESS
from tests.eventually import eventually


def store_of(redis: Any, settings: Settings) -> ProgressStore:
    return ProgressStore(redis, complete_threshold=0.95, ttl_s=settings.progress_ttl_s)


def pings(n_users: int, seq: int, lecture: str = "l1") -> list[Ping]:
    return [Ping(f"u{i}", "c1", lecture, float(seq * 10 + i), seq, 1000.0) for i in range(n_users)]


async def assert_flushed(db: Any, n_users: int, seq: int) -> None:
    docs = {d["_id"]: d async for d in db[PROGRESS].find({})}
    assert len(docs) == n_users
    for i in range(n_users):
        doc = docs[f"u{i}|c1"]
        assert (doc["lastSeq"], doc["lastPosition"], doc["w_l1"]) == (
            seq,
            float(seq * 10 + i),
            float(seq * 10 + i),
        )


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
    assert (doc["lastSeq"], doc["lastPosition"]) == (99, 999.0)


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
    assert (doc["lastSeq"], doc["lastPosition"], doc["w_l1"]) == (50, 500.0, 500.0)


async def test_many_pings_on_one_key_become_one_write(redis: Any, mongo: Any, settings: Settings) -> None:
    store = store_of(redis, settings)
    for seq in range(1, 101):
        await store.save([Ping("u0", "c1", "l1", float(seq), seq, 1000.0)], now_ms=seq)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    assert await flusher.flush_once() == 1
    assert flusher.writes == 2  # watch time + resume point, in one bulk write


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
