"""The gateway's autosave writer in-process, on a real Redis: batching and answering."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from contract.auth import Claims
from contract.courses import CourseMeta
from contract.progress import Ping, PingResult
from contract.push import ProgressPing
from contract.settings import Settings
from gateway import fastpath
from gateway.progress import MAX_BATCH, ProgressRejected, ProgressWriter
from store.clients import redis_client
from store.courses import CourseCatalog
from store.progress import ProgressStore
from tests.eventually import eventually


class RecordingStore(ProgressStore):
    """The real store, remembering the size of every batch it was asked to save."""

    def __init__(self, redis: Any, **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self.batches: list[int] = []

    async def save_each(self, pings: list[Ping], now_ms: int) -> list[PingResult | Exception]:
        self.batches.append(len(pings))
        return await super().save_each(pings, now_ms)


async def test_a_burst_is_stored_in_bounded_batches_and_every_ping_answered_once_in_order(
    settings: Settings, redis: Any
) -> None:
    client = redis_client(settings.redis_url)
    store = RecordingStore(client, complete_threshold=0.95, ttl_s=60, round_trip=fastpath.redis_round_trip)
    catalog = CourseCatalog(client, None, ttl_s=60)
    await catalog.put(CourseMeta("c1", "C", ["l1"], {"l1": 100.0}, {"l1": 1}))
    assert await catalog.get("c1") is not None
    registry = CollectorRegistry()
    stored = Counter("stored", "pings stored", registry=registry)
    trips = Counter("trips", "round trips", registry=registry)
    writer = ProgressWriter(store, catalog, round_trips=trips, stored=stored)
    answers: list[tuple[int, PingResult | ProgressRejected]] = []
    n = 2 * MAX_BATCH + 100
    now = int(time.time())
    try:
        for i in range(n):
            claims = Claims(sub=f"u{i}", name="U", exp=now + 60, iat=now, jti=f"j{i}")
            ping = ProgressPing(course_id="c1", lecture_id="l1", position=5.0, seq=1)

            def done(outcome: PingResult | ProgressRejected, i: int = i) -> None:
                answers.append((i, outcome))

            assert writer.submit_cached(claims, ping, origin=f"ws-{i}", who="{}", done=done)
        await eventually(lambda: _count(answers), until=lambda got: got == n)
        assert [i for i, _ in answers] == list(range(n))  # each once, in the order submitted
        assert all(isinstance(outcome, PingResult) and outcome.moved for _, outcome in answers)
        assert store.batches == [MAX_BATCH, MAX_BATCH, 100]
        assert registry.get_sample_value("stored_total") == n
        assert await redis.hget("progress:{user:u7}:c1", "pos") == "5.0"
    finally:
        await writer.close()
        await client.aclose()


async def _count(answers: list[Any]) -> int:
    return len(answers)


async def test_pings_within_the_batch_window_share_one_round_trip(settings: Settings, redis: Any) -> None:
    """Pings that arrive one by one (each in its own turn of the event loop) within the window go
    to Redis together; without a window the first goes at once, alone."""
    client = redis_client(settings.redis_url)
    catalog = CourseCatalog(client, None, ttl_s=60)
    await catalog.put(CourseMeta("c1", "C", ["l1"], {"l1": 100.0}, {"l1": 1}))
    assert await catalog.get("c1") is not None
    now = int(time.time())
    try:
        for window_s, expected in ((0.5, [3]), (0.0, [1, 2])):
            store = RecordingStore(
                client, complete_threshold=0.95, ttl_s=60, round_trip=fastpath.redis_round_trip
            )
            registry = CollectorRegistry()
            trips = Counter("trips", "round trips", registry=registry)
            writer = ProgressWriter(store, catalog, round_trips=trips, window_s=window_s)
            answers: list[PingResult | ProgressRejected] = []
            for i in range(3):
                claims = Claims(sub=f"w{window_s}-{i}", name="U", exp=now + 60, iat=now, jti=f"j{i}")
                ping = ProgressPing(course_id="c1", lecture_id="l1", position=5.0, seq=1)
                assert writer.submit_cached(claims, ping, origin=f"ws-{i}", who="{}", done=answers.append)
                await asyncio.sleep(0)  # the next ping comes in a later turn of the loop
            await eventually(lambda answers=answers: _count(answers), until=lambda got: got == 3)
            await writer.close()
            assert store.batches == expected, window_s
            assert all(isinstance(a, PingResult) and a.moved for a in answers)
    finally:
        await client.aclose()
