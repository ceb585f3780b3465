"""Several gateway processes on one Redis and on a Redis Cluster: boards, a user's devices and a
drain across them.

The board and drain tests run twice (``any_stack``): on one Redis (classic Pub/Sub) and on the
3-master cluster (``REDIS_CLUSTER=1``: sharded Pub/Sub, one subscription per master per
gateway). Every gateway of a stack shares its Redis and MongoDB; ``Stack.start_gateway`` puts
each on a free port of its own. Clients connect from several 127.0.0.x source addresses, as many
users behind a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from contract.auth import TokenIssuer
from devstack.processes import Proc, Stack
from tests.browser import open_connections
from tests.eventually import eventually
from tests.helpers import bearer, login, score, scorer_token
from tests.sse_client import SseReader
from tests.test_progress import ping, put_course, recv, recv_type

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
BOARDS = ["global", "region:EU", "region:NA"]
Ranking = list[tuple[str, int]]


@pytest.fixture(params=["redis", "cluster"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    """The test's stack on one Redis, then on the Redis Cluster."""
    found: Stack = request.getfixturevalue("stack" if request.param == "redis" else "cluster_stack")
    return found


def ranking(entries: list[dict[str, Any]]) -> Ranking:
    return [(e["userId"], e["score"]) for e in entries]


def true_top10(totals: dict[str, int], regions: dict[str, str], board: str) -> Ranking:
    """The top 10 of ``board`` from the totals the test itself had accepted (all distinct)."""
    region = board.removeprefix("region:") if board.startswith("region:") else None
    members = {u: s for u, s in totals.items() if region is None or regions[u] == region}
    return sorted(members.items(), key=lambda kv: -kv[1])[:10]


async def rest_top10(http: httpx.AsyncClient, board: str) -> Ranking:
    r = await http.get("/api/v1/scores/leaderboard", params={"board": board})
    assert r.status_code == 200, r.text
    return ranking(r.json()["entries"])


class Scores:
    """Points awarded to learners by a scorer through the ingest API, and the totals it accepted."""

    def __init__(self, issuer: TokenIssuer, users: int) -> None:
        self.regions = {f"u{i:02d}": ("EU", "NA")[i % 2] for i in range(users)}
        self.scorer = scorer_token(issuer)
        self.totals = dict.fromkeys(self.regions, 0)

    async def join(self, http: httpx.AsyncClient) -> None:
        """Every learner logs in once: Scorecast knows their region, so they can be scored."""
        for user, region in self.regions.items():
            await login(http, user, f"User {user}", region=region)

    async def post(self, http: httpx.AsyncClient, increments: dict[str, int]) -> None:
        async def one(user: str, increment: int) -> None:
            r = await score(http, self.scorer, user, increment)
            assert r.status_code == 202, r.text
            self.totals[user] += increment

        await asyncio.gather(*(one(u, n) for u, n in increments.items()))

    def round(self, k: int) -> dict[str, int]:
        """Round ``k`` of increments: after every round all totals differ (user i gains i+1 more
        than user i-1 per round, on top of a shared base), so each board's true top 10 is unique."""
        return {u: 5 + k + 3 * i for i, u in enumerate(self.regions)}

    def top10(self, board: str) -> Ranking:
        return true_top10(self.totals, self.regions, board)


def ws_url(gateway: Proc, token: str) -> str:
    return gateway.url.replace("http://", "ws://") + f"/api/v1/ws?access_token={token}"


