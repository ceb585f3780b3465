"""How many connections each user has open, counted in Redis over every gateway process.

An autosave ping publishes the moved position only when another connection of the user may be
listening (the ping's Lua step reads the count). The deltas of one event-loop turn go out in one
pipeline: a reconnect storm of thousands of clients costs a few round trips, not one each. A lost
update only costs a needless publish (too high) or is healed by the key's expiry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from contract import keys

PRESENCE_TTL_S = 24 * 3600
log = logging.getLogger("scorecast.gateway.presence")


class Presence:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._pending: dict[str, int] = {}
        self._written: asyncio.Future[None] | None = None  # done when the pending batch was written
        self._flusher: asyncio.Task[None] | None = None

    def add(self, user_id: str, delta: int) -> asyncio.Future[None]:
        """Count ``delta`` more open connections of ``user_id``, soon, in a batch. The future is
        done once the batch was written, or failed to be (it never raises)."""
        self._pending[user_id] = self._pending.get(user_id, 0) + delta
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
        written = self._written
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return written

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # the rest of this loop turn's connections join the batch
        while self._pending:
            batch, self._pending = self._pending, {}
            written, self._written = self._written, None
            try:
                pipe = self.redis.pipeline(transaction=False)
                for user_id, delta in batch.items():
                    if delta:
                        key = keys.presence(user_id)
                        pipe.incrby(key, delta)
                        pipe.expire(key, PRESENCE_TTL_S)
                await pipe.execute()
            except Exception:
                log.warning("presence update of %d users failed", len(batch), exc_info=True)
            finally:
                if written is not None and not written.done():
                    written.set_result(None)
