"""Score writes: validated, rate-limited, deduplicated, queued; and an admin's rebuild request.

A write is accepted (202) once its entry is on the score stream, which Redis persists (AOF);
the worker applies it. The admission steps (:func:`check_block`, :func:`check_rate`,
:func:`queue_has_room`, :func:`enqueue`) serve quiz submissions too (``ingest.api.quiz``).
Leaderboard reads are :mod:`ingest.api.leaderboards`.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract import keys
from contract.auth import Claims
from contract.boards import resolve
from contract.bodies import ScoreAccepted, ScoreUpdateRequest
from contract.errors import BadRequest, NotFound, TemporarilyBlocked, TooManyRequests, Unavailable
from contract.events import RebuildRequest, ScoreAction
from contract.http import JSONResponse, decode_body
from contract.wire import json_encoder
from ingest import audit, store
from ingest.anomaly import blocked_until
from ingest.api.client import ClientInfo, client_of
from ingest.api.courses import course_meta
from ingest.api.metrics import counted
from ingest.api.state import IngestState, authenticate, state
from store.board_results import Profile

log = logging.getLogger("scorecast.scores")

# Who may call POST /api/v1/scores/update: backend services that award points, and operators.
# A learner's own token cannot (403): their points come from quizzes and completions.
SCORING_ROLES = ("scorer", "admin")

# KEYS: bucket. ARGV: rate per second, burst. Returns 0 when allowed, else ms until a token.
# Time comes from the Redis server, so every API replica shares one clock.
_TOKEN_BUCKET = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
if tokens < 1 then return math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tokens - 1, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return 0
"""

# KEYS: guard, stream (one cluster slot: the guard carries the stream's hash tag).
# ARGV: entry JSON, guard ttl (s). Returns 1 when queued, 0 when the guard was set before.
# The guard and the entry are one step: a script runs whole, so a process dying around the call
# leaves both or neither; and XADD runs first, so an XADD that fails raises before the guard is
# written and a retry goes through.
_ENQUEUE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[1])
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[2]))
return 1
"""


async def check_rate(st: IngestState, user_id: str, region: str | None) -> None:
    """Take one token from the user's bucket, then one from their region's (seed 003).

    Raises TooManyRequests (``rate_limited``, with Retry-After) when either is empty; the
    message says which. The user's bucket goes first, so a user refused by their own bucket
    takes nothing from the region's: one user cannot drain their region's budget.
    """
    s = st.settings
    bucket = st.redis.register_script(_TOKEN_BUCKET)
    wait_ms = int(
        await bucket(keys=[keys.rate_limit(user_id)], args=[s.rate_limit_per_s, s.rate_limit_burst])
    )
    if wait_ms > 0:
        raise TooManyRequests(
            "too many score writes for this user; slow down",
            code="rate_limited",
            retry_after_s=-(-wait_ms // 1000),
            bucket="user",
        )
    wait_ms = int(
        await bucket(
            keys=[keys.region_rate_limit(region)],
            args=[s.region_rate_limit_per_s, s.region_rate_limit_burst],
        )
    )
    if wait_ms > 0:
        raise TooManyRequests(
            f"too many score writes in region {region or '(none)'}; slow down",
            code="rate_limited",
            retry_after_s=-(-wait_ms // 1000),
            bucket="region",
        )


async def check_block(st: IngestState, user_id: str) -> None:
    """Raises TemporarilyBlocked while an anomaly flag blocks ``user_id`` from scoring."""
    until_ms = await blocked_until(st.redis, user_id)
    if until_ms is not None:
        raise TemporarilyBlocked(
            f"{user_id} is blocked from scoring pending review", until=audit.iso(until_ms)
        )


async def queue_has_room(st: IngestState) -> None:
    """Raises TooManyRequests (``queue_full``) when the score stream's backlog (entries not yet
    delivered or not yet acknowledged by the worker, summed over the stream's partitions, as read
    at most ``queue_backlog_max_age_s`` ago) has reached ``queue_max_length``. Processed entries
    do not count (the worker trims them).
    Raises Unavailable when Redis refuses the read (the stream key is not a stream, say).
    """
    try:
        partitions = keys.partitions(keys.SCORE_STREAM, st.settings.stream_partition_count)
        backlog = await st.backlog.total(partitions)
    except ResponseError as exc:
        log.error("the score stream cannot be read: %s", exc)
        raise Unavailable("the score queue cannot be read; retry shortly") from None
    if backlog >= st.settings.queue_max_length:
        raise TooManyRequests("the score queue is full; retry later", code="queue_full", retry_after_s=5)


async def enqueue(st: IngestState, action: ScoreAction) -> bool:
    """Queue ``action`` once per (userId, actionId). Returns False when that pair was seen before.

    Raises TooManyRequests (``queue_full``, see :func:`queue_has_room`), Unavailable when Redis
    refuses the write (out of memory, say): nothing was queued or remembered, so the client may
    retry the same actionId.
    """
    await queue_has_room(st)
    try:
        once = st.redis.register_script(_ENQUEUE_ONCE)
        stream = keys.score_stream(action.user_id, st.settings.stream_partition_count)
        queued = await once(
            keys=[keys.action_guard(action.user_id, action.action_id, stream=stream), stream],
            args=[json_encoder.encode(action), st.settings.action_guard_ttl_s],
        )
    except ResponseError as exc:
        log.error("the score stream refused an entry: %s", exc)
        raise Unavailable("the score queue refused the write; retry shortly") from None
    return bool(int(queued))


def action_for(
    claims: Claims,
    action_id: str,
    increment: int,
    *,
    course_id: str | None,
    source: str,
    client: ClientInfo | None = None,
) -> ScoreAction:
    """The stream entry of a score action; ``client`` gives the client's IP and user agent."""
    return ScoreAction(
        action_id=action_id.lower(),
        user_id=claims.sub,
        name=claims.name,
        increment=increment,
        ts_ms=int(time.time() * 1000),
        region=claims.region,
        avatar_url=claims.avatar_url,
        course_id=course_id,
        source=source,
        ip=client.ip if client else None,
        user_agent=client.user_agent if client else None,
    )


