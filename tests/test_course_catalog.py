"""Course metadata cache on the real servers: one refill per key at a time, across processes."""

from __future__ import annotations

import asyncio
from typing import Any

from contract import keys
from contract.courses import COURSES, meta_from_doc
from store.courses import CourseCatalog
from tests.eventually import eventually

DOC = {
    "_id": "py",
    "title": "Python",
    "sections": [
        {"sectionId": "s", "title": "S", "lectures": [
            {"lectureId": "a", "title": "A", "durationSeconds": 60, "marks": 2},
            {"lectureId": "b", "title": "B", "durationSeconds": 90, "marks": 3},
        ]},
    ],
}  # fmt: skip


async def test_concurrent_misses_in_many_processes_refill_once(redis: Any, mongo: Any) -> None:
    await mongo[COURSES].insert_one(dict(DOC))
    catalogs = [CourseCatalog(redis, mongo, ttl_s=3600) for _ in range(5)]  # five gateway processes
    found = await asyncio.gather(*(catalog.get("py") for catalog in catalogs for _ in range(20)))
    assert all(meta == meta_from_doc(DOC) for meta in found)
    assert sum(catalog.mongo_reads for catalog in catalogs) == 1
    assert 0 < await redis.ttl(keys.course_meta("py")) <= 3600
    assert not await redis.exists(keys.course_meta_lock("py"))


class _LateGet:
    """The real client, except that the first GET of ``key`` answers what it read only after
    ``meanwhile`` ran: another process's whole refill between our GET and our SET NX."""

    def __init__(self, redis: Any, key: str, meanwhile: Any) -> None:
        self._redis, self._key, self._meanwhile, self._done = redis, key, meanwhile, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def get(self, key: str) -> Any:
        found = await self._redis.get(key)
        if key == self._key and not self._done:
            self._done = True
            await self._meanwhile()
        return found


async def test_a_refill_finished_between_our_get_and_our_lock_is_not_read_again(
    redis: Any, mongo: Any
) -> None:
    await mongo[COURSES].insert_one(dict(DOC))
    other = CourseCatalog(redis, mongo, ttl_s=3600)
    late = _LateGet(redis, keys.course_meta("py"), lambda: other.get("py"))
    ours = CourseCatalog(late, mongo, ttl_s=3600)
    assert await ours.get("py") == meta_from_doc(DOC)
    assert other.mongo_reads + ours.mongo_reads == 1


async def test_an_unknown_course_is_remembered_briefly(redis: Any, mongo: Any) -> None:
    catalog = CourseCatalog(redis, mongo, ttl_s=3600)
    assert await catalog.get("nope") is None
    assert await CourseCatalog(redis, mongo, ttl_s=3600).get("nope") is None
    assert catalog.mongo_reads == 1
    assert 0 < await redis.ttl(keys.course_meta("nope")) <= 30


async def test_an_old_local_copy_is_answered_at_once_while_one_read_refreshes_it(
    redis: Any, mongo: Any
) -> None:
    await mongo[COURSES].insert_one(dict(DOC))
    gateway = CourseCatalog(redis, mongo, ttl_s=3600, local_ttl_s=0.0)  # every local copy is old
    first = await gateway.get("py")
    assert first is not None and first.title == "Python"
    renamed = meta_from_doc({**DOC, "title": "Python, revised"})
    await CourseCatalog(redis, mongo, ttl_s=3600).put(renamed)  # what the ingest API does on PUT
    stale = await asyncio.gather(*(gateway.get("py") for _ in range(10)))
    assert [meta.title if meta else None for meta in stale] == ["Python"] * 10  # no one waited
    assert gateway.refreshes == 1  # and one read refreshes the copy for all of them
    fresh = await eventually(lambda: gateway.get("py"), until=lambda m: m is not None and m.title != "Python")
    assert fresh == renamed
    assert gateway.mongo_reads == 1  # the refreshes read the Redis copy


async def test_the_local_cache_is_bounded_and_unknown_ids_cannot_push_courses_out(
    redis: Any, mongo: Any
) -> None:
    await mongo[COURSES].insert_many([{**DOC, "_id": f"c{i}"} for i in range(3)])
    catalog = CourseCatalog(redis, mongo, ttl_s=3600, local_ttl_s=60.0, max_entries=2, max_unknown=3)
    for i in range(3):
        assert await catalog.get(f"c{i}") is not None
    assert catalog.local_sizes == (2, 0)  # the oldest course went
    for i in range(50):  # a client making ids up
        assert await catalog.get(f"made-up-{i}") is None
    assert catalog.local_sizes == (2, 3)
    reads = catalog.mongo_reads
    assert await catalog.get("c2") is not None  # the newest courses are still held locally
    assert await catalog.get("c1") is not None
    assert catalog.mongo_reads == reads