class Subscriber:
    """One client following one board on one gateway (SSE or WebSocket), reading in the
    background; after a drain it can follow the board again on another gateway."""

    def __init__(self, transport: str, board: str, token: str, source: str) -> None:
        self.transport = transport
        self.board = board
        self.token = token
        self.source = source
        # Per connection, in order: the board frames and lifecycle messages received.
        self.sessions: list[list[dict[str, Any]]] = []
        self.close_codes: list[int | None] = []
        self.task: asyncio.Task[None] | None = None

    def latest(self) -> Ranking | None:
        frames = [m for m in (self.sessions[-1] if self.sessions else []) if "leaderboard" in m]
        return ranking(frames[-1]["leaderboard"]) if frames else None

    def reconnect(self, session: int = 0) -> dict[str, Any] | None:
        found = [m for m in self.sessions[session] if m.get("type") == "reconnect"] if self.sessions else []
        return found[-1] if found else None

    async def follow(self, gateway: Proc) -> None:
        """Follow the board on ``gateway`` until that connection ends."""
        messages: list[dict[str, Any]] = []
        self.sessions.append(messages)
        if self.transport == "sse":
            await self._sse(gateway, messages)
        else:
            await self._ws(gateway, messages)

    async def _sse(self, gateway: Proc, messages: list[dict[str, Any]]) -> None:
        reader = _Collecting(messages)
        transport = httpx.AsyncHTTPTransport(local_address=self.source)
        async with (
            httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30, read=None)) as client,
            client.stream(
                "GET",
                f"{gateway.url}/api/v1/leaderboard/stream",
                params={"board": self.board},
                headers=bearer(self.token),
            ) as response,
        ):
            assert response.status_code == 200, await response.aread()
            with contextlib.suppress(httpx.HTTPError):
                await reader.consume(response)
        self.close_codes.append(None)

    async def _ws(self, gateway: Proc, messages: list[dict[str, Any]]) -> None:
        async with connect(ws_url(gateway, self.token), local_addr=(self.source, 0), open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "subscribe", "board": self.board}))
            try:
                async for raw in ws:
                    messages.append(json.loads(raw))
            except ConnectionClosed:
                pass
            self.close_codes.append(ws.close_code)

    def start(self, *gateways: Proc, after_reconnect: Callable[[], Proc] | None = None) -> None:
        """Follow on ``gateways[0]``; told to reconnect, wait ``afterMs`` and follow on
        ``after_reconnect()`` (one connection after another, as the pages do)."""

        async def run() -> None:
            await self.follow(gateways[0])
            told = self.reconnect()
            if told is not None and after_reconnect is not None:
                await asyncio.sleep(told["afterMs"] / 1000)
                await self.follow(after_reconnect())

        self.task = asyncio.create_task(run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class _Collecting(SseReader):
    """An SSE reader that files every event as a message: board frames as they are, the drain's
    ``event: reconnect`` as ``{type: "reconnect", afterMs}`` like the WebSocket's."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        super().__init__()
        self.messages = messages

    async def consume(self, response: httpx.Response) -> None:
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if not line:
                if "data" in event:
                    data = json.loads(event["data"])
                    kind = event.get("event", "message")
                    self.messages.append(
                        {"type": kind, **data} if kind == "reconnect" else {"event": kind, **data}
                    )
                event = {}
            elif not line.startswith((":", "retry:")):
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")


async def read_api_agrees(http: httpx.AsyncClient, board: str, expected: Ranking) -> None:
    """The worker applied every accepted increment: the read API answers the true top 10."""

    async def probe() -> Ranking | None:
        try:
            return await rest_top10(http, board)
        except httpx.TransportError:  # a kept-alive connection the API closed meanwhile: again
            return None

    assert await eventually(probe, until=lambda got: got == expected, timeout_s=60) == expected


async def all_see(subscribers: list[Subscriber], expected: Ranking, *, sessions: int = 1) -> None:
    """Every subscriber, on its ``sessions``-th connection, ends with ``expected`` as its top."""

    async def probe() -> list[tuple[int, Ranking | None]]:
        return [(len(s.sessions), s.latest()) for s in subscribers]

    await eventually(probe, until=lambda got: all(g == (sessions, expected) for g in got), timeout_s=90)


async def stop_all(subscribers: list[Subscriber]) -> None:
    await asyncio.gather(*(s.stop() for s in subscribers))


@pytest.mark.timeout(180)
async def test_subscribers_spread_over_three_gateways_end_with_the_true_top_10(
    any_stack: Stack, issuer: TokenIssuer
) -> None:
    stack = any_stack
    stack.start("ingest.api")
    stack.start("ingest.worker")
    gateways = [stack.start("gateway"), stack.start_gateway(), stack.start_gateway()]
    scores = Scores(issuer, users=24)
    viewer = issuer.access_token(user_id="viewer", name="Viewer")
    sources = itertools.cycle(SOURCES)
    subscribers = [
        Subscriber(transport, board, viewer, next(sources))
        for board in BOARDS
        for transport in ("sse", "ws")
        for _ in gateways
    ]
    for i, subscriber in enumerate(subscribers):
        subscriber.start(gateways[i % len(gateways)])
    try:
        async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
            await eventually(
                lambda: asyncio.sleep(0, sum(s.latest() is None for s in subscribers)),
                until=lambda n: n == 0,
                timeout_s=60,
            )
            await scores.join(http)
            for k in range(3):
                await scores.post(http, scores.round(k))
            for board in BOARDS:
                expected = scores.top10(board)
                assert len(expected) == 10
                await read_api_agrees(http, board, expected)
                await all_see([s for s in subscribers if s.board == board], expected)
        assert {s.transport for s in subscribers} == {"sse", "ws"}
        assert not any(s.task.done() for s in subscribers if s.task)  # every stream still open
    finally:
        await stop_all(subscribers)


@pytest.mark.timeout(120)
async def test_a_users_devices_on_different_gateways_follow_each_other(
    any_stack: Stack, issuer: TokenIssuer
) -> None:
    """Each device is the first WebSocket of its gateway: under a per-process counter both were
    ``ws-1``, and a device skipped the other's moves as if they were its own."""
    stack = any_stack
    stack.start("ingest.api")
    a, b = stack.start("gateway"), stack.start_gateway()
    async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
        assert (await put_course(http, issuer)).status_code == 200
    token = issuer.access_token(user_id="ada", name="Ada", region="EU")
    async with connect(ws_url(a, token)) as phone, connect(ws_url(b, token)) as laptop:
        # Both are in the presence count before the first move (a move is published only when
        # another device may listen).
        for ws in (phone, laptop):
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws))["type"] == "pong"

        async def moves_until(ws: ClientConnection, position: float) -> list[dict[str, Any]]:
            """The progress messages ``ws`` receives up to the one at ``position``."""
            seen = []
            while True:
                message = await asyncio.wait_for(recv_type(ws, "progress"), 30)
                seen.append(message)
                if message["position"] == position:
                    return seen

        await ping(phone, "intro", 10.0, seq=1)
        assert await moves_until(laptop, 10.0) == [
            {"type": "progress", "courseId": "py", "lectureId": "intro", "position": 10.0, "seq": 1}
        ]
        await ping(laptop, "vars", 20.0, seq=2)
        # Pub/Sub keeps one channel's order: had the phone's own move come back to it, it would
        # have arrived before the laptop's.
        assert [m["position"] for m in await moves_until(phone, 20.0)] == [20.0]
        await ping(phone, "vars", 30.0, seq=3)
        assert [m["position"] for m in await moves_until(laptop, 30.0)] == [30.0]


