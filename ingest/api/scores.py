"""Score writes (validated, rate-limited, deduplicated, queued) and leaderboard reads.

A write is accepted (202) once its entry is on the score stream, which Redis persists (AOF);
the worker applies it. Reads answer from the Redis board; a board whose keys are gone is
rebuilt from MongoDB before answering.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract import keys
from contract.auth import Claims
from contract.boards import resolve
from contract.boardstore import Profile, Row, Top
from contract.errors import BadRequest, NotFound, TemporarilyBlocked, TooManyRequests
from contract.http import JSONResponse, decode_body
from contract.messages import (
    AroundAnswer,
    LeaderboardEntry,
    LeaderboardPage,
    RankAnswer,
    RebuildRequest,
    ScoreAccepted,
    ScoreAction,
    ScoreUpdateRequest,
    json_encoder,
)
from ingest import audit, store
from ingest.anomaly import blocked_until
from ingest.api.client import client_of
from ingest.api.metrics import counted
from ingest.api.state import IngestState, authenticate, state
from ingest.rebuild import rebuild_board

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


async def check_rate(st: IngestState, user_id: str) -> None:
    """Raises TooManyRequests (``rate_limited``) when the user's token bucket is empty."""
    script = st.redis.register_script(_TOKEN_BUCKET)
    wait_ms = int(
        await script(
            keys=[keys.rate_limit(user_id)], args=[st.settings.rate_limit_per_s, st.settings.rate_limit_burst]
        )
    )
    if wait_ms > 0:
        raise TooManyRequests(
            "too many score writes; slow down", code="rate_limited", retry_after_s=-(-wait_ms // 1000)
        )


async def check_block(st: IngestState, user_id: str) -> None:
    """Raises TemporarilyBlocked while an anomaly flag blocks ``user_id`` from scoring."""
    until_ms = await blocked_until(st.redis, user_id)
    if until_ms is not None:
        raise TemporarilyBlocked(
            f"{user_id} is blocked from scoring pending review", until=audit.iso(until_ms)
        )


async def enqueue(st: IngestState, action: ScoreAction) -> bool:
    """Queue ``action`` once. Returns False when its actionId was seen before.

    Raises TooManyRequests (``queue_full``) when the stream's backlog (entries not yet delivered
    or not yet acknowledged by the worker, as read at most ``queue_backlog_max_age_s`` ago) has
    reached ``queue_max_length``. Processed entries do not count (and the worker trims them).
    """
    if await st.backlog.of(keys.SCORE_STREAM) >= st.settings.queue_max_length:
        raise TooManyRequests("the score queue is full; retry later", code="queue_full", retry_after_s=5)
    guard = keys.action_guard(action.action_id)
    if not await st.redis.set(guard, "1", nx=True, ex=st.settings.action_guard_ttl_s):
        return False
    try:
        await st.redis.xadd(keys.SCORE_STREAM, {"d": json_encoder.encode(action)})
    except BaseException:
        await st.redis.delete(guard)  # not queued: a retry of the same actionId must go through
        raise
    return True


def action_for(
    claims: Claims,
    action_id: str,
    increment: int,
    *,
    course_id: str | None,
    source: str,
    request: Request | None = None,
) -> ScoreAction:
    """The stream entry of a score action; ``request`` gives the client's IP and user agent."""
    client = None
    if request is not None:
        st = state(request)
        client = client_of(
            request, st.trusted_proxies, max_agent_chars=st.settings.audit_user_agent_max_chars
        )
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


async def update(request: Request) -> Response:
    st = state(request)
    claims = authenticate(request)
    body = await decode_body(request, ScoreUpdateRequest, max_bytes=st.settings.max_body_bytes)
    if body.score_increment > st.settings.max_score_increment:
        raise BadRequest(
            f"scoreIncrement must be at most {st.settings.max_score_increment}", code="increment_too_large"
        )
    await check_block(st, claims.sub)
    await check_rate(st, claims.sub)
    action = action_for(
        claims,
        body.action_id,
        body.score_increment,
        course_id=body.course_id,
        source="score",
        request=request,
    )
    if not await enqueue(st, action):
        return JSONResponse(ScoreAccepted(status="duplicate", action_id=action.action_id), status_code=200)
    return JSONResponse(ScoreAccepted(status="queued", action_id=action.action_id), status_code=202)


# ---------------------------------------------------------------- reads
def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="bad_query") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", code="bad_query")
    return value


