"""Only boards that exist can be followed, a gateway follows a bounded number of them, missing
boards are asked of the worker sparingly on their own stream, and a subscribe while Redis is down
is answered in bounded time (real gateway processes, real Redis and MongoDB)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from contract import keys
from contract.auth import TokenIssuer
from contract.courses import COURSES
from contract.events import RebuildRequest, stream_entry_decoder
from devstack.processes import Stack
from devstack.servers import free_port, redis_server
from ingest import store
from tests.eventually import eventually
from tests.sse_client import sse
from tests.test_gateway_ws import recv, recv_type, ws_url

COURSE = {
    "_id": "py",
    "title": "Python",
    "sections": [{"sectionId": "s", "title": "S", "lectures": [
        {"lectureId": "a", "title": "A", "durationSeconds": 60, "marks": 1},
    ]}],
}  # fmt: skip
UNKNOWN = ["course:nope", "region:XX", "weekly:0001-W01", "monthly:0001-01", "weekly:2020-W10"]


@pytest.fixture
def token(issuer: TokenIssuer) -> str:
    return issuer.access_token(user_id="ada", name="Ada")


async def stream_status(stack: Stack, token: str, board: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        r = await http.get("/api/v1/leaderboard/stream", params={"board": board, "access_token": token})
        return r.status_code, r.json()


async def test_only_existing_boards_can_be_followed(stack: Stack, redis: Any, mongo: Any, token: str) -> None:
    await mongo[COURSES].insert_one(dict(COURSE))
    stack.start("gateway")
    for board in UNKNOWN:
        status, body = await stream_status(stack, token, board)
        assert (status, body["error"]["code"]) == (404, "unknown_board"), board
    status, body = await stream_status(stack, token, "course:a b")
    assert (status, body["error"]["code"]) == (400, "invalid_board")
    async with connect(ws_url(stack, token)) as ws:
        for board in UNKNOWN:
            await ws.send(json.dumps({"type": "subscribe", "board": board}))
            error = await recv(ws)
            assert (error["type"], error["code"]) == ("error", "unknown_board"), board
        await ws.send(json.dumps({"type": "subscribe", "board": "course:py"}))
        snapshot = await recv(ws)
        assert (snapshot["type"], snapshot["board"], snapshot["leaderboard"]) == (
            "leaderboard",
            "course:py",
            [],
        )
    async with sse(stack, token, board="region:eu") as reader:
        await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        assert reader.events[0]["data"]["board"] == "region:EU"
    # Nothing was created for the boards that do not exist: no keys, no rebuild requests.
    for board in UNKNOWN:
        assert await redis.keys(f"{{board:{board}}}*") == [], board
    asked = [stream_entry_decoder.decode(f["d"]) for _, f in await redis.xrange(keys.REBUILD_STREAM)]
    assert sorted(r.board for r in asked if isinstance(r, RebuildRequest)) == ["course:py", "region:EU"]
    assert not await redis.exists(keys.course_meta("a b"))


async def test_a_gateway_follows_a_bounded_number_of_boards(stack: Stack, redis: Any, token: str) -> None:
    stack.start("gateway", gateway_max_boards=2)
    async with connect(ws_url(stack, token)) as ws:
        for board in ("global", "weekly"):
            await ws.send(json.dumps({"type": "subscribe", "board": board}))
            assert (await recv_type(ws, "leaderboard"))["board"].startswith(board)
        await ws.send(json.dumps({"type": "subscribe", "board": "monthly"}))
        error = await recv_type(ws, "error")
        assert error["code"] == "board_limit"
        status, body = await stream_status(stack, token, "region:EU")
        assert (status, body["error"]["code"]) == (503, "board_limit")
        async with sse(stack, token, board="global") as reader:  # a followed board is still served
            await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        await ws.send(json.dumps({"type": "unsubscribe", "board": "weekly"}))
        await ws.send(json.dumps({"type": "subscribe", "board": "monthly"}))  # room again
        assert (await recv_type(ws, "leaderboard"))["board"].startswith("monthly:")


async def test_rebuild_requests_are_rate_limited_over_gateways_and_off_the_score_stream(
    stack: Stack, redis: Any, token: str
) -> None:
    other_port = free_port()
    stack.start("gateway", rebuild_request_interval_s=60.0)
    stack.start("gateway", rebuild_request_interval_s=60.0, gateway_port=other_port)
    urls = [
        ws_url(stack, token),
        ws_url(stack, token).replace(str(stack.settings.gateway_port), str(other_port)),
    ]
    for _ in range(3):  # each round creates the board (and its loop) anew on both gateways
        for url in urls:
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "subscribe", "board": "global"}))
                assert (await recv(ws))["leaderboard"] == []
    asked = await redis.xrange(keys.REBUILD_STREAM)
    assert [stream_entry_decoder.decode(f["d"]) for _, f in asked] == [RebuildRequest(board="global")]
    assert await redis.xlen(keys.SCORE_STREAM) == 0  # the write queue's budget is untouched


async def test_the_worker_rebuilds_a_board_a_gateway_asked_for(
    stack: Stack, redis: Any, mongo: Any, token: str
) -> None:
    await mongo[store.BOARD_TOTALS].insert_one(
        {"_id": store.total_id("region:NA", "bo"), "board": "region:NA", "userId": "bo", "score": 7, "seq": 1}
    )
    stack.start("ingest.worker")
    stack.start("gateway")
    async with sse(stack, token, board="region:NA") as reader:

        async def scores() -> list[Any]:
            latest = reader.latest()
            return latest["leaderboard"] if latest else []

        rows = await eventually(scores, until=bool)
        assert [(r["userId"], r["score"]) for r in rows] == [("bo", 7)]


async def test_a_subscribe_while_redis_is_down_is_answered_and_the_connection_serves_on(
    stack: Stack, token: str, tmp_path: Path
) -> None:
    own = redis_server(free_port(), tmp_path / "own-redis").start()  # ours to kill
    try:
        stack.start("gateway", redis_url=own.url, subscribe_timeout_s=2.0)
        async with connect(ws_url(stack, token)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "board": "global"}))
            assert (await recv(ws))["type"] == "leaderboard"
            own.stop()
            await ws.send(json.dumps({"type": "subscribe", "board": "weekly"}))
            await ws.send(json.dumps({"type": "ping"}))
            # The subscribe waits beside the read loop: the ping is answered first.
            assert await asyncio.wait_for(recv(ws), 10) == {"type": "pong"}
            error = await asyncio.wait_for(recv(ws), 30)
            assert (error["type"], error["code"]) == ("error", "unavailable")
            await ws.send(json.dumps({"type": "ping"}))
            assert await asyncio.wait_for(recv(ws), 10) == {"type": "pong"}
        status, body = await stream_status(stack, token, "monthly")
        assert (status, body["error"]["code"]) == (503, "unavailable")
    finally:
        own.stop()
