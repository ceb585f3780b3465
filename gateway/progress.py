"""The WebSocket autosave path: pings from every connection, batched into pipelined round trips.

``submit()`` validates the ping against the course (cached metadata) and queues it with a
callback, called once Redis stored it. The first ping queued opens a short window
(``PING_BATCH_WINDOW_MS``) in which the pings of every connection gather, and while one pipeline
is in flight the next ones gather too: the next pipeline takes them all, so a crowd shares its
round trips (at 10,000 pings/s one round trip carries about ten). The callbacks of a batch are
called in order straight from the batch's task: no future, no scheduled callback per ping.
A ping that moved the resume point is published on the user's channel by the same Lua step, so
the user's other devices follow at once. A lecture that just completed is queued on the
completion stream before the ping is acked; should that fail, the completion stays marked in the
progress hash and the flusher queues it (see ``contract.progress``), so the ping is acked anyway.

Coverage: the connection is the device (its ``origin``, a random id per connection); the store
tells each ping the lecture before it in course order, which locks it until completed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter

from contract.auth import Claims
from contract.courses import CourseMeta
from contract.progress import Ping, PingResult, completion_event
from contract.push import ProgressPing
from store.courses import CourseCatalog
from store.progress import ProgressStore, emit_completions

log = logging.getLogger("scorecast.gateway.progress")
# Pings per round trip: a burst (after a stall, a reconnect storm) is packed, stored and acked in
# bounded steps, and the event loop runs between the steps. Large, as one round trip is in flight
# at a time (a device's pings stay in order): the batch is what absorbs Redis's latency, and at 512
# a Redis slowed down by a busy machine (~70 ms a round trip) held the gateway below 10,000/s.
MAX_BATCH = 4096
# Pings answered between two yields to the event loop.
ANSWER_CHUNK = 128


UNAVAILABLE = "unavailable"


class ProgressRejected(Exception):
    """A ping that is answered with a WebSocket ``error`` message (the connection stays)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Called once per ping: with its result when Redis stored it, or with ProgressRejected
# ``unavailable`` when a backing service is down.
Done = Callable[[PingResult | ProgressRejected], None]


class ProgressWriter:
    def __init__(
        self,
        store: ProgressStore,
        catalog: CourseCatalog,
        *,
        round_trips: Counter,
        stored: Counter | None = None,
        implausible: Counter | None = None,
        window_s: float = 0.0,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.catalog = catalog
        self._pending: list[tuple[Ping, Claims, CourseMeta, Done]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = round_trips
        self.stored = stored
        self.implausible = implausible

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5)

    async def submit(self, claims: Claims, ping: ProgressPing, *, origin: str, who: str, done: Done) -> None:
        """Queue ``ping`` of ``claims.sub`` (``who``: :func:`contract.progress.who` of ``claims``):
        ``done`` is called once, with the ping's result once Redis has it, or with ProgressRejected
        ``unavailable`` when a backing service is down (not the client's fault).

        Raises ProgressRejected for the client's mistakes: ``unknown_course``, ``unknown_lecture``
        (``done`` is not called then).
        """
        try:
            meta = await self.catalog.get(ping.course_id)
        except Exception:
            log.warning("course lookup failed", exc_info=True)
            done(ProgressRejected(UNAVAILABLE, "progress cannot be saved right now; retry"))
            return
        self._queue(claims, ping, origin, who, meta, done)

    def submit_cached(self, claims: Claims, ping: ProgressPing, *, origin: str, who: str, done: Done) -> bool:
        """:meth:`submit` without waiting: False (nothing queued) when the course is not in this
        process's cache (then call :meth:`submit`). Raises as :meth:`submit` does."""
        hit = self.catalog.cached(ping.course_id)
        if hit is None:
            return False
        self._queue(claims, ping, origin, who, hit[0], done)
        return True

    def _queue(
        self, claims: Claims, ping: ProgressPing, origin: str, who: str, meta: CourseMeta | None, done: Done
    ) -> None:
        if meta is None:
            raise ProgressRejected("unknown_course", f"no course {ping.course_id!r}")
        duration = meta.durations.get(ping.lecture_id)
        if duration is None:
            raise ProgressRejected(
                "unknown_lecture", f"course {ping.course_id!r} has no lecture {ping.lecture_id!r}"
            )
        item = Ping(
            user_id=claims.sub,
            course_id=ping.course_id,
            lecture_id=ping.lecture_id,
            position=min(ping.position, duration),
            seq=ping.seq,
            duration=duration,
            origin=origin,
            min_presence=2,
            prev=meta.previous_lecture(ping.lecture_id),
            who=who,
        )
        self._pending.append((item, claims, meta, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        if self.window_s:
            await asyncio.sleep(self.window_s)  # the pings of the next moments share the round trip
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            now_ms = int(time.time() * 1000)
            trips = self.store.round_trips
            try:
                outcomes = await self.store.save_each([item for item, _, _, _ in batch], now_ms)
            except Exception:
                log.warning("saving %d pings failed", len(batch), exc_info=True)
                await self._tell(
                    batch, [ProgressRejected(UNAVAILABLE, "progress cannot be saved right now")] * len(batch)
                )
                continue
            finally:
                # One per batch, or two when an expired hash was refilled from MongoDB first.
                self.round_trips.inc(self.store.round_trips - trips)
            # A ping Redis refused (its cluster node is down) is answered `unavailable`; the rest count.
            answers: list[PingResult | ProgressRejected] = []
            stored: list[tuple[Ping, Claims, CourseMeta, PingResult]] = []
            refused: Exception | None = None
            for (item, claims, meta, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    refused = outcome
                    answers.append(ProgressRejected(UNAVAILABLE, "progress cannot be saved right now"))
                else:
                    answers.append(outcome)
                    stored.append((item, claims, meta, outcome))
            if refused is not None:  # once per batch: an outage refuses thousands a second
                log.warning("saving %d of %d pings failed: %r", len(batch) - len(stored), len(batch), refused)
            completions = [
                completion_event(claims, meta, item.lecture_id, now_ms, first_watch_ms=result.first_watch_ms)
                for item, claims, meta, result in stored
                if result.completed
            ]
            if completions:
                try:
                    await emit_completions(
                        self.store.redis, completions, partitions=self.store.stream_partitions
                    )
                except Exception:
                    # Stored with its marker: the flusher queues it (same event id), nothing is lost.
                    log.warning(
                        "queueing %d completions failed; the flusher will", len(completions), exc_info=True
                    )
            if self.stored is not None:
                self.stored.inc(len(stored))
            if self.implausible is not None and any(result.implausible for *_, result in stored):
                self.implausible.inc(sum(result.implausible for *_, result in stored))
            await self._tell(batch, answers)

    @staticmethod
    async def _tell(
        batch: list[tuple[Ping, Claims, CourseMeta, Done]], outcomes: Sequence[PingResult | ProgressRejected]
    ) -> None:
        for i, ((*_, done), outcome) in enumerate(zip(batch, outcomes, strict=True)):
            if i and not i % ANSWER_CHUNK:
                await asyncio.sleep(0)
            try:
                done(outcome)
            except Exception:  # one connection's failure never keeps the others' acks
                log.exception("answering a stored ping failed")
