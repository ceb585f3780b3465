"""Backing-service clients, configured the same way in every process."""

from __future__ import annotations

import redis.asyncio as aioredis

REDIS_POOL_SIZE = 64
REDIS_POOL_WAIT_S = 10.0


def redis_client(url: str) -> aioredis.Redis:
    """A Redis client whose pool makes a burst wait for a free connection instead of failing."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        decode_responses=True,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
