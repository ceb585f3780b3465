"""Leaderboard reads: top N, a user's rank, the rows around a user.

The functions below are the service layer of REST and GraphQL alike (``ingest.api.graph``): the
handlers only parse parameters and encode answers. Reads answer from the Redis board; a board
whose keys are gone is rebuilt from MongoDB before answering, except a closed period whose keys
expired after the rollover archived it (``ingest.seasons``): that one answers from its archive
(:func:`archived`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.boards import resolve
from contract.bodies import AroundAnswer, LeaderboardEntry, LeaderboardPage, RankAnswer
from contract.errors import BadRequest, NotFound
from contract.http import JSONResponse
from contract.seasons import period_end
from ingest import store
from ingest.api.state import IngestState, state
from ingest.rebuild import rebuild_board
from store import archive
from store.archive import Archived
from store.board_results import Around, Profile, Row, Top

LIMIT_DEFAULT, LIMIT_MAX = 10, 100
RANGE_DEFAULT, RANGE_MAX = 5, 50


def bounded(name: str, value: int, low: int, high: int) -> int:
    """``value`` when ``low <= value <= high``. Raises BadRequest (``bad_query``)."""
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", code="bad_query")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="bad_query") from None
    return bounded(name, value, low, high)


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


async def load_profiles(st: IngestState, user_ids: Sequence[str]) -> dict[str, Profile]:
    """Names and avatars of ``user_ids``: one pipelined Redis read, MongoDB only for cache misses
    (which are cached again). A user found nowhere is absent from the answer."""
    profiles = await st.boards.profiles(user_ids)
    missing = [u for u in user_ids if u not in profiles]
    if missing:
        loaded = {
            doc["_id"]: Profile(
                name=doc.get("name") or doc["_id"], avatar_url=doc.get("avatarUrl"), region=doc.get("region")
            )
            async for doc in st.mongo[store.USERS].find({"_id": {"$in": missing}})
        }
        await st.boards.cache_profiles(loaded, ttl_s=st.settings.user_cache_ttl_s)
        profiles.update(loaded)
    return profiles


def entry_of(row: Row, profile: Profile | None) -> LeaderboardEntry:
    """A board row as shown: a user without a known profile shows their id and no avatar."""
    return LeaderboardEntry(
        rank=row.rank,
        user_id=row.user_id,
        name=profile.name if profile else row.user_id,
        score=row.score,
        avatar_url=profile.avatar_url if profile else None,
    )


async def hydrate(st: IngestState, rows: Sequence[Row]) -> list[LeaderboardEntry]:
    """Entries with names and avatars (:func:`load_profiles`, one batch for all rows)."""
    profiles = await load_profiles(st, [r.user_id for r in rows])
    return [entry_of(r, profiles.get(r.user_id)) for r in rows]


async def top_of(st: IngestState, board: str, limit: int) -> Top | LeaderboardPage:
    """The first ``limit`` rows of ``board`` (a canonical name), rebuilt from MongoDB first when
    only MongoDB has the board; a board nobody scored on answers no rows. A closed period whose
    keys expired answers its archived page instead (names and avatars as at the close)."""
    top = await st.boards.top(board, limit)
    if not top.exists:
        final = await archive.find(st.mongo, board)
        if final is not None:
            return final.page(limit)
        if await ensure_board(st, board):
            top = await st.boards.top(board, limit)
    return top


async def leaderboard(request: Request) -> Response:
    st = state(request)
    board = board_param(request)
    limit = int_param(request, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    found = await top_of(st, board, limit)
    if isinstance(found, LeaderboardPage):
        return JSONResponse(found)
    return JSONResponse(page_of(found, await hydrate(st, found.rows)))


def page_of(top: Top, entries: list[LeaderboardEntry]) -> LeaderboardPage:
    return LeaderboardPage(board=top.board, version=top.version, updated_at=now_iso(), entries=entries)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def archived(st: IngestState, board: str) -> Archived | None:
    """The archive of ``board`` when Redis no longer has the board (a closed period whose keys
    expired); None for every other board, which is read from Redis."""
    if period_end(board) is None or await st.boards.exists(board):
        return None
    return await archive.find(st.mongo, board)


async def beyond_archive(st: IngestState, final: Archived, user_id: str) -> NotFound:
    """The answer for a user not in ``final``'s archived entries: ``beyond_archive`` when the
    board ranked them below those, else ``not_ranked``."""
    total = await st.mongo[store.BOARD_TOTALS].find_one({"_id": store.total_id(final.board, user_id)})
    if total is None:
        return NotFound(f"{user_id} is not ranked on {final.board}", code="not_ranked")
    return NotFound(
        f"{final.board} is closed and its archive keeps its top {len(final.entries)} of "
        f"{final.ranked_users} ranked users; {user_id} (final score {int(total['score'])}) is below them",
        code="beyond_archive",
    )


async def archived_around(st: IngestState, final: Archived, user_id: str, window: int) -> AroundAnswer:
    """``user_id``'s archived entry with ``window`` entries either side.

    Raises NotFound: ``beyond_archive`` (ranked below the archived entries) or ``not_ranked``.
    """
    if final.position(user_id) is None:
        raise await beyond_archive(st, final, user_id)
    return final.around(user_id, window)


async def around_of(st: IngestState, board: str, user_id: str, window: int) -> Around | AroundAnswer:
    """``user_id``'s row on ``board`` with ``window`` rows either side: the live rows, or for a
    closed period whose keys expired its archived entries (with names and avatars).

    Raises NotFound: ``not_ranked`` (no score there) or ``beyond_archive``.
    """
    final = await archived(st, board)
    if final is not None:
        return await archived_around(st, final, user_id, window)
    await ensure_board(st, board)
    around = await st.boards.around(board, user_id, above=window, below=window)
    if around.self_row is None:
        raise NotFound(f"{user_id} is not ranked on {board}", code="not_ranked")
    return around


async def rank_of(st: IngestState, board: str, user_id: str) -> RankAnswer:
    """Raises NotFound (``not_ranked``, ``beyond_archive``) as :func:`around_of`."""
    found = await around_of(st, board, user_id, 0)
    mine = found.self if isinstance(found, AroundAnswer) else found.self_row
    assert mine is not None  # around_of refuses an unranked user
    return RankAnswer(board=board, user_id=user_id, rank=mine.rank, score=mine.score)


async def rank(request: Request) -> Response:
    st = state(request)
    board = board_param(request)
    return JSONResponse(await rank_of(st, board, request.path_params["user_id"]))


async def around_me(request: Request) -> Response:
    st = state(request)
    board = board_param(request)
    user_id = request.path_params["user_id"]
    window = int_param(request, "range", RANGE_DEFAULT, 1, RANGE_MAX)
    found = await around_of(st, board, user_id, window)
    if isinstance(found, AroundAnswer):
        return JSONResponse(found)
    assert found.self_row is not None
    entries = await hydrate(st, [*found.above, found.self_row, *found.below])
    mine = len(found.above)
    return JSONResponse(
        AroundAnswer(board=board, self=entries[mine], above=entries[:mine], below=entries[mine + 1 :])
    )


routes: list[BaseRoute] = [
    Route("/api/v1/scores/leaderboard", leaderboard, methods=["GET"]),
    Route("/api/v1/scores/rank/{user_id}", rank, methods=["GET"]),
    Route("/api/v1/scores/around/{user_id}", around_me, methods=["GET"]),
]
