"""The sharded Pub/Sub listener of a gateway on a real 3-master Redis Cluster.

Events are SPUBLISHed by a cluster client as the write path does; the hub the listener feeds is
the real one, with its inputs recorded. A master is killed and started again (with its data):
the listener probes it, subscribes again and has the boards of its slots read again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from contract import keys
from contract.settings import Settings
from devstack.cluster import RedisCluster
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.sharded import ShardedListener
from gateway.shards import slot_of
from tests.eventually import eventually


class RecordingHub(Hub):
    """The real hub, remembering what the listener handed it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received: list[tuple[str, str]] = []
        self.resynced: list[set[str] | None] = []

    def channel_message(self, channel: str, data: str) -> None:
        self.received.append((channel, data))
        super().channel_message(channel, data)

    def resync(self, channels: Any = None) -> None:
        self.resynced.append(None if channels is None else set(channels))
        super().resync(channels)


def one_board_per_master(cluster: RedisCluster) -> dict[int, str]:
    """Port of each master -> the channel of a board whose slot it serves."""
    found: dict[int, str] = {}
    for i in range(1000):
        channel = keys.board_channel(f"course:c{i}")
        found.setdefault(cluster.node_of_slot(slot_of(channel)).port, channel)
        if len(found) == len(cluster.nodes):
            return found
    raise AssertionError("no board for every master")


@pytest.fixture
async def publisher(redis_cluster_srv: RedisCluster) -> AsyncIterator[Any]:
    client = aioredis.RedisCluster.from_url(redis_cluster_srv.url, decode_responses=True)
    yield client
    await client.aclose()


async def subscribers_per_node(cluster: RedisCluster) -> list[int]:
    """How many connections of each master are in sharded Pub/Sub mode (CLIENT LIST ``ssub``)."""
    counts = []
    for node in cluster.nodes:
        client = aioredis.Redis(port=node.port, decode_responses=True)
        try:
            listing = await client.execute_command("CLIENT LIST")
        finally:
            await client.aclose()
        rows = listing if isinstance(listing, list) else listing.splitlines()
        counts.append(sum(1 for row in rows if _field(row, "ssub") > 0))
    return counts


def _field(row: Any, name: str) -> int:
    if isinstance(row, dict):
        return int(row.get(name, 0))
    for part in row.split():
        key, _, value = part.partition("=")
        if key == name:
            return int(value)
    return 0


@pytest.mark.timeout(120)
async def test_one_connection_per_master_follows_each_channel_and_comes_back_after_a_restart(
    redis_cluster_srv: RedisCluster, publisher: Any
) -> None:
    cluster = redis_cluster_srv
    settings = Settings(redis_url=cluster.url, outage_probe_interval_s=0.2)
    hub = RecordingHub(redis=publisher, settings=settings, metrics=Metrics())
    listener = ShardedListener(cluster.url, hub, probe_interval_s=0.2)
    boards = one_board_per_master(cluster)
    users = [keys.user_channel(f"u{i}") for i in range(6)]
    for channel in [*boards.values(), *users]:
        listener.follow(channel)
    listener.start()
    try:
        await eventually(lambda: asyncio.sleep(0, listener.shards_up), until=lambda n: n == 3, timeout_s=30)
        assert await eventually(
            lambda: subscribers_per_node(cluster), until=lambda c: c == [1, 1, 1], timeout_s=30
        ) == [1, 1, 1]

        async def delivered(channel: str, payload: str) -> bool:
            await publisher.spublish(channel, payload)
            await asyncio.sleep(0.05)
            return (channel, payload) in hub.received

        for channel in [*boards.values(), *users]:
            await eventually(lambda c=channel: delivered(c, f"hello {c}"), timeout_s=30)

        # The master of one board dies: the others still deliver.
        victim = cluster.nodes[0]
        lost = boards[victim.port]
        kept = [c for port, c in boards.items() if port != victim.port]
        victim.kill()
        try:
            await eventually(
                lambda: asyncio.sleep(0, listener.shards_up), until=lambda n: n == 2, timeout_s=30
            )
            for channel in kept:
                await eventually(lambda c=channel: delivered(c, f"during {c}"), timeout_s=30)
            hub.resynced.clear()
        finally:
            victim.start()
        back = time.monotonic()
        # Subscribed again and the board of its slot read again (the events meanwhile are lost).
        await eventually(lambda: asyncio.sleep(0, any(lost in (r or ()) for r in hub.resynced)), timeout_s=30)
        print(f"resubscribed and resynced {time.monotonic() - back:.2f} s after the master answered")
        await eventually(lambda: delivered(lost, "after restart"), timeout_s=30)
        assert listener.shards_up == 3
        assert hub.metrics.shards_subscribed._value.get() == 3

        # Unfollowed channels are dropped on their master.
        for channel in users:
            listener.unfollow(channel)

        async def shard_subscribers() -> int:
            """Subscribers of every user channel, asked of the master of each."""
            total = 0
            for channel in users:
                node = aioredis.Redis(port=cluster.node_of_slot(slot_of(channel)).port)
                try:
                    reply = await node.execute_command("PUBSUB SHARDNUMSUB", channel)
                finally:
                    await node.aclose()
                total += int(reply[0][1])
            return total

        await eventually(shard_subscribers, until=lambda n: n == 0, timeout_s=30)
    finally:
        await listener.close()
        cluster.wait_ok()


@pytest.mark.timeout(120)
async def test_a_channel_left_and_followed_again_at_once_keeps_its_subscription(
    redis_cluster_srv: RedisCluster, publisher: Any
) -> None:
    """The last follower of a board leaves and a new one comes before the master answered the
    SUNSUBSCRIBE (a WebSocket reconnecting with a fresh token does this for its user's channel):
    the answer to our own SUNSUBSCRIBE is not a slot that moved away, so the subscription on
    that master stays (it was dropped and opened again, and every board of the master re-read:
    the cluster simulation's gateway logged ``_SlotMoved`` for its own unsubscribe)."""
    cluster = redis_cluster_srv
    settings = Settings(redis_url=cluster.url, outage_probe_interval_s=0.2)
    hub = RecordingHub(redis=publisher, settings=settings, metrics=Metrics())
    listener = ShardedListener(cluster.url, hub, probe_interval_s=0.2)
    boards = one_board_per_master(cluster)
    for channel in boards.values():
        listener.follow(channel)
    listener.start()

    async def delivered(channel: str, payload: str) -> bool:
        await publisher.spublish(channel, payload)
        await asyncio.sleep(0.05)
        return (channel, payload) in hub.received

    try:
        await eventually(lambda: asyncio.sleep(0, listener.shards_up), until=lambda n: n == 3, timeout_s=30)
        for channel in boards.values():
            await eventually(lambda c=channel: delivered(c, f"hello {c}"), timeout_s=30)
        hub.resynced.clear()
        for round_ in range(3):
            for channel in boards.values():
                listener.unfollow(channel)
                listener.follow(channel)
            for channel in boards.values():
                await eventually(lambda c=channel, r=round_: delivered(c, f"round {r} {c}"), timeout_s=30)
        assert hub.resynced == []  # no subscription was lost and opened again
        assert listener.shards_up == 3
    finally:
        await listener.close()
