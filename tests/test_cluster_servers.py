"""The local Redis Cluster the cluster tests and `make run-cluster` use (devstack.cluster)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.cluster import key_slot

from devstack.cluster import RedisCluster, cluster_ports
from devstack.servers import ServerError


async def test_three_masters_share_the_slots_and_a_restarted_master_keeps_its_data(
    redis_cluster_srv: RedisCluster,
) -> None:
    client = aioredis.RedisCluster.from_url(redis_cluster_srv.url, decode_responses=True)
    try:
        await client.initialize()
        masters = {node.port for node in client.get_primaries()}
        assert masters == set(redis_cluster_srv.ports)
        key = "{board:cluster-fixture}:v"
        await client.set(key, "7")
        owner = redis_cluster_srv.node_of_slot(key_slot(key.encode()))
        assert client.get_node_from_key(key).port == owner.port
        owner.kill()
        owner.start()
        redis_cluster_srv.wait_ok()
        fresh = aioredis.RedisCluster.from_url(redis_cluster_srv.url, decode_responses=True)
        try:
            assert await fresh.get(key) == "7"
        finally:
            await fresh.aclose()
    finally:
        await client.aclose()


def test_a_master_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    ports = cluster_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", ports[2]))
        taken.listen()
        cluster = RedisCluster(ports, tmp_path)
        with pytest.raises(ServerError):
            cluster.start(timeout_s=5)
    assert [node.exited() is not None for node in cluster.nodes[:2]] == [True, True]
