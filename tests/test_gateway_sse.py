"""The gateway's SSE stream on a real gateway process, with boards written straight to Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from contract import keys
from contract.auth import TokenIssuer
from contract.events import BoardEvent, RebuildRequest, stream_entry_decoder
from contract.settings import Settings
from contract.wire import json_encoder
from devstack.processes import Stack
from store.boards import BoardStore
from tests.eventually import eventually
from tests.helpers import metric_value
from tests.sse_client import SseReader, sse


async def make_board(redis: Any, name: str = "global", scores: dict[str, int] | None = None) -> BoardStore:
    store = BoardStore(redis)
    await store.stage_and_commit(name, [], version=1, force=True)
    await apply(store, name, scores or {})
    return store


async def apply(store: BoardStore, board: str, scores: dict[str, int]) -> int:
    """Add scores to ``board`` without publishing; returns the board's new version."""
    results = await store.apply_many((board, str(uuid.uuid4()), user, inc) for user, inc in scores.items())
    return max((r.seq for r in results), default=int(await store.redis.get(keys.board_keys(board).version)))


async def publish(redis: Any, board: str, version: int) -> None:
    await redis.publish(
        keys.board_channel(board), json_encoder.encode(BoardEvent(board=board, version=version))
    )


def scores_of(reader: SseReader) -> dict[str, int]:
    latest = reader.latest()
    return {e["userId"]: e["score"] for e in latest["leaderboard"]} if latest else {}


async def wait_for(reader: SseReader, want: dict[str, int], timeout_s: float = 10.0) -> dict[str, int]:
    async def probe() -> dict[str, int]:
        return scores_of(reader)

    return await eventually(probe, until=lambda got: got == want, timeout_s=timeout_s)


@pytest.fixture
def viewer(issuer: TokenIssuer) -> str:
    return issuer.access_token(user_id="viewer", name="Viewer")


async def test_snapshot_at_once_then_updates(stack: Stack, redis: Any, viewer: str) -> None:
    store = await make_board(redis, scores={"ada": 5, "bo": 3})
    await redis.hset(keys.user_profile("ada"), mapping={"name": "Ada L."})
    stack.start("gateway")
    async with sse(stack, viewer) as reader:
        await wait_for(reader, {"ada": 5, "bo": 3})
        assert reader.retry == stack.settings.sse_retry_ms
        first = reader.events[0]
        assert first["event"] == "snapshot"
        assert int(first["id"]) == first["data"]["version"]
        assert first["data"]["leaderboard"][0] == {"rank": 1, "userId": "ada", "name": "Ada L.", "score": 5}
        assert first["data"]["leaderboard"][1]["name"] == "bo"  # no profile cached: the id stands in
        version = await apply(store, "global", {"bo": 10})
        await publish(redis, "global", version)
        await wait_for(reader, {"bo": 13, "ada": 5})
        assert reader.events[-1]["event"] == "update"
        assert int(reader.events[-1]["id"]) == version


