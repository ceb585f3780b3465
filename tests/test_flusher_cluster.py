"""The flusher on a real 3-master Redis Cluster while one master is stopped: the users of the two
others reach MongoDB during the outage, the rest stays dirty or in flight, and once the master
is back every user's document holds their newest position, each completion queued once.

The oracle is what the test itself wrote (the pings' newest positions) and where the cluster
says each key lives (``CLUSTER NODES`` of a running node), not the flusher's own bookkeeping.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from contract import keys
from contract.events import completion_event_decoder
from contract.progress import Ping, ResumePoint
from contract.settings import Settings
from devstack.cluster import RedisCluster
from devstack.processes import Stack
from devstack.servers import ManagedServer, free_port
from gateway.shards import slot_of
from ingest.flusher import Flusher
from ingest.reach import Reach
from ingest.store import PROGRESS
from store.clients import initialized, redis_client
from store.progress import ProgressStore
from tests.eventually import eventually

USERS = [f"u{i:02d}" for i in range(48)]
COURSE = "c1"


def first(i: int) -> ResumePoint:
    return ResumePoint(1, "l1", 10.0 + i)


def newest(i: int) -> ResumePoint:
    return ResumePoint(2, "l2", 100.0 + i)


class Placement:
    """Where each user's progress key and its dirty bucket live, relative to ``victim``."""

    def __init__(self, cluster: RedisCluster, victim: ManagedServer, settings: Settings) -> None:
        self.count = settings.dirty_bucket_count
        self.victim = victim

        def on_victim(key: str) -> bool:
            return cluster.node_of_slot(slot_of(key)).port == victim.port

        self.key_down = {u for u in USERS if on_victim(keys.progress(u, COURSE))}
        self.bucket_down = {u for u in USERS if on_victim(self.bucket(u))}
        self.live = set(USERS) - self.key_down - self.bucket_down
        self.buckets_down = sum(on_victim(dirty) for dirty, _ in keys.dirty_buckets(self.count))
        self.stream_down = {
            u for u in USERS if on_victim(keys.completion_stream(u, settings.stream_partition_count))
        }

    def bucket(self, user: str) -> str:
        return keys.dirty_bucket(keys.progress(user, COURSE), self.count)


def test_a_reach_leaves_alone_what_lives_on_a_master_down() -> None:
    """No I/O: where keys live is a table here (``master`` of a real reach is the slot map)."""
    homes = {keys.progress("a", COURSE): "m1", keys.progress("d", COURSE): "m2"}
    streams = {u: keys.completion_stream(u, 2) for u in ("a", "d")}
    assert streams["a"] != streams["d"]
    homes |= {streams["a"]: "m1", streams["d"]: "m2"}
    homes |= {keys.course_meta(COURSE): "m1", keys.course_meta_lock(COURSE): "m1"}
    assert Reach().reachable("anything") and Reach().held(["k"], [{"p:l1": "{}"}], 2) == []
    reach = Reach(down=frozenset({"m2"}), master=homes.get)
    assert reach.reachable(keys.progress("a", COURSE)) and not reach.reachable(keys.progress("d", COURSE))
    assert not reach.reachable("no slot served")  # None: no node serves it
    batch = [keys.progress("a", COURSE), keys.progress("d", COURSE)]
    # d's completion stream partition is down: a hash of d with an unqueued completion waits.
    assert reach.held(batch, [{"p:l1": "{}"}, {"p:l1": "{}"}], 2) == [1]
    assert reach.held(batch, [{"p:l1": "{}"}, {"seq": "3"}], 2) == []
    meta_down = Reach(down=frozenset({"m1"}), master=homes.get)
    assert meta_down.held(batch, [{}, {"p:l1": "{}"}], 2) == [1]  # its course's metadata is down
    assert not reach.partial and Reach(buckets=1).partial and Reach(keys=1).partial


async def resume_points(mongo: Any) -> dict[str, ResumePoint | None]:
    return {d["userId"]: ResumePoint.of_document(d) async for d in mongo[PROGRESS].find({})}


async def waiting(redis: Any, settings: Settings) -> tuple[set[str], set[str]]:
    """Every key in a dirty bucket, and every key in an in-flight set."""
    dirty: set[str] = set()
    inflight: set[str] = set()
    for bucket, flight in keys.dirty_buckets(settings.dirty_bucket_count):
        dirty |= await redis.smembers(bucket)
        inflight |= await redis.smembers(flight)
    return dirty, inflight


async def script_flush(redis: aioredis.RedisCluster) -> None:
    """Every master forgets its scripts, as after a restart: a flusher that answered NOSCRIPT by
    loading the script on every master failed while one of them was down."""
    await redis.execute_command("SCRIPT FLUSH", target_nodes=aioredis.RedisCluster.PRIMARIES)


