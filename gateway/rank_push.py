"""The rank loop of one gateway process: moves the :class:`~gateway.ranks.RankPlanner`'s lookups
to Redis and its frames to connections.

Every ``rank_tick_s`` it sends the known places to connections that just started following,
asks the planner for this tick's lookups, reads them in one pipelined round trip (one script call
per board: ``BoardStore.standings``) and hands each connection the frames the planner picked. It
runs beside the boards' broadcast loops and never waits for them, nor they for it: the shared
top-10 frame and its fan-out are untouched by ranks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from contract.settings import Settings
from gateway.metrics import Metrics
from gateway.ranks import Place, RankFrames, RankPlanner
from store.boards import BoardStore

if TYPE_CHECKING:
    from gateway.hub import Connection

log = logging.getLogger("scorecast.gateway.ranks")
# Results handed over between two yields to the event loop.
HAND_OVER_CHUNK = 256


def outbox_key(board: str) -> str:
    """The outbox slot of a connection's rank frames of ``board`` (a newer one replaces an unsent
    older one). A space never appears in a board name, so it cannot collide with one."""
    return "rank " + board


class RankPusher:
    def __init__(self, store: BoardStore, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.tick_s = settings.rank_tick_s
        self.metrics = metrics
        self.planner: RankPlanner[Connection] = RankPlanner(
            lookups_per_s=settings.rank_lookups_per_s, refresh_s=settings.rank_refresh_s, now=time.monotonic()
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.planner.enabled:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.tick_s)
            self._send(self.planner.replays())
            lookups = self.planner.plan(time.monotonic())
            self.metrics.rank_backlog.set(self.planner.backlog)
            if not lookups:
                continue
            started = time.perf_counter()
            try:
                results = await self.store.standings(lookups)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("rank lookups failed; retrying", exc_info=True)
                else:  # an outage: one traceback is enough
                    log.debug("rank lookups failed again: %s", exc)
                self.planner.retry(lookups)
                continue
            self.metrics.rank_lookups.inc(sum(len(users) for users in lookups.values()))
            for found in results:
                if not found.exists:  # a missing board: the board loop asks for its rebuild
                    continue
                items = list(found.places.items())
                for start in range(0, len(items), HAND_OVER_CHUNK):
                    if start:
                        # Let a board's broadcast (or anything else ready) run in between.
                        await asyncio.sleep(0)
                    places = {
                        u: Place.of(s.rank, s.score, s.above)
                        for u, s in items[start : start + HAND_OVER_CHUNK]
                    }
                    self._send(self.planner.looked_up(found.board, found.version, places))
            self.metrics.rank_tick_seconds.observe(time.perf_counter() - started)

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
