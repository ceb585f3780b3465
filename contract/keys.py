"""Redis key and channel builders. Every key Scorecast touches is spelled here.

One board lives in one Redis Cluster slot: its ZSET, version counter, member map and
applied-action guards share the hash tag ``{board:<name>}``, so its update is one Lua step on
a cluster too. Per-user progress hashes share ``{user:<id>}``. A board's Pub/Sub channel carries
its board's tag and a user's channel the user's (``sc:board:{board:<name>}``,
``sc:user:{user:<id>}``): on a cluster they travel on sharded Pub/Sub, SPUBLISH by the node of
that slot and SSUBSCRIBE there; on one Redis on classic PUBLISH/SUBSCRIBE (see the channels below).
"""

from __future__ import annotations

import dataclasses
import zlib

# Tie-break encoding: a ZSET member is ``<15 digits><userId>`` where the digits are
# SEQ_CEILING - seq (seq = the board version at which the user reached their score). Redis
# orders equal scores by member, descending in ZREVRANGE, so whoever reached a score first
# (smaller seq) comes first while the ZSET score stays the exact integer total.
# 15 digits keep SEQ_CEILING below 2**53, exact in Lua's doubles.
SEQ_DIGITS = 15
SEQ_CEILING = 10**SEQ_DIGITS - 1


def encode_member(user_id: str, seq: int) -> str:
    return f"{SEQ_CEILING - seq:0{SEQ_DIGITS}d}{user_id}"


def decode_member(member: str) -> tuple[str, int]:
    """Return (userId, seq) of an encoded ZSET member."""
    return member[SEQ_DIGITS:], SEQ_CEILING - int(member[:SEQ_DIGITS])


@dataclasses.dataclass(frozen=True, slots=True)
class BoardKeys:
    """The keys of one board, all in one cluster slot."""

    name: str
    zset: str
    version: str
    members: str
    empty: str  # set while the board exists with no member (see store.boards)
    closed: str  # set when a period board closed: applies refuse it (see ingest.seasons)
    guard_prefix: str
    staging_prefix: str

    def guard(self, action_id: str) -> str:
        return f"{self.guard_prefix}{action_id}"

    def staging(self, token: str) -> tuple[str, str]:
        """The (zset, members) keys one rebuild stages into; each rebuild has its own token."""
        return f"{self.staging_prefix}{token}:z", f"{self.staging_prefix}{token}:m"


def board_keys(name: str) -> BoardKeys:
    """Keys of the canonical board ``name`` (resolve ``weekly``/``monthly`` first)."""
    tag = f"{{board:{name}}}"
    return BoardKeys(
        name=name,
        zset=f"{tag}:z",
        version=f"{tag}:v",
        members=f"{tag}:m",
        empty=f"{tag}:e",
        closed=f"{tag}:closed",
        guard_prefix=f"{tag}:a:",
        staging_prefix=f"{tag}:staging:",
    )


# Streams
# The score and completion streams are split into partitions by user on a Redis Cluster (see
# ``partitions``); SCORE_STREAM / COMPLETION_STREAM name the one partition of one Redis. Each
# stream's dead letters go to one stream (a rare write, a command of its own).
SCORE_STREAM = "stream:scores"
SCORE_DEAD_LETTER = "stream:scores:dead"
WORKER_GROUP = "workers"

# Rebuild requests of boards missing in Redis, from gateways (their own stream: they never count
# toward the score stream's backlog). One request per board per interval over every gateway.
REBUILD_STREAM = "stream:rebuilds"
REBUILD_DEAD_LETTER = "stream:rebuilds:dead"


def partitions(base: str, count: int) -> list[str]:
    """The keys ``base`` (a stream, a set) is split into: ``[base]`` itself for one part, else
    ``{base:<i>}`` for i < count, each its own hash tag, so the parts spread over a cluster's slots."""
    if count <= 1:
        return [base]
    return [f"{{{base}:{i}}}" for i in range(count)]


def partition(base: str, count: int, routing: str) -> str:
    """The part of ``base`` (see :func:`partitions`) that ``routing`` (a userId, a key) belongs to:
    the same part for the same ``routing`` in every process (CRC-32, not Python's salted hash)."""
    if count <= 1:
        return base
    return f"{{{base}:{zlib.crc32(routing.encode()) % count}}}"


