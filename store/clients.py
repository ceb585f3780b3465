"""Backing-service clients, configured the same way in every process: one Redis or a Redis Cluster."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

log = logging.getLogger("scorecast.redis")

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


RedisClient = aioredis.Redis | aioredis.RedisCluster
# redis-py's asyncio cluster client has no blocking pool: past this many connections to one node
# a command fails at once (MaxConnectionsError). So the cap per node is far above what one
# process keeps busy (a Redis serves 10,000 clients by default), and a burst opens connections
# instead of failing.
REDIS_CLUSTER_CONNECTIONS_PER_NODE = 512


def redis_client(url: str, *, cluster: bool = False) -> RedisClient:
    """The client every process uses: a Redis Cluster client when ``cluster`` (``REDIS_CLUSTER``;
    ``url`` names any node, the others are discovered), else a client of one Redis.

    Both make a command that meets a dropped connection try again, and neither makes a caller
    wait long. The cluster client also follows MOVED/ASK redirections and reloads the slot map
    when a node fails; it finds the nodes at its first command (or ``initialize()``).
    """
    if not cluster:
        return _single_client(url)
    client = aioredis.RedisCluster.from_url(
        url,
        max_connections=REDIS_CLUSTER_CONNECTIONS_PER_NODE,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        # Its retries, per command, re-resolve the node of the slot between attempts.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), REDIS_RETRIES),
        require_full_coverage=False,  # the slots of a live master answer while another is down
        driver_info=DRIVER_INFO,
    )
    _read_command_table_once(client)
    return client


def _read_command_table_once(client: aioredis.RedisCluster) -> None:
    """Make ``client`` read the COMMAND table once instead of at every re-initialization.

    redis-py 8.1 re-initializes a cluster client after any command met a node it could not reach,
    and each re-initialization reads the table again from the default node, the master of slot 0.
    While that master is down, every re-initialization failed, so EVERY command of the process
    failed, on every master, until it was back (tests/test_cluster_faults.py). The table does not
    change while a process runs. (``commands_parser`` and its ``initialize``/``commands``: redis-py
    8.1, bounded below 9 in pyproject.toml.)
    """
    parser = client.commands_parser
    read = parser.initialize

    async def once(node: Any = None) -> None:
        if not parser.commands:
            await read(node)

    parser.initialize = once  # type: ignore[method-assign]


async def initialized(client: RedisClient) -> RedisClient:
    """``client``, a cluster client having read its slot map already: call once at start-up,
    before the process's tasks share it.

    A cluster client finds its nodes at its first command, and in redis-py 8.1 the commands that
    come in while it does are not safe: 34 concurrent XREADGROUPs on a fresh client failed 26
    times (their connections closed under them), where they all pass once it is initialized. A
    cluster that does not answer yet is logged and left to the first commands, as before.
    """
    if isinstance(client, aioredis.RedisCluster):
        try:
            await client.initialize()
        except Exception as exc:  # the first commands try again
            log.warning(
                "Redis Cluster not reachable at start-up (%s); its first commands will look again", exc
            )
    return client


def is_cluster(redis: object) -> bool:
    """Whether ``redis`` is a Redis Cluster client (or one of its pipelines)."""
    return isinstance(redis, aioredis.RedisCluster | ClusterPipeline)


def publish_command(redis: object) -> str:
    """The command that publishes a board or user event through ``redis``: SPUBLISH (sharded
    Pub/Sub, the channel's slot decides the node) on a cluster, PUBLISH on one Redis."""
    return "SPUBLISH" if is_cluster(redis) else "PUBLISH"


async def queue_script(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue a call of ``script`` (from ``register_script``) on the pipeline ``pipe``.

    redis-py refuses EVALSHA in a cluster pipeline (it cannot load a missing script on the right
    node), so there the script travels whole as EVAL, which also spares the NOSCRIPT dance with a
    restarted node; the server caches it by its hash all the same. On one Redis it is the usual
    pipelined EVALSHA.
    """
    if isinstance(pipe, ClusterPipeline):
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
    else:
        await script(keys=keys, args=args, client=pipe)


async def run_script(redis: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Call ``script`` (from ``register_script``) on ``redis`` and return its reply.

    On a cluster the script travels whole (EVAL), as in :func:`queue_script`: redis-py answers a
    NOSCRIPT (a node that restarted) with SCRIPT LOAD on every master, which fails while one of
    them is down, even though the node the call is for answers. On one Redis, the usual EVALSHA.
    """
    if is_cluster(redis):
        return await redis.execute_command("EVAL", script.script, len(keys), *keys, *args)
    return await script(keys=keys, args=args)


def master_of(redis: Any, key: str) -> str | None:
    """The name (``host:port``) of the master serving ``key`` in the cluster client ``redis``'s
    slot map; None when no node serves its slot. No I/O (a master that is down keeps its slots in
    the map: the other nodes still list it in ``CLUSTER SLOTS``)."""
    try:
        name: str = redis.get_node_from_key(key).name
    except SlotNotCoveredError:
        return None
    return name


def _single_client(url: str) -> aioredis.Redis:
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
