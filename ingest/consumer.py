"""A Redis Streams consumer-group loop, shared by the score worker and the achievement consumer.

One round (:meth:`StreamConsumer.step`): take over the pending entries of consumers that died
(below), else reclaim entries another consumer left pending for longer than ``claim_idle_ms``
(XAUTOCLAIM), else read new entries (XREADGROUP); hand them to the handler, XACK. A batch whose
handler raised is retried in-process. An entry claimed after more than ``max_deliveries``
deliveries (it keeps killing consumers), or reported as poison by the handler (undecodable), is
copied to the dead-letter stream (capped at ``dead_letter_max_length``, the oldest go first) and
acked. Every ``trim_interval_s`` the loop trims the entries every group of the stream has finished
(``store.streams.trim_done``). The handler must be idempotent: an entry is handed over again
after a crash before its XACK.

Heartbeats: every consumer announces itself in a sorted set per stream and group (member: its
name, score: the Redis time its heartbeat runs out), refreshed every ``heartbeat_interval_ms`` by
a small task of its own, so a consumer blocked in XREADGROUP or busy with a long batch stays
alive. A live consumer looks for announced consumers whose heartbeat ran out once per interval:
it claims their pending entries at once (XCLAIM counts a delivery, as XAUTOCLAIM does), and
deletes such a consumer from the group once it has nothing pending. A consumer that never
announced itself (an older release) is still only reclaimed after ``claim_idle_ms``. A consumer
starting under the name of a dead one takes over that name's pending entries first.

Partitions: a stream split into partitions (``keys.partitions``, on a Redis Cluster) has one
consumer per partition in each process, each with its own reads, heartbeats and rescues in its
partition's slot; their metrics carry the name of the whole stream (``family``).

Outages: a round that failed because Redis (or another probed service) is unreachable does not
back off; the loop probes every ``probe_interval_s`` and resumes the moment all answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from redis.exceptions import ResponseError

from contract import keys
from contract.settings import Settings
from ingest.ops import ConsumerMetrics
from store import outage
from store.streams import trim_done

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
Handler = Callable[[list[Entry]], Awaitable[Collection[str]]]

# The Redis time in ms, for heartbeat deadlines every consumer compares on the same clock.
_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
# KEYS: deadlines. ARGV: consumer, ttl ms (0: expired now, when a consumer stops).
_ANNOUNCE = f"""{_NOW_MS}
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
# KEYS: deadlines. Announced consumers whose heartbeat ran out.
_SILENT = f"""{_NOW_MS}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
"""
# KEYS: stream, deadlines. ARGV: group, consumer. Deletes a silent consumer that has nothing
# pending, in one step: a consumer that came back or read meanwhile keeps its entries. Returns 1
# when it was forgotten.
_FORGET = f"""{_NOW_MS}
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[2])
if deadline and tonumber(deadline) > now then return 0 end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


class StreamConsumer:
    def __init__(
        self,
        redis: Any,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead_letter: str,
        handler: Handler,
        batch_size: int,
        block_ms: int,
        claim_idle_ms: int,
        max_deliveries: int,
        trim_interval_s: float = 1.0,
        dead_letter_max_length: int = 10_000,
        heartbeat_interval_ms: int = 1000,
        heartbeat_ttl_ms: int = 3000,
        probe_interval_s: float = 0.2,
        services: Sequence[outage.Service] = (),
        family: str = "",
    ) -> None:
        self.redis = redis
        self.stream = stream
        # The stream ``stream`` is a partition of (keys.partitions), its name in the metrics.
        self.family = family or stream
        self.group = group
        self.consumer = consumer
        self.dead_letter = dead_letter
        self.handler = handler
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.trim_interval_s = trim_interval_s
        self.dead_letter_max_length = dead_letter_max_length
        self._trimmed_at = -math.inf
        # A batch whose handler failed (MongoDB down, say) is retried here as it is: re-reading it
        # through XAUTOCLAIM would count deliveries and dead-letter good entries during an outage.
        self._retry: list[Entry] = []
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_ttl_ms = heartbeat_ttl_ms
        self.probe_interval_s = probe_interval_s
        # Probed when a round fails: Redis always, and whatever else the handler needs.
        self.services = [outage.redis_service(redis), *services]
        self.deadlines = keys.consumer_deadlines(stream, group)
        self._announce = redis.register_script(_ANNOUNCE)
        self._silent = redis.register_script(_SILENT)
        self._forget = redis.register_script(_FORGET)
        self._rescue_at = 0.0  # loop time of the next look for dead consumers
        self._own_leftovers = True  # entries a dead process of the same name left pending
        self.metrics: ConsumerMetrics | None = None  # set by a process that exports them

    @classmethod
    def configured(
        cls,
        redis: Any,
        settings: Settings,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead_letter: str,
        handler: Handler,
        services: Sequence[outage.Service] = (),
        family: str = "",
    ) -> StreamConsumer:
        """A consumer of ``stream`` tuned by ``settings`` (batching, claiming, dead letters,
        trimming, heartbeats, outage probing), as every Scorecast stream is consumed."""
        s = settings
        return cls(
            redis,
            stream=stream,
            group=group,
            consumer=consumer,
            dead_letter=dead_letter,
            handler=handler,
            batch_size=s.stream_batch_size,
            block_ms=s.stream_block_ms,
            claim_idle_ms=s.claim_idle_ms,
            max_deliveries=s.max_deliveries,
            trim_interval_s=s.stream_trim_interval_s,
            dead_letter_max_length=s.dead_letter_max_length,
            heartbeat_interval_ms=s.consumer_heartbeat_interval_ms,
            heartbeat_ttl_ms=s.consumer_heartbeat_ttl_ms,
            probe_interval_s=s.outage_probe_interval_s,
            services=services,
            family=family,
        )

    @classmethod
    def partitioned(
        cls,
        redis: Any,
        settings: Settings,
        *,
        family: str,
        group: str,
        consumer: str,
        dead_letter: str,
        handler: Handler,
        services: Sequence[outage.Service] = (),
    ) -> list[StreamConsumer]:
        """One :meth:`configured` consumer per partition of the stream ``family`` (one on one
        Redis: ``settings.stream_partition_count``), all with the same group and handler."""
        return [
            cls.configured(
                redis,
                settings,
                stream=stream,
                group=group,
                consumer=consumer,
                dead_letter=dead_letter,
                handler=handler,
                services=services,
                family=family,
            )
            for stream in keys.partitions(family, settings.stream_partition_count)
        ]

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self) -> int:
        """One round of claim + read + handle + ack. Returns the number of entries handled."""
        entries, self._retry = self._retry, []
        if not entries:
            entries = await self._rescue()
        if not entries:
            entries = await self._claim()
        if not entries:
            reply = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
            )
            for _, items in reply or []:
                entries.extend((entry_id, fields) for entry_id, fields in items if fields is not None)
        if not entries:
            return 0
        try:
            poison = set(await self.handler(entries))
        except BaseException as exc:
            self._retry = entries
            if self.metrics and isinstance(exc, Exception):
                self.metrics.batch_failures.labels(self.family).inc()
            raise
        if poison:
            await self._dead_letter([e for e in entries if e[0] in poison], "rejected by the handler")
        await self.redis.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        if self.metrics:
            self.metrics.handled(self.family, [entry_id for entry_id, _ in entries if entry_id not in poison])
        return len(entries)

    async def _claim(self) -> list[Entry]:
        """Entries idle in other consumers' pending lists; too-often-delivered ones are dead-lettered."""
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch_size
        )
        return await self._sift([(i, f) for i, f in reply[1] if f is not None])

    async def _sift(self, claimed: list[Entry]) -> list[Entry]:
        """``claimed`` without the entries delivered too often, which are dead-lettered and acked."""
        if not claimed:
            return []
        # Each entry's own count: a range read could return other consumers' entries in between.
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _ in claimed:
            pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        deliveries = {p["message_id"]: int(p["times_delivered"]) for one in await pipe.execute() for p in one}
        poison = [e for e in claimed if deliveries.get(e[0], 0) > self.max_deliveries]
        if poison:
            await self._dead_letter(poison, f"delivered more than {self.max_deliveries} times")
            await self.redis.xack(self.stream, self.group, *[i for i, _ in poison])
        dead = {i for i, _ in poison}
        return [e for e in claimed if e[0] not in dead]

    async def _rescue(self) -> list[Entry]:
        """Pending entries of dead consumers: this consumer's own name at start, then, once per
        heartbeat interval, every announced consumer whose heartbeat ran out."""
        if self._own_leftovers:
            entries, more = await self._claim_from(self.consumer, min_idle_ms=0)
            self._own_leftovers = more
            if entries:
                if self.metrics:
                    self.metrics.rescued.labels(self.family).inc(len(entries))
                return entries
        loop = asyncio.get_running_loop()
        if loop.time() < self._rescue_at:
            return []
        self._rescue_at = loop.time() + self.heartbeat_interval_ms / 1000
        for name in await self._silent(keys=[self.deadlines]):
            if name == self.consumer:
                continue  # our own heartbeat lapsed in an outage; the task renews it
            # Idle at least one interval: of two rescuers at once, only the first gets an entry.
            entries, more = await self._claim_from(name, min_idle_ms=self.heartbeat_interval_ms)
            if entries or more:
                self._rescue_at = 0.0  # look again next round: for the rest, or to remove it
            if entries:
                log.warning("%s: took over %d entries of dead consumer %s", self.stream, len(entries), name)
                if self.metrics:
                    self.metrics.rescued.labels(self.family).inc(len(entries))
                return entries
            if not more and await self._forget(keys=[self.stream, self.deadlines], args=[self.group, name]):
                log.info("%s: removed dead consumer %s from group %s", self.stream, name, self.group)
        return []

    async def _claim_from(self, name: str, *, min_idle_ms: int) -> tuple[list[Entry], bool]:
        """Claim up to one batch of ``name``'s pending entries. Returns them (poison removed) and
        whether ``name`` may have more."""
        pending = await self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=self.batch_size, consumername=name
        )
        if not pending:
            return [], False
        ids = [p["message_id"] for p in pending]
        claimed = await self.redis.xclaim(self.stream, self.group, self.consumer, min_idle_ms, ids)
        entries = await self._sift([(i, f) for i, f in claimed if f is not None])
        return entries, len(pending) == self.batch_size

    async def _dead_letter(self, entries: list[Entry], reason: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            pipe.xadd(
                self.dead_letter,
                {**fields, "sourceId": entry_id, "reason": reason},
                maxlen=self.dead_letter_max_length,
                approximate=False,
            )
        await pipe.execute()
        log.warning("dead-lettered %d entries of %s: %s", len(entries), self.stream, reason)
        if self.metrics:
            self.metrics.dead_lettered.labels(self.family).inc(len(entries))

    async def trim_when_due(self) -> int:
        """Trim the stream's finished entries when ``trim_interval_s`` has passed since the last
        trim (every group delivered and acknowledged them). Returns how many were removed."""
        now = time.monotonic()
        if now - self._trimmed_at < self.trim_interval_s:
            return 0
        self._trimmed_at = now
        return await trim_done(self.redis, self.stream)

    async def run(self, stop: asyncio.Event) -> None:
        """Call :meth:`step` until ``stop`` is set, with a heartbeat task alongside.

        While a probed service is unreachable the loop probes it and resumes at once when it
        answers; any other failure is logged and retried with back-off. On return the heartbeat
        is marked run out, so a live consumer removes this one from the group at once.
        """
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        try:
            await self._loop(stop)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):
                await self._announce(keys=[self.deadlines], args=[self.consumer, 0])

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff_s = 0.1
        ready = False
        while not stop.is_set():
            try:
                if not ready:
                    await self.ensure_group()
                    ready = True
                await self.step()
                await self.trim_when_due()
                backoff_s = 0.1
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("%s: round failed", self.stream)
                # The stream or its group vanished (Redis restarted empty, a flush): recreate.
                ready = False
            except Exception:
                down = await outage.first_unreachable(self.services)
                if down is not None:
                    await outage.wait_until_reachable(
                        self.services, interval_s=self.probe_interval_s, stop=stop, who=self.stream,
                        log=log, down=down,
                    )  # fmt: skip
                    # The other consumers' heartbeats ran out during the outage too: give them one
                    # TTL to renew before any is taken for dead.
                    await self._renew()
                    self._rescue_at = asyncio.get_running_loop().time() + self.heartbeat_ttl_ms / 1000
                    continue
                log.exception("%s: round failed; retrying in %.1f s", self.stream, backoff_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Renew this consumer's heartbeat every interval, whatever the loop is waiting for."""
        while not stop.is_set():
            await self._renew()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_interval_ms / 1000)

    async def _renew(self) -> None:
        with contextlib.suppress(Exception):  # an outage: the loop reports it, and renews after
            await self._announce(keys=[self.deadlines], args=[self.consumer, self.heartbeat_ttl_ms])
