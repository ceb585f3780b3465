"""The ping write against a real Redis: the pipeline stays in step with its replies, packed by hand
on a pooled connection (gateway.fastpath.redis_round_trip, the gateway's) and through redis-py's
own Pipeline (the portable path, the ingest API's); every test runs on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from contract import keys
from contract.progress import Ping, PingResult
from contract.settings import Settings
from gateway import fastpath
from store.clients import redis_client
from store.progress import ProgressStore
from tests.helpers import both_redis


@pytest.fixture(params=["fast", "portable"])
async def store(
    request: pytest.FixtureRequest, settings: Settings, redis: Any
) -> AsyncIterator[ProgressStore]:
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster)  # the services' own client
    round_trip = fastpath.redis_round_trip if request.param == "fast" else None
    yield ProgressStore(
        client,
        complete_threshold=0.95,
        ttl_s=settings.progress_ttl_s,
        dirty_buckets=settings.dirty_bucket_count,
        round_trip=round_trip,
    )
    await client.aclose()


def ping(user: str, position: float, seq: int, *, lecture: str = "l1") -> Ping:
    return Ping(user, "c1", lecture, position, seq, 100.0)


async def resume_point(redis: Any, user: str) -> tuple[str, str, str]:
    found = await redis.hmget(keys.progress(user, "c1"), "lecture", "pos", "seq")
    return found[0], found[1], found[2]


async def dirty(redis: Any, settings: Settings) -> set[str]:
    """Every key in the dirty set, over all its buckets."""
    found: set[str] = set()
    for bucket, _ in keys.dirty_buckets(settings.dirty_bucket_count):
        found |= await redis.smembers(bucket)
    return found


@both_redis
async def test_a_batch_reports_each_ping_and_marks_every_key_dirty(
    store: ProgressStore, redis: Any, settings: Settings
) -> None:
    results = await store.save(
        [ping("ana", 10.0, 1), ping("bo", 96.0, 1), ping("ana", 5.0, 0), ping("ana", 20.0, 2)], 1000
    )
    flags = [(r.moved, r.completed) for r in results]
    assert flags == [(True, False), (True, False), (False, False), (True, False)]
    assert await resume_point(redis, "ana") == ("l1", "20.0", "2")
    assert await resume_point(redis, "bo") == ("l1", "96.0", "1")  # resumes there, completes nothing
    assert await dirty(redis, settings) == {keys.progress("ana", "c1"), keys.progress("bo", "c1")}
    # Lengths in the protocol are counted in bytes: an id from another token issuer may be UTF-8.
    (result,) = await store.save([ping("zoë", 12.5, 1)], 1000)
    assert result.moved
    assert await resume_point(redis, "zoë") == ("l1", "12.5", "1")


@both_redis
async def test_one_batch_of_many_users_lands_whole_in_one_round_trip(
    store: ProgressStore, redis: Any, settings: Settings
) -> None:
    """On a cluster the users' keys and the dirty buckets live on every master: the batch is split
    by node (one write each), and every ping lands and is marked dirty in its own bucket."""
    users = [f"u{i}" for i in range(40)]
    await store.save([ping(user, 1.0, 1) for user in users], 1000)  # new hashes: refilled first
    trips = store.round_trips
    results = await store.save([ping(user, 10.0 + i, 2) for i, user in enumerate(users)], 1000)
    assert store.round_trips == trips + 1
    assert all(r.moved for r in results)
    for i, user in enumerate(users):
        assert await resume_point(redis, user) == ("l1", f"{10.0 + i}", "2")
    assert await dirty(redis, settings) == {keys.progress(user, "c1") for user in users}
    if settings.redis_cluster:
        nodes = {redis.get_node_from_key(keys.progress(user, "c1")).port for user in users}
        assert len(nodes) == 3
        non_empty = [b for b, _ in keys.dirty_buckets(settings.dirty_bucket_count) if await redis.scard(b)]
        assert len(non_empty) > 1


async def test_an_error_reply_fails_the_batch_and_the_connection_stays_in_step(
    store: ProgressStore, redis: Any
) -> None:
    # A lecture id with the field separator in it (callers validate ids) shifts the Lua step's
    # arguments: its position is no number and that step fails; the others around it apply.
    await store.save([ping("ana", 1.0, 0)], 1000)  # the pool's connection is open
    connections = (await redis.info("stats"))["total_connections_received"]
    broken = ping("bo", 10.0, 1, lecture="l1\x1fx")
    with pytest.raises(ResponseError):
        await store.save([ping("ana", 10.0, 1), broken, ping("cy", 30.0, 1)], 1000)
    assert await resume_point(redis, "ana") == ("l1", "10.0", "1")
    assert await resume_point(redis, "cy") == ("l1", "30.0", "1")
    # Every reply of the failed batch was read, so the same connection goes on and each batch
    # gets its own replies: a repeated seq does not move, a new one does.
    (repeat,) = await store.save([ping("ana", 10.0, 1)], 1000)
    (newer,) = await store.save([ping("ana", 20.0, 2)], 1000)
    assert (repeat.moved, newer.moved) == (False, True)
    assert (await redis.info("stats"))["total_connections_received"] == connections


@both_redis
async def test_a_flushed_script_cache_and_a_killed_connection_are_recovered(
    store: ProgressStore, redis: Any
) -> None:
    await store.save([ping("ana", 10.0, 1)], 1000)
    await redis.script_flush()
    (result,) = await store.save([ping("ana", 20.0, 2)], 1000)
    assert result.moved
    await redis.client_kill_filter(_type="normal", skipme=True)
    (result,) = await store.save([ping("ana", 30.0, 3)], 1000)
    assert result.moved
    assert await resume_point(redis, "ana") == ("l1", "30.0", "3")


async def test_the_services_redis_client_announces_itself(settings: Settings) -> None:
    # The driver metadata is resolved once for every connection of the pool (see DRIVER_INFO).
    client = redis_client(settings.redis_url)
    try:
        info = await client.client_info()
    finally:
        await client.aclose()
    assert (info["lib-name"], info["lib-ver"]) == ("redis-py", redis.__version__)


@pytest.mark.parametrize("settings", ["cluster"], indirect=True)
async def test_on_a_cluster_a_refusing_node_fails_only_its_own_pings(
    store: ProgressStore, redis: Any, settings: Settings
) -> None:
    """One master refusing writes (out of memory here; a master down is the same for the batch)
    fails the pings of its slots, and the pings of the other masters in the same batch count."""
    node_of = redis.get_node_from_key
    users = [f"u{i}" for i in range(64)]
    down = node_of(keys.progress(users[0], "c1"))
    up = [
        u
        for u in users
        if node_of(keys.progress(u, "c1")) != down
        and node_of(keys.dirty_bucket(keys.progress(u, "c1"), settings.dirty_bucket_count)) != down
    ][:3]
    assert up, "no user whose key and dirty bucket are both on another master"
    await store.save([ping(u, 1.0, 1) for u in [users[0], *up]], 1000)  # hashes exist, scripts loaded
    await redis.config_set("maxmemory-policy", "noeviction", target_nodes=down)
    await redis.config_set("maxmemory", "1", target_nodes=down)
    try:
        outcomes = await store.save_each([ping(users[0], 10.0, 2), *(ping(u, 10.0, 2) for u in up)], 1000)
    finally:
        await redis.config_set("maxmemory", "0", target_nodes=down)
    assert isinstance(outcomes[0], ResponseError), outcomes[0]
    assert all(isinstance(o, PingResult) and o.moved for o in outcomes[1:]), outcomes
    assert await resume_point(redis, users[0]) == ("l1", "1.0", "1")
    for u in up:
        assert await resume_point(redis, u) == ("l1", "10.0", "2")
    assert {keys.progress(u, "c1") for u in up} <= await dirty(redis, settings)
    await redis.config_set("maxmemory", "1", target_nodes=down)
    try:
        with pytest.raises(ResponseError):  # save() raises a failed ping's error
            await store.save([ping(users[0], 20.0, 3), ping(up[0], 20.0, 3)], 1000)
    finally:
        await redis.config_set("maxmemory", "0", target_nodes=down)


@both_redis
async def test_a_ping_resent_on_a_new_connection_is_where_that_connection_counts_from(
    store: ProgressStore, redis: Any
) -> None:
    """A player whose connection dropped before the ack resends the ping in hand (same seq) on
    the new connection: the server had stored it (a retransmission: the resume point stays), and
    it is still the new device's first ping, so what it watches next counts from there. Found by
    the cluster simulation (seed 17): the resent ping left the new connection without a baseline,
    the second it watched next was never covered, and a lecture watched to the end stayed
    incomplete (86 % covered) and locked the next one."""

    def on(device: str, position: float, seq: int) -> Ping:
        return Ping("ana", "c1", "l1", position, seq, 100.0, device=device)

    assert [r.moved for r in await store.save([on("conn1", 0.0, 1)], 1_000)] == [True]
    # The ack was lost with conn1; conn2 resends the same ping, then plays on at real pace.
    assert [r.moved for r in await store.save([on("conn2", 0.0, 1)], 2_000)] == [False]
    await store.save([on("conn2", 0.9, 2)], 2_900)
    await store.save([on("conn2", 1.8, 3)], 3_800)
    progress = await redis.hmget(keys.progress("ana", "c1"), "i:l1", "w:l1", "x:l1")
    assert progress == ["0-1.8", "1.8", None]


@both_redis
async def test_a_round_trip_that_timed_out_never_hands_its_late_replies_to_the_next(
    settings: Settings, redis: Any
) -> None:
    """The fast path reads replies on a socket taken over from redis-py: a batch that timed out
    leaves its replies unread, so that socket is closed and the next batch gets its own replies."""
    client = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    command = [("k", b"*2\r\n$4\r\nECHO\r\n$5\r\nfirst\r\n")]
    try:
        assert await fastpath.redis_round_trip(client, command, 5.0) == ["first"]
        pause = ("CLIENT PAUSE", "300", "ALL")
        where = {"target_nodes": redis.get_node_from_key("k")} if settings.redis_cluster else {}
        await redis.execute_command(*pause, **where)
        with pytest.raises(TimeoutError):
            await fastpath.redis_round_trip(client, [("k", b"*2\r\n$4\r\nECHO\r\n$4\r\nlate\r\n")], 0.05)
        # At once, Redis still paused: the late reply comes first, then this batch's own.
        again = [("k", b"*2\r\n$4\r\nECHO\r\n$5\r\nnewer\r\n")]
        assert await fastpath.redis_round_trip(client, again, 5.0) == ["newer"]
    finally:
        await asyncio.wait_for(client.aclose(), 5)  # the taken-over socket does not hold it up


async def test_the_fast_path_gives_its_connection_back_when_the_socket_is_lost(
    settings: Settings, redis: Any
) -> None:
    """A socket lost under the fast path goes back to the client's pool, disconnected (redis-py
    reconnects it when lent again), and the batch is sent once more on a fresh one."""
    client = redis_client(settings.redis_url)
    pool = client.connection_pool
    echo = [("k", b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n")]
    try:
        assert await fastpath.redis_round_trip(client, echo, 5.0) == ["hi"]
        in_use = len(pool._in_use_connections)
        assert in_use == 1  # the pipe's
        await redis.client_kill_filter(_type="normal", skipme=True)
        assert await fastpath.redis_round_trip(client, echo, 5.0) == ["hi"]
        assert await client.ping()  # redis-py's own commands are unaffected
        assert len(pool._in_use_connections) == in_use  # the lost one went back; one pipe again
    finally:
        await asyncio.wait_for(client.aclose(), 5)