async def connections_of(gateway: Proc) -> int:
    return await open_connections(gateway.url, "sse") + await open_connections(gateway.url, "ws")


@pytest.mark.timeout(300)
async def test_a_drained_gateway_sends_every_client_to_the_others_with_spread_delays(
    any_stack: Stack, issuer: TokenIssuer
) -> None:
    """SIGTERM to one of three gateways holding a few hundred SSE and WebSocket clients (a hundred
    on the cluster: the same paths, less time), after its count of connections had touched zero
    once: every client is told to reconnect, with delays over the jitter window, and follows its
    board on the remaining gateways to the current top."""
    stack = any_stack
    sse_count, ws_count = (60, 40) if stack.settings.redis_cluster else (160, 100)
    jitter_ms = 3000
    stack.start("ingest.api")
    stack.start("ingest.worker")
    options = {"reconnect_jitter_ms": jitter_ms, "drain_timeout_s": 60.0, "graceful_shutdown_timeout_s": 90.0}
    draining = stack.start("gateway", **options)
    others = [stack.start_gateway(**options), stack.start_gateway(**options)]
    scores = Scores(issuer, users=24)
    viewer = issuer.access_token(user_id="viewer", name="Viewer")
    sources = itertools.cycle(SOURCES)
    everyone: list[Subscriber] = []
    try:
        async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
            await scores.join(http)
            await scores.post(http, scores.round(0))

            # The count of connections touches zero: a few clients come and go.
            early = [Subscriber(t, "global", viewer, next(sources)) for t in ("sse", "ws") for _ in range(10)]
            everyone += early
            for subscriber in early:
                subscriber.start(draining)
            await eventually(lambda: connections_of(draining), until=lambda n: n == 20, timeout_s=60)
            await stop_all(early)
            await eventually(lambda: connections_of(draining), until=lambda n: n == 0, timeout_s=60)

            targets = itertools.cycle(others)
            clients = [
                Subscriber(transport, BOARDS[i % len(BOARDS)], viewer, next(sources))
                for transport, count in (("sse", sse_count), ("ws", ws_count))
                for i in range(count)
            ]
            everyone += clients
            for subscriber in clients:
                subscriber.start(draining, after_reconnect=lambda: next(targets))
            await eventually(
                lambda: connections_of(draining), until=lambda n: n == len(clients), timeout_s=120
            )
            await eventually(
                lambda: asyncio.sleep(0, sum(s.latest() is None for s in clients)),
                until=lambda n: n == 0,
                timeout_s=60,
            )

            assert draining.process is not None
            draining.process.send_signal(signal.SIGTERM)
            await scores.post(http, scores.round(1))  # the boards move on during the drain
            # uvicorn re-raises the signal it handled once shut down: a clean exit reads as -SIGTERM.
            assert await asyncio.to_thread(draining.process.wait, 120) in (0, -signal.SIGTERM)

            told = [s.reconnect(0) for s in clients]
            assert sum(t is None for t in told) == 0  # none cut short
            delays = [t["afterMs"] for t in told if t is not None]
            assert all(0 <= d <= jitter_ms for d in delays)
            # Spread over the window, not bunched: both ends reached, mostly distinct values.
            assert min(delays) < jitter_ms / 4 and max(delays) > jitter_ms * 3 / 4
            assert len(set(delays)) > len(delays) / 2
            ws_codes = [s.close_codes[0] for s in clients if s.transport == "ws"]
            assert ws_codes == [1012] * ws_count

            for board in BOARDS:
                expected = scores.top10(board)
                await read_api_agrees(http, board, expected)
                # On the connection after the reconnect: the current board.
                await all_see([s for s in clients if s.board == board], expected, sessions=2)
        assert await connections_of(others[0]) + await connections_of(others[1]) == len(clients)
        assert min(await connections_of(others[0]), await connections_of(others[1])) > 0
    finally:
        await stop_all(everyone)
