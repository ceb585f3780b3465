"""The sharded Pub/Sub subscriptions of a gateway process on a Redis Cluster (``REDIS_CLUSTER=1``).

Board and user events are published with SPUBLISH on the master that owns the channel's slot,
and only there. The gateway holds ONE subscription connection per master (:class:`_Shard`) and
follows each channel with SSUBSCRIBE on the master of its slot (``gateway.shards`` decides where).

Whenever a shard's connection is lost, answered MOVED, or told by the server that a channel's slot
migrated away (an unasked ``sunsubscribe``), the slot table is discovered again (``CLUSTER SLOTS``
from any node that answers) and the channels are placed anew. A master that does not answer is
probed every ``probe_interval_s`` (``store.outage``) and followed again the moment it answers.
Every (re)subscription re-reads the boards it carries, because events published meanwhile are
lost for good, exactly as the classic listener does after a reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.hub import Hub
from gateway.shards import SlotMap, by_slot, plan
from store import outage
from store.clients import DRIVER_INFO, REDIS_CONNECT_TIMEOUT_S

log = logging.getLogger("scorecast.gateway.sharded")

# While every subscription holds, the slot table is read again this often anyway (a failover
# whose old master vanished silently, without closing our connection).
REFRESH_INTERVAL_S = 5.0
# A shard whose master answers but whose subscription failed (MOVED before the slot table was
# read again) retries after this long, doubling up to the cap.
RETRY_S = 0.1
RETRY_CAP_S = 1.0


def node_pool(url: str, address: str) -> ConnectionPool:
    """A pool to the node ``host:port`` with the options of ``url`` (password, TLS), never retrying
    by itself: a failure must reach the listener, which decides what to do."""
    options: dict[str, Any] = dict(parse_url(url))
    options.pop("db", None)
    host, _, port = address.rpartition(":")
    options.update(
        host=host,
        port=int(port),
        decode_responses=True,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        driver_info=DRIVER_INFO,
        max_connections=4,
    )
    return ConnectionPool(**options)


class _SlotMoved(Exception):
    """The server dropped a channel we follow: its slot now lives on another master."""


class _Shard:
    """The subscription connection to one master and the channels it should carry there."""

    def __init__(self, address: str, listener: ShardedListener) -> None:
        self.address = address
        self.listener = listener
        self.channels: set[str] = set()
        self.up = False
        # Our own SUNSUBSCRIBEs not answered yet, per channel, on the current connection: their
        # answers are not a slot that moved (the channel may be followed again meanwhile).
        self._leaving: collections.Counter[str] = collections.Counter()
        self._commands: asyncio.Queue[tuple[str, list[str], bool]] = asyncio.Queue()
        self._retired = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def follow(self, channels: Iterable[str], *, reread: bool) -> None:
        """SSUBSCRIBE ``channels`` here; ``reread``: their boards are read again once followed."""
        new = set(channels) - self.channels
        self.channels |= new
        for group in by_slot(new):
            self._commands.put_nowait(("SSUBSCRIBE", group, reread))

    def drop(self, channels: Iterable[str]) -> None:
        gone = set(channels) & self.channels
        self.channels -= gone
        for group in by_slot(gone):
            self._commands.put_nowait(("SUNSUBSCRIBE", group, False))

    def retire(self) -> None:
        self._retired.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        client = aioredis.Redis.from_pool(node_pool(self.listener.url, self.address))
        service = outage.redis_service(client)
        hub = self.listener.hub
        retry_s = RETRY_S
        try:
            while not self._retired.is_set():
                pubsub = client.pubsub()
                commands: asyncio.Task[None] | None = None
                failure: Exception | None = None
                try:
                    while not self._commands.empty():  # what is wanted now is in self.channels
                        self._commands.get_nowait()
                    self._leaving.clear()
                    await pubsub.connect()  # type: ignore[no-untyped-call]
                    for group in by_slot(self.channels):
                        await pubsub.ssubscribe(*group)
                    self._set_up(True)
                    hub.resync(set(self.channels))
                    commands = asyncio.create_task(self._apply_commands(pubsub))
                    retry_s = RETRY_S
                    while not self._retired.is_set():
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        if message["type"] == "smessage":
                            hub.channel_message(message["channel"], message["data"])
                        elif message["type"] == "sunsubscribe":
                            channel = message["channel"]
                            if self._leaving[channel] > 0:
                                self._leaving[channel] -= 1  # the answer to our own
                            elif channel in self.channels:
                                raise _SlotMoved(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = exc
                finally:
                    self._set_up(False)
                    if commands is not None:
                        commands.cancel()
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                if self._retired.is_set():
                    return
                self.listener.rediscover()
                retry_s = await self._after_failure(service, failure, retry_s)
        finally:
            self._set_up(False)
            await client.aclose()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.listener.hub.metrics.shards_subscribed.inc(1 if up else -1)

    async def _after_failure(
        self, service: outage.Service, failure: Exception | None, retry_s: float
    ) -> float:
        """Probe the master until it answers (or the shard is retired); a master that answers and
        still failed (MOVED: the slot table is being read again) is retried after ``retry_s``."""
        down = await outage.first_unreachable([service])
        if down is not None:
            await outage.wait_until_reachable(
                [service], interval_s=self.listener.probe_interval_s, stop=self._retired,
                who=f"sharded Pub/Sub on {self.address}", log=log, down=down,
            )  # fmt: skip
            return RETRY_S
        log.warning("sharded Pub/Sub on %s failed (%r); again in %.1f s", self.address, failure, retry_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retired.wait(), retry_s)
        return min(retry_s * 2, RETRY_CAP_S)

    async def _apply_commands(self, pubsub: Any) -> None:
        """Subscription changes, in order, on the listening connection."""
        while True:
            command, group, reread = await self._commands.get()
            try:
                if command == "SSUBSCRIBE":
                    await pubsub.ssubscribe(*group)
                    if reread:
                        self.listener.hub.resync(set(group))
                else:
                    self._leaving.update(group)
                    await pubsub.sunsubscribe(*group)
            except Exception:
                log.warning("%s %s on %s failed; the reconnect restores it", command, group, self.address)


class ShardedListener:
    """Board and user channels over sharded Pub/Sub: same interface as ``gateway.listener.Listener``."""

    def __init__(self, url: str, hub: Hub, *, probe_interval_s: float = 0.2) -> None:
        self.url = url
        self.hub = hub
        self.probe_interval_s = probe_interval_s
        self.channels: set[str] = set()
        self.slots: SlotMap | None = None
        seed = parse_url(url)
        self._seed = f"{seed.get('host', '127.0.0.1')}:{seed.get('port', 6379)}"
        self._shards: dict[str, _Shard] = {}
        self._retiring: list[_Shard] = []
        self._trouble = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        hub.follow = self.follow
        hub.unfollow = self.unfollow

    def follow(self, channel: str) -> None:
        self.channels.add(channel)
        node = self.slots.node_of(channel) if self.slots is not None else None
        shard = self._shards.get(node) if node is not None else None
        if shard is not None:
            shard.follow([channel], reread=False)
        else:
            self.rediscover()  # placed by the next plan

    def unfollow(self, channel: str) -> None:
        self.channels.discard(channel)
        for shard in self._shards.values():
            if channel in shard.channels:
                shard.drop([channel])

    def rediscover(self) -> None:
        """Read the slot table again soon (a shard failed, or a channel had no master)."""
        self._trouble.set()

    @property
    def shards_up(self) -> int:
        return sum(shard.up for shard in self._shards.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def close(self) -> None:
        self._stopping = True
        self._trouble.set()
        shards = [*self._shards.values(), *self._retiring]
        for shard in shards:
            shard.retire()
        # Each loop notices within a second; cancellation is the fallback (see gateway.listener).
        tasks = [t for t in [self._task, *(s.task for s in shards)] if t is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self) -> None:
        failing_since_logged = False
        while not self._stopping:
            self._trouble.clear()
            slots = await self._discover()
            if slots is None:
                if not failing_since_logged:
                    log.warning("no Redis Cluster node answers CLUSTER SLOTS; probing")
                    failing_since_logged = True
            else:
                if failing_since_logged:
                    log.warning("Redis Cluster slot table read again")
                    failing_since_logged = False
                self._place(slots)
            settled = slots is not None and all(s.up for s in self._shards.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._trouble.wait(), REFRESH_INTERVAL_S if settled else self.probe_interval_s
                )

    async def _discover(self) -> SlotMap | None:
        """The slot table as the first node that answers reports it (None: no node answers)."""
        known = [*(self.slots.masters if self.slots else ()), *self._shards, self._seed]
        for address in dict.fromkeys(known):
            client = aioredis.Redis.from_pool(node_pool(self.url, address))
            try:
                async with asyncio.timeout(outage.PROBE_TIMEOUT_S * 2):
                    reply = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                slots = SlotMap.from_cluster_slots(reply)
            except Exception as exc:
                log.debug("CLUSTER SLOTS from %s failed: %r", address, exc)
                continue
            finally:
                await client.aclose()
            if slots.ranges:
                return slots
        return None

    def _place(self, slots: SlotMap) -> None:
        self.slots = slots
        current = {address: set(shard.channels) for address, shard in self._shards.items()}
        changes = plan(slots, self.channels, current)
        for address in changes.retire:
            shard = self._shards.pop(address)
            shard.retire()
            self._retiring.append(shard)
        for address in changes.open:
            shard = self._shards[address] = _Shard(address, self)
            shard.start()
        for address, channels in changes.drop.items():
            self._shards[address].drop(channels)
        for address, channels in changes.follow.items():
            # Followed anew (moved, or back after its slot had no master): read its boards again.
            self._shards[address].follow(channels, reread=True)
        if changes.moved:
            log.warning("%d channels moved to another master; following them there", len(changes.moved))
        self._retiring = [s for s in self._retiring if s.task is not None and not s.task.done()]