def score_stream(user_id: str, count: int) -> str:
    """The partition of the score stream that carries ``user_id``'s actions, in their order."""
    return partition(SCORE_STREAM, count, user_id)


def completion_stream(user_id: str, count: int) -> str:
    """The partition of the completion stream that carries ``user_id``'s lecture completions."""
    return partition(COMPLETION_STREAM, count, user_id)


def rebuild_asked(board: str) -> str:
    """Set (NX EX) by the gateway that asks for ``board``'s rebuild; the others hold back."""
    return f"{{board:{board}}}:rebuildAsked"


# Seasons (ingest.seasons): the period boards that got a score (a registry the worker's rollover
# reads), and one ``board_closed`` event per board and period for rewards.
SEASON_BOARDS = "seasons:boards"
BOARD_CLOSED_STREAM = "stream:board_closed"


def board_closed_sent(board: str) -> str:
    """Set with the ``board_closed`` event of ``board`` in one step (the stream's slot): racing
    workers and retries add it once."""
    return same_slot(BOARD_CLOSED_STREAM, f":sent:{board}")


# Lecture completions, consumed by the achievement consumer (activity, streaks, course board).
COMPLETION_STREAM = "stream:completions"
COMPLETION_DEAD_LETTER = "stream:completions:dead"
ACHIEVEMENT_GROUP = "achievements"


def same_slot(key: str, suffix: str) -> str:
    """A key in the Redis Cluster slot of ``key``: ``key`` + ``suffix`` when ``key`` has a hash tag,
    else ``{key}`` + ``suffix`` (a key without a tag is hashed whole, which is what the tag hashes)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start == -1:
        return f"{{{key}}}{suffix}"
    if end > start + 1:
        return key + suffix
    raise ValueError(f"{key!r} has braces but no hash tag")


def consumer_deadlines(stream: str, group: str) -> str:
    """ZSET of the consumers of ``group`` that announced themselves, scored by the Redis time (ms)
    their heartbeat runs out; in the stream's slot, so one script sees both."""
    return same_slot(stream, f":alive:{group}")


# Pub/Sub channels. A board's channel carries its board's hash tag and a user's channel the user's,
# so on a Redis Cluster an event is published (SPUBLISH, sharded Pub/Sub) by the node that owns
# the board's or the user's keys -- from inside the Lua step that changed them, for a ping -- and
# reaches the gateways subscribed (SSUBSCRIBE) on that node's shard. On one Redis the same names
# travel on classic Pub/Sub (PUBLISH/SUBSCRIBE). ``store.clients.publish_command`` picks the command.
BOARD_CHANNEL_PREFIX = "sc:board:{board:"
USER_CHANNEL_PREFIX = "sc:user:{user:"
CHANNEL_END = "}"


def board_channel(name: str) -> str:
    """``sc:board:{board:<name>}``: the slot of :func:`board_keys` (``name``)."""
    return f"{BOARD_CHANNEL_PREFIX}{name}{CHANNEL_END}"


def user_channel(user_id: str) -> str:
    """``sc:user:{user:<id>}``: the slot of the user's progress keys."""
    return f"{USER_CHANNEL_PREFIX}{user_id}{CHANNEL_END}"


def channel_board(channel: str) -> str | None:
    """The board a :func:`board_channel` names, None for another channel."""
    if channel.startswith(BOARD_CHANNEL_PREFIX) and channel.endswith(CHANNEL_END):
        return channel[len(BOARD_CHANNEL_PREFIX) : -len(CHANNEL_END)]
    return None


def channel_user(channel: str) -> str | None:
    """The user a :func:`user_channel` names, None for another channel."""
    if channel.startswith(USER_CHANNEL_PREFIX) and channel.endswith(CHANNEL_END):
        return channel[len(USER_CHANNEL_PREFIX) : -len(CHANNEL_END)]
    return None


