"""BoardStore.standings on the real Redis-protocol server: several users' places on several boards
in one round trip, with the board store's exists/lost semantics."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from contract import keys
from devstack.cluster import RedisCluster
from gateway.shards import slot_of
from store.board_results import Standing
from store.boards import STANDINGS_PER_CALL, BoardStore
from store.clients import redis_client
from tests.eventually import eventually
from tests.test_gateway_sse import apply, make_board


async def test_places_of_many_users_on_many_boards(redis: Any) -> None:
    store = await make_board(redis, "global", {"ada": 50, "bo": 30, "cy": 30, "dee": 10})
    await make_board(redis, "region:EU", {"bo": 7})
    before = await redis.info("commandstats")
    found = await store.standings(
        {"global": ["dee", "cy", "ada", "nobody", "bo"], "region:EU": ["bo", "ada"]}
    )
    after = await redis.info("commandstats")
    glob, eu = found
    assert (glob.board, glob.exists, glob.version) == (
        "global",
        True,
        int(await redis.get(keys.board_keys("global").version)),
    )
    assert glob.places == {
        "ada": Standing(rank=1, score=50, above=None),
        "bo": Standing(rank=2, score=30, above=50),  # bo reached 30 before cy: ahead in the tie
        "cy": Standing(rank=3, score=30, above=30),
        "dee": Standing(rank=4, score=10, above=30),
        "nobody": Standing(rank=None, score=None, above=None),
    }
    assert eu.places == {
        "bo": Standing(rank=1, score=7, above=None),
        "ada": Standing(rank=None, score=None, above=None),
    }
    # One script call per board, whatever the number of users.
    calls = after["cmdstat_evalsha"]["calls"] - before.get("cmdstat_evalsha", {"calls": 0})["calls"]
    assert calls in (2, 3)  # 3: a first call answered NOSCRIPT and was loaded (then EVALSHA again)
    await apply(store, "global", {"dee": 100})
    again = (await store.standings({"global": ["dee", "ada"]}))[0]
    assert again.version > glob.version
    assert again.places["dee"] == Standing(rank=1, score=110, above=None)
    assert again.places["ada"] == Standing(rank=2, score=50, above=110)


async def test_many_users_go_in_several_calls_of_one_round_trip(redis: Any) -> None:
    users = {f"u{i:04d}": 2000 - i for i in range(STANDINGS_PER_CALL * 2 + 10)}
    store = await make_board(redis, "global", users)
    found = await store.standings({"global": list(users)})
    assert [len(f.places) for f in found] == [STANDINGS_PER_CALL, STANDINGS_PER_CALL, 10]
    merged = {u: s for f in found for u, s in f.places.items()}
    assert merged["u0000"] == Standing(rank=1, score=2000, above=None)
    assert merged["u1009"] == Standing(rank=1010, score=991, above=992)


async def test_missing_and_lost_boards(redis: Any) -> None:
    store = BoardStore(redis)
    assert await store.standings({}) == []
    assert await store.standings({"global": []}) == []
    [never] = await store.standings({"global": ["ada"]})
    assert (never.exists, never.places) == (False, {})
    await make_board(redis, "global", {"ada": 5})
    await redis.delete(keys.board_keys("global").zset)  # the ranking lost, the version kept
    [lost] = await store.standings({"global": ["ada"]})
    assert (lost.exists, lost.places) == (False, {})
    await make_board(redis, "weekly:2026-W47")  # a board without members exists
    [empty] = await store.standings({"weekly:2026-W47": ["ada"]})
    assert empty.exists and empty.places == {"ada": Standing(rank=None, score=None, above=None)}


async def test_on_a_redis_cluster_each_board_is_read_on_the_master_of_its_slot(
    cluster_redis: aioredis.RedisCluster,
) -> None:
    """One board is one slot: its script calls (one per STANDINGS_PER_CALL users) go to the master
    owning it, and only there, in the same pipelined call; the places are those of one Redis."""
    names = [f"course:c{i}" for i in range(9)]
    masters = {cluster_redis.get_node_from_key(keys.board_keys(n).zset).port for n in names}
    assert len(masters) == 3  # boards on every master
    for name in names:
        await make_board(cluster_redis, name, {"ada": 50, "bo": 30, "cy": 30})
    crowd = {f"u{i:04d}": 2000 - i for i in range(STANDINGS_PER_CALL + 10)}
    store = await make_board(cluster_redis, "global", crowd)
    lookups = {name: ["cy", "nobody", "ada", "bo"] for name in names} | {"global": list(crowd)}
    calls: dict[int, int] = {}  # master port -> script calls it should run
    for board, users in lookups.items():
        port = cluster_redis.get_node_from_key(keys.board_keys(board).zset).port
        calls[port] = calls.get(port, 0) + -(-len(users) // STANDINGS_PER_CALL)
    before = await script_calls(cluster_redis)
    found = await store.standings(lookups)
    after = await script_calls(cluster_redis)
    assert {port: after[port] - before[port] for port in after} == {p: calls.get(p, 0) for p in after}
    assert [f.board for f in found] == [*names, "global", "global"]
    for f in found[: len(names)]:
        assert f.exists and f.version == int(await cluster_redis.get(keys.board_keys(f.board).version))
        assert f.places == {
            "ada": Standing(rank=1, score=50, above=None),
            "bo": Standing(rank=2, score=30, above=50),
            "cy": Standing(rank=3, score=30, above=30),
            "nobody": Standing(rank=None, score=None, above=None),
        }
    merged = {u: s for f in found[len(names) :] for u, s in f.places.items()}
    assert len(merged) == len(crowd)
    assert merged["u0000"] == Standing(rank=1, score=2000, above=None)
    assert merged[f"u{STANDINGS_PER_CALL + 9:04d}"] == Standing(
        rank=STANDINGS_PER_CALL + 10, score=2000 - STANDINGS_PER_CALL - 9, above=2000 - STANDINGS_PER_CALL - 8
    )


@pytest.mark.timeout(120)
async def test_on_a_redis_cluster_a_master_down_leaves_only_its_boards_unread(
    cluster_redis: aioredis.RedisCluster, redis_cluster_srv: RedisCluster
) -> None:
    cluster = redis_cluster_srv
    names = [f"course:c{i}" for i in range(9)]
    for name in names:
        await make_board(cluster_redis, name, {"ada": 50, "bo": 30})
    victim = cluster.node_of_slot(slot_of(keys.board_keys(names[0]).zset))
    down = {n for n in names if cluster.node_of_slot(slot_of(keys.board_keys(n).zset)).port == victim.port}
    assert 0 < len(down) < len(names)
    lookups = {name: ["ada", "bo"] for name in names}
    places = {"ada": Standing(rank=1, score=50, above=None), "bo": Standing(rank=2, score=30, above=50)}
    redis = redis_client(cluster.url, cluster=True)  # the client every process uses
    store = BoardStore(redis)
    try:
        first = await store.standings(lookups)
        assert all(f.places == places and not f.unread for f in first), first
        victim.kill()
        try:
            found = await store.standings(lookups)
            assert [f.board for f in found] == names
            for f in found:
                if f.board in down:
                    assert (f.exists, f.places, f.unread) == (False, {}, ("ada", "bo")), f
                else:
                    assert (f.exists, f.places, f.unread) == (True, places, ()), f
        finally:
            victim.start()
            cluster.wait_ok()
        back = await eventually(
            lambda: store.standings(lookups), until=lambda got: not any(f.unread for f in got)
        )
        assert all(f.places == places for f in back)
    finally:
        await redis.aclose()


async def script_calls(cluster: aioredis.RedisCluster) -> dict[int, int]:
    """Script calls (EVAL and EVALSHA) each master has run, by port."""
    found = {}
    for node in cluster.get_primaries():
        direct = aioredis.Redis(host=node.host, port=node.port, decode_responses=True)
        try:
            stats = await direct.info("commandstats")
        finally:
            await direct.aclose()
        found[node.port] = sum(stats.get(f"cmdstat_{c}", {"calls": 0})["calls"] for c in ("eval", "evalsha"))
    return found
