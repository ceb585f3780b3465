"""The flusher: write-behind of watch progress from Redis to MongoDB.

Every ``flush_interval_s``: keys are taken from the dirty set in batches of ``flush_batch_size``,
each batch moved atomically into the in-flight set (one script: SPOP + SADD, both sets in one
slot; on a Redis Cluster the dirty set is split into buckets spread over the slots, each with its
own in-flight set, and a cycle drains every bucket in turn), read with one pipelined HGETALL and
written with ONE unordered ``bulk_write``. Then each key whose hash is still at the revision
``rev`` that was read gets its TTL back and leaves the in-flight set; a key that changed meanwhile
goes back to the dirty set (a ping also SADDs it there itself). A key is thus always in the dirty
set, in the in-flight set, or written: what a flusher that died mid-cycle left in flight is
flushed again (idempotent writes) by the next cycle and first thing at start. A failed write puts
its batch back into the dirty set; a dirty hash never expires.

Outages: a failed cycle is retried no later than one interval on, and at once when Redis and
MongoDB answer their probes again (``store.outage``).

One master of a Redis Cluster down: a cycle flushes all it can reach (``ingest.reach``). A bucket
on that master is skipped; a key there, taken from a live bucket, is not read and goes back to its
bucket's dirty set (one found in flight stays there for the next ``recover``). One line says how
much was left, and the next cycle runs as soon as every master serves again (probed every
``outage_probe_interval_s``). One Redis: nothing is probed, a cycle flushes all or fails.

A key becomes ONE upsert whose filter is the ``_id`` alone: watch times (``w_<lectureId>``) and
the resume point (``contract.progress.ResumePoint``, one string sorting by seq) are each a
``$max`` on a flat field (see DESIGN.md on nx-27017), so a re-flush, an older device or any order
of writes never moves MongoDB back.

A completion whose event never reached the completion stream (its ``p:`` marker is still in the
hash: the process that recorded it died or lost Redis before the XADD) is queued here before the
hash is written, with the same deterministic event id, so its streak, heatmap, course-board
points and totals happen exactly once. Watched intervals ``i_<lectureId>`` and first counted
times ``f_<lectureId>`` are ``$set`` (a hash refilled from MongoDB carries them on, so the hash
always holds a superset); covered seconds ``w_`` and implausible advances ``x_`` are ``$max``.

Run as ``python -m ingest.flusher``; SIGTERM flushes once more and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne

from contract import keys
from contract.logs import install_redaction, setup_logging
from contract.progress import RESUME_FIELD, ResumePoint, pending_completions
from contract.settings import Settings
from ingest.ops import FlusherMetrics
from ingest.ops import serve as serve_ops
from ingest.reach import Reach
from ingest.store import PROGRESS, progress_id, progress_on_insert
from store import outage
from store.clients import initialized, master_of, queue_script, redis_client, run_script
from store.courses import CourseCatalog
from store.progress import ProgressStore, emit_completions

log = logging.getLogger("scorecast.flusher")

# The flusher's MongoDB client gives up on an unreachable server after this long (pymongo's 30 s
# default would hold a failed cycle, and the retry after it, that long).
SERVER_SELECTION_TIMEOUT_MS = 5000
# A write that took longer than this waited for MongoDB (an outage that ended under it): the
# cycle is followed at once by another, for what changed meanwhile, instead of an interval later.
STALLED_WRITE_S = 1.0

# KEYS: dirty set, in-flight set. ARGV: how many. Moves up to that many keys from the first to the
# second in one step (a flusher dying right after leaves them in flight, not lost) and returns them.
_TAKE = """
local taken = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
for i = 1, #taken, 1000 do
  redis.call('SADD', KEYS[2], unpack(taken, i, math.min(i + 999, #taken)))
end
return taken
"""
# KEYS: in-flight set, dirty set. ARGV: keys to hand back to the dirty set.
_GIVE_BACK = """
for i = 1, #ARGV, 1000 do
  local chunk = {unpack(ARGV, i, math.min(i + 999, #ARGV))}
  redis.call('SADD', KEYS[2], unpack(chunk))
  redis.call('SREM', KEYS[1], unpack(chunk))
end
"""


def operations(key: str, live: dict[str, str], now: float) -> list[UpdateOne]:
    """The MongoDB writes that make the ``progress`` document at least as new as ``live``."""
    user_id, course_id = keys.parse_progress(key)
    doc_id = progress_id(user_id, course_id)
    newest: dict[str, Any] = {
        f"{field[0]}_{field[2:]}": float(value) if field[0] == "w" else int(value)
        for field, value in live.items()
        if field[:2] in ("w:", "x:")
    }
    if "seq" in live:
        point = ResumePoint(int(live["seq"]), live["lecture"], float(live["pos"]))
        newest[RESUME_FIELD] = point.encode()
    intervals = {
        f"{field[0]}_{field[2:]}": value if field[0] == "i" else int(value)
        for field, value in live.items()
        if field[:2] in ("i:", "f:")
    }
    completed = [field[2:] for field in live if field.startswith("c:")]
    update: dict[str, Any] = {
        "$setOnInsert": progress_on_insert(user_id, course_id, ["completedLectures"] if completed else []),
        "$set": {"updatedAt": now, **intervals},
    }
    if newest:
        update["$max"] = newest
    if completed:
        update["$addToSet"] = {"completedLectures": {"$each": completed}}
    # The filter stays the _id alone: nx-27017 applies an upsert whose filter has more (say
    # ``lastSeq: {$lt: n}``) to ANOTHER document that matches it.
    return [UpdateOne({"_id": doc_id}, update, upsert=True)]


class Flusher:
    def __init__(self, *, redis: Any, db: Any, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.store = ProgressStore.of(redis, settings)
        self.catalog = CourseCatalog(redis, db, ttl_s=settings.course_meta_ttl_s)
        self.writes = 0  # MongoDB write operations issued, for the benchmark
        # Set by a batch whose write stalled: the next cycle runs at once.
        self.catch_up = False
        # The dirty set's buckets with their in-flight sets (one pair on one Redis), drained in turn.
        self.buckets = keys.dirty_buckets(settings.dirty_bucket_count)
        self._take = redis.register_script(_TAKE)
        self._give_back = redis.register_script(_GIVE_BACK)
        # Probed after a failed cycle, to retry as soon as both answer again.
        self.services = [outage.redis_service(redis), outage.mongo_service(db.client)]
        self.metrics: FlusherMetrics | None = None  # set by a process that exports them
        # What the last cycle could reach (a master of a cluster down) and what it left for later.
        self.reach = Reach()

    async def flush_once(self) -> int:
        """Flush what a dead flusher left in flight, then every key dirty now, once. Returns how
        many keys were written and left the dirty and in-flight sets.

        With a master of a cluster down, what lives there is left for later (``reach`` says
        how much; see the module doc). Raises what Redis or MongoDB raise; the keys of a failed
        batch stay dirty or in flight.
        """
        self.reach = await self._probe()
        done = await self._recover()
        for dirty, inflight in self.buckets:
            if self.reach.reachable(dirty):
                done += await self._drain(dirty, inflight)
            else:
                self.reach.buckets += 1
        return done

    async def _drain(self, dirty: str, inflight: str) -> int:
        # Keys dirty now, not those dirtied meanwhile: a steady stream of pings cannot make one
        # cycle endless (they are the next cycle's).
        budget = await self.redis.scard(dirty)
        done, later = 0, list[str]()
        while budget > 0:
            size = min(self.settings.flush_batch_size, budget)
            taken = await run_script(self.redis, self._take, [dirty, inflight], [size])
            if not taken:
                break
            budget -= len(taken)
            done += await self._flush(sorted(taken), dirty, inflight, later)
        # Only now back to the dirty set (in flight meanwhile): given back at once, they would be
        # taken again by this drain's next batches, in place of keys that can be flushed.
        for i in range(0, len(later), self.settings.flush_batch_size):
            chunk = later[i : i + self.settings.flush_batch_size]
            await run_script(self.redis, self._give_back, [inflight, dirty], chunk)
        return done

    async def recover(self) -> int:
        """Flush again what the in-flight sets still hold: a flusher died (or a cycle failed)
        between taking keys and finishing them. Returns how many keys were finished; with a
        master of a cluster down, what lives there stays in flight (``reach``)."""
        self.reach = await self._probe()
        self.reach.buckets = sum(not self.reach.reachable(dirty) for dirty, _ in self.buckets)
        return await self._recover()

    async def _probe(self) -> Reach:
        """The reach of a cycle starting now (see ``ingest.reach``)."""
        down = await outage.unreachable_masters(self.redis)
        return Reach(down=down, master=functools.partial(master_of, self.redis)) if down else Reach()

    async def _recover(self) -> int:
        done = 0
        for dirty, inflight in self.buckets:
            if not self.reach.reachable(dirty):
                continue  # its master is down: counted by the caller
            cursor, later = 0, list[str]()  # left in flight: the next recover looks again
            while True:
                cursor, members = await self.redis.sscan(
                    inflight, cursor, count=self.settings.flush_batch_size
                )
                if members:
                    done += await self._flush(sorted(set(members)), dirty, inflight, later)
                if cursor == 0:
                    break
        return done

    async def _flush(self, batch: list[str], dirty: str, inflight: str, later: list[str]) -> int:
        """Write ``batch`` (keys in the in-flight set ``inflight`` of the bucket ``dirty``) to
        MongoDB and finish each key. Keys that a master down keeps from being flushed are left in
        flight and added to ``later`` (counted in ``reach``)."""
        skipped = [key for key in batch if not self.reach.reachable(key)]
        batch = [key for key in batch if self.reach.reachable(key)] if skipped else list(batch)
        pipe = self.redis.pipeline(transaction=False)
        for key in batch:
            pipe.hgetall(key)
        hashes: list[dict[str, str]] = await pipe.execute() if batch else []
        for i in reversed(self.reach.held(batch, hashes, self.settings.stream_partition_count)):
            skipped.append(batch.pop(i))
            del hashes[i]
        later += skipped
        self.reach.keys += len(skipped)
        if not batch:
            return 0
        await self.emit_pending(batch, hashes)
        now = time.time()
        ops = [
            op for key, live in zip(batch, hashes, strict=True) if live for op in operations(key, live, now)
        ]
        if ops:
            started = time.monotonic()
            try:
                await self.write(ops)
            except Exception:
                # Back to the dirty set at once; if Redis is down too, the in-flight set keeps them.
                with contextlib.suppress(Exception):
                    await run_script(self.redis, self._give_back, [inflight, dirty], batch)
                raise
            self.catch_up |= time.monotonic() - started > STALLED_WRITE_S
        pipe = self.redis.pipeline(transaction=False)
        for key, live in zip(batch, hashes, strict=True):
            await queue_script(pipe, self.store.flushed, [key], [live.get("rev", ""), self.store.ttl_s])
        still = await pipe.execute()
        finished = [key for key, same in zip(batch, still, strict=True) if same]
        changed = [key for key, same in zip(batch, still, strict=True) if not same]
        pipe = self.redis.pipeline(transaction=False)
        if finished:
            pipe.srem(inflight, *finished)
        if changed:  # a ping landed after the read: dirty again, for the next cycle
            await queue_script(pipe, self._give_back, [inflight, dirty], changed)
        await pipe.execute()
        return len(finished)

    async def emit_pending(self, batch: list[str], hashes: list[dict[str, str]]) -> None:
        """Queue the completions these hashes recorded but never queued (see the module doc)."""
        events = []
        for key, live in zip(batch, hashes, strict=True):
            if any(field.startswith("p:") for field in live):
                meta = await self.catalog.get(keys.parse_progress(key)[1])
                events += pending_completions(key, live, meta)
        if events:
            log.warning("queueing %d completions their writers left behind", len(events))
            await emit_completions(self.redis, events, partitions=self.settings.stream_partition_count)

    async def write(self, ops: list[UpdateOne]) -> None:
        """ONE unordered bulk write. Any error raises, so every key of the batch stays dirty (each
        write is a ``$max``/``$addToSet``, so writing one again is harmless)."""
        await self.db[PROGRESS].bulk_write(ops, ordered=False)
        self.writes += len(ops)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush what a dead flusher left in flight at once, then every ``flush_interval_s`` until
        ``stop``. A failed cycle is retried one interval on at the latest, and as soon as Redis and
        MongoDB answer again when they were unreachable; the first cycle after a failed one, or one
        whose write waited for MongoDB, is followed at once by another (once in a row), for the
        keys that changed meanwhile. A cycle that left keys of a master down for later is followed
        by another as soon as every master answers again, one interval on at the latest."""
        delay, cycle = 0.0, self.recover  # at start: only what a dead predecessor left in flight
        failed = catching_up = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            try:
                started = time.monotonic()
                flushed = await cycle()
                left = self.reach
                if self.metrics:
                    self.metrics.flushed(flushed, time.monotonic() - started, left_keys=left.keys,
                                         left_buckets=left.buckets)  # fmt: skip
                cycle = self.flush_once
                if left.partial:
                    log.warning(
                        "flushed %d progress keys; left %d keys and %d of %d dirty buckets for later: "
                        "Redis master(s) %s not serving their slots",
                        flushed, left.keys, left.buckets, len(self.buckets), ", ".join(sorted(left.down)),
                    )  # fmt: skip
                elif flushed:
                    log.info("flushed %d progress keys", flushed)
                # The first cycle after a failed one, or one whose write waited for MongoDB, is
                # followed at once by another: pings kept coming while it waited. One in a row at
                # most: a MongoDB that is merely slow must not turn write-behind into write-through.
                catching_up = (self.catch_up or failed) and not catching_up and not left.partial
                self.catch_up = failed = False
                if left.partial:
                    delay = await self._until_masters_answer(stop)
                else:
                    delay = 0.0 if catching_up else self.settings.flush_interval_s
            except Exception as exc:
                if self.metrics:
                    self.metrics.failures.inc()
                delay = await self._after_failure(exc, stop, first=not failed)
                failed, catching_up = True, False

    async def _until_masters_answer(self, stop: asyncio.Event) -> float:
        """Seconds to wait after a cycle that left keys for later: none once every master serves
        again (probed quietly every ``outage_probe_interval_s``) or one interval passed."""
        deadline = time.monotonic() + self.settings.flush_interval_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(self.settings.outage_probe_interval_s, left))
            if stop.is_set():
                break
            with contextlib.suppress(Exception):  # no slot map now: the next cycle says so
                if not await outage.unreachable_masters(self.redis):
                    break
        return 0.0

    async def _after_failure(self, exc: Exception, stop: asyncio.Event, *, first: bool) -> float:
        """Seconds to wait before the next attempt after a failed cycle (``first``: the previous
        one did not fail)."""
        interval = self.settings.flush_interval_s
        log.warning("flush failed (%s); the keys stay dirty", exc)
        if first:
            with contextlib.suppress(Exception):
                if await outage.unreachable_masters(self.redis) and not await outage.first_unreachable(
                    self.services[1:]
                ):
                    # A master of the cluster died during the cycle, or was not back in the
                    # cluster yet: the next cycle, soon, leaves what lives there for later.
                    return self.settings.outage_probe_interval_s
        down = await outage.first_unreachable(self.services)
        if down is None:
            return interval  # not an outage: the next cycle, as usual
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                outage.wait_until_reachable(
                    self.services, interval_s=self.settings.outage_probe_interval_s, stop=stop,
                    who="flusher", log=log, down=down,
                ),
                interval,
            )  # fmt: skip
        return 0.0  # back, or one interval passed: try again now


async def main(settings: Settings) -> None:
    redis = await initialized(redis_client(settings.redis_url, cluster=settings.redis_cluster))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flusher = Flusher(redis=redis, db=client[settings.mongo_db], settings=settings)
    log.info(
        "flusher running: every %.1f s, batches of %d", settings.flush_interval_s, settings.flush_batch_size
    )
    flusher.metrics = FlusherMetrics(redis, buckets=flusher.buckets)
    ops = await serve_ops(
        host=settings.metrics_host, port=settings.flusher_metrics_port, registry=flusher.metrics.registry,
        refresh=flusher.metrics.refresh, refresh_failures=flusher.metrics.refresh_failures,
        services=flusher.services,
    )  # fmt: skip
    try:
        await flusher.run(stop)
        try:
            await flusher.flush_once()  # the last word before exiting
        except Exception:
            log.warning("final flush failed; the keys stay dirty for the next flusher", exc_info=True)
    finally:
        if ops:
            await ops.close()
        await redis.aclose()
        await client.close()


if __name__ == "__main__":
    install_redaction()
    _settings = Settings.from_env()
    setup_logging(log_format=_settings.log_format, level=_settings.log_level)
    import uvloop

    uvloop.run(main(_settings))
