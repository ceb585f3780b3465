"""The data path on a Redis Cluster (``REDIS_CLUSTER=1``): clients, channels, sharded Pub/Sub."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.cluster import key_slot

from contract import keys
from contract.auth import TokenIssuer
from contract.events import CompletionEvent, ScoreAction
from contract.progress import Ping
from contract.settings import Settings
from devstack.cluster import RedisCluster
from devstack.processes import Stack
from ingest.anomaly import AnomalyDetector
from ingest.consumer import Entry, StreamConsumer
from ingest.flusher import Flusher
from store import outage
from store.board_results import ALREADY_APPLIED, APPLIED, Profile
from store.boards import BoardStore
from store.clients import initialized, is_cluster, publish_command, redis_client
from store.progress import CompleteStatus, ProgressStore, emit_completions
from store.streams import backlog, trim_done
from tests.eventually import eventually
from tests.helpers import login, score, scorer_token


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_a_channel_shares_the_slot_of_its_board_or_user() -> None:
    for board in ("global", "weekly:2026-W10", "region:EU", "course:py101"):
        assert slot(keys.board_channel(board)) == slot(keys.board_keys(board).zset)
        assert keys.channel_board(keys.board_channel(board)) == board
        assert keys.channel_user(keys.board_channel(board)) is None
    for user in ("ada", "u-17", "x_y"):
        assert slot(keys.user_channel(user)) == slot(keys.progress(user, "py101"))
        assert slot(keys.user_channel(user)) == slot(keys.presence(user))
        assert keys.channel_user(keys.user_channel(user)) == user
        assert keys.channel_board(keys.user_channel(user)) is None
    assert keys.channel_board("sc:gateways") is None
    assert keys.channel_user("sc:gateways") is None


def test_redis_cluster_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).redis_cluster is False
    assert Settings.from_env({"REDIS_CLUSTER": "1"}).redis_cluster is True


async def test_the_cluster_client_finds_every_master_and_its_probe_answers(
    cluster_settings: Settings, cluster_redis: aioredis.RedisCluster, redis_cluster_srv: RedisCluster
) -> None:
    client = redis_client(cluster_settings.redis_url, cluster=True)
    try:
        assert is_cluster(client) and publish_command(client) == "SPUBLISH"
        await outage.redis_service(client).probe()  # raises when a master does not answer
        assert {node.port for node in client.get_primaries()} == set(redis_cluster_srv.ports)
        names = [f"k{i}" for i in range(30)]  # plain keys, spread over the three masters
        for name in names:
            await client.set(name, name.upper())
        assert {client.get_node_from_key(n).port for n in names} == set(redis_cluster_srv.ports)
        assert [await client.get(n) for n in names] == [n.upper() for n in names]
    finally:
        await client.aclose()
    single = redis_client(cluster_settings.redis_url)
    try:
        assert not is_cluster(single) and publish_command(single) == "PUBLISH"
    finally:
        await single.aclose()


async def test_a_score_goes_through_api_and_worker_and_its_events_travel_on_the_boards_shard(
    cluster_stack: Stack, cluster_redis: aioredis.RedisCluster, issuer: TokenIssuer
) -> None:
    """The API queues, the worker applies every segment board and SPUBLISHes each board's event on
    the node owning the board's slot, where a gateway's SSUBSCRIBE hears it."""
    boards = ["global", "region:EU"]
    listeners: list[tuple[aioredis.Redis, Any]] = []
    for board in boards:
        node = cluster_redis.get_node_from_key(keys.board_keys(board).zset)
        direct = aioredis.Redis(host=node.host, port=node.port, decode_responses=True)
        pubsub = direct.pubsub()
        await pubsub.ssubscribe(keys.board_channel(board))
        listeners.append((direct, pubsub))
    cluster_stack.start("ingest.api")
    cluster_stack.start("ingest.worker")
    try:
        async with httpx.AsyncClient(base_url=cluster_stack.ingest_url) as http:
            await login(http, "ada", "Ada", region="eu")
            r = await score(http, scorer_token(issuer), "ada", 7)
            assert r.status_code in (200, 202), r.text
            for board, (_, pubsub) in zip(boards, listeners, strict=True):
                event = await next_message(pubsub)
                assert event["type"] == "smessage" and event["channel"] == keys.board_channel(board)
                published = json.loads(event["data"])
                assert published["board"] == board and published["version"] > 0

            async def ranked() -> list[tuple[str, int]]:
                r = await http.get("/api/v1/scores/leaderboard", params={"board": "region:EU"})
                assert r.status_code == 200, r.text
                return [(e["userId"], e["score"]) for e in r.json()["entries"]]

            assert await eventually(ranked, lambda rows: rows == [("ada", 7)]) == [("ada", 7)]
    finally:
        for direct, pubsub in listeners:
            await pubsub.aclose()
            await direct.aclose()


async def next_message(pubsub: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                found: dict[str, Any] = message
                return found


async def test_every_script_and_pipeline_stays_in_one_slot_on_the_cluster(
    cluster_settings: Settings, cluster_redis: aioredis.RedisCluster, mongo: Any
) -> None:
    """redis-py refuses a command or script whose keys span slots, and the server a script that
    touches a key it was not given: each Redis step of the stores, the flusher, the consumers and
    the anomaly rules runs here on the cluster, over boards and users on every master."""
    settings = cluster_settings
    redis = redis_client(settings.redis_url, cluster=True)
    try:
        boards = BoardStore(redis)
        names = ["global", "region:EU", "course:c1", "weekly:2026-W10", "monthly:2026-03"]
        assert len({cluster_redis.get_node_from_key(keys.board_keys(n).zset).port for n in names}) > 1
        for name in names:
            assert await boards.stage_and_commit(
                name, [("ada", 5, 1)], version=1, force=True, counted=[("a0", 5)]
            )
        applied = await boards.apply_many([(name, "e1", "bob", 3) for name in names])
        assert [(r.status, r.total) for r in applied] == [(APPLIED, 3)] * len(names)
        again = await boards.apply_many([(name, "e1", "bob", 3) for name in names])
        assert [r.status for r in again] == [ALREADY_APPLIED] * len(names)
        for name in names:
            top = await boards.top(name, 10)
            assert [(r.user_id, r.score) for r in top.rows] == [("ada", 5), ("bob", 3)]
            assert (await boards.around(name, "bob", above=1, below=1)).self_row is not None
            assert await boards.exists(name) and await boards.version(name) > 1
        standings = await boards.standings({name: ["ada", "bob"] for name in names})
        assert len(standings) == len(names)
        profiles = {f"u{i}": Profile(name=f"U{i}", avatar_url=None, region="EU") for i in range(20)}
        await boards.cache_profiles(profiles, ttl_s=60)
        assert await boards.profiles(list(profiles)) == profiles

        users = [f"u{i}" for i in range(20)]
        progress = ProgressStore.of(redis, settings, db=mongo)
        await progress.save([Ping(u, "c1", "l1", 10.0, 1, 100.0) for u in users], 1000)
        done = await progress.complete("u0", "c1", "l2", 2000, completable=True)
        assert done.status == CompleteStatus.NEW
        await emit_completions(
            redis,
            [
                CompletionEvent(event_id=f"x{u}", user_id=u, course_id="c1", lecture_id="l1", ts_ms=1)
                for u in users
            ],
            partitions=settings.stream_partition_count,
        )
        assert await Flusher(redis=redis, db=mongo, settings=settings).flush_once() == len(users)

        handled: list[str] = []

        async def handler(entries: list[Entry]) -> set[str]:
            handled.extend(entry_id for entry_id, _ in entries)
            return set()

        for stream in keys.partitions(keys.COMPLETION_STREAM, settings.stream_partition_count):
            consumer = StreamConsumer.configured(
                redis, settings, stream=stream, group="g", consumer="c", dead_letter="dead", handler=handler
            )
            await consumer.ensure_group()
            await redis.zadd(keys.consumer_deadlines(stream, "g"), {"gone": 1})  # a dead consumer: forgotten
            while await consumer.step():
                pass
            await trim_done(redis, stream)
            assert await backlog(redis, stream) == 0
        # the events emitted, and u0's explicit completion that the flusher found unqueued (p:)
        assert len(handled) == len(users) + 1

        actions = [ScoreAction(action_id=f"a{u}", user_id=u, name=u, increment=5, ts_ms=1) for u in users]
        await AnomalyDetector(redis=redis, db=mongo, settings=settings).observe(actions)
    finally:
        await redis.aclose()


async def test_a_process_client_serves_a_burst_of_first_commands(
    cluster_settings: Settings, cluster_redis: Any
) -> None:
    """What a worker's consumers (or a gateway's first clients) do at start-up: many commands at
    once on a fresh client. Before the client read its slot map first, most of them failed."""
    streams = keys.partitions(keys.SCORE_STREAM, 8)
    for stream in streams:
        await cluster_redis.xgroup_create(stream, "g", id="0", mkstream=True)
    client = await initialized(redis_client(cluster_settings.redis_url, cluster=True))
    try:
        replies = await asyncio.gather(
            *(client.xreadgroup("g", f"c{i}", {streams[i % 8]: ">"}, count=1, block=50) for i in range(34)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    assert [r for r in replies if isinstance(r, BaseException)] == []
