"""The flusher: write-behind of watch progress from Redis to MongoDB.

Every ``flush_interval_s``: the dirty set is scanned in batches of ``flush_batch_size``; each
batch is read with one pipelined HGETALL and written with ONE unordered ``bulk_write``. A key
leaves the dirty set only when MongoDB acknowledged the values read at revision ``rev`` and the
hash is still at that revision (SREM, then a compare step that SADDs it back when a ping landed
meanwhile), so nothing is lost to a crash, a MongoDB outage or a late ping. A flushed hash gets
its TTL back; a dirty one never expires.

A key becomes ONE upsert whose filter is the ``_id`` alone: watch times (``w_<lectureId>``) and
the resume point (``contract.progress.ResumePoint``, one string sorting by seq) are each a
``$max`` on a flat field (see DESIGN.md on nx-27017), so a re-flush, an older device or any order
of writes never moves MongoDB back.

Run as ``python -m ingest.flusher``; SIGTERM flushes once more and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne

from contract import keys
from contract.clients import redis_client
from contract.progress import RESUME_FIELD, ProgressStore, ResumePoint
from contract.settings import Settings
from ingest.store import PROGRESS, progress_id

log = logging.getLogger("scorecast.flusher")


def operations(key: str, live: dict[str, str], now: float) -> list[UpdateOne]:
    """The MongoDB writes that make the ``progress`` document at least as new as ``live``."""
    user_id, course_id = keys.parse_progress(key)
    doc_id = progress_id(user_id, course_id)
    newest: dict[str, Any] = {
        f"w_{field[2:]}": float(value) for field, value in live.items() if field.startswith("w:")
    }
    if "seq" in live:
        point = ResumePoint(int(live["seq"]), live["lecture"], float(live["pos"]))
        newest[RESUME_FIELD] = point.encode()
    completed = [field[2:] for field in live if field.startswith("c:")]
    update: dict[str, Any] = {
        "$setOnInsert": {"userId": user_id, "courseId": course_id},
        "$set": {"updatedAt": now},
    }
    if newest:
        update["$max"] = newest
    if completed:
        update["$addToSet"] = {"completedLectures": {"$each": completed}}
    # The filter stays the _id alone: nx-27017 applies an upsert whose filter has more (say
    # ``lastSeq: {$lt: n}``) to ANOTHER document that matches it.
    return [UpdateOne({"_id": doc_id}, update, upsert=True)]


class Flusher:
    def __init__(self, *, redis: Any, db: Any, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.store = ProgressStore(
            redis, complete_threshold=settings.complete_threshold, ttl_s=settings.progress_ttl_s
        )
        self.writes = 0  # MongoDB write operations issued, for the benchmark

    async def flush_once(self) -> int:
        """Flush every dirty key once. Returns how many keys left the dirty set."""
        cursor, done = 0, 0
        while True:
            cursor, members = await self.redis.sscan(
                keys.PROGRESS_DIRTY, cursor, count=self.settings.flush_batch_size
            )
            if members:
                done += await self._flush(sorted(set(members)))
            if cursor == 0:
                return done

    async def _flush(self, dirty: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for key in dirty:
            pipe.hgetall(key)
        hashes: list[dict[str, str]] = await pipe.execute()
        now = time.time()
        ops = [
            op for key, live in zip(dirty, hashes, strict=True) if live for op in operations(key, live, now)
        ]
        if ops:
            await self.write(ops)
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(keys.PROGRESS_DIRTY, *dirty)
        for key, live in zip(dirty, hashes, strict=True):
            await self.store.flushed(keys=[key], args=[live.get("rev", ""), self.store.ttl_s], client=pipe)
        replies = await pipe.execute()
        changed = [key for key, still in zip(dirty, replies[1:], strict=True) if not still]
        if changed:  # a ping landed after the read: keep it dirty for the next cycle
            await self.redis.sadd(keys.PROGRESS_DIRTY, *changed)
        return len(dirty) - len(changed)

    async def write(self, ops: list[UpdateOne]) -> None:
        """ONE unordered bulk write. Any error raises, so every key of the batch stays dirty (each
        write is a ``$max``/``$addToSet``, so writing one again is harmless)."""
        await self.db[PROGRESS].bulk_write(ops, ordered=False)
        self.writes += len(ops)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``flush_interval_s`` until ``stop``; back off while MongoDB or Redis fail."""
        delay = self.settings.flush_interval_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            try:
                flushed = await self.flush_once()
                if flushed:
                    log.info("flushed %d progress keys", flushed)
                delay = self.settings.flush_interval_s
            except Exception as exc:
                delay = min(max(delay * 2, 0.5), 60.0)
                log.warning("flush failed (%s); keys stay dirty, retrying in %.1f s", exc, delay)


async def main(settings: Settings) -> None:
    redis = redis_client(settings.redis_url)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=5000
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flusher = Flusher(redis=redis, db=client[settings.mongo_db], settings=settings)
    log.info(
        "flusher running: every %.1f s, batches of %d", settings.flush_interval_s, settings.flush_batch_size
    )
    try:
        await flusher.run(stop)
        try:
            await flusher.flush_once()  # the last word before exiting
        except Exception:
            log.warning("final flush failed; the keys stay dirty for the next flusher", exc_info=True)
    finally:
        await redis.aclose()
        await client.close()


if __name__ == "__main__":
    _settings = Settings.from_env()
    logging.basicConfig(level=_settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    import uvloop

    uvloop.run(main(_settings))
