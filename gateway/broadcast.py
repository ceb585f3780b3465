"""The broadcaster: one loop per followed board, from a change signal to every subscriber.

Each followed board has one loop: it waits for a change signal (a Pub/Sub event with a version
different from the cached one, a resync), waits out the throttle, re-reads the board's top-K
from Redis, encodes the frames once and hands the same objects to every subscriber
(``websockets.broadcast`` style: skip connections that are not open, never let one client slow
the others). Connections drain their outbox on their own; a client stuck in a write for longer
than ``slow_client_timeout_s`` is disconnected by the hub's sweep. A closed period whose keys
expired is read from its archive instead (``store.archive.ArchiveCache``): its final frames, and
nothing after them. Which boards are followed, and by whom, is the hub's (``gateway.hub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from contract import keys
from contract.events import RebuildRequest
from contract.push import FrameEntry
from contract.settings import Settings
from contract.wire import json_encoder
from gateway.connection import Connection
from gateway.metrics import Metrics
from gateway.protocol import BoardFrames, State, Throttle, utc_timestamp
from store.archive import ArchiveCache, Archived, iso_ms
from store.boards import BoardStore

log = logging.getLogger("scorecast.gateway")

NAME_TTL_S = 60.0
# Subscribers handed a board's frames between two yields to the event loop.
FAN_OUT_CHUNK = 256


class Board:
    """One followed board: its current frames, its subscribers, and what its loop waits on."""

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


class Broadcaster:
    """Reads each followed board (from Redis, or from its archive once its keys expired) and hands
    its frames to the board's subscribers. The hub creates a board's loop (``run``) with the
    board and cancels it when the last subscriber leaves."""

    def __init__(
        self,
        *,
        redis: Any,
        store: BoardStore,
        settings: Settings,
        metrics: Metrics,
        now: Callable[[], dt.datetime],
        archives: ArchiveCache | None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self.metrics = metrics
        # The hub's clock: which closed period an archive is asked for.
        self.now = now
        self.archives = archives
        self.names: dict[str, tuple[str, float]] = {}
        # Replaced by every resync; board loops waiting after a failed read wake up on it.
        self._resynced = asyncio.Event()

    def resynced(self) -> None:
        """The listener is back on Redis: board loops waiting after a failed read try again now."""
        self._resynced.set()
        self._resynced = asyncio.Event()

    async def run(self, board: Board) -> None:
        """The loop of ``board``: runs until cancelled."""
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
