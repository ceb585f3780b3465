"""A viewer of ``weekly`` is moved to the new week when the gateway's clock passes the end of the
old one, with a fresh snapshot, over SSE and WebSocket; a viewer of a named week stays on it; a
new viewer of a named closed week whose keys expired gets its archived final top 10.

The gateway runs in-process (uvicorn on a free port) so the test can hold its clock; Redis and
MongoDB are the real servers, the scores come from the real worker code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import uvicorn
from websockets.asyncio.client import connect

from contract import keys
from contract.auth import TokenIssuer
from contract.events import BoardEvent, ScoreAction
from contract.settings import Settings
from contract.wire import json_encoder
from devstack.processes import Stack
from devstack.servers import free_port
from gateway.app import create_app
from ingest import store
from ingest.seasons import Seasons
from ingest.worker import ScoreWorker
from store.archive import BOARD_ARCHIVE
from tests.eventually import eventually
from tests.sse_client import SseReader, sse
from tests.test_gateway_ws import recv_type, ws_url

OLD, NEW = "weekly:2026-W47", "weekly:2026-W48"
SUNDAY = dt.datetime(2026, 11, 22, 23, 59, 50, tzinfo=dt.UTC)
MONDAY = dt.datetime(2026, 11, 23, 0, 0, 5, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@contextlib.asynccontextmanager
async def gateway(settings: Settings, clock: Clock) -> AsyncIterator[Stack]:
    """The gateway app served in this event loop; what the SSE/WS helpers need of a Stack."""
    port = free_port()
    app = create_app(settings, now=clock)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_config=None,
        log_level=None,  # the process-wide logging stays as the other tests expect
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: asyncio.sleep(0, server.started), timeout_s=30)
        yield cast(Stack, types.SimpleNamespace(gateway_url=f"http://127.0.0.1:{port}", app=app))
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def scored(user: str, points: int, when: dt.datetime) -> ScoreAction:
    return ScoreAction(
        action_id=str(uuid.uuid4()), user_id=user, name=user.title(), increment=points,
        ts_ms=int(when.timestamp() * 1000),
    )  # fmt: skip


def boards_seen(reader: SseReader) -> list[tuple[str, str]]:
    """The board frames the reader got (its own ``rank`` events left out)."""
    return [(e["event"], e["data"]["board"]) for e in reader.events if e["event"] in ("snapshot", "update")]


async def test_a_viewer_of_weekly_moves_to_the_new_week_with_a_snapshot(
    settings: Settings, redis: Any, mongo: Any, issuer: TokenIssuer
) -> None:
    settings = settings.replace(broadcast_interval_s=0.1)
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.apply([scored("ada", 30, SUNDAY), scored("bob", 20, SUNDAY)])
    await worker.apply([scored("cyd", 7, MONDAY)])  # the first score of the new week
    token = issuer.access_token(user_id="viewer", name="Viewer")
    clock = Clock(SUNDAY)
    async with (
        gateway(settings, clock) as gw,
        sse(gw, token, board="weekly") as alias_sse,
        sse(gw, token, board=OLD) as named_sse,
        connect(ws_url(gw, token)) as ws,
    ):
        await ws.send(json.dumps({"type": "subscribe", "board": "weekly"}))
        first = await recv_type(ws, "leaderboard")
        assert (first["board"], [e["userId"] for e in first["leaderboard"]]) == (OLD, ["ada", "bob"])
        await eventually(lambda: asyncio.sleep(0, alias_sse.events), until=bool)
        await eventually(lambda: asyncio.sleep(0, named_sse.events), until=bool)
        assert boards_seen(alias_sse) == [("snapshot", OLD)]

        clock.now = MONDAY
        moved = await asyncio.wait_for(recv_type(ws, "leaderboard"), 15)
        assert (moved["board"], [e["userId"] for e in moved["leaderboard"]]) == (NEW, ["cyd"])
        await eventually(lambda: asyncio.sleep(0, boards_seen(alias_sse)), until=lambda s: len(s) == 2)
        assert boards_seen(alias_sse) == [("snapshot", OLD), ("snapshot", NEW)]
        moved_sse = [e for e in alias_sse.events if e["event"] == "snapshot"][1]
        assert [e["userId"] for e in moved_sse["data"]["leaderboard"]] == ["cyd"]
        assert moved_sse["id"] == str(moved_sse["data"]["version"])

        # The moved viewers follow the new week only; the viewer of the named week stays on it.
        await worker.apply([scored("dan", 50, MONDAY)])
        await worker.apply([scored("eve", 90, SUNDAY)])  # a late action of the old week
        update = await asyncio.wait_for(recv_type(ws, "leaderboard"), 15)
        assert (update["board"], [e["userId"] for e in update["leaderboard"]]) == (NEW, ["dan", "cyd"])
        await eventually(lambda: asyncio.sleep(0, boards_seen(alias_sse)), until=lambda s: len(s) == 3)
        assert boards_seen(alias_sse)[2] == ("update", NEW)
        await eventually(lambda: asyncio.sleep(0, boards_seen(named_sse)), until=lambda s: len(s) == 2)
        assert boards_seen(named_sse) == [("snapshot", OLD), ("update", OLD)]
        named_update = next(e for e in named_sse.events if e["event"] == "update")
        assert [e["userId"] for e in named_update["data"]["leaderboard"]] == ["eve", "ada", "bob"]
        await ws.send(json.dumps({"type": "unsubscribe", "board": "weekly"}))
        assert await recv_type(ws, "unsubscribed") == {"type": "unsubscribed", "board": NEW}
    assert boards_seen(alias_sse) == [("snapshot", OLD), ("snapshot", NEW), ("update", NEW)]


def rows(entries: list[dict[str, Any]]) -> list[tuple[int, str, str, int]]:
    return [(e["rank"], e["userId"], e["name"], e["score"]) for e in entries]


async def test_a_new_viewer_of_a_closed_week_whose_keys_expired_gets_its_archived_top_10(
    settings: Settings, redis: Any, mongo: Any, issuer: TokenIssuer
) -> None:
    settings = settings.replace(broadcast_interval_s=0.1, season_retention_s=3600, archive_miss_ttl_s=3600)
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    await worker.apply([scored(f"u{u:02d}", 100 - u, SUNDAY) for u in range(12)])
    later = MONDAY + dt.timedelta(hours=1)
    seasons = Seasons(redis=redis, db=mongo, settings=settings, now=lambda: later)
    assert await seasons.roll() == [OLD]
    final = await mongo[BOARD_ARCHIVE].find_one({"_id": OLD})
    top10 = [(u + 1, f"u{u:02d}", f"U{u:02d}", 100 - u) for u in range(10)]
    token = issuer.access_token(user_id="viewer", name="Viewer")
    other = issuer.access_token(user_id="u03", name="U03")
    async with gateway(settings, Clock(later)) as gw:
        archives = gw.app.state.gateway.hub.archives  # type: ignore[attr-defined]
        # Frozen, before the expiry: the live board answers, MongoDB is not asked.
        async with sse(gw, token, board=OLD) as frozen:
            await eventually(lambda: asyncio.sleep(0, frozen.events), until=bool)
        assert rows(frozen.events[0]["data"]["leaderboard"]) == top10
        assert archives.reads == 0

        # The keys expired (season_retention_s): new viewers get the archive, over both transports.
        await redis.delete(*(await redis.keys(f"{{board:{OLD}}}*")))
        async with (
            sse(gw, token, board=OLD) as viewer,
            connect(ws_url(gw, other)) as ws,
        ):
            await ws.send(json.dumps({"type": "subscribe", "board": OLD}))
            snapshot = await recv_type(ws, "leaderboard")
            assert (snapshot["board"], snapshot["version"]) == (OLD, final["version"])
            assert rows(snapshot["leaderboard"]) == top10
            assert snapshot["timestamp"] == "2026-11-23T01:00:05.000Z"  # when it was rolled over
            await eventually(lambda: asyncio.sleep(0, viewer.events), until=bool)
            event = viewer.events[0]
            assert (event["event"], event["id"]) == ("snapshot", str(final["version"]))
            assert rows(event["data"]["leaderboard"]) == top10
            assert event["data"]["version"] == frozen.events[0]["data"]["version"]

            # Closed: no frame of it afterwards, whatever comes (a late action, which counts on
            # the global board; a stray board event on its channel).
            await ws.send(json.dumps({"type": "subscribe", "board": "global"}))
            assert (await recv_type(ws, "leaderboard"))["board"] == "global"
            stray = json_encoder.encode(BoardEvent(board=OLD, version=1))
            await redis.publish(keys.board_channel(OLD), stray)
            await worker.apply([scored("u11", 500, SUNDAY)])
            update = await asyncio.wait_for(recv_type(ws, "leaderboard"), 15)
            assert (update["board"], update["leaderboard"][0]["userId"]) == ("global", "u11")
            assert [e["event"] for e in viewer.events] == ["snapshot"]
            assert await redis.keys(f"{{board:{OLD}}}*") == []

        # One MongoDB read per gateway process: later viewers are served from the cache.
        assert archives.reads == 1
        async with connect(ws_url(gw, token)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "board": OLD}))
            assert rows((await recv_type(ws, "leaderboard"))["leaderboard"]) == top10
            # Made-up periods do not reach MongoDB: too old is refused by name; a past week
            # nobody scored in is an empty board, looked up once per archive_miss_ttl_s.
            await ws.send(json.dumps({"type": "subscribe", "board": "weekly:2026-W30"}))
            assert (await recv_type(ws, "error"))["code"] == "unknown_board"
            for _ in range(3):
                await ws.send(json.dumps({"type": "subscribe", "board": "weekly:2026-W40"}))
                empty = await recv_type(ws, "leaderboard")
                assert (empty["board"], empty["leaderboard"]) == ("weekly:2026-W40", [])
                await ws.send(json.dumps({"type": "unsubscribe", "board": "weekly:2026-W40"}))
                await recv_type(ws, "unsubscribed")
        assert archives.reads == 2
