"""The one Pub/Sub subscription of a gateway process.

It follows the channel of every board some connection follows and of every user with an open
WebSocket, and hands events to the hub. After every (re)connect — redis-py's own reconnect or
ours — the hub re-reads every board, because events published meanwhile are lost for good.
While Redis is unreachable the listener probes it every ``probe_interval_s`` and subscribes again
the moment it answers (no back-off to sleep out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio.client import PubSub

from gateway.hub import Hub
from store import outage

log = logging.getLogger("scorecast.gateway.listener")

# Always followed, so the subscription (and ``listen()``) stays alive with no board followed.
CONTROL_CHANNEL = "sc:gateways"


class _ResyncingPubSub(PubSub):
    """A PubSub that tells the hub whenever its connection was (re)established."""

    def __init__(self, pool: Any, on_connected: Any) -> None:
        super().__init__(pool)
        self._on_connected = on_connected

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)
        self._on_connected()


class Listener:
    def __init__(self, redis: Any, hub: Hub, *, probe_interval_s: float = 0.2) -> None:
        self.redis = redis
        self.hub = hub
        self.probe_interval_s = probe_interval_s
        self._redis = outage.redis_service(redis)
        self._stop = asyncio.Event()
        self.channels: set[str] = {CONTROL_CHANNEL}
        self._commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        hub.follow = self.follow
        hub.unfollow = self.unfollow

    def follow(self, channel: str) -> None:
        self.channels.add(channel)
        self._commands.put_nowait(("SUBSCRIBE", channel))

    def unfollow(self, channel: str) -> None:
        self.channels.discard(channel)
        self._commands.put_nowait(("UNSUBSCRIBE", channel))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run())]

    async def close(self) -> None:
        self._stopping = True
        self._stop.set()
        for task in self._tasks:
            # The loop notices the flag within a second; cancelling a read inside redis-py's
            # pubsub can be swallowed, so cancellation is only the fallback.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _run(self) -> None:
        backoff_s = 0.1
        while not self._stopping:
            pubsub = self._pubsub = _ResyncingPubSub(self.redis.connection_pool, self.hub.resync)
            commands: asyncio.Task[None] | None = None
            failure: Exception | None = None
            try:
                while not self._commands.empty():  # what is wanted now is in self.channels
                    self._commands.get_nowait()
                await pubsub.subscribe(*self.channels)
                self.hub.resync()
                commands = asyncio.create_task(self._apply_commands(pubsub))
                backoff_s = 0.1
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self.hub.channel_message(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = exc
            finally:
                if commands is not None:
                    commands.cancel()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._stopping:
                return
            backoff_s = await self._after_failure(failure, backoff_s)

    async def _after_failure(self, failure: Exception | None, backoff_s: float) -> float:
        """Wait until Redis answers (probing), or back off when it answers and still failed.
        Returns the next back-off."""
        down = await outage.first_unreachable([self._redis])
        if down is not None:
            await outage.wait_until_reachable(
                [self._redis], interval_s=self.probe_interval_s, stop=self._stop, who="Pub/Sub listener",
                log=log, down=down,
            )  # fmt: skip
            return 0.1
        log.warning("Pub/Sub connection lost (%s); reconnecting in %.1f s", failure, backoff_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), backoff_s)
        return min(backoff_s * 2, 5.0)

    async def _apply_commands(self, pubsub: PubSub) -> None:
        """Subscription changes, one at a time and in order, on the listening connection."""
        while True:
            command, channel = await self._commands.get()
            try:
                if command == "SUBSCRIBE":
                    await pubsub.subscribe(channel)
                else:
                    await pubsub.unsubscribe(channel)
            except Exception:
                log.warning("%s %s failed; the reconnect will restore it", command, channel, exc_info=True)
