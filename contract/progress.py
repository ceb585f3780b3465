"""Watch progress: the Redis-first write (one Lua step per ping) and the resume view.

Redis hash ``progress:{user:<id>}:<courseId>`` (one cluster slot per user):

- ``lecture``, ``pos``, ``seq``: the resume point, last-writer-wins by ``seq`` (an older seq
  never moves it, though its watch time still counts; a repeat of the current seq is a
  retransmission and changes nothing; both are acked);
- ``w:<lectureId>``: seconds watched, a monotonic max;
- ``c:<lectureId>``: set once, when the lecture completed (watched ≥ threshold * duration, or explicit);
- ``rev``: bumped on every change, so the flusher can tell "flushed" from "changed since".

A changed hash loses its TTL (PERSIST) until the flusher has written it to MongoDB and
restored the TTL, so expiry never drops an unflushed position. The same pipeline SADDs the key
to the dirty set (a separate command: the dirty set lives in another slot).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from contract import keys
from contract.auth import Claims
from contract.courses import CourseMeta
from contract.messages import CompletionEvent, Output, json_encoder

COMPLETION_NAMESPACE = uuid.UUID("6f1c1b2e-6a8e-4f0e-9a51-3c0ad1f0e7a1")

# KEYS: progress hash, presence counter. ARGV[1]: the ping's fields joined by char 31 (one argument
# keeps redis-py's per-argument packing off the hot path): lecture, position, seq, duration or '',
# threshold, now ms, userId, courseId, origin, minimum presence to publish. Returns {moved, completed}.
# The resume point moving is published on the user's channel only when another connection of the
# user may be listening (presence counter >= the minimum).
_PING = f"""
local f = {{}}
for part in string.gmatch(ARGV[1] .. '\\31', '([^\\31]*)\\31') do f[#f + 1] = part end
local lecture, pos_s, seq_s, duration_s, threshold, now, user, course, origin, min_presence = unpack(f)
local h = KEYS[1]
local pos, seq = tonumber(pos_s), tonumber(seq_s)
local changed, moved, completed = 0, 0, 0
local current = tonumber(redis.call('HGET', h, 'seq') or '-1')
if seq == current then return {{0, 0}} end
if seq > current then
  redis.call('HSET', h, 'lecture', lecture, 'pos', pos_s, 'seq', seq_s)
  changed, moved = 1, 1
end
local wkey = 'w:' .. lecture
local watched = tonumber(redis.call('HGET', h, wkey) or '0')
if pos > watched then
  redis.call('HSET', h, wkey, pos_s)
  watched, changed = pos, 1
end
local duration = tonumber(duration_s)
if duration and duration > 0 and watched >= tonumber(threshold) * duration then
  if redis.call('HSETNX', h, 'c:' .. lecture, now) == 1 then completed, changed = 1, 1 end
end
if changed == 1 then
  redis.call('HINCRBY', h, 'rev', 1)
  redis.call('HSET', h, 'upd', now)
  redis.call('PERSIST', h)
end
if moved == 1 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(min_presence) then
  -- ids are restricted to [A-Za-z0-9_-], so they need no JSON escaping
  local event = '{{"courseId":"' .. course .. '","lectureId":"' .. lecture .. '","position":' .. pos_s
    .. ',"seq":' .. seq_s .. ',"origin":"' .. origin .. '"}}'
  redis.call('PUBLISH', '{keys.USER_CHANNEL_PREFIX}' .. user, event)
end
return {{moved, completed}}
"""

# A batch of pings waits at most this long for Redis, send and replies together.
BATCH_TIMEOUT_S = 5.0

# KEYS: progress hash. ARGV: lecture, now ms. Returns 1 when newly completed.
_COMPLETE = """
if redis.call('HSETNX', KEYS[1], 'c:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('PERSIST', KEYS[1])
return 1
"""

# KEYS: progress hash. ARGV: flushed rev, ttl s. Returns 1 when the hash is still at that rev
# (it may expire again), 0 when it changed since (it must stay dirty).
_FLUSHED = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if rev and rev ~= ARGV[1] then return 0 end
if rev then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    user_id: str
    course_id: str
    lecture_id: str
    position: float
    seq: int
    duration: float | None
    origin: str = ""
    # Publish a move only when the user has at least this many WebSocket connections open: 2 for a
    # ping from one of them (someone else to tell), 1 for the HTTP fallback.
    min_presence: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class PingResult:
    moved: bool
    completed: bool


class ProgressStore:
    """Progress hashes on one Redis client (``decode_responses=True``)."""

    def __init__(self, redis: Any, *, complete_threshold: float, ttl_s: int) -> None:
        self.redis = redis
        self.threshold = complete_threshold
        self.ttl_s = ttl_s
        self._ping_sha: str | None = None
        self._complete = redis.register_script(_COMPLETE)
        self.flushed = redis.register_script(_FLUSHED)

    async def save(self, pings: list[Ping], now_ms: int) -> list[PingResult]:
        """Store pings in ONE pipelined round trip; each is atomic and idempotent by seq."""
        try:
            return await self._save(pings, now_ms)
        except NoScriptError:
            # Redis restarted or flushed its script cache: load it and send the batch again (a
            # ping already applied is a repeat of its seq, which changes nothing).
            self._ping_sha = await self.redis.script_load(_PING)
            return await self._save(pings, now_ms)

    async def _save(self, pings: list[Ping], now_ms: int) -> list[PingResult]:
        if self._ping_sha is None:
            self._ping_sha = await self.redis.script_load(_PING)
        # The pipeline by hand, on a pooled connection: redis-py's Pipeline packs each argument in
        # Python, and reads each reply under its own asyncio timeout, tens of microseconds per ping
        # on the hottest path of the gateway. Here the batch is packed in one go and waits under
        # ONE timeout.
        head = b"*6\r\n" + _bulk(b"EVALSHA") + _bulk(self._ping_sha.encode()) + _bulk(b"2")
        threshold = self.threshold
        parts: list[bytes] = []
        dirty: set[str] = set()
        for p in pings:
            duration = "" if p.duration is None else repr(p.duration)
            fields = (
                f"{p.lecture_id}\x1f{p.position!r}\x1f{p.seq}\x1f{duration}\x1f{threshold}\x1f{now_ms}"
                f"\x1f{p.user_id}\x1f{p.course_id}\x1f{p.origin}\x1f{p.min_presence}"
            ).encode()
            key = keys.progress(p.user_id, p.course_id)
            dirty.add(key)
            presence = keys.presence(p.user_id)
            parts.append(head + _bulk(key.encode()) + _bulk(presence.encode()) + _bulk(fields))
        # One SADD for the batch, after the Lua steps (the dirty set lives in another slot).
        parts.append(_pack("SADD", keys.PROGRESS_DIRTY, *dirty))
        replies = await self._round_trip(b"".join(parts), len(parts))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [PingResult(moved=bool(r[0]), completed=bool(r[1])) for r in replies[:-1]]

    async def _round_trip(self, payload: bytes, count: int) -> list[Any]:
        """Send ``count`` packed commands and read their replies; an error reply is returned in
        its place (the replies after it are still read, so the connection stays in step). A
        dropped connection is retried by the pool's own policy (see ``contract.clients``)."""
        pool = self.redis.connection_pool
        conn = await pool.get_connection()

        async def exchange() -> list[Any]:
            await conn.send_packed_command(payload)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
            return replies

        async def reset(error: Exception) -> None:
            await conn.disconnect()

        try:
            async with asyncio.timeout(BATCH_TIMEOUT_S):
                replies: list[Any] = await conn.retry.call_with_retry(exchange, reset)
                return replies
        except BaseException:
            # A timeout or cancellation mid-batch leaves replies unread: never reuse the socket.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    async def complete(self, user_id: str, course_id: str, lecture_id: str, now_ms: int) -> bool:
        """Record an explicit completion. Returns whether it is new."""
        key = keys.progress(user_id, course_id)
        pipe = self.redis.pipeline(transaction=False)
        await self._complete(keys=[key], args=[lecture_id, now_ms], client=pipe)
        pipe.sadd(keys.PROGRESS_DIRTY, key)
        new, _ = await pipe.execute()
        return bool(new)

    async def read(self, user_id: str, course_id: str) -> dict[str, str]:
        found: dict[str, str] = await self.redis.hgetall(keys.progress(user_id, course_id))
        return found


def _bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol (RESP): its length in bytes, then the bytes."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _pack(*args: str) -> bytes:
    """One command in the Redis protocol (RESP)."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(arg.encode()) for arg in args)


def completion_event(claims: Claims, meta: CourseMeta, lecture_id: str, ts_ms: int) -> CompletionEvent:
    """The completion of ``lecture_id`` by the user of ``claims`` (one id per user and lecture)."""
    event_id = str(uuid.uuid5(COMPLETION_NAMESPACE, f"{claims.sub}|{meta.course_id}|{lecture_id}"))
    return CompletionEvent(
        event_id=event_id,
        user_id=claims.sub,
        course_id=meta.course_id,
        lecture_id=lecture_id,
        ts_ms=ts_ms,
        tz=claims.tz,
        name=claims.name,
        region=claims.region,
        marks=meta.marks.get(lecture_id, 0),
    )


async def emit_completions(redis: Any, events: list[CompletionEvent]) -> None:
    """Queue completions for the achievement consumer (one pipelined round trip)."""
    if not events:
        return
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(keys.COMPLETION_STREAM, {"d": json_encoder.encode(event)})
    await pipe.execute()


# ---------------------------------------------------------------- the resume view (I/O-free)
class ProgressView(Output):
    course_id: str
    last_watched_lecture: str | None
    last_position: float
    watch_times: dict[str, float]
    completed_lectures: list[str]
    completion_percentage: float
    unlocked_lectures: list[str]
    marks_obtained: int
    total_marks: int


def percentage(completed: int, total: int) -> float:
    return round(100.0 * completed / total, 1) if total else 0.0


def unlocked(meta: CourseMeta, completed: set[str], stored: set[str] | None = None) -> list[str]:
    """Sequential unlocking: the first lecture, and each lecture whose predecessor is completed."""
    order = meta.lecture_order
    opened = {order[0]} if order else set()
    opened |= {order[i + 1] for i in range(len(order) - 1) if order[i] in completed}
    opened |= stored or set()
    return [lecture for lecture in order if lecture in opened]


# The resume point in MongoDB: ONE flat string that sorts by seq (zero-padded to 20 digits, wider
# than any Seq), so the flusher's ``$max`` on an ``_id``-only upsert keeps the newest whatever the
# order of writes, re-flushes and devices. (A filter like ``{_id, lastSeq: {$lt: n}}`` on an
# upsert is what MongoDB would answer with a duplicate key, but nx-27017 applies it to ANOTHER
# document.) Equal seqs tie-break on the lecture and position text: arbitrary but the same everywhere.
RESUME_FIELD = "resume"
_SEQ_DIGITS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class ResumePoint:
    seq: int
    lecture_id: str | None
    position: float

    def encode(self) -> str:
        """The sortable string stored in ``RESUME_FIELD``; needs ``0 <= seq < 10**20``."""
        return f"{self.seq:0{_SEQ_DIGITS}d}|{self.lecture_id or ''}|{self.position!r}"

    @classmethod
    def decode(cls, value: object) -> ResumePoint | None:
        """The point ``encode`` stored, or None for anything else (never raises)."""
        if not isinstance(value, str):
            return None
        seq, _, rest = value.partition("|")
        lecture, _, position = rest.rpartition("|")
        try:
            return cls(int(seq), lecture or None, float(position))
        except ValueError:
            return None

    @classmethod
    def of_document(cls, doc: dict[str, Any]) -> ResumePoint | None:
        """The newest resume point of a ``progress`` document: ``RESUME_FIELD``, or the
        ``lastWatchedLecture``/``lastPosition``/``lastSeq`` fields that older flushers wrote."""
        stored = cls.decode(doc.get(RESUME_FIELD))
        if "lastSeq" in doc:
            legacy = cls(
                int(doc["lastSeq"]), doc.get("lastWatchedLecture"), float(doc.get("lastPosition", 0.0))
            )
            if stored is None or legacy.seq > stored.seq:
                return legacy
        return stored


def merge(meta: CourseMeta, doc: dict[str, Any] | None, live: dict[str, str]) -> ProgressView:
    """MongoDB's document merged with the Redis hash; Redis wins where it is newer."""
    doc = doc or {}
    watch: dict[str, float] = {}
    for field, value in doc.items():
        if field.startswith("w_"):
            watch[field[2:]] = float(value)
    for field, value in live.items():
        if field.startswith("w:"):
            watch[field[2:]] = max(watch.get(field[2:], 0.0), float(value))
    completed = set(doc.get("completedLectures", [])) | {f[2:] for f in live if f.startswith("c:")}
    completed &= set(meta.lecture_order)
    stored = ResumePoint.of_document(doc)
    lecture, position = (stored.lecture_id, stored.position) if stored else (None, 0.0)
    if "seq" in live and (stored is None or int(live["seq"]) >= stored.seq):
        lecture, position = live["lecture"], float(live["pos"])
    return ProgressView(
        course_id=meta.course_id,
        last_watched_lecture=lecture,
        last_position=position,
        watch_times={k: watch[k] for k in meta.lecture_order if k in watch},
        completed_lectures=[k for k in meta.lecture_order if k in completed],
        completion_percentage=percentage(len(completed), meta.lecture_count),
        unlocked_lectures=unlocked(meta, completed, set(doc.get("unlockedLectures", []))),
        marks_obtained=sum(meta.marks.get(k, 0) for k in completed),
        total_marks=meta.total_marks,
    )
