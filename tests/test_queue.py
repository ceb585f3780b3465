"""The score queue: backpressure measures the backlog, processed entries are trimmed, dead
letters are capped (issue #8, defect 3)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from contract import keys
from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from ingest.api.app import create_app
from ingest.consumer import StreamConsumer
from store.streams import BacklogGauge, backlog, trim_done
from tests.eventually import eventually
from tests.helpers import asgi_client, both_redis, login, score, scorer_token


@both_redis
async def test_the_backlog_is_undelivered_plus_pending_of_the_slowest_group(redis: Any) -> None:
    assert await backlog(redis, "s") == 0  # no stream
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(6)]
    assert await backlog(redis, "s") == 6  # no group yet: everything waits
    await redis.xgroup_create("s", "fast", id="0")
    await redis.xgroup_create("s", "slow", id="0")
    await redis.xreadgroup("fast", "c", {"s": ">"})
    await redis.xack("s", "fast", *ids)
    assert await backlog(redis, "s") == 6  # "slow" has delivered nothing
    await redis.xreadgroup("slow", "c", {"s": ">"}, count=4)
    await redis.xack("s", "slow", *ids[:1])
    assert await backlog(redis, "s") == 2 + 3  # undelivered + delivered but not acknowledged
    await redis.xdel("s", ids[5])  # Redis can no longer tell the lag: the length bounds it
    assert await backlog(redis, "s") == 5


@both_redis
async def test_trimming_keeps_every_entry_some_group_still_needs(redis: Any) -> None:
    assert await trim_done(redis, "s") == 0  # no stream
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(10)]
    assert await trim_done(redis, "s") == 0  # no group: nobody has read anything
    await redis.xgroup_create("s", "a", id="0")
    await redis.xgroup_create("s", "b", id="0")
    await redis.xreadgroup("a", "c", {"s": ">"}, count=8)
    await redis.xack("s", "a", *ids[:2], *ids[3:8])  # ids[2] still pending in "a"
    await redis.xreadgroup("b", "c", {"s": ">"})
    await redis.xack("s", "b", *ids)
    assert await trim_done(redis, "s") == 2
    assert [i for i, _ in await redis.xrange("s")] == ids[2:]
    await redis.xack("s", "a", ids[2])
    assert await trim_done(redis, "s") == 5  # up to "a"'s last delivered entry, kept
    assert [i for i, _ in await redis.xrange("s")] == ids[7:]
    await redis.xreadgroup("a", "c", {"s": ">"})
    await redis.xack("s", "a", *ids[8:])
    assert await trim_done(redis, "s") == 2
    assert await redis.xlen("s") == 1
    assert await backlog(redis, "s") == 0  # trimming leaves the lag readable


async def test_a_backlog_read_is_shared_by_concurrent_writes(redis: Any) -> None:
    gauge = BacklogGauge(redis, max_age_s=3600.0)
    await redis.xadd("s", {"n": "1"})
    await redis.config_resetstat()
    assert await asyncio.gather(*(gauge.of("s") for _ in range(50))) == [1] * 50
    await redis.xadd("s", {"n": "2"})
    assert await gauge.of("s") == 1  # as read a moment ago
    evals = (await redis.info("commandstats"))["cmdstat_eval"]["calls"]
    assert evals == 1
    assert await BacklogGauge(redis, max_age_s=0.0).of("s") == 2


async def test_dead_letters_are_capped_to_the_newest(redis: Any) -> None:
    async def reject_all(entries: list[tuple[str, dict[str, str]]]) -> set[str]:
        return {entry_id for entry_id, _ in entries}

    consumer = StreamConsumer(
        redis, stream="s", group="g", consumer="c", dead_letter="s:dead", handler=reject_all,
        batch_size=2, block_ms=10, claim_idle_ms=60_000, max_deliveries=5, dead_letter_max_length=3,
    )  # fmt: skip
    await consumer.ensure_group()
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(7)]
    while await consumer.step():
        pass
    assert [f["sourceId"] for _, f in await redis.xrange("s:dead")] == ids[4:]


async def many_users(client: httpx.AsyncClient, n: int) -> list[str]:
    """``n`` users Scorecast knows (logged in once), so a scorer can score them."""
    users = [f"u{i}" for i in range(n)]
    for user in users:
        await login(client, user, user.upper())
    return users


@both_redis
async def test_processed_writes_never_fill_the_queue_and_a_real_backlog_does(
    stack: Stack, settings: Settings, issuer: TokenIssuer, redis: Any, mongo: Any
) -> None:
    """Issue #8, defect 3: with QUEUE_MAX_LENGTH writes processed in total, every write got 429.
    On a cluster the score stream is split into partitions: the backlog is their sum."""
    limit = 10
    streams = keys.partitions(keys.SCORE_STREAM, settings.stream_partition_count)

    async def queued() -> int:
        return sum([await backlog(redis, stream) for stream in streams])

    async def length() -> int:  # trimming keeps at most one processed entry per partition
        return sum([await redis.xlen(stream) for stream in streams])

    worker = stack.start("ingest.worker", stream_trim_interval_s=0.05)
    scorer = scorer_token(issuer)

    async def write(client: httpx.AsyncClient, user_id: str, action_id: str | None = None) -> httpx.Response:
        return await score(client, scorer, user_id, 1, action_id)

    api = create_app(settings.replace(queue_max_length=limit, queue_backlog_max_age_s=0.0))
    async with asgi_client(api, "http://ingest") as client:
        users = await many_users(client, 5)
        for _ in range(8):  # 40 writes, four times the limit, each batch processed before the next
            for user in users:
                r = await write(client, user)
                assert r.status_code == 202, r.text
            # a worker process starting on a loaded machine may take a while to read its first batch
            await eventually(queued, until=lambda n: n == 0, timeout_s=60)
        assert await eventually(length, until=lambda n: n <= len(streams)) <= len(streams)
        r = await client.get("/api/v1/scores/leaderboard", params={"limit": 100})
        assert sorted(e["score"] for e in r.json()["entries"]) == [8] * 5
        if settings.redis_cluster:  # the five users' writes went to several partitions
            assert sum([await redis.exists(stream) for stream in streams]) > 1

        assert worker.stop() == 0  # now the backlog is real: nobody takes entries off the queue
        for i in range(limit):
            assert (await write(client, users[i % 5])).status_code == 202
        refused = str(uuid.uuid4())
        r = await write(client, users[0], refused)
        assert (r.status_code, r.json()["error"]["code"]) == (429, "queue_full")
        assert int(r.headers["retry-after"]) >= 1
        assert await length() <= limit + len(streams)

        stack.start("ingest.worker", stream_trim_interval_s=0.05)
        await eventually(queued, until=lambda n: n == 0, timeout_s=60)
        assert (await write(client, users[0], refused)).status_code == 202
        await eventually(queued, until=lambda n: n == 0)
        assert await eventually(length, until=lambda n: n <= len(streams)) <= len(streams)
