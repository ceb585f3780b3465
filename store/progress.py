"""Watch progress: the Redis-first write (one Lua step per ping) and the resume view.

The progress hash, and the rules a ping's step applies (the resume point last-writer-wins by
``seq``, coverage per device, locks, completion), are described with the steps themselves in
:mod:`store.progress_lua`. Here: a batch of pings goes in ONE pipelined round trip, each ping's
command packed in the Redis protocol around parts kept per device. A hash that expired (24 h
after a flush) is first refilled from MongoDB's ``progress`` document (``hydration``): the Lua
step answers "missing" instead of applying, and the caller sends the ping again with the stored
fields. A live hash — the common case — costs one round trip.

A changed hash loses its TTL (PERSIST) until the flusher has written it to MongoDB and
restored the TTL, so expiry never drops an unflushed position. The same pipeline SADDs the key
to the dirty set (a separate command: the dirty set lives in another slot).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from contract import keys
from contract.events import CompletionEvent
from contract.progress import PROGRESS, Ping, PingResult, hydration_pairs, progress_id
from contract.wire import json_encoder
from store.clients import is_cluster, publish_command, queue_script
from store.progress_lua import COMPLETE, FLUSHED, PING

# A batch of pings waits at most this long for Redis, send and replies together.
BATCH_TIMEOUT_S = 5.0
# (redis client, [(routing key, packed command)], timeout s) -> their replies in order, an error
# (or, on a cluster, the failure of that command's node) in its place.
RoundTrip = Callable[[Any, Sequence[tuple[str, bytes]], float], Awaitable[list[Any]]]
# A command of a ping batch: the key whose slot decides its node on a cluster, its arguments, and
# the same in the Redis protocol (RESP).
Command = tuple[str, tuple[bytes, ...], bytes]
# Devices whose ping parts (keys, encoded) one process keeps; all are dropped when it is full.
_PARTS_KEPT = 65_536


@dataclasses.dataclass(slots=True, frozen=True)
class _PingParts:
    key: str  # the progress hash
    bucket: str  # its dirty bucket
    keys: tuple[bytes, bytes, bytes]  # the script's keys: progress hash, presence, device
    fields: str  # the user's, course's and origin's part of the ping's fields (with separators)
    who: bytes
    packed_keys: bytes  # ``keys`` in RESP
    packed_who: bytes  # ``who`` in RESP


class CompleteStatus:
    """What :meth:`ProgressStore.complete` found (see ``store.progress_lua.COMPLETE``)."""

    NEW, ALREADY, LOCKED, NOT_COVERED = 1, 0, -2, -3


@dataclasses.dataclass(frozen=True, slots=True)
class Completed:
    status: int
    first_watch_ms: int = 0


class ProgressStore:
    """Progress hashes on one Redis client (``decode_responses=True``).

    ``db`` is the MongoDB database a missing hash is refilled from (None: nothing to refill, as in
    tests of the Redis step alone).
    """

    def __init__(
        self,
        redis: Any,
        *,
        complete_threshold: float,
        ttl_s: int,
        db: Any = None,
        max_playback_rate: float = 2.0,
        coverage_slack_s: float = 2.0,
        coverage_max_gap_s: float = 30.0,
        dirty_buckets: int = 1,
        stream_partitions: int = 1,
        round_trip: RoundTrip | None = None,
    ) -> None:
        self.redis = redis
        self.dirty_buckets = dirty_buckets  # keys.dirty_bucket
        self.stream_partitions = stream_partitions  # of the completion stream (emit_completions)
        # Pipelines of pings through gateway.fastpath.redis_round_trip (the gateway passes it when
        # redis-py has the shape it was checked against); None: redis-py's own Pipeline.
        self._fast_round_trip = round_trip
        self.db = db
        self.threshold = complete_threshold
        self.ttl_s = ttl_s
        self.rate = max_playback_rate
        self.slack_s = coverage_slack_s
        # The tail of every ping's fields: the same for every ping of this process.
        gap_ms = int(coverage_max_gap_s * 1000)
        publish = publish_command(redis)
        self._tail = f"\x1f{max_playback_rate!r}\x1f{coverage_slack_s!r}\x1f{gap_ms}\x1f{ttl_s}\x1f{publish}"
        self._ping_sha = hashlib.sha1(PING.encode()).hexdigest().encode()  # what Redis names it by
        self.round_trips = 0  # pipelined ping round trips, refills included (observable)
        self._parts: dict[tuple[str, str, str, str, int, str], _PingParts] = {}
        self._complete = redis.register_script(COMPLETE)
        self.flushed = redis.register_script(FLUSHED)

    @classmethod
    def of(
        cls, redis: Any, settings: Any, db: Any = None, round_trip: RoundTrip | None = None
    ) -> ProgressStore:
        """The store as ``settings`` (contract.settings.Settings) configure it."""
        return cls(
            redis,
            round_trip=round_trip,
            complete_threshold=settings.complete_threshold,
            ttl_s=settings.progress_ttl_s,
            db=db,
            max_playback_rate=settings.max_playback_rate,
            coverage_slack_s=settings.coverage_slack_s,
            coverage_max_gap_s=settings.coverage_max_gap_s,
            dirty_buckets=settings.dirty_bucket_count,
            stream_partitions=settings.stream_partition_count,
        )

    async def save(self, pings: list[Ping], now_ms: int) -> list[PingResult]:
        """:meth:`save_each`, raising the first ping's failure if any failed."""
        stored: list[PingResult] = []
        for result in await self.save_each(pings, now_ms):
            if isinstance(result, Exception):
                raise result
            stored.append(result)
        return stored

    async def save_each(self, pings: list[Ping], now_ms: int) -> list[PingResult | Exception]:
        """Store pings in ONE pipelined round trip; each is atomic and idempotent by seq.

        A ping whose hash is missing is sent again with the hash's fields from MongoDB (a second
        round trip and one MongoDB read for the whole batch). A ping that Redis could not store
        (on a Redis Cluster: its node is down or refused, or so is its dirty bucket's) gets that
        error in its place, and the others still count. Raises what MongoDB raises, and what Redis
        raises when the whole batch failed (one Redis down, a timeout).
        """
        replies = await self._save_retrying(pings, now_ms, {})
        missing = [i for i, r in enumerate(replies) if not isinstance(r, Exception) and r[2]]
        if missing:
            again = [pings[i] for i in missing]
            stored = await self.hydration({keys.progress(p.user_id, p.course_id) for p in again})
            for i, reply in zip(missing, await self._save_retrying(again, now_ms, stored), strict=True):
                replies[i] = reply
        return [
            r
            if isinstance(r, Exception)
            else PingResult(
                moved=bool(r[0]), completed=bool(r[1]), implausible=bool(r[3]), first_watch_ms=int(r[4])
            )
            for r in replies
        ]

    async def _save_retrying(self, pings: list[Ping], now_ms: int, hydration: dict[str, str]) -> list[Any]:
        replies = await self._save(pings, now_ms, hydration, whole=False)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            # That Redis (or cluster node) restarted or flushed its script cache: those pings go
            # again with the script whole, which caches it there (a ping already applied is a
            # repeat of its seq, which changes nothing). No SCRIPT LOAD: on a cluster it goes to
            # every master, and fails while one is down.
            retried = await self._save([pings[i] for i in again], now_ms, hydration, whole=True)
            for i, reply in zip(again, retried, strict=True):
                replies[i] = reply
        return replies

    async def _save(
        self, pings: list[Ping], now_ms: int, hydration: dict[str, str], *, whole: bool
    ) -> list[Any]:
        name, script = (b"EVAL", PING.encode()) if whole else (b"EVALSHA", self._ping_sha)
        head = b"*9\r\n" + _pack_args((name, script, b"3"))
        threshold, tail, parts_of = self.threshold, self._tail, self._parts
        commands: list[Command] = []
        dirty: dict[str, set[str]] = {}
        buckets: list[str] = []  # each ping's dirty bucket
        for p in pings:
            parts = parts_of.get((p.user_id, p.course_id, p.origin, p.device, p.min_presence, p.who))
            if parts is None:
                parts = self._parts_of(p)
            duration = "" if p.duration is None else repr(p.duration)
            fields = (
                f"{p.lecture_id}\x1f{p.position!r}\x1f{p.seq}\x1f{duration}\x1f{threshold}\x1f{now_ms}"
                f"{parts.fields}{p.prev}{tail}"
            ).encode()
            buckets.append(parts.bucket)
            dirty.setdefault(parts.bucket, set()).add(parts.key)
            refill = hydration.get(parts.key, "").encode() if hydration else b""
            commands.append(
                (
                    parts.key,
                    (name, script, b"3", *parts.keys, fields, parts.who, refill),
                    b"%b%b$%d\r\n%b\r\n%b$%d\r\n%b\r\n"
                    % (head, parts.packed_keys, len(fields), fields, parts.packed_who, len(refill), refill),
                )
            )
        # One SADD per dirty bucket after the Lua steps (the buckets live in slots of their own).
        for bucket, members in dirty.items():
            args = (b"SADD", bucket.encode(), *(k.encode() for k in members))
            commands.append((bucket, args, _pack_bytes(args)))
        replies = await self._round_trip(commands)
        # A ping counts when its step and its bucket's SADD both did (unmarked, the flusher would
        # never write it to MongoDB); a failed one is sent again by its client (same seq: harmless).
        added = dict(zip(dirty, replies[len(pings) :], strict=True))
        return [
            reply
            if isinstance(reply, Exception) or not isinstance(added[bucket], Exception)
            else added[bucket]
            for reply, bucket in zip(replies, buckets, strict=False)
        ]

    def _parts_of(self, p: Ping) -> _PingParts:
        """What every ping of one device of one user on one course sends alike, kept (bounded):
        building keys and encoding them is a good part of a ping's cost in the gateway."""
        if len(self._parts) >= _PARTS_KEPT:
            self._parts.clear()
        key = keys.progress(p.user_id, p.course_id)
        encoded = (
            key.encode(),
            keys.presence(p.user_id).encode(),
            keys.device(p.user_id, p.device or p.origin).encode(),
        )
        parts = _PingParts(
            key=key,
            bucket=keys.dirty_bucket(key, self.dirty_buckets),
            keys=encoded,
            fields=f"\x1f{p.user_id}\x1f{p.course_id}\x1f{p.origin}\x1f{p.min_presence}\x1f",
            who=p.who.encode(),
            packed_keys=_pack_args(encoded),
            packed_who=_pack_args((p.who.encode(),)),
        )
        self._parts[(p.user_id, p.course_id, p.origin, p.device, p.min_presence, p.who)] = parts
        return parts

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Send ``commands`` in one pipeline (on a cluster: one per node, written concurrently) and
        read their replies under ONE timeout; an error reply is returned in its place (the replies
        after it are still read)."""
        self.round_trips += 1
        if self._fast_round_trip is not None:
            # Packed in one go, on pooled connections (gateway.fastpath): redis-py's Pipeline packs
            # each argument in Python and reads each reply under its own asyncio timeout, tens of
            # microseconds per ping on the hottest path of the gateway.
            packed = [(key, resp) for key, _, resp in commands]
            replies: list[Any] = await self._fast_round_trip(self.redis, packed, BATCH_TIMEOUT_S)
            return replies
        pipe = self.redis.pipeline(transaction=False)
        cluster = is_cluster(self.redis)
        for _, (name, *args), _ in commands:
            if cluster and name == b"EVALSHA":
                # redis-py refuses EVALSHA in a cluster pipeline (see store.clients.queue_script).
                name, args = b"EVAL", [PING.encode(), *args[1:]]
            pipe.execute_command(name.decode(), *args)  # redis-py routes by the name as a str
        async with asyncio.timeout(BATCH_TIMEOUT_S):
            return list(await pipe.execute(raise_on_error=False))

    async def complete(
        self,
        user_id: str,
        course_id: str,
        lecture_id: str,
        now_ms: int,
        *,
        prev: str = "",
        completable: bool = False,
        need_s: float = 0.0,
        who: str = "{}",
    ) -> Completed:
        """Record an explicit completion: new or already there, or refused because the lecture is
        locked (``prev`` not completed) or not covered (``need_s`` seconds, unless ``completable``).
        Raises what Redis or MongoDB raise."""
        key = keys.progress(user_id, course_id)
        args = [lecture_id, now_ms, prev, "1" if completable else "", need_s, self.rate, self.slack_s, who]
        status, first = await self._complete_step(key, [*args, self.ttl_s, ""])
        if status == -1:
            stored = await self.hydration({key})
            status, first = await self._complete_step(key, [*args, self.ttl_s, stored[key]])
        return Completed(status=int(status), first_watch_ms=int(first))

    async def _complete_step(self, key: str, args: list[Any]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        await queue_script(pipe, self._complete, [key], args)
        pipe.sadd(keys.dirty_bucket(key, self.dirty_buckets), key)
        reply, _ = await pipe.execute()
        found: list[int] = reply
        return found

    async def hydration(self, hashes: set[str]) -> dict[str, str]:
        """The fields each missing hash in ``hashes`` is refilled with, from MongoDB: completions,
        watched intervals and their signals (see ``hydration_pairs``). One query for all."""
        docs: dict[str, dict[str, Any]] = {}
        if self.db is not None:
            ids = {progress_id(*keys.parse_progress(key)): key for key in hashes}
            async for doc in self.db[PROGRESS].find({"_id": {"$in": list(ids)}}):
                docs[ids[doc["_id"]]] = doc
        return {key: hydration_pairs(docs.get(key)) for key in hashes}

    async def read(self, user_id: str, course_id: str) -> dict[str, str]:
        found: dict[str, str] = await self.redis.hgetall(keys.progress(user_id, course_id))
        return found


def _pack_bytes(args: tuple[bytes, ...]) -> bytes:
    """One command in the Redis protocol (RESP): the count of arguments, then the arguments."""
    return b"*%d\r\n%b" % (len(args), _pack_args(args))


def _pack_args(args: tuple[bytes, ...]) -> bytes:
    """Arguments of a command in RESP: each one's length in bytes, then its bytes."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


async def emit_completions(redis: Any, events: list[CompletionEvent], *, partitions: int) -> None:
    """Queue completions for the achievement consumer (each on its user's partition of the
    completion stream, ``partitions`` of them), then clear their ``p:`` markers: two pipelined
    round trips, the second only after Redis took every event. Raises what Redis raises; a marker
    left behind makes the flusher send the event again (same id: harmless)."""
    if not events:
        return
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(keys.completion_stream(event.user_id, partitions), {"d": json_encoder.encode(event)})
    await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.hdel(keys.progress(event.user_id, event.course_id), f"p:{event.lecture_id}")
    await pipe.execute()
