"""A Redis Streams consumer-group loop, shared by the score worker and the achievement consumer.

One round (:meth:`StreamConsumer.step`): reclaim entries another consumer left pending for longer
than ``claim_idle_ms`` (XAUTOCLAIM: that consumer crashed), else read new entries (XREADGROUP),
hand them to the handler, XACK. A batch whose handler raised is retried in-process with back-off.
An entry claimed after more than ``max_deliveries`` deliveries (it keeps killing consumers), or
reported as poison by the handler (undecodable), is copied to the dead-letter stream (capped at
``dead_letter_max_length``, the oldest go first) and acked. Every ``trim_interval_s`` the loop trims
the entries every group of the stream has finished (``contract.streams.trim_done``).
The handler must be idempotent: an entry is handed over again after a crash before its XACK.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from redis.exceptions import ResponseError

from contract.streams import trim_done

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
Handler = Callable[[list[Entry]], Awaitable[Collection[str]]]


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
    ) -> None:
        self.redis = redis
        self.stream = stream
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
        except BaseException:
            self._retry = entries
            raise
        if poison:
            await self._dead_letter([e for e in entries if e[0] in poison], "rejected by the handler")
        await self.redis.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        return len(entries)

    async def _claim(self) -> list[Entry]:
        """Entries idle in other consumers' pending lists; too-often-delivered ones are dead-lettered."""
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch_size
        )
        claimed: list[Entry] = [(i, f) for i, f in reply[1] if f is not None]
        if not claimed:
            return []
        pending = await self.redis.xpending_range(
            self.stream, self.group, min=claimed[0][0], max=claimed[-1][0], count=len(claimed) * 2
        )
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        poison = [e for e in claimed if deliveries.get(e[0], 0) > self.max_deliveries]
        if poison:
            await self._dead_letter(poison, f"delivered more than {self.max_deliveries} times")
            await self.redis.xack(self.stream, self.group, *[i for i, _ in poison])
        dead = {i for i, _ in poison}
        return [e for e in claimed if e[0] not in dead]

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

    async def trim_when_due(self) -> int:
        """Trim the stream's finished entries when ``trim_interval_s`` has passed since the last
        trim (every group delivered and acknowledged them). Returns how many were removed."""
        now = time.monotonic()
        if now - self._trimmed_at < self.trim_interval_s:
            return 0
        self._trimmed_at = now
        return await trim_done(self.redis, self.stream)

    async def run(self, stop: asyncio.Event) -> None:
        """Call :meth:`step` until ``stop`` is set; errors are logged and retried with back-off."""
        await self.ensure_group()
        backoff_s = 0.1
        while not stop.is_set():
            try:
                await self.step()
                await self.trim_when_due()
                backoff_s = 0.1
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("%s: round failed", self.stream)
                # The stream or its group vanished (Redis restarted empty, a flush): recreate.
                await self.ensure_group()
            except Exception:
                log.exception("%s: round failed; retrying in %.1f s", self.stream, backoff_s)
                try:
                    await asyncio.wait_for(stop.wait(), backoff_s)
                except TimeoutError:
                    pass
                backoff_s = min(backoff_s * 2, 5.0)
