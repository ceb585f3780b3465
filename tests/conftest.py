"""Fixtures: the real Redis-protocol and MongoDB-protocol servers on free ports, clean per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.cluster import RedisCluster, cluster_ports
from devstack.servers import ManagedServer, free_port, mongo_server, redis_server
from tests.helpers import asgi_client
from tests.stack import Stack

TEST_SECRET = "test-secret-" + "x" * 40


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServer]:
    server = redis_server(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster of the embedded server (started by the first test asking)."""
    cluster = RedisCluster(cluster_ports(), tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def mongo_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedServer]:
    server = mongo_server(free_port(), tmp_path_factory.mktemp("mongo")).start()
    yield server
    server.stop()


@pytest.fixture
def settings(request: pytest.FixtureRequest, redis_srv: ManagedServer, mongo_srv: ManagedServer) -> Settings:
    """Settings for one test: its own MongoDB database; Redis is flushed by ``redis``.

    On one Redis, or on the 3-master cluster for the ``cluster`` case of a test marked
    ``tests.helpers.both_redis`` (everything built from ``settings`` follows: ``redis``, ``stack``,
    ``ingest``).
    """
    found = Settings(
        redis_url=redis_srv.url,
        mongo_url=mongo_srv.url,
        mongo_db=f"t{uuid.uuid4().hex[:12]}",
        jwt_secret=TEST_SECRET,
        dev_login_enabled=True,
        flush_interval_s=0.5,
        claim_idle_ms=1000,
        stream_block_ms=200,
        static_dir=str(Path(__file__).resolve().parent.parent / "static"),
    )
    if getattr(request, "param", "single") == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster_srv")
        return found.replace(redis_url=cluster.url, redis_cluster=True)
    return found


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Any]:
    """A client of the test's Redis (a cluster client on the cluster), flushed (every master)."""
    if settings.redis_cluster:
        async for client in _cluster_client(settings):
            yield client
        return
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


async def _cluster_client(settings: Settings) -> AsyncIterator[aioredis.RedisCluster]:
    client = aioredis.RedisCluster.from_url(settings.redis_url, decode_responses=True)
    await client.initialize()
    await client.flushall(target_nodes=aioredis.RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster_srv: RedisCluster) -> Settings:
    """``settings`` on the 3-master Redis Cluster (``REDIS_CLUSTER=1``); flushed by ``cluster_redis``."""
    return settings.replace(redis_url=redis_cluster_srv.url, redis_cluster=True)


@pytest.fixture
async def cluster_redis(cluster_settings: Settings) -> AsyncIterator[aioredis.RedisCluster]:
    """A cluster client of the test's cluster, every master flushed before the test."""
    async for client in _cluster_client(cluster_settings):
        yield client


@pytest.fixture
def cluster_stack(
    cluster_settings: Settings, cluster_redis: aioredis.RedisCluster, tmp_path: Path
) -> Iterator[Stack]:
    """Scorecast processes on the cluster (``REDIS_CLUSTER=1``); start them with ``start(...)``."""
    running = Stack(cluster_settings, tmp_path)
    yield running
    running.close()


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    yield client[settings.mongo_db]
    await client.drop_database(settings.mongo_db)
    await client.close()


@pytest.fixture
def issuer(settings: Settings) -> TokenIssuer:
    return TokenIssuer(settings)


@pytest.fixture
def stack(settings: Settings, redis: aioredis.Redis, tmp_path: Path) -> Iterator[Stack]:
    """Scorecast processes for this test (start them with ``stack.start(...)``)."""
    running = Stack(settings, tmp_path)
    yield running
    running.close()


@pytest.fixture(params=["fast", "portable"])
def ws_path(request: pytest.FixtureRequest, stack: Stack) -> str:
    """Serve the WebSocket both ways, for tests that ask: every gateway the test starts runs the
    fast path (gateway/fastpath/) or, with ``FAST_PATH=0``, the portable ASGI path."""
    stack.settings = stack.settings.replace(fast_path=request.param == "fast")
    path: str = request.param
    return path


@pytest.fixture
async def ingest(settings: Settings, redis: aioredis.Redis, mongo: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The ingest API in-process, on the test's Redis and MongoDB."""
    from ingest.api.app import create_app

    async with asgi_client(create_app(settings), "http://ingest") as client:
        yield client
