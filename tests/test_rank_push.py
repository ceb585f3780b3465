"""The rank loops of one gateway (gateway/rank_push.py) in process, on the real Redis-protocol
server and on a Redis Cluster: the real hub and connections, board events handed to the hub as
its listener does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contract import keys
from contract.settings import Settings
from devstack.cluster import RedisCluster
from gateway.connection import Connection
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.shards import slot_of
from store.clients import redis_client
from tests.eventually import eventually
from tests.helpers import both_redis
from tests.test_gateway_sse import apply, make_board

RANK_HEAD = b"event: rank\ndata: "


class Viewer:
    """An SSE connection of ``user_id`` as the hub sees it; collects the rank events it is handed."""

    def __init__(self, user_id: str) -> None:
        self.conn = Connection("sse", user_id)
        self.ranks: list[dict[str, Any]] = []

    async def received(self) -> list[dict[str, Any]]:
        for frame in self.conn.outbox.take():
            if isinstance(frame, bytes) and frame.startswith(RANK_HEAD):
                self.ranks.append(json.loads(frame[len(RANK_HEAD) :]))
        return self.ranks


@pytest.fixture
async def hub(redis: Any, settings: Settings) -> AsyncIterator[Hub]:
    # The rank tick is an hour away: whatever place a viewer gets in a test came by the own lane.
    running = Hub(redis=redis, settings=settings.replace(rank_tick_s=3600.0), metrics=Metrics())
    running.start()
    yield running
    await running.close()


async def follow(hub: Hub, user_id: str, *boards: str) -> Viewer:
    viewer = Viewer(user_id)
    hub.register(viewer.conn)
    for board in boards or ("global",):
        await hub.subscribe(viewer.conn, board)
    return viewer


def own_lookups(hub: Hub) -> float | None:
    return hub.metrics.registry.get_sample_value("scorecast_gateway_rank_own_lookups_total")


def lookups(hub: Hub) -> float | None:
    return hub.metrics.registry.get_sample_value("scorecast_gateway_rank_lookups_total")


@both_redis
async def test_an_own_change_is_read_at_once_not_at_the_next_tick(redis: Any, hub: Hub) -> None:
    store = await make_board(redis, "global", {"ada": 50, "bo": 30, "cy": 10})
    bo, cy = await follow(hub, "bo"), await follow(hub, "cy")
    version = await apply(store, "global", {"bo": 30})  # 60: #1 now, ahead of ada's 50
    hub.board_event("global", version, ["bo"])  # the worker's event, as the listener hands it
    got = await eventually(bo.received)
    assert got == [{"board": "global", "version": version, "rank": 1, "score": 60, "gapToNext": None}]
    assert own_lookups(hub) == 1  # bo alone
    # cy's own score did not change: its place is the tick's to read, not the own lane's.
    assert await cy.received() == []
    # A later own change of the same viewer, the same way.
    version = await apply(store, "global", {"bo": -55, "cy": 1})  # bo 5, cy 11: cy #2, bo #3
    hub.board_event("global", version, ["bo", "cy"])
    await eventually(bo.received, until=lambda got: len(got) == 2)
    assert bo.ranks[1] == {"board": "global", "version": version, "rank": 3, "score": 5, "gapToNext": 6}
    assert await eventually(cy.received) == [
        {"board": "global", "version": version, "rank": 2, "score": 11, "gapToNext": 39}
    ]


@both_redis
async def test_an_event_naming_no_viewer_reads_nothing(redis: Any, hub: Hub) -> None:
    store = await make_board(redis, "global", {"ada": 50, "bo": 30})
    bo = await follow(hub, "bo")
    version = await apply(store, "global", {"ada": 1})
    hub.board_event("global", version, ["ada", "nobody"])  # ada views no board here
    version = await apply(store, "global", {"bo": 1})
    hub.board_event("global", version, ["bo"])
    await eventually(bo.received)
    # One lookup in all (bo's): the first event woke no pass.
    assert own_lookups(hub) == 1
    assert lookups(hub) == 1


@pytest.mark.timeout(120)
async def test_on_a_redis_cluster_a_master_down_holds_back_only_the_places_of_its_boards(
    cluster_settings: Settings, cluster_redis: Any, redis_cluster_srv: RedisCluster
) -> None:
    cluster = redis_cluster_srv

    def master(board: str) -> int:
        return cluster.node_of_slot(slot_of(keys.board_keys(board).zset)).port

    names = [f"course:c{i}" for i in range(12)]
    down = names[0]
    up = next(n for n in names if master(n) != master(down))
    stores = {n: await make_board(cluster_redis, n, {"ada": 10, "bo": 30}) for n in (down, up)}
    redis = redis_client(cluster.url, cluster=True)  # the client a gateway uses
    hub = Hub(redis=redis, settings=cluster_settings.replace(rank_tick_s=3600.0), metrics=Metrics())
    hub.start()
    victim = cluster.node_of_slot(slot_of(keys.board_keys(down).zset))
    try:
        ada = await follow(hub, "ada", down, up)
        versions = {n: await apply(stores[n], n, {"ada": 30}) for n in (down, up)}  # ada #1: 40
        victim.kill()
        try:
            for n in (down, up):
                hub.board_event(n, versions[n], ["ada"])
            # The board of a live master: its place. The other: asked again (not lost, not sent).
            got = await eventually(ada.received)
            assert got == [{"board": up, "version": versions[up], "rank": 1, "score": 40, "gapToNext": None}]
            assert hub.ranks.planner.backlog == 1
        finally:
            victim.start()
            cluster.wait_ok()
        hub.board_event(down, versions[down], ["ada"])  # the next event of that board
        await eventually(ada.received, until=lambda got: len(got) == 2)
        assert ada.ranks[1] == {
            "board": down,
            "version": versions[down],
            "rank": 1,
            "score": 40,
            "gapToNext": None,
        }
    finally:
        await hub.close()
        await redis.aclose()