@pytest.mark.timeout(180)
async def test_a_cycle_with_a_master_down_flushes_the_others_and_leaves_the_rest_for_later(
    cluster_settings: Settings,
    cluster_redis: aioredis.RedisCluster,
    redis_cluster_srv: RedisCluster,
    mongo: Any,
) -> None:
    cluster = redis_cluster_srv
    settings = cluster_settings.replace(flush_batch_size=5)  # several batches per bucket
    # The master of slot 0: the one redis-py asks for its COMMAND table, the hardest to lose.
    victim = cluster.node_of_slot(0)
    where = Placement(cluster, victim, settings)
    # Every case is there: keys of live users; keys on the victim in a live bucket; keys in a bucket
    # on the victim; and a live user whose completion stream partition is on the victim.
    assert where.live and where.key_down - where.bucket_down and where.bucket_down, vars(where)
    assert where.live & where.stream_down, vars(where)
    late_completer = min(where.live & where.stream_down)
    redis = await initialized(redis_client(settings.redis_url, cluster=True))
    store = ProgressStore.of(redis, settings, db=mongo)
    flusher = Flusher(redis=redis, db=mongo, settings=settings)
    try:
        await store.save([Ping(u, COURSE, "l1", 10.0 + i, 1, 1000.0) for i, u in enumerate(USERS)], now_ms=1)
        assert await flusher.flush_once() == len(USERS)
        await store.save([Ping(u, COURSE, "l2", 100.0 + i, 2, 1000.0) for i, u in enumerate(USERS)], now_ms=2)
        # A completion whose event never reached its stream (its ``p:`` marker stays in the hash).
        done = await store.complete(late_completer, COURSE, "l2", 3, completable=True)
        assert done.status == 1
        await script_flush(redis)

        victim.stop()
        try:
            flushed = await flusher.flush_once()
            docs = await resume_points(mongo)
            # The completer's key cannot be finished before its completion is queued (unless the
            # course's metadata is unreachable anyway: then nobody's completion could be).
            ready = where.live - {late_completer}
            assert flushed == len(ready)
            assert docs == {u: newest(i) if u in ready else first(i) for i, u in enumerate(USERS)}
            left = flusher.reach
            assert left.keys == len(where.key_down - where.bucket_down) + 1
            assert left.buckets == where.buckets_down
        finally:
            victim.start()
            cluster.wait_ok()
        # What was left is still waiting, and only that: dirty again, nothing in flight.
        dirty, inflight = await waiting(redis, settings)
        assert inflight == set()
        assert dirty == {keys.progress(u, COURSE) for u in set(USERS) - ready}
        assert await flusher.flush_once() == len(USERS) - len(ready)
        assert not flusher.reach.partial
        docs = await resume_points(mongo)
        assert docs == {u: newest(i) for i, u in enumerate(USERS)}
        assert await waiting(redis, settings) == (set(), set())
        # The completion was queued once, after the master came back.
        stream = keys.completion_stream(late_completer, settings.stream_partition_count)
        events = [completion_event_decoder.decode(f["d"]) for _, f in await redis.xrange(stream)]
        assert [(e.user_id, e.lecture_id) for e in events if e.user_id == late_completer] == [
            (late_completer, "l2")
        ]
    finally:
        await redis.aclose()


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url)).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {text}")


@pytest.mark.timeout(180)
async def test_the_flusher_process_writes_the_live_masters_users_while_one_is_down(
    cluster_stack: Stack,
    cluster_settings: Settings,
    cluster_redis: aioredis.RedisCluster,
    redis_cluster_srv: RedisCluster,
    mongo: Any,
    tmp_path: Path,
) -> None:
    """A flusher that starts while a master is down, its predecessor having died with every key
    in flight: on an hour's interval, the live masters' users reach MongoDB during the outage and
    the others as soon as the master is back."""
    cluster, settings = redis_cluster_srv, cluster_settings
    # Not the node the process is told about (it must find the cluster), nor the master of slot 0
    # (a fresh redis-py client reads its COMMAND table there): a process started while either is
    # down is another matter.
    victim = next(n for n in cluster.nodes[1:] if n.port != cluster.node_of_slot(0).port)
    where = Placement(cluster, victim, settings)
    assert where.live and where.key_down - where.bucket_down and where.bucket_down, vars(where)
    redis = await initialized(redis_client(settings.redis_url, cluster=True))
    try:
        store = ProgressStore.of(redis, settings, db=mongo)
        await store.save([Ping(u, COURSE, "l2", 100.0 + i, 2, 1000.0) for i, u in enumerate(USERS)], now_ms=2)
        for u in USERS:  # the predecessor took them all and died
            bucket = where.bucket(u)
            assert await redis.smove(bucket, keys.inflight(bucket), keys.progress(u, COURSE))
        await script_flush(redis)
        victim.stop()
        port = free_port()
        proc = cluster_stack.start("ingest.flusher", flush_interval_s=3600.0, flusher_metrics_port=port)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            want_live = {u: newest(i) for i, u in enumerate(USERS) if u in where.live}
            await eventually(lambda: resume_points(mongo), until=lambda got: got == want_live, timeout_s=60)
            log = await eventually(
                lambda: asyncio.sleep(0, proc.log()), until=lambda text: "for later" in text, timeout_s=30
            )
            assert "Traceback" not in log, log
            assert await metric(url, "scorecast_flush_partial_total") >= 1
            assert await metric(url, "scorecast_flush_left_buckets_total") >= where.buckets_down
            assert await metric(url, "scorecast_flush_failures_total") == 0
        finally:
            victim.start()
            cluster.wait_ok()
        want = {u: newest(i) for i, u in enumerate(USERS)}
        try:
            await eventually(lambda: resume_points(mongo), until=lambda got: got == want, timeout_s=60)
        except AssertionError:
            print(proc.log())
            raise
        await eventually(lambda: waiting(redis, settings), until=lambda w: w == (set(), set()), timeout_s=30)
    finally:
        await redis.aclose()
