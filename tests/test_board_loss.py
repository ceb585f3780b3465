"""A board whose ranking Redis lost is rebuilt from MongoDB everywhere it is read or written; a
board that is merely empty is not lost (issue #8, defect 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from contract import keys
from contract.auth import TokenIssuer
from contract.errors import Unavailable
from devstack.processes import Stack
from ingest.rebuild import rebuild_board
from store.board_results import APPLIED, MISSING
from store.boards import BoardStore
from tests.eventually import eventually
from tests.helpers import both_redis, login, scorer_token
from tests.sse_client import SseReader, sse
from tests.test_worker import board, post


@both_redis
async def test_an_empty_board_exists_and_a_lost_ranking_does_not(redis: Any, mongo: Any) -> None:
    boards = BoardStore(redis)
    k = keys.board_keys("course:none")
    version = await rebuild_board(boards, mongo, "course:none", force=False)  # MongoDB has nothing
    assert version > 0
    assert await boards.exists("course:none")
    assert (await boards.top("course:none", 10)).exists
    assert (await boards.around("course:none", "ada", above=1, below=1)).exists
    assert await rebuild_board(boards, mongo, "course:none", force=False) == 0  # not lost: left alone

    [first] = await boards.apply_many([("course:none", "a1", "ada", 5)])
    assert first.status == APPLIED
    for lost in ([k.zset], [k.members], [k.zset, k.members]):
        await boards.apply_many([("course:none", f"a-{len(lost)}-{lost[0]}", "bob", 1)])
        assert await boards.exists("course:none")
        await redis.delete(*lost)
        assert not await boards.exists("course:none"), lost
        assert not (await boards.top("course:none", 10)).exists
        assert not (await boards.around("course:none", "ada", above=1, below=1)).exists
        [step] = await boards.apply_many([("course:none", "a2", "ada", 5)])
        assert step.status == MISSING
        await rebuild_board(boards, mongo, "course:none", force=False)  # MongoDB still has nothing
        assert await boards.exists("course:none")
        assert (await boards.top("course:none", 10)).rows == []


async def rank_of(http: httpx.AsyncClient, user: str) -> tuple[int, int]:
    r = await http.get(f"/api/v1/scores/rank/{user}")
    assert r.status_code == 200, r.text
    return r.json()["rank"], r.json()["score"]


def standings(reader: SseReader) -> list[tuple[str, int]]:
    latest = reader.latest()
    return [(e["userId"], e["score"]) for e in latest["leaderboard"]] if latest else []


@pytest.mark.parametrize("lost", ["zset", "zset and members"])
async def test_a_lost_ranking_is_rebuilt_for_reads_ranks_subscribers_and_writes(
    stack: Stack, issuer: TokenIssuer, redis: Any, lost: str
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    stack.start("gateway")
    k = keys.board_keys("global")
    gone = [k.zset, k.members] if lost == "zset and members" else [k.zset]
    tokens = {user: issuer.access_token(user_id=user, name=user.upper()) for user in ("a", "b", "c")}
    scorer = scorer_token(issuer)
    want = [("c", 30), ("b", 20), ("a", 10)]
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        for user in tokens:
            await login(http, user, user.upper())
        for user, score in reversed(want):
            await post(http, scorer, user, score)
        await eventually(lambda: board(http), until=lambda got: got == want, timeout_s=60)  # worker start

        await redis.delete(*gone)
        assert await board(http) == want  # the read rebuilt it
        await redis.delete(*gone)
        assert await rank_of(http, "b") == (2, 20)

        await redis.delete(*gone)
        async with sse(stack, tokens["a"]) as fresh:  # a gateway meeting the board for the first time
            await eventually(lambda: asyncio.sleep(0, standings(fresh)), until=lambda got: got == want)

        async with sse(stack, tokens["a"]) as watching:
            await eventually(lambda: asyncio.sleep(0, standings(watching)), until=lambda got: got == want)
            await redis.delete(*gone)
            await post(http, scorer, "a", 25)  # the worker meets the lost ranking
            after = [("a", 35), ("c", 30), ("b", 20)]
            await eventually(lambda: asyncio.sleep(0, standings(watching)), until=lambda got: got == after)
            assert await board(http) == after


async def test_an_empty_board_asks_for_no_rebuild(
    stack: Stack, issuer: TokenIssuer, redis: Any, mongo: Any
) -> None:
    version = await rebuild_board(BoardStore(redis), mongo, "region:EU", force=False)
    stack.start("gateway")
    async with sse(stack, issuer.access_token(user_id="v", name="V"), board="region:EU") as reader:
        await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        assert (reader.events[0]["data"]["version"], reader.events[0]["data"]["leaderboard"]) == (version, [])
        # The gateway reads the board before it sends the snapshot, and asks before it reads on.
        assert await redis.xlen(keys.SCORE_STREAM) == 0


class FlushedWhileStaging(BoardStore):
    """A BoardStore whose staged rows vanish before the commit, as after a FLUSHALL or a Redis
    restart without persistence between the two steps of a rebuild."""

    async def _stage(self, staging: tuple[str, str], chunk: list[tuple[str, int, int]]) -> None:
        await super()._stage(staging, chunk)
        await self.redis.delete(*staging)


@both_redis
async def test_a_rebuild_whose_staged_rows_were_lost_commits_nothing(redis: Any) -> None:
    """It committed an empty board and set the guards of the actions it counted, so those
    actions' points were lost for good (found by the audit log of a flaky worker test)."""
    boards = FlushedWhileStaging(redis)
    with pytest.raises(Unavailable):
        await boards.stage_and_commit(
            "global", [("ada", 10, 1)], version=5, force=False, counted=[("ada|a1", 10)]
        )
    assert not await boards.exists("global")
    assert await redis.exists(keys.board_keys("global").guard("ada|a1")) == 0
    # With nothing to stage, an empty board is still committed (it exists, empty).
    assert await boards.stage_and_commit("global", [], version=6, force=False) == 6
    assert await boards.exists("global")
