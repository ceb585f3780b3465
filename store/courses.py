"""Course metadata as the progress path needs it, cached in Redis and in process.

MongoDB ``courses`` is the truth (written by ``PUT /api/v1/courses/{id}``). The Redis copy
(``courseMeta:<id>``, JSON, ``course_meta_ttl_s``) is refilled on a miss by one process at a
time: the first takes ``courseMeta:<id>:lock`` (SET NX PX) and reads MongoDB, the others wait
for the copy instead of stampeding MongoDB. A short in-process cache keeps a ping at one Redis
round trip; it is refreshed in the background once it is ``local_ttl_s`` old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from contract import keys
from contract.courses import COURSES, MISSING, CourseMeta, decode_meta, meta_from_doc

log = logging.getLogger("scorecast.courses")

LOCAL_TTL_S = 5.0
LOCK_TTL_MS = 5000


class CourseCatalog:
    def __init__(
        self,
        redis: Any,
        db: Any,
        *,
        ttl_s: int,
        local_ttl_s: float = LOCAL_TTL_S,
        max_entries: int = 10_000,
        max_unknown: int = 1_000,
    ) -> None:
        self.redis = redis
        self.db = db
        self.ttl_s = ttl_s
        self.local_ttl_s = local_ttl_s
        # In-process copies, bounded: known courses, and apart from them (so a client asking for
        # made-up ids cannot push real courses out) ids found not to exist.
        self._local: dict[str, tuple[CourseMeta | None, float]] = {}
        self._unknown: dict[str, tuple[CourseMeta | None, float]] = {}
        self.max_entries = max_entries
        self.max_unknown = max_unknown
        self._inflight: dict[str, asyncio.Future[CourseMeta | None]] = {}
        self._refreshing: set[asyncio.Task[CourseMeta | None]] = set()
        self.mongo_reads = 0  # observable: how often the catalog went to MongoDB
        self.refreshes = 0  # observable: background refreshes of old local copies

    async def get(self, course_id: str) -> CourseMeta | None:
        """The course's metadata, or None when there is no such course.

        An in-process entry older than ``local_ttl_s`` is still answered at once while one background
        read refreshes it, so a busy gateway never holds its pings behind that read.
        """
        hit = self.cached(course_id)
        if hit is not None:
            return hit[0]
        # Single flight: concurrent misses in this process share one lookup.
        pending = self._inflight.get(course_id)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._load(course_id, self._lookup(course_id))

    def cached(self, course_id: str) -> tuple[CourseMeta | None] | None:
        """What :meth:`get` answers without waiting, as a 1-tuple; None when it would have to wait.
        Needs a running event loop (an old entry starts its refresh)."""
        hit = self._local.get(course_id) or self._unknown.get(course_id)
        if hit is None:
            return None
        if hit[1] <= time.monotonic() and course_id not in self._inflight:
            self.refreshes += 1
            refresh = asyncio.create_task(self._load(course_id, self._lookup(course_id)))
            self._refreshing.add(refresh)
            refresh.add_done_callback(self._refreshed)
        return (hit[0],)

    def _lookup(self, course_id: str) -> asyncio.Future[CourseMeta | None]:
        """Mark a lookup of ``course_id`` as under way (before it starts: no second one begins)."""
        future: asyncio.Future[CourseMeta | None] = asyncio.get_running_loop().create_future()
        self._inflight[course_id] = future
        return future

    async def _load(self, course_id: str, future: asyncio.Future[CourseMeta | None]) -> CourseMeta | None:
        try:
            meta = await self._shared(course_id)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it
            raise
        else:
            future.set_result(meta)
            self._remember(course_id, meta)
            return meta
        finally:
            del self._inflight[course_id]

    @property
    def local_sizes(self) -> tuple[int, int]:
        """How many (known, unknown) course ids this process holds copies of."""
        return len(self._local), len(self._unknown)

    def _remember(self, course_id: str, meta: CourseMeta | None) -> None:
        now = time.monotonic()
        cache, other, limit = (
            (self._local, self._unknown, self.max_entries)
            if meta is not None
            else (self._unknown, self._local, self.max_unknown)
        )
        other.pop(course_id, None)  # created or deleted since
        if course_id not in cache and len(cache) >= limit:
            for stale in [k for k, (_, until) in cache.items() if until <= now]:
                del cache[stale]
            while len(cache) >= limit:
                del cache[next(iter(cache))]  # the oldest entry
        cache[course_id] = (meta, now + self.local_ttl_s)

    def _refreshed(self, task: asyncio.Task[CourseMeta | None]) -> None:
        self._refreshing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("refreshing course metadata failed; the cached copy stays", exc_info=task.exception())

    def forget(self, course_id: str) -> None:
        self._local.pop(course_id, None)
        self._unknown.pop(course_id, None)

    async def put(self, meta: CourseMeta) -> None:
        """Refresh the Redis copy after the course changed in MongoDB."""
        await self.redis.set(keys.course_meta(meta.course_id), msgspec.json.encode(meta), ex=self.ttl_s)
        self.forget(meta.course_id)

    async def _shared(self, course_id: str) -> CourseMeta | None:
        key = keys.course_meta(course_id)
        # Wait behind another process's refill as long as its lock may be held: the lock's TTL
        # bounds a holder that died, and a busy holder must not make every waiter read MongoDB.
        deadline = time.monotonic() + LOCK_TTL_MS / 1000
        while time.monotonic() < deadline:
            raw = await self.redis.get(key)
            if raw is not None:
                return None if raw == MISSING else decode_meta(raw)
            if await self.redis.set(keys.course_meta_lock(course_id), "1", nx=True, px=LOCK_TTL_MS):
                try:
                    # The previous holder may have filled the copy and let go between our GET and
                    # our SET NX: look again before reading MongoDB.
                    raw = await self.redis.get(key)
                    if raw is not None:
                        return None if raw == MISSING else decode_meta(raw)
                    return await self._refill(course_id)
                finally:
                    await self.redis.delete(keys.course_meta_lock(course_id))
            await asyncio.sleep(0.05)
        return await self._refill(course_id)

    async def _refill(self, course_id: str) -> CourseMeta | None:
        self.mongo_reads += 1
        doc = await self.db[COURSES].find_one({"_id": course_id})
        key = keys.course_meta(course_id)
        if doc is None:
            await self.redis.set(key, MISSING, ex=30)
            return None
        meta = meta_from_doc(doc)
        await self.redis.set(key, msgspec.json.encode(meta), ex=self.ttl_s)
        return meta
