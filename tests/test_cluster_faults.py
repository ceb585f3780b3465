"""One Redis Cluster master killed under two gateways, the API and a worker, then started again
with its data (cluster-require-full-coverage off: the others keep serving their slots).

While it is down, the boards and users of its slots answer 503 ``unavailable`` (never 500) on
the REST API and on both gateways (SSE and WebSocket), and the other slots keep working. Once it
answers again every gateway subscribes again on it and re-reads its boards, SSE clients that
stayed connected get the new standings, and every accepted write counts exactly once: the totals
of the 202s are the boards' (REST) and MongoDB's.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from contract import keys
from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.cluster import RedisCluster
from devstack.processes import Proc, Stack
from gateway.shards import slot_of
from tests.eventually import eventually
from tests.helpers import bearer, login, score, scorer_token
from tests.test_gateway_ws import recv, recv_type
from tests.test_many_gateways import Subscriber, rest_top10, true_top10, ws_url
from tests.test_progress import put_course

GATEWAY = {"subscribe_timeout_s": 2.0}
PING = {"type": "progress", "courseId": "py", "lectureId": "intro", "position": 3, "seq": 1}


async def recv_ack_or_error(ws: Any) -> dict[str, Any]:
    while True:
        message = await recv(ws)
        if message["type"] in ("ack", "error"):
            return message


def master_of(cluster: RedisCluster, key: str) -> int:
    return cluster.node_of_slot(slot_of(key)).port


async def metric(gateway: Proc, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{gateway.url}/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1))


class Ledger:
    """Score writes and the totals of those accepted (the oracle)."""

    def __init__(self, issuer: TokenIssuer, regions: dict[str, str]) -> None:
        self.scorer = scorer_token(issuer)
        self.regions = regions
        self.totals = dict.fromkeys(regions, 0)
        self.refused = 0

    async def post(self, http: httpx.AsyncClient, round_: int) -> None:
        async def one(i: int, user: str) -> None:
            increment = 5 + round_ + 3 * i  # totals stay distinct: every top 10 is unique
            r = await score(http, self.scorer, user, increment)
            if r.status_code == 202 or (r.status_code == 200 and r.json()["status"] == "duplicate"):
                # A fresh actionId answered duplicate: redis-py sent the enqueue again after its
                # reply was lost with a restarting master's connection, and the first one had
                # queued it (the guard and the XADD are one Lua step). Accepted all the same.
                self.totals[user] += increment
            else:
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable", r.text
                self.refused += 1

        await asyncio.gather(*(one(i, u) for i, u in enumerate(self.regions)))

    def top10(self, board: str) -> list[tuple[str, int]]:
        return true_top10(self.totals, self.regions, board)

    def standings(self, board: str) -> dict[str, int]:
        """Every member's accepted total on ``board`` (global or a region)."""
        region = board.removeprefix("region:") if board.startswith("region:") else None
        return {u: t for u, t in self.totals.items() if t and (region is None or self.regions[u] == region)}


async def standings(http: httpx.AsyncClient, board: str) -> dict[str, int] | None:
    """Every member's score on ``board`` by the read API; None while it answers 503 (a master
    that restarted rejoins the cluster for a moment; the test asserts the outage's 503s itself)."""
    r = await http.get("/api/v1/scores/leaderboard", params={"board": board, "limit": 100})
    if r.status_code == 503:
        return None
    assert r.status_code == 200, r.text
    return {e["userId"]: e["score"] for e in r.json()["entries"]}


