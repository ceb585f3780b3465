"""Each viewer's own ``rank`` event on real processes: ingest API → worker → Redis → Pub/Sub →
gateway → an SSE stream and a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from contract.auth import TokenIssuer
from devstack.processes import Stack
from tests.eventually import eventually
from tests.helpers import login, score, scorer_token
from tests.sse_client import sse
from tests.test_gateway_ws import ws_url

OTHERS = [f"u{i:02d}" for i in range(12)]  # u00 .. u11 score 100, 110, ..., 210


class Feed:
    """Everything one connection received, as (kind, data) in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def ranks(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k != "type"} for kind, d in self.items if kind == "rank"]

    def board_versions(self) -> list[int]:
        return [d["version"] for kind, d in self.items if kind in ("snapshot", "update", "leaderboard")]


@contextlib.asynccontextmanager
async def feed(stack: Stack, token: str, transport: str) -> AsyncIterator[Feed]:
    out = Feed()
    if transport == "sse":
        async with sse(stack, token) as reader:
            # The reader keeps its own lists; mirror them as (event, data) pairs.
            async def mirror() -> None:
                while True:
                    out.items[:] = [(e["event"], e["data"]) for e in reader.events + reader.ranks]
                    await asyncio.sleep(0.02)

            task = asyncio.create_task(mirror())
            try:
                yield out
            finally:
                task.cancel()
        return
    async with connect(ws_url(stack, token)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "board": "global"}))

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                out.items.append((message["type"], message))

        task = asyncio.create_task(read())
        try:
            yield out
        finally:
            task.cancel()


def place(rank: int | None, score: int | None, gap: int | None) -> dict[str, Any]:
    return {"board": "global", "rank": rank, "score": score, "gapToNext": gap}


def without_version(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "version"} for e in events]


async def lookups(http: httpx.AsyncClient) -> int:
    text = (await http.get("/metrics")).text
    found = re.search(r"^scorecast_gateway_rank_lookups_total (\S+)$", text, re.M)
    assert found, text
    return int(float(found.group(1)))


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_rank_events_for_a_viewer_below_the_top_10(
    stack: Stack, issuer: TokenIssuer, transport: str
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    stack.start("gateway", rank_refresh_s=1.0)
    scorer = scorer_token(issuer)
    async with (
        httpx.AsyncClient(base_url=stack.ingest_url) as api,
        httpx.AsyncClient(base_url=stack.gateway_url) as gw,
    ):

        async def points(user: str, increment: int) -> None:
            r = await score(api, scorer, user, increment)
            assert r.status_code == 202, r.text

        me = await login(api, "me", "Me")
        u00 = await login(api, "u00", "U 00")
        for user in OTHERS[1:]:
            await login(api, user, user)
        for i, user in enumerate(OTHERS):
            await points(user, 100 + 10 * i)
        await eventually(lambda: api.get("/api/v1/scores/rank/u00"), until=lambda r: r.status_code == 200)

        async with feed(stack, me, transport) as mine, feed(stack, u00, "sse") as theirs:

            async def my_ranks() -> list[dict[str, Any]]:
                return without_version(mine.ranks())

            # Not ranked yet: nulls.
            assert await eventually(my_ranks, until=lambda got: len(got) == 1) == [place(None, None, None)]
            # Its own score: 105, below 110 .. 210 (11 users), above u00's 100.
            await points("me", 105)
            want = [place(None, None, None), place(12, 105, 5)]
            assert await eventually(my_ranks, until=lambda got: len(got) == 2) == want
            # u00 passes it (100 -> 130): #13 now, 5 points behind u01's 110.
            await points("u00", 30)
            want.append(place(13, 105, 5))
            assert await eventually(my_ranks, until=lambda got: len(got) == 3) == want
            # A change that moves nothing of its own (the leader gains): not sent again, even
            # after the gateway looked it up again since.
            await points("u11", 90)
            await eventually(lambda: asyncio.sleep(0, mine.board_versions()), until=lambda v: len(v) >= 2)
            seen = await lookups(gw)
            await eventually(lambda: lookups(gw), until=lambda n: n >= seen + 3)
            assert without_version(mine.ranks()) == want
            # The versions grow with the board's.
            versions = [e["version"] for e in mine.ranks()]
            assert versions == sorted(versions) and versions[0] < versions[-1]

            # The other viewer only ever hears of its own place: #12 at 100, then #10 at 130
            # (right behind u03's 130, reached first: 0 points to go), never "me"'s.
            async def their_ranks() -> list[dict[str, Any]]:
                return without_version(theirs.ranks())

            got = await eventually(their_ranks, until=lambda got: got and got[-1]["rank"] == 10)
            assert got[-1] == place(10, 130, 0)
            assert all(e["score"] in (100, 130) for e in got)
