"""The whole leaderboard path on real processes: ingest API → stream → worker → MongoDB and Redis
→ Pub/Sub → gateway → an SSE client."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from typing import Any

import httpx
import pytest

from contract.auth import TokenIssuer
from devstack.processes import Stack
from tests.eventually import eventually
from tests.helpers import login, score, scorer_token
from tests.sse_client import sse


async def post_score(http: httpx.AsyncClient, scorer: str, user_id: str, increment: int) -> None:
    r = await score(http, scorer, user_id, increment)
    assert r.status_code == 202, r.text


def ranking(entries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["userId"], e["score"]) for e in entries]


async def test_sse_top10_equals_true_ranking_of_many_users(stack: Stack, issuer: TokenIssuer) -> None:
    stack.start_all()
    tokens = {f"u{i:02d}": f"User {i}" for i in range(30)}  # user -> name
    scorer = scorer_token(issuer)
    # User i ends at 200 + 3i, reached in three increments: every total is distinct, so the true
    # ranking is unique.
    targets = {user: 200 + 3 * i for i, user in enumerate(tokens)}
    rounds = [
        {user: (i * 7) % 40 + 1 for i, user in enumerate(tokens)},
        {user: (i * 11) % 40 + 1 for i, user in enumerate(tokens)},
    ]
    rounds.append({user: targets[user] - rounds[0][user] - rounds[1][user] for user in tokens})
    totals = targets
    viewer = issuer.access_token(user_id="viewer", name="Viewer")
    async with sse(stack, viewer) as reader, httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        assert reader.retry is not None
        assert reader.events[0]["event"] == "snapshot"
        for user, name in tokens.items():
            await login(http, user, name)
        for increments in rounds:
            await asyncio.gather(*(post_score(http, scorer, u, inc) for u, inc in increments.items()))
        expected = sorted(totals.items(), key=lambda kv: -kv[1])[:10]
        assert len({score for _, score in totals.items()}) == len(totals)

        async def seen() -> list[tuple[str, int]]:
            latest = reader.latest()
            return ranking(latest["leaderboard"]) if latest else []

        assert await eventually(seen, until=lambda got: got == expected) == expected
        latest = reader.latest()
        assert latest is not None
        assert [e["rank"] for e in latest["leaderboard"]] == list(range(1, 11))
        assert int(reader.events[-1]["id"]) == latest["version"]
        # The read API agrees with what was pushed.
        page = (await http.get("/api/v1/scores/leaderboard")).json()
        assert ranking(page["entries"]) == expected


@pytest.mark.timeout(120)
async def test_200_updates_per_second_give_at_most_one_event_per_second(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start_all()
    users = [f"p{i}" for i in range(20)]
    scorer = scorer_token(issuer)
    totals = dict.fromkeys(users, 0)
    viewer = issuer.access_token(user_id="viewer", name="Viewer")
    async with sse(stack, viewer) as reader, httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await eventually(lambda: asyncio.sleep(0, reader.events), until=bool)
        for user in users:
            await login(http, user, user.upper())
        for tick in range(25):  # 25 ticks of 0.2 s with 40 writes each: 200/s for 5 s
            batch = []
            for k in range(40):
                user = users[(tick * 40 + k) % len(users)]
                increment = 1 + (tick + k) % 9
                totals[user] += increment
                batch.append(post_score(http, scorer, user, increment))
            await asyncio.gather(*batch, asyncio.sleep(0.2))
        expected = sorted(totals.items(), key=lambda kv: -kv[1])[:10]

        async def top_scores() -> list[int]:
            latest = reader.latest()
            return [e["score"] for e in latest["leaderboard"]] if latest else []

        await eventually(top_scores, until=lambda got: got == [s for _, s in expected])
        latest = reader.latest()
        assert latest is not None
        # Exact totals for everyone shown (ties at the cut may show either user).
        assert all(totals[user] == score for user, score in ranking(latest["leaderboard"]))

    updates = [e for e in reader.events if e["event"] == "update"]
    assert updates, "no update event arrived"
    stamps = [datetime.fromisoformat(e["data"]["timestamp"]) for e in updates]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    # The gateway stamps each broadcast; consecutive broadcasts of one board are ≥ 1 interval apart
    # (a small allowance for the clock's resolution).
    assert all(gap >= stack.settings.broadcast_interval_s * 0.95 for gap in gaps), gaps
    versions = [int(e["id"]) for e in reader.events]
    assert versions == sorted(versions)
    assert len(updates) < 1000 / 10  # coalesced, not one event per write