async def sse_status(gateway: Proc, token: str, board: str) -> tuple[int, dict[str, Any] | None]:
    """The status of a new SSE stream of ``board`` (and the error body when refused)."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=30)) as http,
        http.stream(
            "GET", f"{gateway.url}/api/v1/leaderboard/stream", params={"board": board}, headers=bearer(token)
        ) as response,
    ):
        if response.status_code == 200:
            return 200, None
        return response.status_code, json.loads(await response.aread())


@pytest.mark.timeout(300)
async def test_a_killed_master_answers_503_for_its_slots_and_everything_comes_back_exactly_once(
    cluster_stack: Stack,
    redis_cluster_srv: RedisCluster,
    cluster_settings: Settings,
    issuer: TokenIssuer,
    mongo: Any,
) -> None:
    cluster, stack = redis_cluster_srv, cluster_stack
    down_board, up_board = "region:EU", "global"
    victim = cluster.node_of_slot(slot_of(keys.board_keys(down_board).zset))
    assert master_of(cluster, keys.board_keys("region:NA").zset) == victim.port
    assert master_of(cluster, keys.board_keys(up_board).zset) != victim.port
    assert master_of(cluster, keys.course_meta("py")) != victim.port
    users = [f"u{i:02d}" for i in range(16)]
    down_user = next(u for u in users if master_of(cluster, keys.progress(u, "py")) == victim.port)
    up_user = next(
        u
        for u in users
        if victim.port
        not in {
            master_of(cluster, keys.progress(u, "py")),
            master_of(
                cluster, keys.dirty_bucket(keys.progress(u, "py"), cluster_settings.dirty_bucket_count)
            ),
        }
    )

    stack.start("ingest.api")
    stack.start("ingest.worker")
    gateways = [stack.start("gateway", **GATEWAY), stack.start_gateway(**GATEWAY)]
    ledger = Ledger(issuer, {u: ("EU", "NA")[i % 2] for i, u in enumerate(users)})
    viewer = issuer.access_token(user_id="viewer", name="Viewer")
    # Followers that stay connected through the outage, on both gateways, of a board of the
    # killed master and of one elsewhere.
    followers = [
        Subscriber(transport, board, viewer, "127.0.0.1")
        for board in ("region:NA", up_board)
        for transport in ("sse", "ws")
        for _ in gateways
    ]
    try:
        async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
            assert (await put_course(http, issuer)).status_code == 200
            tokens = {u: await login(http, u, f"User {u}", region=ledger.regions[u]) for u in users}
            await ledger.post(http, 0)
            assert ledger.refused == 0
            for board in (down_board, "region:NA", up_board):
                want = ledger.top10(board)
                await eventually(
                    lambda b=board: rest_top10(http, b), until=lambda got, w=want: got == w, timeout_s=60
                )
            for i, follower in enumerate(followers):
                follower.start(gateways[i % len(gateways)])
            await eventually(
                lambda: asyncio.sleep(0, [f.latest() for f in followers]),
                until=lambda got: all(g is not None for g in got),
                timeout_s=60,
            )
            resyncs_before = [await metric(g, "scorecast_gateway_pubsub_resyncs_total") for g in gateways]

            victim.kill()

            # REST: the killed master's boards and users answer 503 unavailable; the others 200.
            async def leaderboard(board: str) -> httpx.Response:
                return await http.get("/api/v1/scores/leaderboard", params={"board": board})

            down = await eventually(lambda: leaderboard(down_board), until=lambda r: r.status_code != 200)
            assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable", down.text
            assert (await leaderboard(up_board)).status_code == 200
            mine = await http.get("/api/v1/progress/py", headers=bearer(tokens[down_user]))
            assert mine.status_code == 503 and mine.json()["error"]["code"] == "unavailable", mine.text
            theirs = await http.get("/api/v1/progress/py", headers=bearer(tokens[up_user]))
            assert theirs.status_code == 200, theirs.text
            # Writes: accepted (202) or refused as unavailable (503), nothing else.
            await ledger.post(http, 1)
            # Every process stays ready (it serves the other masters' slots): a readiness that
            # asked one random master failed a third of the time, and Kubernetes would have taken
            # every pod out of its Service.
            for url in (stack.ingest_url, *(g.url for g in gateways)):
                async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
                    for _ in range(10):
                        ready = await probe.get("/readyz")
                        assert ready.status_code == 200, ready.text
                        assert ready.json()["redisMasters"] == "2/3", ready.text

            for gateway in gateways:
                # SSE: a board of the killed master is refused, another one streams.
                status, body = await sse_status(gateway, viewer, down_board)
                assert status == 503 and body is not None and body["error"]["code"] == "unavailable", body
                assert (await sse_status(gateway, viewer, up_board))[0] == 200
                # WebSocket: the same board answers an `unavailable` error, and so does a ping of
                # a user of the killed master (with its seq); another user's ping, sent at the same
                # moment (the same batch, as a rule), is acknowledged. It may need the player's
                # retry: redis-py's cluster client closes all its connections when a command meets
                # the dead master, and a command caught mid-connect on a live one fails with it.
                async with (
                    connect(ws_url(gateway, tokens[up_user])) as other,
                    connect(ws_url(gateway, tokens[down_user])) as ws,
                ):
                    await asyncio.gather(other.send(json.dumps(PING)), ws.send(json.dumps(PING)))
                    refused = await asyncio.wait_for(recv_type(ws, "error"), 30)
                    assert (refused["code"], refused.get("seq")) == ("unavailable", 1), refused
                    answers = [await asyncio.wait_for(recv_ack_or_error(other), 30)]
                    while answers[-1]["type"] != "ack" and len(answers) < 5:
                        await asyncio.sleep(1)
                        await other.send(json.dumps(PING))
                        answers.append(await asyncio.wait_for(recv_ack_or_error(other), 30))
                    assert answers[-1] == {"type": "ack", "seq": 1}, answers
                    assert all(a.get("code") == "unavailable" for a in answers[:-1]), answers
                    await ws.send(json.dumps({"type": "subscribe", "board": down_board}))
                    error = await asyncio.wait_for(recv_type(ws, "error"), 30)
                    assert error["code"] == "unavailable", error
                    await ws.send(json.dumps({"type": "subscribe", "board": up_board}))
                    frame = await asyncio.wait_for(recv_type(ws, "leaderboard"), 30)
                    assert frame["board"] == up_board, frame

            victim.start()
            back = time.monotonic()

            # Every gateway holds its subscription on each master again and re-read its boards.
            async def resubscribed() -> list[tuple[float, float]]:
                return [
                    (
                        await metric(g, "scorecast_gateway_pubsub_shards"),
                        await metric(g, "scorecast_gateway_pubsub_resyncs_total") - before,
                    )
                    for g, before in zip(gateways, resyncs_before, strict=True)
                ]

            await eventually(
                resubscribed, until=lambda got: all(s == 3 and r >= 1 for s, r in got), timeout_s=30
            )
            resync_s = time.monotonic() - back
            print(f"every gateway resubscribed and resynced {resync_s:.2f} s after the master was back")

            await ledger.post(http, 2)
            # Every accepted write counted once (totals of 0 and refusals aside, some totals may
            # tie now: the order among equals is the server's, so whole standings are compared).
            for board in (down_board, "region:NA", up_board):
                want_all = ledger.standings(board)
                await eventually(
                    lambda b=board: standings(http, b), until=lambda got, w=want_all: got == w, timeout_s=90
                )
            # The followers that stayed connected got there through the resubscribed channels.
            for board in ("region:NA", up_board):
                want = await rest_top10(http, board)
                await eventually(
                    lambda b=board: asyncio.sleep(0, [f.latest() for f in followers if f.board == b]),
                    until=lambda got, w=want: all(g == w for g in got),
                    timeout_s=60,
                )
            assert not any(f.task.done() for f in followers if f.task)

        # MongoDB holds the same totals: every 202 counted once, nothing else.
        async def durable() -> dict[str, dict[str, int]]:
            found: dict[str, dict[str, int]] = {}
            async for doc in mongo["board_totals"].find(
                {"board": {"$in": ["global", down_board, "region:NA"]}}
            ):
                found.setdefault(doc["board"], {})[doc["userId"]] = int(doc["score"])
            return found

        def expected() -> dict[str, dict[str, int]]:
            by_board: dict[str, dict[str, int]] = {"global": dict(ledger.totals)}
            for user, region in ledger.regions.items():
                by_board.setdefault(f"region:{region}", {})[user] = ledger.totals[user]
            return by_board

        assert await eventually(durable, until=lambda got: got == expected(), timeout_s=60) == expected()
    finally:
        if victim.exited() is not None:
            victim.start()
        cluster.wait_ok()
        await asyncio.gather(*(f.stop() for f in followers))
