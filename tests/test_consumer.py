"""The stream consumer against a real Redis: exact delivery counts, heartbeats, rescue of the silent."""

from __future__ import annotations

import asyncio
from typing import Any

from contract import keys
from ingest.consumer import Entry, StreamConsumer
from tests.eventually import eventually
from tests.helpers import both_redis

STREAM, GROUP, DEAD = "stream:test", "g", "stream:test:dead"


def consumer_of(redis: Any, handled: list[str], name: str = "survivor", **overrides: Any) -> StreamConsumer:
    async def handler(entries: list[Entry]) -> set[str]:
        handled.extend(entry_id for entry_id, _ in entries)
        return set()

    options: dict[str, Any] = {
        "batch_size": 10, "block_ms": 10, "claim_idle_ms": 30_000, "max_deliveries": 3, **overrides,
    }  # fmt: skip
    return StreamConsumer(
        redis, stream=STREAM, group=GROUP, consumer=name, dead_letter=DEAD, handler=handler, **options
    )


async def test_claimed_poison_is_dead_lettered_among_many_other_pending_entries(redis: Any) -> None:
    """The claimed entries' id range also holds many entries a live consumer has pending: each
    claimed entry's delivery count is still read exactly, so every poison entry is dead-lettered."""
    handled: list[str] = []
    consumer = consumer_of(redis, handled)
    await consumer.ensure_group()
    poison, busy = [], []
    for _ in range(5):
        poison.append(await redis.xadd(STREAM, {"d": "crashes every consumer"}))
        busy.extend([await redis.xadd(STREAM, {"d": "in hand"}) for _ in range(20)])
    await redis.xreadgroup(GROUP, "ghost", {STREAM: ">"})
    # A live consumer holds the busy entries (just delivered); the poison ones sat idle with a ghost
    # that was handed them many times.
    await redis.xclaim(STREAM, GROUP, "busy", 0, busy)
    await redis.xclaim(STREAM, GROUP, "ghost", 0, poison, idle=60_000, retrycount=10)
    await consumer.step()
    assert handled == []
    dead = await redis.xrange(DEAD)
    assert sorted(f["sourceId"] for _, f in dead) == sorted(poison)
    pending = await redis.xpending_range(STREAM, GROUP, min="-", max="+", count=100)
    assert {p["message_id"] for p in pending} == set(busy)


@both_redis
async def test_a_dead_consumers_entries_are_taken_over_at_once_and_it_leaves_the_group(redis: Any) -> None:
    handled: list[str] = []
    survivor = consumer_of(redis, handled, claim_idle_ms=600_000)
    await survivor.ensure_group()
    ids = [await redis.xadd(STREAM, {"d": str(n)}) for n in range(3)]
    # What a consumer killed mid-batch leaves: its batch pending since before its heartbeat ran out.
    await redis.xreadgroup(GROUP, "doomed", {STREAM: ">"})
    await redis.xclaim(STREAM, GROUP, "doomed", 0, ids, idle=5000, retrycount=1)
    await redis.zadd(keys.consumer_deadlines(STREAM, GROUP), {"doomed": 1})
    while await survivor.step():
        pass
    assert handled == ids
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    # The look after the takeover found it with nothing pending: it was removed.
    assert "doomed" not in {c["name"] for c in await redis.xinfo_consumers(STREAM, GROUP)}
    assert await redis.zscore(keys.consumer_deadlines(STREAM, GROUP), "doomed") is None
    assert await redis.xlen(DEAD) == 0


async def test_a_dead_consumers_poison_entry_is_still_dead_lettered(redis: Any) -> None:
    handled: list[str] = []
    survivor = consumer_of(redis, handled, claim_idle_ms=600_000, max_deliveries=3)
    await survivor.ensure_group()
    bad = await redis.xadd(STREAM, {"d": "crashes every consumer"})
    await redis.xreadgroup(GROUP, "doomed", {STREAM: ">"})
    await redis.xclaim(STREAM, GROUP, "doomed", 0, [bad], idle=60_000, retrycount=3)
    await redis.zadd(keys.consumer_deadlines(STREAM, GROUP), {"doomed": 1})
    await survivor.step()  # the takeover is its fourth delivery
    assert handled == []
    assert [f["sourceId"] for _, f in await redis.xrange(DEAD)] == [bad]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0


async def test_live_and_unannounced_consumers_keep_their_entries(redis: Any) -> None:
    handled: list[str] = []
    survivor = consumer_of(redis, handled, claim_idle_ms=600_000)
    await survivor.ensure_group()
    await redis.xadd(STREAM, {"d": "1"})
    await redis.xreadgroup(GROUP, "alive", {STREAM: ">"})
    await redis.xadd(STREAM, {"d": "2"})
    await redis.xreadgroup(GROUP, "old-release", {STREAM: ">"})  # never announces itself
    far = 10 * 2**40  # a deadline far in the future (ms)
    await redis.zadd(keys.consumer_deadlines(STREAM, GROUP), {"alive": far})
    assert await survivor.step() == 0
    assert handled == []
    pending = await redis.xpending(STREAM, GROUP)
    assert {c["name"]: c["pending"] for c in pending["consumers"]} == {"alive": 1, "old-release": 1}


async def test_a_consumer_busy_longer_than_its_heartbeat_ttl_keeps_its_batch(redis: Any) -> None:
    """The heartbeat is renewed by its own task while the handler works, so nobody steals the batch."""
    release = asyncio.Event()
    busy_handled: list[str] = []

    async def slow(entries: list[Entry]) -> set[str]:
        busy_handled.extend(entry_id for entry_id, _ in entries)
        await release.wait()
        return set()

    busy = StreamConsumer(
        redis, stream=STREAM, group=GROUP, consumer="busy", dead_letter=DEAD, handler=slow,
        batch_size=10, block_ms=10, claim_idle_ms=600_000, max_deliveries=3,
        heartbeat_interval_ms=50, heartbeat_ttl_ms=200,
    )  # fmt: skip
    other_handled: list[str] = []
    other = consumer_of(redis, other_handled, name="other", heartbeat_interval_ms=50, heartbeat_ttl_ms=200)
    await busy.ensure_group()
    entry = await redis.xadd(STREAM, {"d": "slow"})
    stop = asyncio.Event()
    task = asyncio.create_task(busy.run(stop))
    try:
        await eventually(lambda: asyncio.sleep(0, busy_handled), until=lambda h: h == [entry])
        for _ in range(20):  # well past the TTL, looking for dead consumers every round
            await other.step()
            await asyncio.sleep(0.05)
        assert other_handled == []
        release.set()
        await eventually(lambda: redis.xpending(STREAM, GROUP), until=lambda p: p["pending"] == 0)
    finally:
        stop.set()
        release.set()
        await task
    assert busy_handled == [entry]
    # A consumer that stopped has run out at once: the next look removes it from the group.
    await other.step()
    assert "busy" not in {c["name"] for c in await redis.xinfo_consumers(STREAM, GROUP)}


async def test_a_restarted_consumer_takes_over_what_it_left_under_its_own_name(redis: Any) -> None:
    handled: list[str] = []
    restarted = consumer_of(redis, handled, name="pod-1", claim_idle_ms=600_000)
    await restarted.ensure_group()
    entry = await redis.xadd(STREAM, {"d": "1"})
    await redis.xreadgroup(GROUP, "pod-1", {STREAM: ">"})  # the previous process of that name
    assert await restarted.step() == 1
    assert handled == [entry]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
