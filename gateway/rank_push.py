"""The rank loops of one gateway process: move the :class:`~gateway.ranks.RankPlanner`'s lookups
to Redis and its frames to connections.

Two lanes share the planner's budget:

- the own lane: a board event that names viewers whose own score changed
  (:meth:`RankPusher.changed`) wakes it, and it reads those viewers alone at once — a few users,
  one small script call per board — and hands their frames over. Passes are at least
  ``own_gap_s`` apart, so a stream of board events costs at most one call per board per gap,
  whatever their number. It never waits for the tick, nor behind the tick's round-robin reads
  (its own connection from the pool);
- the tick: every ``rank_tick_s`` (at a fixed rate) it sends the known places to connections
  that just started following, asks the planner for the tick's lookups (own changes the lane
  left, new followers, round-robin turns), reads them in one pipelined round trip (one script
  call per board: ``BoardStore.standings``) and hands each connection the frames the planner
  picked.

Both run beside the boards' broadcast loops and never wait for them, nor they for it: the shared
top-10 frame and its fan-out are untouched by ranks. A result older than one already applied
(the lanes' reads can cross) is dropped by the planner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from contract.settings import Settings
from gateway.metrics import Metrics
from gateway.ranks import Place, RankFrames, RankPlanner
from store.boards import BoardStore

if TYPE_CHECKING:
    from gateway.connection import Connection

log = logging.getLogger("scorecast.gateway.ranks")
# Results handed over between two yields to the event loop.
HAND_OVER_CHUNK = 256
# The own lane's passes are at least this far apart: board events that come closer together share
# one pass (one script call per board), which bounds its calls, not its lookups (the budget does).
OWN_GAP_S = 0.1


def outbox_key(board: str) -> str:
    """The outbox slot of a connection's rank frames of ``board`` (a newer one replaces an unsent
    older one). A space never appears in a board name, so it cannot collide with one."""
    return "rank " + board


class RankPusher:
    def __init__(
        self, store: BoardStore, settings: Settings, metrics: Metrics, *, own_gap_s: float = OWN_GAP_S
    ) -> None:
        self.store = store
        self.tick_s = settings.rank_tick_s
        self.own_gap_s = own_gap_s
        self.metrics = metrics
        self.planner: RankPlanner[Connection] = RankPlanner(
            lookups_per_s=settings.rank_lookups_per_s,
            refresh_s=settings.rank_refresh_s,
            tick_s=settings.rank_tick_s,
            now=time.monotonic(),
        )
        self._own_waiting = asyncio.Event()
        self._own_since = 0.0  # perf_counter of the first board event the own lane has not served
        self._failures = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.planner.enabled:
            self._tasks = [asyncio.create_task(self._ticks()), asyncio.create_task(self._own_lane())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def changed(self, board: str, user_ids: Iterable[str]) -> None:
        """A board event named these users (their scores on ``board`` changed): the own lane
        looks up those that view ``board`` here."""
        if self.planner.changed(board, user_ids) and not self._own_waiting.is_set():
            self._own_since = time.perf_counter()
            self._own_waiting.set()

    async def _own_lane(self) -> None:
        last = -math.inf
        while True:
            await self._own_waiting.wait()
            gap = last + self.own_gap_s - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)  # the events meanwhile join this pass
            self._own_waiting.clear()
            since = self._own_since
            last = time.monotonic()
            lookups = self.planner.plan_own(last)
            if not lookups:
                continue  # no budget left now: the next tick takes them first
            if await self._look_up(lookups):
                self.metrics.rank_own_lookups.inc(sum(len(users) for users in lookups.values()))
                self.metrics.rank_own_seconds.observe(time.perf_counter() - since)

    async def _ticks(self) -> None:
        # At a fixed rate (a tick that ran late is not made up for): a due turn waits at most
        # one tick_s to be planned, which the planner's turns allow for (with one more for the
        # tick's read and hand-over).
        next_at = time.monotonic()
        while True:
            next_at = max(next_at + self.tick_s, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())
            self._send(self.planner.replays())
            lookups = self.planner.plan(time.monotonic())
            self.metrics.rank_backlog.set(self.planner.backlog)
            if not lookups:
                continue
            started = time.perf_counter()
            if await self._look_up(lookups):
                self.metrics.rank_tick_seconds.observe(time.perf_counter() - started)

    async def _look_up(self, lookups: dict[str, list[str]]) -> bool:
        """Read the planned places and hand their frames over; False (and the pairs asked again
        by the next tick) when Redis failed. On a Redis Cluster with a master down, the boards of
        its slots are asked again and the others' frames go out."""
        try:
            results = await self.store.standings(lookups)
        except Exception as exc:
            self._failed(exc, lookups)
            return False
        unread: dict[str, list[str]] = {}
        for found in results:
            if found.unread:
                unread.setdefault(found.board, []).extend(found.unread)
        if unread:
            self._failed(None, unread)
        else:
            self._failures = 0
        self.metrics.rank_lookups.inc(
            sum(len(users) for users in lookups.values()) - sum(len(users) for users in unread.values())
        )
        for found in results:
            if not found.exists:  # a missing board (the board loop asks for its rebuild), or unread
                continue
            items = list(found.places.items())
            for start in range(0, len(items), HAND_OVER_CHUNK):
                if start:
                    # Let a board's broadcast (or anything else ready) run in between.
                    await asyncio.sleep(0)
                places = {
                    u: Place.of(s.rank, s.score, s.above) for u, s in items[start : start + HAND_OVER_CHUNK]
                }
                self._send(self.planner.looked_up(found.board, found.version, places))
        return True

    def _failed(self, exc: Exception | None, lookups: dict[str, list[str]]) -> None:
        self._failures += 1
        what = exc or f"no answer for the boards {sorted(lookups)}"
        if self._failures == 1:
            log.warning("rank lookups failed; retrying: %s", what, exc_info=exc)
        else:  # an outage: one line is enough
            log.debug("rank lookups failed again: %s", what)
        self.planner.retry(lookups)

    def _send(self, deliveries: list[tuple[RankFrames, list[Connection]]]) -> None:
        sent = 0
        for frames, conns in deliveries:
            key = outbox_key(frames.board)
            for conn in conns:
                if conn.life.open:
                    conn.push_latest(key, frames.sse if conn.transport == "sse" else frames.ws_text)
                    sent += 1
        if sent:
            self.metrics.rank_frames.inc(sent)
