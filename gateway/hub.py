"""The registry of one gateway process: connections, the boards they follow, the users they are.

Each followed board has one loop: it waits for a change signal (a Pub/Sub event with a version
different from the cached one, a resync), waits out the throttle, re-reads the board's top-K
from Redis, encodes the frames once and hands the same objects to every subscriber
(``websockets.broadcast`` style: skip connections that are not open, never let one client slow
the others). Connections drain their outbox on their own; a client stuck in a write for longer
than ``slow_client_timeout_s`` is disconnected. A closed period whose keys expired is read from
its archive instead (``store.archive.ArchiveCache``): its final frames, and nothing after them.
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
from contract.messages import (
    FrameEntry,
    ProgressEvent,
    ProgressMessage,
    RebuildRequest,
    board_event_decoder,
    json_encoder,
    progress_event_decoder,
)
from contract.settings import Settings
from gateway.connection import Connection
from gateway.metrics import Metrics
from gateway.protocol import BoardFrames, State, Throttle, utc_timestamp
from gateway.rank_push import RankPusher, outbox_key
from store.archive import ArchiveCache, Archived, iso_ms
from store.boards import BoardStore

log = logging.getLogger("scorecast.gateway")

SSE_PING = b": ping\n\n"
NAME_TTL_S = 60.0
# Subscribers handed a board's frames between two yields to the event loop.
FAN_OUT_CHUNK = 256
# How often the hub looks whether a period followed by its alias has ended.
PERIOD_CHECK_S = 1.0
# A version no frame reaches: held by a connection being moved to a new period, so the board's
# first broadcast does not reach it before its snapshot does.
HOLD = 2**62


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Board:
    __slots__ = ("changed", "frames", "name", "ready", "rebuild_asked", "subscribers", "task", "throttle")

    def __init__(self, name: str, interval_s: float) -> None:
        self.name = name
        self.frames: BoardFrames | None = None
        self.subscribers: set[Connection] = set()
        self.changed = asyncio.Event()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.throttle = Throttle(interval_s=interval_s)
        self.task: asyncio.Task[None] | None = None
        self.rebuild_asked = 0.0


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
        self.boards: dict[str, Board] = {}
        self.users: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.names: dict[str, tuple[str, float]] = {}
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
        # Replaced by every resync; board loops waiting after a failed read wake up on it.
        self._resynced = asyncio.Event()

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
            board.task = asyncio.create_task(self._board_loop(board))
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
        self._resynced.set()
        self._resynced = asyncio.Event()

    # ------------------------------------------------------------ broadcasting
    async def _board_loop(self, board: Board) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            await board.changed.wait()
            delay = board.throttle.delay(loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            board.changed.clear()
            started = time.perf_counter()
            resynced = self._resynced
            try:
                changed = await self._refresh(board)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.exception("reading board %s failed; retrying", board.name)
                else:  # an outage: one traceback is enough
                    log.debug("reading board %s failed again: %s", board.name, exc)
                board.changed.set()
                # Again in a second, or at once when the listener is back on Redis.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(resynced.wait(), 1.0)
                continue
            finally:
                if not board.ready.done() and board.frames is not None:
                    board.ready.set_result(None)
            if changed:
                await self._fan_out(board)
                board.throttle.sent(loop.time())
                self.metrics.broadcast_seconds.observe(time.perf_counter() - started)

    async def _refresh(self, board: Board) -> bool:
        top = await self.store.top(board.name, self.settings.top_k)
        if not top.exists:
            final = await self.archives.get(board.name, self.now()) if self.archives else None
            if final is not None:
                return self._final(board, final)
            await self._ask_rebuild(board)
            if board.frames is not None:
                return False  # the last standings stay until the rebuilt board's event
        if board.frames is not None and board.frames.version == top.version:
            return False
        names = await self._names([r.user_id for r in top.rows])
        entries = [
            FrameEntry(rank=r.rank, user_id=r.user_id, name=names[r.user_id], score=r.score) for r in top.rows
        ]
        board.frames = BoardFrames(board.name, top.version, entries, utc_timestamp())
        return True

    def _final(self, board: Board, final: Archived) -> bool:
        """A closed period whose keys expired: its archived top K, at the version it closed
        with (a follower of the frozen board already has it). Nothing changes it any more: no
        rebuild is asked (the worker would refuse it), no board event comes."""
        if board.frames is not None and board.frames.version == final.version:
            return False
        entries = [
            FrameEntry(rank=e.rank, user_id=e.user_id, name=e.name, score=e.score)
            for e in final.entries[: self.settings.top_k]
        ]
        board.frames = BoardFrames(board.name, final.version, entries, iso_ms(final.closed_at_ms))
        return True

    async def _ask_rebuild(self, board: Board) -> None:
        """A board missing in Redis: the worker rebuilds it from MongoDB (if MongoDB has it).

        At most one request per board per ``rebuild_request_interval_s`` over every gateway (the
        first to SET the board's marker asks), on the rebuild stream: requests never count toward
        the score stream's backlog, so a crowd of followers cannot make writes answer queue_full.
        """
        interval_s = self.settings.rebuild_request_interval_s
        now = time.monotonic()
        if now - board.rebuild_asked < interval_s:
            return
        board.rebuild_asked = now
        marker = keys.rebuild_asked(board.name)
        if await self.redis.set(marker, "1", nx=True, px=max(1, int(interval_s * 1000))):
            await self.redis.xadd(
                keys.REBUILD_STREAM,
                {"d": json_encoder.encode(RebuildRequest(board=board.name))},
                maxlen=self.settings.rebuild_stream_max_length,
                approximate=True,
            )

    async def _names(self, user_ids: list[str]) -> dict[str, str]:
        now = time.monotonic()
        found = {u: hit[0] for u in user_ids if (hit := self.names.get(u)) and hit[1] > now}
        missing = [u for u in user_ids if u not in found]
        if missing:
            profiles, unread = await self.store.profiles_read(missing)
            for user_id in missing:
                profile = profiles.get(user_id)
                name = profile.name if profile and profile.name else user_id
                found[user_id] = name
                if user_id not in unread:  # its Redis Cluster node down: asked again next time
                    self.names[user_id] = (name, now + NAME_TTL_S)
            if len(self.names) > 100_000:
                self.names = {u: v for u, v in self.names.items() if v[1] > now}
        return found

    async def _fan_out(self, board: Board) -> None:
        """Hand the board's frames to every subscriber, at most ``FAN_OUT_CHUNK`` between two
        yields to the event loop: at 10,000 subscribers a fan-out writes to as many sockets, and a
        ping's ack or another board waits for one chunk, not for all of them."""
        frames = board.frames
        assert frames is not None
        subscribers = board.subscribers
        drops = handed = 0
        for i, conn in enumerate(list(subscribers) if len(subscribers) > FAN_OUT_CHUNK else subscribers):
            if i and not i % FAN_OUT_CHUNK:
                await asyncio.sleep(0)
            # After a yield a connection may have left the board (or closed): it is skipped.
            if conn.life.state is State.OPEN and (i < FAN_OUT_CHUNK or conn in subscribers):
                handed += 1
                if conn.push_board(frames):
                    drops += 1
        if drops:
            self.metrics.drops.inc(drops)
        self.metrics.frames.inc(handed)

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