def slot_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: its ``{tag}``, else the whole key.

    A key spelled ``{<slot_tag(k)>}...`` lives in the same cluster slot as ``k``, whether or
    not ``k`` itself carries a hash tag.
    """
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


# Write path
def user_action(user_id: str, action_id: str) -> str:
    """The identity of one action: an actionId counts once PER USER, so every guard and the
    ``score_events`` id are keyed by both. (An actionId is a UUID, so the last ``|`` splits.)"""
    return f"{user_id}|{action_id}"


def action_guard(user_id: str, action_id: str, *, stream: str = SCORE_STREAM) -> str:
    """Set by the API when it queues a user's actionId; a second POST of it is a duplicate.

    It shares the cluster slot of ``stream``, so one Lua step can set it and XADD together.
    """
    return f"{{{slot_tag(stream)}}}:action:{user_action(user_id, action_id)}"


def quiz_tally(user_id: str, quiz_id: str, *, stream: str = SCORE_STREAM) -> str:
    """Hash {best, n}: what the boards count of a user's quiz and how many attempts were made.
    In the slot of ``stream``: one Lua step checks it, XADDs the improvement and moves it."""
    return f"{{{slot_tag(stream)}}}:quiz:{user_id}|{quiz_id}"


def quiz_submission(user_id: str, action_id: str, *, stream: str = SCORE_STREAM) -> str:
    """A quiz submission's outcome (``<delta>:<attempt>``), so a retried submission answers the same."""
    return f"{{{slot_tag(stream)}}}:quizsub:{user_action(user_id, action_id)}"


def rate_limit(user_id: str) -> str:
    return f"ratelimit:{{user:{user_id}}}"


def region_rate_limit(region: str | None) -> str:
    """The write bucket of a region; users without a region share the bucket of region ``""``."""
    return f"ratelimit:{{region:{(region or '').upper()}}}"


def refresh_token(jti: str) -> str:
    return f"refresh:{jti}"


def user_profile(user_id: str) -> str:
    """Hash cache of a member's display details (name, avatarUrl, region)."""
    return f"user:{user_id}"


# Progress (issue: video players)
def progress(user_id: str, course_id: str) -> str:
    return f"progress:{{user:{user_id}}}:{course_id}"


def presence(user_id: str) -> str:
    """How many WebSocket connections the user has open, over every gateway (same slot as progress)."""
    return f"presence:{{user:{user_id}}}"


def device(user_id: str, device_id: str) -> str:
    """The last ping of one device of the user (what its next ping's advance is measured from)."""
    return f"device:{{user:{user_id}}}:{device_id}"


def parse_progress(key: str) -> tuple[str, str]:
    """(userId, courseId) of a :func:`progress` key."""
    user_part, _, course_id = key.removeprefix("progress:{user:").partition("}:")
    return user_part, course_id


PROGRESS_DIRTY = "progress:dirty"
# Keys a flusher took from the dirty set and has not finished yet; in the dirty set's slot, so one
# script moves keys between the two. On a cluster the dirty set is split into buckets (see
# ``partitions``), each with its in-flight twin: PROGRESS_DIRTY / PROGRESS_INFLIGHT are the one
# bucket of one Redis.
PROGRESS_INFLIGHT = same_slot(PROGRESS_DIRTY, ":inflight")


def dirty_bucket(progress_key: str, count: int) -> str:
    """The bucket of the dirty set that a :func:`progress` key goes to."""
    return partition(PROGRESS_DIRTY, count, progress_key)


def dirty_buckets(count: int) -> list[tuple[str, str]]:
    """Every (dirty bucket, its in-flight set) pair, in one slot each."""
    return [(bucket, inflight(bucket)) for bucket in partitions(PROGRESS_DIRTY, count)]


def inflight(bucket: str) -> str:
    """The in-flight set of a dirty bucket, in its slot."""
    return same_slot(bucket, ":inflight")


def course_meta(course_id: str) -> str:
    return f"courseMeta:{course_id}"


def course_meta_lock(course_id: str) -> str:
    return f"courseMeta:{course_id}:lock"


# Anomaly flags (ingest.anomaly). Per-user keys share the user's hash tag.
def score_block(user_id: str) -> str:
    """Set (value: end in epoch ms, with a TTL) while the user is blocked from scoring."""
    return f"block:{{user:{user_id}}}"


def recent_increments(user_id: str) -> str:
    """List of the user's latest increments, newest first: their norm for the jump rule."""
    return f"anomaly:{{user:{user_id}}}:incs"


def recent_actions(user_id: str) -> str:
    """ZSET of the user's applied actionIds scored by time (ms): the burst rule's window."""
    return f"anomaly:{{user:{user_id}}}:acts"


BOARD_INCREMENTS = "anomaly:board:incs"


def quiz_start(user_id: str, quiz_id: str) -> str:
    """When the user first fetched the quiz (epoch ms, server clock)."""
    return f"quizstart:{{user:{user_id}}}:{quiz_id}"