def board_param(request: Request) -> str:
    return resolve(request.query_params.get("board", "global"))


async def ensure_board(st: IngestState, board: str) -> bool:
    """Whether ``board`` exists in Redis, rebuilding it from MongoDB when only MongoDB has it."""
    if await st.boards.exists(board):
        return True
    if await st.mongo[store.SCORE_EVENTS].find_one({"boards": board}, {"_id": 1}) is None:
        return False
    await rebuild_board(st.boards, st.mongo, board, force=False)
    return True


async def hydrate(st: IngestState, rows: Sequence[Row]) -> list[LeaderboardEntry]:
    """Entries with names and avatars: one pipelined Redis read, MongoDB only for cache misses."""
    user_ids = [r.user_id for r in rows]
    profiles = await st.boards.profiles(user_ids)
    missing = [u for u in user_ids if u not in profiles]
    if missing:
        loaded = {
            doc["_id"]: Profile(name=doc.get("name") or doc["_id"], avatar_url=doc.get("avatarUrl"))
            async for doc in st.mongo[store.USERS].find({"_id": {"$in": missing}})
        }
        await st.boards.cache_profiles(loaded, ttl_s=st.settings.user_cache_ttl_s)
        profiles.update(loaded)
    entries = []
    for r in rows:
        p = profiles.get(r.user_id)
        entries.append(
            LeaderboardEntry(
                rank=r.rank,
                user_id=r.user_id,
                name=p.name if p else r.user_id,
                score=r.score,
                avatar_url=p.avatar_url if p else None,
            )
        )
    return entries


async def leaderboard(request: Request) -> Response:
    st = state(request)
    board = board_param(request)
    limit = int_param(request, "limit", 10, 1, 100)
    top = await st.boards.top(board, limit)
    if not top.exists and await ensure_board(st, board):
        top = await st.boards.top(board, limit)
    return JSONResponse(page_of(top, await hydrate(st, top.rows)))


def page_of(top: Top, entries: list[LeaderboardEntry]) -> LeaderboardPage:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return LeaderboardPage(board=top.board, version=top.version, updated_at=now, entries=entries)


async def rank(request: Request) -> Response:
    st = state(request)
    board = board_param(request)
    user_id = request.path_params["user_id"]
    await ensure_board(st, board)
    around = await st.boards.around(board, user_id, above=0, below=0)
    if around.self_row is None:
        raise NotFound(f"{user_id} is not ranked on {board}", code="not_ranked")
    row = around.self_row
    return JSONResponse(RankAnswer(board=board, user_id=user_id, rank=row.rank, score=row.score))


async def around_me(request: Request) -> Response:
    st = state(request)
    board = board_param(request)
    user_id = request.path_params["user_id"]
    window = int_param(request, "range", 5, 1, 50)
    await ensure_board(st, board)
    around = await st.boards.around(board, user_id, above=window, below=window)
    if around.self_row is None:
        raise NotFound(f"{user_id} is not ranked on {board}", code="not_ranked")
    entries = await hydrate(st, [*around.above, around.self_row, *around.below])
    mine = len(around.above)
    return JSONResponse(
        AroundAnswer(board=board, self=entries[mine], above=entries[:mine], below=entries[mine + 1 :])
    )


async def rebuild(request: Request) -> Response:
    st = state(request)
    authenticate(request, role="admin")
    board = resolve(request.path_params["board"])
    entry = RebuildRequest(board=board, force=True)
    await st.redis.xadd(keys.SCORE_STREAM, {"d": json_encoder.encode(entry)})
    return JSONResponse({"status": "queued", "board": board}, status_code=202)


routes: list[BaseRoute] = [
    Route("/api/v1/scores/update", counted("scores", update), methods=["POST"]),
    Route("/api/v1/scores/leaderboard", leaderboard, methods=["GET"]),
    Route("/api/v1/scores/rank/{user_id}", rank, methods=["GET"]),
    Route("/api/v1/scores/around/{user_id}", around_me, methods=["GET"]),
    Route("/api/v1/admin/boards/{board}/rebuild", rebuild, methods=["POST"]),
]
