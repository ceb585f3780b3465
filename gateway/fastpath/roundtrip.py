"""The Redis side of the fast path: batches of hand-packed commands on sockets taken over from
redis-py connections (see the package's docstring for what is relied on).

redis-py opens and authenticates the connection (TLS, AUTH, SELECT, client name: whatever its
pool is configured with); then :class:`_Pipe` takes the socket over from its asyncio streams: a
batch is ONE write, its replies are parsed by hiredis in the socket's callback, and the batch's
caller wakes once when the last reply is in. redis-py's own read path (a coroutine, an asyncio
timeout and a stream read per reply, a pool checkout with a liveness read per batch) cost two to
three times as much CPU per batch, on the hottest path of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

import hiredis
from redis.exceptions import AskError, InvalidResponse
from redis.exceptions import ConnectionError as RedisConnectionError

from store.clients import is_cluster

# A node of a cluster that cannot be reached: its commands fail, the other nodes' still count.
_NodeFailure = (RedisConnectionError, OSError)


async def redis_round_trip(redis: Any, commands: Sequence[tuple[str, bytes]], timeout_s: float) -> list[Any]:
    """Send packed ``commands`` (routing key, RESP bytes) and read their replies in order under
    ONE timeout; an error reply is returned in its place (the replies after it are still read, so
    the connection stays in step).

    One Redis: one connection of the client's pool; a connection dropped before or during the
    batch is replaced and the batch sent once more on the new one (Scorecast's pipelined writes
    are idempotent). A cluster: one connection per master of the keys' slots, written
    concurrently; a node that fails gives its commands that failure as their reply (the other
    nodes' replies still count); a command answered MOVED/ASK (the slot map is stale) makes the
    client reload the map, and goes once more to its new node (it was not applied). A timeout or
    cancellation mid-batch discards the sockets involved.
    """
    if not is_cluster(redis):
        pool = redis.connection_pool
        payload, count = b"".join(data for _, data in commands), len(commands)
        async with asyncio.timeout(timeout_s):
            try:
                return await _exchange(_idle_of(redis, ""), pool.get_connection, pool.release, payload, count)
            except _NodeFailure:  # dropped meanwhile (Redis restarted, a client kill): once more
                return await _exchange(_idle_of(redis, ""), pool.get_connection, pool.release, payload, count)
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
        *(
            _exchange_node(_idle_of(redis, node.name), node, [commands[i][1] for i in indices])
            for node, indices in by_node.items()
        )
    )
    for indices, answer in zip(by_node.values(), answers, strict=True):
        for i, reply in zip(indices, answer, strict=True):
            replies[i] = reply


async def _exchange_node(idle: list[_Pipe], node: Any, parts: list[bytes]) -> list[Any]:
    async def lend() -> Any:
        conn = node.acquire_connection()
        try:
            await conn.connect()
        except BaseException:
            node.release(conn)
            raise
        return conn

    try:
        return await _exchange(idle, lend, node.release, b"".join(parts), len(parts))
    except _NodeFailure as exc:
        return [exc] * len(parts)


# Connections on their way back to a pool (``_Pipe.close``).
_returning: set[asyncio.Future[Any]] = set()
# The idle pipes of each client, by cluster node name ("" for one Redis); a pipe is used by one
# batch at a time.
_idle: WeakKeyDictionary[Any, dict[str, list[_Pipe]]] = WeakKeyDictionary()


def _idle_of(redis: Any, node: str) -> list[_Pipe]:
    return _idle.setdefault(redis, {}).setdefault(node, [])


async def _exchange(idle: list[_Pipe], lend: Any, give_back: Any, payload: bytes, count: int) -> list[Any]:
    """One batch on a pipe of ``idle`` (a new one on a connection from ``lend`` if none); the
    pipe goes back to the idle ones after a whole exchange, and is closed otherwise."""
    while idle and idle[-1].lost:
        idle.pop().close()
    pipe = idle.pop() if idle else _Pipe(await lend(), give_back)
    try:
        replies = await pipe.exchange(payload, count)
    except BaseException:
        pipe.close()  # replies left unread, or none coming: never reuse the socket
        raise
    idle.append(pipe)
    return replies


class _Pipe(asyncio.Protocol):
    """The socket of a redis-py connection, taken over from its asyncio streams: each write is a
    batch; the replies are parsed as they arrive, and the batch's future is resolved at its last.
    Error replies come back as redis-py's exceptions (NoScriptError, MovedError, ...), in place."""

    def __init__(self, conn: Any, give_back: Any) -> None:
        self.conn, self.give_back = conn, give_back
        self.transport: asyncio.WriteTransport = conn._writer.transport
        self.streams = self.transport.get_protocol()  # told when the socket closes, as before
        options: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": conn._parser.parse_error}
        if conn.encoder.decode_responses:
            options |= {"encoding": conn.encoder.encoding, "errors": conn.encoder.encoding_errors}
        self.reader = hiredis.Reader(**options)
        self.replies: list[Any] = []
        self.want = 0
        self.waiter: asyncio.Future[list[Any]] | None = None
        self.lost = False
        self.transport.set_protocol(self)

    async def exchange(self, payload: bytes, count: int) -> list[Any]:
        if self.lost:
            raise RedisConnectionError("the connection to Redis was lost")
        self.replies, self.want = [], count
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter

    def data_received(self, data: bytes) -> None:
        reader, replies = self.reader, self.replies
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        except InvalidResponse as exc:
            self._fail(exc)
            return
        waiter = self.waiter
        if len(replies) > self.want or (replies and waiter is None):
            self._fail(InvalidResponse("Redis sent replies nobody asked for"))
        elif len(replies) == self.want and waiter is not None:
            # The batch's list is the caller's now: anything Redis sends later lands in a new one.
            self.waiter, self.replies = None, []
            if not waiter.done():  # not cancelled meanwhile
                waiter.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.streams.connection_lost(exc)  # redis-py's streams see the end (its disconnect waits)
        self._fail(RedisConnectionError(f"the connection to Redis was lost: {exc or 'closed'}"))

    def eof_received(self) -> bool | None:
        return None  # the transport closes

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.transport.close()

    def close(self) -> None:
        """Close the socket and give the connection back to its pool or node, disconnected."""
        self.lost = True
        self.transport.close()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn._close()  # redis-py's own state: no reader or writer, reconnects when lent again
            returned = self.give_back(conn)  # a pool's release is a coroutine, a node's is not
            if inspect.isawaitable(returned):
                task = asyncio.ensure_future(returned)
                _returning.add(task)
                task.add_done_callback(_returning.discard)
