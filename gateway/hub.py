"""The registry of one gateway process: connections, the boards they follow, the users they are.

The hub registers connections (``gateway.connection``) and the boards they follow; each followed
board has one loop of the broadcaster (``gateway.broadcast``), which re-reads it on a change and
hands its frames to the subscribers. The hub routes the listener's events to those loops and to
the connections of a user, moves the followers of ``weekly``/``monthly`` to the new period when
one ends, and keeps every connection alive or ends it: SSE pings and a version check of each
board (heartbeat), clients stuck in a write or gone or whose token expired (sweep), and the
drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Collection
from typing import Any

import msgspec

from contract import keys
from contract.boards import resolve
from contract.errors import Unavailable
from contract.events import ProgressEvent, board_event_decoder, progress_event_decoder
from contract.push import ProgressMessage
from contract.settings import Settings
from contract.wire import json_encoder
from gateway.broadcast import Board, Broadcaster
from gateway.connection import Connection
from gateway.metrics import Metrics
from gateway.protocol import BoardFrames, State
from gateway.rank_push import RankPusher, outbox_key
from store.archive import ArchiveCache
from store.boards import BoardStore

log = logging.getLogger("scorecast.gateway")

SSE_PING = b": ping\n\n"
# How often the hub looks whether a period followed by its alias has ended.
PERIOD_CHECK_S = 1.0
# A version no frame reaches: held by a connection being moved to a new period, so the board's
# first broadcast does not reach it before its snapshot does.
HOLD = 2**62


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Hub:
    def __init__(
        self,
        *,
        redis: Any,
        settings: Settings,
        metrics: Metrics,
        now: Callable[[], dt.datetime] = utc_now,
        archives: ArchiveCache | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.metrics = metrics
        # A closed period whose keys expired is served from its archive (None: never).
        self.archives = archives
        # The clock that says which period ``weekly``/``monthly`` name (tests move it).
        self.now = now
        self.store = BoardStore(redis)
        self.ranks = RankPusher(self.store, settings, metrics)
        self.broadcaster = Broadcaster(
            redis=redis, store=self.store, settings=settings, metrics=metrics, now=now, archives=archives
        )
        self.boards: dict[str, Board] = {}
        self.users: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.draining = False
        # Whether endpoints may use gateway.fastpath (FAST_PATH, and the libraries' shape checked).
        self.fast_path = False
        # Set exactly while no connection is registered (cleared by every register): a drain
        # waits on it, so a count that touched zero before cannot end a later drain early.
        self._all_gone = asyncio.Event()
        self._all_gone.set()
        # Set by the listener: called with a channel to (un)subscribe.
        self.follow: Any = lambda channel: None
        self.unfollow: Any = lambda channel: None
        # What each followed channel is about, so an event is routed by the channel it came on
        # whatever the channel's spelling (a hash tag on a Redis Cluster).
        self.channel_boards: dict[str, str] = {}
        self.channel_users: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._moves: set[asyncio.Task[None]] = set()  # clients being moved to a new period

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._sweep()),
            asyncio.create_task(self._periods()),
        ]
        self.ranks.start()

    async def close(self) -> None:
        await self.ranks.close()
        tasks = self._tasks + list(self._moves) + [b.task for b in self.boards.values() if b.task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ connections
    def register(self, conn: Connection) -> None:
        conn.life.move(State.OPEN)
        conn.task = None if conn.notify is not None else asyncio.current_task()
        self.connections.add(conn)
        self._all_gone.clear()
        if self.draining:  # registered while a drain runs: told to reconnect like the others
            conn.drain()
        self.metrics.connections.labels(conn.transport).inc()
        if conn.transport == "ws":
            users = self.users.setdefault(conn.user_id, set())
            if not users:
                channel = keys.user_channel(conn.user_id)
                self.channel_users[channel] = conn.user_id
                self.follow(channel)
            users.add(conn)

    def unregister(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        conn.close()
        self.connections.discard(conn)
        self.metrics.connections.labels(conn.transport).dec()
        if not self.connections:
            self._all_gone.set()
        for board in list(conn.boards):
            self.unsubscribe(conn, board)
        users = self.users.get(conn.user_id)
        if users is not None and conn in users:
            users.discard(conn)
            if not users:
                del self.users[conn.user_id]
                channel = keys.user_channel(conn.user_id)
                self.channel_users.pop(channel, None)
                self.unfollow(channel)

    async def subscribe(self, conn: Connection, name: str) -> BoardFrames:
        """Follow ``name``; returns its current frames (read from Redis for the first follower).

        Waits until the board was read; cancelled (a caller's timeout), ``conn`` no longer
        follows it. Raises Unavailable when a new board would exceed ``gateway_max_boards``.
        """
        board = self.boards.get(name)
        if board is None:
            if len(self.boards) >= self.settings.gateway_max_boards:
                raise Unavailable(
                    f"this gateway follows {len(self.boards)} boards, its maximum; retry later",
                    code="board_limit",
                )
            board = self.boards[name] = Board(name, self.settings.broadcast_interval_s)
            board.changed.set()
            board.task = asyncio.create_task(self.broadcaster.run(board))
            channel = keys.board_channel(name)
            self.channel_boards[channel] = name
            self.follow(channel)
        board.subscribers.add(conn)
        if name not in conn.boards:
            conn.boards += (board.name,)
        try:
            await asyncio.shield(board.ready)
        except BaseException:
            self.unsubscribe(conn, name)  # a board no one waits for is dropped with its loop
            raise
        assert board.frames is not None
        self.ranks.planner.follow(conn, name, conn.user_id)
        return board.frames

    def unsubscribe(self, conn: Connection, name: str) -> None:
        conn.boards = tuple(b for b in conn.boards if b != name)
        conn.versions.pop(name, None)
        self.ranks.planner.unfollow(conn, name, conn.user_id)
        conn.outbox.drop_board(outbox_key(name))  # no rank of a board it left
        conn.aliases.pop(name, None)
        board = self.boards.get(name)
        if board is None:
            return
        board.subscribers.discard(conn)
        if not board.subscribers:
            del self.boards[name]
            channel = keys.board_channel(name)
            self.channel_boards.pop(channel, None)
            self.unfollow(channel)
            if board.task:
                board.task.cancel()

    # ------------------------------------------------------------ events from the listener
    def channel_message(self, channel: str, data: str) -> None:
        """An event as it came on ``channel``; a channel no longer followed is ignored."""
        self.metrics.pubsub_messages.inc()
        try:
            if (board := self.channel_boards.get(channel)) is not None:
                event = board_event_decoder.decode(data)
                self.board_event(board, event.version, event.users)
            elif (user_id := self.channel_users.get(channel)) is not None:
                self.progress_event(user_id, progress_event_decoder.decode(data))
        except msgspec.DecodeError:
            log.warning("ignoring a malformed event on %s: %r", channel, data[:200])

    def board_event(self, name: str, version: int, users: list[str] | None = None) -> None:
        """Board ``name`` is at ``version`` now; ``users`` changed their scores on it."""
        if users:
            self.ranks.changed(name, users)
        board = self.boards.get(name)
        if board is not None and (board.frames is None or board.frames.version != version):
            board.changed.set()

    def progress_event(self, user_id: str, event: ProgressEvent) -> None:
        conns = self.users.get(user_id)
        if not conns:
            return
        message = json_encoder.encode(
            ProgressMessage(
                course_id=event.course_id, lecture_id=event.lecture_id, position=event.position, seq=event.seq
            )
        ).decode()
        for conn in list(conns):
            if conn.id != event.origin and conn.life.open and not conn.push(message):
                self.kick(conn)

    def resync(self, channels: Collection[str] | None = None) -> None:
        """After a Pub/Sub (re)connect: events may have been missed, so re-read every board (or
        those whose channel is in ``channels``: the ones a sharded subscription carries)."""
        for board in self.boards.values():
            if channels is None or keys.board_channel(board.name) in channels:
                board.changed.set()
        self.metrics.resyncs.inc()
        self.broadcaster.resynced()

    # ------------------------------------------------------------ periods
    async def _periods(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_CHECK_S)
            self._roll_over()

    def _roll_over(self) -> None:
        """Move every client that follows an ended period by its alias to the current one."""
        now = self.now()
        current = {alias: resolve(alias, now) for alias in ("weekly", "monthly")}
        for name, board in list(self.boards.items()):
            alias = name.partition(":")[0]
            new = current.get(alias)
            if new is None or new == name:
                continue
            for conn in [c for c in board.subscribers if c.aliases.get(name) == alias]:
                del conn.aliases[name]  # moving: the next check leaves it alone
                task = asyncio.create_task(self._move(conn, name, new, alias))
                self._moves.add(task)
                task.add_done_callback(self._moves.discard)

    async def _move(self, conn: Connection, old: str, new: str, alias: str) -> None:
        """Follow ``new``, leave ``old``, then send a snapshot of ``new`` (SSE ``snapshot``,
        WebSocket ``leaderboard``). When ``new`` cannot be read in time, ``conn`` stays on ``old``
        and the next check tries again."""
        if new not in conn.boards:
            conn.versions[new] = HOLD
            try:
                async with asyncio.timeout(self.settings.subscribe_timeout_s):
                    await self.subscribe(conn, new)
            except Exception:
                log.warning("moving %s from %s to %s failed; retrying", conn.id, old, new, exc_info=True)
                conn.versions.pop(new, None)
                if old in conn.boards:
                    conn.aliases[old] = alias
                return
        self.unsubscribe(conn, old)
        board = self.boards.get(new)
        if board is None or board.frames is None or not conn.life.open or new not in conn.boards:
            return  # the client left meanwhile
        conn.aliases[new] = alias
        frames = board.frames
        conn.versions[new] = frames.version
        conn.outbox.drop_board(new)
        if not conn.push(frames.snapshot if conn.transport == "sse" else frames.ws_text):
            self.kick(conn)

    # ------------------------------------------------------------ housekeeping
    async def _heartbeat(self) -> None:
        """One loop for every connection: SSE comment pings, and a version check of each board
        that catches an event missed without a reconnect."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            for conn in list(self.connections):
                if conn.transport == "sse" and conn.life.open and not conn.outbox:
                    conn.push(SSE_PING)
            names = list(self.boards)
            if names:
                try:
                    # One GET per board in a pipeline, not MGET: boards live in different slots
                    # of a Redis Cluster.
                    pipe = self.redis.pipeline(transaction=False)
                    for name in names:
                        pipe.get(keys.board_keys(name).version)
                    versions = await pipe.execute()
                except Exception:
                    log.warning("version check failed", exc_info=True)
                    continue
                for name, version in zip(names, versions, strict=True):
                    self.board_event(name, int(version or 0))

    async def _sweep(self) -> None:
        """Every ``period``: disconnect clients stuck in a write, end the streams whose client
        left (an SSE stream writing straight to its socket has no task waiting for that; the
        sink of a fast-path WebSocket sends its keepalive pings here), and
        end the connections whose token expired (SSE: ``reconnect``, so the client comes back
        with a refreshed token; WebSocket: ``token_expired`` and close 4401, even when idle)."""
        period = max(0.1, min(1.0, self.settings.slow_client_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = asyncio.get_running_loop().time()
            wall = time.time()
            stuck_s = self.settings.slow_client_timeout_s
            # Every connection every period: attributes compared inline, not through methods.
            for conn in list(self.connections):
                if conn.sending_since and now - conn.sending_since > stuck_s:
                    self.kick(conn)
                elif conn.sink is not None and conn.sink.gone(now):
                    conn.close()  # the client left: its endpoint wakes up and ends
                elif conn.expires_at <= wall and conn.life.state is State.OPEN:
                    conn.drain()  # its endpoint says why and ends

    def kick(self, conn: Connection, *, slow: bool = True) -> None:
        """Disconnect a client now: one that cannot keep up, or a straggler of a drain."""
        if conn.life.state is State.CLOSED:
            return
        if slow:
            log.info("disconnecting slow client %s", conn.id)
            self.metrics.slow_disconnects.inc()
        conn.close()  # an owner without a task (conn.notify) cuts the socket when told
        if conn.task is not None:
            conn.task.cancel()

    async def drain(self, timeout_s: float) -> None:
        """Tell every client to reconnect elsewhere and wait (at most ``timeout_s``) for them to go."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), timeout_s)
        for conn in list(self.connections):
            self.kick(conn, slow=False)

    def reconnect_after_ms(self) -> int:
        return random.randint(0, self.settings.reconnect_jitter_ms)
