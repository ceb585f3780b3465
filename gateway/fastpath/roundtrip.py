"""The Redis side of the fast path: a batch of hand-packed commands on pooled redis-py connections
(see the package's docstring for what is relied on)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from typing import Any

from redis.exceptions import AskError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from store.clients import is_cluster

# A node of a cluster that cannot be reached: its commands fail, the other nodes' still count.
_NodeFailure = (RedisConnectionError, OSError)


async def redis_round_trip(redis: Any, commands: Sequence[tuple[str, bytes]], timeout_s: float) -> list[Any]:
    """Send packed ``commands`` (routing key, RESP bytes) and read their replies in order under
    ONE timeout; an error reply is returned in its place (the replies after it are still read, so
    the connection stays in step).

    One Redis: one pooled connection; a dropped connection is retried by the pool's own policy
    (see ``store.clients``). A cluster: one connection per master of the keys' slots, written
    concurrently; a node that fails gives its commands that failure as their reply (the other
    nodes' replies still count); a command answered MOVED/ASK (the slot map is stale) makes the
    client reload the map, and goes once more to its new node (it was not applied). A timeout or
    cancellation mid-batch discards the sockets involved.
    """
    if not is_cluster(redis):
        return await _exchange_pooled(
            redis.connection_pool, b"".join(data for _, data in commands), len(commands), timeout_s
        )
    if not redis.nodes_manager.slots_cache:
        await redis.initialize()  # the client reads the slot map at its first command
    replies: list[Any] = [None] * len(commands)
    async with asyncio.timeout(timeout_s):
        await _by_node(redis, commands, range(len(commands)), replies)
        stale = [i for i, reply in enumerate(replies) if isinstance(reply, (AskError, *_NodeFailure))]
        if stale:
            with contextlib.suppress(Exception):
                await redis.nodes_manager.initialize()
            moved = [i for i in stale if isinstance(replies[i], AskError)]  # MovedError is an AskError
            if moved:
                await _by_node(redis, commands, moved, replies)
    return replies


async def _by_node(
    redis: Any, commands: Sequence[tuple[str, bytes]], which: Sequence[int], replies: list[Any]
) -> None:
    """Send the commands at indices ``which``, one write per node, and put their replies in place."""
    by_node: dict[Any, list[int]] = {}
    for i in which:
        by_node.setdefault(redis.get_node_from_key(commands[i][0]), []).append(i)
    answers = await asyncio.gather(
        *(_exchange_node(node, [commands[i][1] for i in indices]) for node, indices in by_node.items())
    )
    for indices, answer in zip(by_node.values(), answers, strict=True):
        for i, reply in zip(indices, answer, strict=True):
            replies[i] = reply


async def _exchange_pooled(pool: Any, payload: bytes, count: int, timeout_s: float) -> list[Any]:
    conn = await pool.get_connection()

    async def reset(error: Exception) -> None:
        await conn.disconnect()

    try:
        async with asyncio.timeout(timeout_s):
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: _exchange(conn, payload, count), reset
            )
            return replies
    except BaseException:
        await conn.disconnect(nowait=True)  # replies left unread: never reuse the socket
        raise
    finally:
        await pool.release(conn)


async def _exchange_node(node: Any, parts: list[bytes]) -> list[Any]:
    conn = node.acquire_connection()
    try:
        return await _exchange(conn, b"".join(parts), len(parts))
    except _NodeFailure as exc:
        await conn.disconnect(nowait=True)
        return [exc] * len(parts)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        node.release(conn)


async def _exchange(conn: Any, payload: bytes, count: int) -> list[Any]:
    await conn.send_packed_command(payload)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response(timeout=math.inf))
        except ResponseError as exc:  # an error reply: the replies after it are still read
            replies.append(exc)
    return replies
