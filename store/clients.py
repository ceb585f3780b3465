"""Backing-service clients, configured the same way in every process."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError

REDIS_POOL_SIZE = 64
REDIS_POOL_WAIT_S = 10.0
REDIS_RETRIES = 2
# A connection attempt to a host that does not answer at all (a pod gone, a black-holed address)
# gives up after this long instead of the kernel's SYN retries (about two minutes); a refused
# connection fails at once anyway.
REDIS_CONNECT_TIMEOUT_S = 2.0
# Resolved once: left to redis-py, every new connection looks its version up in the package
# metadata (about 2.5 ms of blocked event loop each), which stalls a burst that widens the pool.
DRIVER_INFO = DriverInfo()


def redis_client(url: str) -> aioredis.Redis:
    """A Redis client whose pool makes a burst wait for a free connection instead of failing.

    A command that meets a dropped connection (Redis restarted, failed over, or closed an idle
    socket) is sent again on a fresh one, so a Redis that is back answers at once instead of
    failing one request per stale pooled connection. Repeating a command whose reply was lost is
    safe for Scorecast's writes, which are idempotent (action ids, ping seqs, event ids, board
    versions). The exceptions are benign: the presence counter may count one too many until its
    TTL, and a refresh token spent by the lost attempt sends its client back to log in.

    None of this holds a recovery up: the retries wait at most 0.1 + 0.2 s between attempts, and
    the health check is one PING before reusing a connection idle for 30 s. Loops that outlive an
    outage do not lean on the retries; they probe (``store.outage``).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), REDIS_RETRIES),
        retry_on_error=[RedisConnectionError],
        driver_info=DRIVER_INFO,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