async def test_tokens_in_query_and_cookie_and_errors(stack: Stack, redis: Any, viewer: str) -> None:
    await make_board(redis)
    stack.start("gateway")
    url = "/api/v1/leaderboard/stream"
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=httpx.Timeout(5, read=None)) as client:
        r = await client.get(url)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        r = await client.get(url, headers={"authorization": "Bearer nope"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")
        for code in ("unauthorized", "invalid_token"):
            series = f'scorecast_gateway_auth_failures_total{{code="{code}",transport="sse"}}'
            assert await metric_value(stack, series) == 1
        r = await client.get(url, params={"board": "nonsense", "access_token": viewer})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_board")
        async with client.stream("GET", url, params={"access_token": viewer}) as response:
            assert response.status_code == 200
        client.cookies.set("scorecast_token", viewer)
        async with client.stream("GET", url) as response:
            assert response.status_code == 200


async def test_a_client_that_leaves_is_forgotten_and_other_methods_get_405(
    stack: Stack, redis: Any, viewer: str
) -> None:
    await make_board(redis, scores={"ada": 1})
    stack.start("gateway")
    gauge = 'scorecast_gateway_connections{transport="sse"} '
    async with httpx.AsyncClient(base_url=stack.gateway_url) as client:

        async def open_streams() -> float:
            metrics = (await client.get("/metrics")).text
            return float(metrics.split(gauge)[1].split()[0])

        async with sse(stack, viewer) as reader:
            await wait_for(reader, {"ada": 1})
            assert await open_streams() == 1.0
        # The stream writes straight to its socket and has no task reading ASGI messages: the
        # hub's sweep notices the closed socket and ends it.
        await eventually(open_streams, until=lambda n: n == 0.0)
        r = await client.post("/api/v1/leaderboard/stream", params={"access_token": viewer})
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_last_event_id_of_the_current_version_skips_the_snapshot(
    stack: Stack, redis: Any, viewer: str
) -> None:
    store = await make_board(redis, scores={"ada": 1})
    current = int(await redis.get(keys.board_keys("global").version))
    stack.start("gateway")
    async with sse(stack, viewer, headers={"last-event-id": str(current)}) as reader:
        await eventually(lambda: asyncio.sleep(0, reader.retry), until=lambda r: r is not None)
        version = await apply(store, "global", {"ada": 1})
        await publish(redis, "global", version)
        await wait_for(reader, {"ada": 2})
        assert [e["event"] for e in reader.events] == ["update"]
    async with sse(stack, viewer, headers={"last-event-id": str(current)}) as stale:
        await wait_for(stale, {"ada": 2})
        assert stale.events[0]["event"] == "snapshot"


async def test_a_missed_event_is_caught_up_by_the_next_one(stack: Stack, redis: Any, viewer: str) -> None:
    store = await make_board(redis, scores={"ada": 1})
    stack.start("gateway")
    async with sse(stack, viewer) as reader:
        await wait_for(reader, {"ada": 1})
        await apply(store, "global", {"bo": 50})  # its event is lost
        version = await apply(store, "global", {"cy": 2})
        await publish(redis, "global", version)
        await wait_for(reader, {"ada": 1, "bo": 50, "cy": 2})


async def test_a_change_with_no_event_at_all_is_found_by_the_version_check(
    stack: Stack, redis: Any, viewer: str
) -> None:
    store = await make_board(redis, scores={"ada": 1})
    stack.start("gateway", heartbeat_interval_s=0.3)
    async with sse(stack, viewer) as reader:
        await wait_for(reader, {"ada": 1})
        await apply(store, "global", {"bo": 9})
        await wait_for(reader, {"ada": 1, "bo": 9})
        await eventually(lambda: asyncio.sleep(0, reader.pings), until=lambda n: n >= 1)


async def test_pubsub_connection_killed_resubscribes_and_rereads(
    stack: Stack, redis: Any, viewer: str
) -> None:
    store = await make_board(redis, scores={"ada": 1})
    stack.start("gateway")  # heartbeat 15 s: the catch-up below comes from the reconnect
    async with sse(stack, viewer) as reader:
        await wait_for(reader, {"ada": 1})
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        await apply(store, "global", {"bo": 4})  # changed while the gateway was not listening
        await wait_for(reader, {"ada": 1, "bo": 4})
        # Subscribed again: a published event gets through.
        version = await apply(store, "global", {"cy": 7})
        await publish(redis, "global", version)
        await wait_for(reader, {"ada": 1, "bo": 4, "cy": 7})


async def test_a_missing_board_asks_the_worker_for_a_rebuild(stack: Stack, redis: Any, viewer: str) -> None:
    stack.start("gateway")
    async with sse(stack, viewer, board="region:EU") as reader:
        await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        assert reader.events[0]["data"]["leaderboard"] == []
        entries = await eventually(lambda: redis.xrange(keys.REBUILD_STREAM), until=bool)
    request = stream_entry_decoder.decode(entries[0][1]["d"])
    assert request == RebuildRequest(board="region:EU")
    assert await redis.xlen(keys.SCORE_STREAM) == 0  # not on the write queue


async def test_a_stream_ends_with_reconnect_when_its_token_expires(
    stack: Stack, redis: Any, settings: Settings
) -> None:
    await make_board(redis, scores={"ada": 2})
    stack.start("gateway")
    short = TokenIssuer(settings.replace(access_token_ttl_s=2)).access_token(user_id="viewer", name="V")
    async with sse(stack, short) as reader:
        await wait_for(reader, {"ada": 2})
        await eventually(lambda: asyncio.sleep(0, reader.ended), timeout_s=20)
    assert [e["event"] for e in reader.events] == ["snapshot", "reconnect"]
    assert reader.events[-1]["data"] == {"afterMs": 0}  # at once: the client has a fresh token


async def test_a_request_pipelined_behind_a_stream_is_answered_when_the_stream_ends(
    stack: Stack, redis: Any, settings: Settings
) -> None:
    # uvicorn queues a request that arrives while a response is still streaming; on the fast path
    # that queue of an SSE connection is slimmed (gateway.fastpath.slim) and must still work.
    await make_board(redis, scores={"ada": 2})
    stack.start("gateway")
    short = TokenIssuer(settings.replace(access_token_ttl_s=2)).access_token(user_id="viewer", name="V")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.gateway_port)
    writer.write(f"GET /api/v1/leaderboard/stream?access_token={short} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    got = b""
    async with asyncio.timeout(30):
        while b"event: snapshot" not in got:
            chunk = await reader.read(65536)
            assert chunk, got
            got += chunk
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # while the stream is open
        while b'{"status":"ok"}' not in got:
            chunk = await reader.read(65536)
            assert chunk, got
            got += chunk
    writer.close()
    stream, _, health = got.partition(b"event: reconnect")
    assert b"event: snapshot" in stream and b'"ada"' in stream
    assert b"HTTP/1.1 200" in health  # after the stream's last chunk, the queued request's answer