def request_client(request: Request) -> ClientInfo:
    """Who sent ``request`` as the audit log records it (``trusted_proxies`` decide)."""
    st = state(request)
    return client_of(request, st.trusted_proxies, max_agent_chars=st.settings.audit_user_agent_max_chars)


async def scored_profile(st: IngestState, user_id: str) -> Profile:
    """The profile (name, avatar, region) of the user a scorer names: the Redis cache, else
    MongoDB ``users`` (written at login and by the worker from the user's own actions).

    Raises NotFound (``unknown_user``): a user Scorecast has never seen has no region to place
    the score on, and a mistyped id must not create a ghost on the boards.
    """
    cached = await st.boards.scoring_profile(user_id)
    if cached is not None:
        return cached
    doc = await st.mongo[store.USERS].find_one({"_id": user_id})
    if doc is None:
        raise NotFound(
            f"no user {user_id!r}: a user is known from their first authenticated request",
            code="unknown_user",
        )
    profile = Profile(
        name=doc.get("name") or user_id, avatar_url=doc.get("avatarUrl"), region=doc.get("region")
    )
    await st.boards.cache_profiles({user_id: profile}, ttl_s=st.settings.user_cache_ttl_s)
    return profile


async def update(request: Request) -> Response:
    st = state(request)
    await authenticate(request, role=SCORING_ROLES)
    body = await decode_body(request, ScoreUpdateRequest, max_bytes=st.settings.max_body_bytes)
    if body.score_increment > st.settings.max_score_increment:
        raise BadRequest(
            f"scoreIncrement must be at most {st.settings.max_score_increment}", code="increment_too_large"
        )
    if body.course_id is not None:
        await course_meta(st, body.course_id)  # only existing courses get a board
    profile = await scored_profile(st, body.user_id)
    await check_block(st, body.user_id)
    await check_rate(st, body.user_id, profile.region)
    client = request_client(request)
    action = ScoreAction(
        action_id=body.action_id.lower(),
        user_id=body.user_id,
        name=profile.name,
        increment=body.score_increment,
        ts_ms=int(time.time() * 1000),
        region=profile.region,  # the scored user's region board, never the scorer's
        avatar_url=profile.avatar_url,
        course_id=body.course_id,
        source="score",
        ip=client.ip,  # the caller's (a scorer service's) address: what the audit log shows
        user_agent=client.user_agent,
    )
    if not await enqueue(st, action):
        return JSONResponse(ScoreAccepted(status="duplicate", action_id=action.action_id), status_code=200)
    return JSONResponse(ScoreAccepted(status="queued", action_id=action.action_id), status_code=202)


async def rebuild(request: Request) -> Response:
    st = state(request)
    await authenticate(request, role="admin")
    board = resolve(request.path_params["board"])
    entry = RebuildRequest(board=board, force=True)
    stream = keys.partition(keys.SCORE_STREAM, st.settings.stream_partition_count, board)
    await st.redis.xadd(stream, {"d": json_encoder.encode(entry)})
    return JSONResponse({"status": "queued", "board": board}, status_code=202)


routes: list[BaseRoute] = [
    Route("/api/v1/scores/update", counted("scores", update), methods=["POST"]),
    Route("/api/v1/admin/boards/{board}/rebuild", rebuild, methods=["POST"]),
]
