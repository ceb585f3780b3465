"""Recovery times after outages and crashes, on real processes.

    .venv/bin/python -m bench.recovery --redis-down 5 8 --mongo-down 26 --flush-interval 5 --rounds 3

Starts its own embedded Redis (AOF) and nx-27017 on free ports and the Scorecast processes, then
measures, per round:

- Redis down N s (SIGKILL, then started again on its data): the time from Redis answering again
  to an SSE client of the gateway seeing a score written after that moment (the write is retried
  until the ingest API accepts it; the time to that 202 is reported too);
- MongoDB down N s while a player keeps pinging: the time from MongoDB answering again to the
  newest resume point being in MongoDB (the flusher runs every ``--flush-interval`` s);
- a worker killed (SIGKILL) while it holds a batch: the time from starting another worker to the
  dead one's entries being applied and acknowledged (``CLAIM_IDLE_MS`` stays at its default 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvloop
from pymongo import AsyncMongoClient

from contract import keys
from contract.auth import TokenIssuer
from contract.progress import Ping, ResumePoint
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import ManagedServer, free_port, mongo_server, redis_server
from ingest.store import PROGRESS, SCORE_EVENTS
from store.progress import ProgressStore


async def until(
    probe: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 120.0, every_s: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(every_s)


class SseWatcher:
    """One SSE client of the global board: the newest score it saw for each user."""

    def __init__(self) -> None:
        self.scores: dict[str, int] = {}
        self.snapshot = asyncio.Event()

    async def consume(self, response: httpx.Response) -> None:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if "leaderboard" in data:
                    self.scores = {e["userId"]: e["score"] for e in data["leaderboard"]}
                    self.snapshot.set()


@contextlib.asynccontextmanager
async def watching(stack: Stack, token: str) -> AsyncIterator[SseWatcher]:
    watcher = SseWatcher()
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream(
            "GET", "/api/v1/leaderboard/stream", params={"board": "global"},
            headers={"authorization": f"Bearer {token}"},
        ) as response,
    ):  # fmt: skip
        task = asyncio.create_task(watcher.consume(response))
        try:
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task


async def write(http: httpx.AsyncClient, scorer: str, user_id: str, increment: int, action_id: str) -> bool:
    """A scorer's write for ``user_id``; False when it was not accepted."""
    try:
        r = await http.post(
            "/api/v1/scores/update",
            json={"userId": user_id, "scoreIncrement": increment, "actionId": action_id},
            headers={"authorization": f"Bearer {scorer}"},
        )
    except httpx.HTTPError:
        return False
    return r.status_code in (200, 202)


async def redis_outage(stack: Stack, redis: ManagedServer, down_s: float) -> tuple[float, float]:
    """(Redis answering → 202, Redis answering → SSE client sees the write) in seconds."""
    issuer = TokenIssuer(stack.settings)
    token = issuer.access_token(user_id="ada", name="Ada")
    scorer = issuer.access_token(user_id="points-service", name="Points service", roles=["scorer"])
    async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=5) as http, watching(stack, token) as sse:
        (await http.post("/api/v1/auth/login", json={"userId": "ada", "name": "Ada"})).raise_for_status()
        await asyncio.wait_for(sse.snapshot.wait(), 30)
        before = sse.scores.get("ada", 0)
        assert await write(http, scorer, "ada", 1, str(uuid.uuid4()))
        await until(lambda: asyncio.sleep(0, sse.scores.get("ada") == before + 1), "the first write on SSE")
        await asyncio.sleep(1.5)  # past the AOF's fsync (every second)
        redis.kill()
        await asyncio.sleep(down_s)
        redis.start()
        answered = time.monotonic()
        action = str(uuid.uuid4())
        await until(lambda: write(http, scorer, "ada", 1, action), "a 202 after the restart")
        accepted = time.monotonic()
        await until(
            lambda: asyncio.sleep(0, sse.scores.get("ada") == before + 2),
            "the write on SSE",
        )
        return accepted - answered, time.monotonic() - answered


async def mongo_outage(settings: Settings, mongo: ManagedServer, redis: Any, down_s: float) -> float:
    """Seconds from MongoDB answering again to the newest resume point being in MongoDB."""
    store = ProgressStore(redis, complete_threshold=0.95, ttl_s=settings.progress_ttl_s)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=500
    )
    user = f"learner-{uuid.uuid4().hex[:8]}"
    seq = 0

    async def ping() -> None:
        nonlocal seq
        seq += 1
        await store.save([Ping(user, "c1", "l1", float(seq), seq, 10_000.0)], now_ms=seq)

    async def newest_in_mongo() -> bool:
        try:
            doc = await client[settings.mongo_db][PROGRESS].find_one({"_id": f"{user}|c1"})
        except Exception:
            return False
        point = ResumePoint.of_document(doc) if doc else None
        return point is not None and point.seq == seq

    async def pings() -> bool:
        fresh: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url, serverSelectionTimeoutMS=200, connectTimeoutMS=200
        )
        try:
            await fresh.admin.command("ping")
        except Exception:
            return False
        finally:
            await fresh.close()
        return True

    try:
        await ping()
        await until(newest_in_mongo, "the first position in MongoDB", every_s=0.05)
        mongo.stop()
        ends = time.monotonic() + down_s
        while time.monotonic() < ends:  # the player keeps pinging through the outage
            await ping()
            await asyncio.sleep(0.5)
        mongo.start()
        await until(pings, "MongoDB answering a ping", every_s=0.02)
        answered = time.monotonic()
        await until(newest_in_mongo, "the newest position in MongoDB", every_s=0.02)
        return time.monotonic() - answered
    finally:
        await client.close()


async def worker_crash(stack: Stack, redis: Any, mongo: Any) -> tuple[int, float]:
    """(entries the killed worker held, seconds from starting another worker to their being applied)."""
    issuer = TokenIssuer(stack.settings)
    scorer = issuer.access_token(user_id="points-service", name="Points service", roles=["scorer"])
    for proc in [p for p in stack.procs if p.module == "ingest.worker"]:
        proc.stop()
    async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=5) as http:
        (await http.post("/api/v1/auth/login", json={"userId": "bob", "name": "Bob"})).raise_for_status()
        for _ in range(400):
            assert await write(http, scorer, "bob", 1, str(uuid.uuid4()))
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    doomed = stack.start("ingest.worker", consumer_name=name, stream_batch_size=20)
    assert doomed.process is not None
    held: list[Any] = []

    async def frozen_holding() -> bool:
        doomed.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        held[:] = await redis.xpending_range(
            keys.SCORE_STREAM, keys.WORKER_GROUP, min="-", max="+", count=1000, consumername=name
        )
        if not held:
            doomed.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        return bool(held)

    await until(frozen_holding, "the worker frozen holding entries", every_s=0.02)
    doomed.kill()
    started = time.monotonic()
    stack.start("ingest.worker", consumer_name=f"rescuer-{uuid.uuid4().hex[:6]}")

    async def applied() -> bool:
        left = await redis.xpending_range(
            keys.SCORE_STREAM, keys.WORKER_GROUP, min="-", max="+", count=1000, consumername=name
        )
        return not left

    await until(applied, "the entries applied", every_s=0.02)
    elapsed = time.monotonic() - started
    assert await mongo[SCORE_EVENTS].count_documents({"userId": "bob", "applied": True}) >= 400 - 20
    return len(held), elapsed


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s ({len(values)} runs)"


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="scorecast-recovery-"))
    redis_srv = redis_server(free_port(), work / "redis").start()
    mongo_srv = mongo_server(free_port(), work / "mongo").start()
    settings = Settings(
        redis_url=redis_srv.url,
        mongo_url=mongo_srv.url,
        mongo_db="bench",
        jwt_secret=uuid.uuid4().hex * 2,
        rate_limit_per_s=10_000.0,
        rate_limit_burst=10_000,
        flush_interval_s=args.flush_interval,
        dev_login_enabled=True,  # the bench's users log in once, so a scorer can score them
    )
    stack = Stack(settings, work)
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    try:
        for module in ("ingest.api", "ingest.worker", "gateway", "ingest.flusher"):
            stack.start(module)
        # getattr: the script also measures releases from before these settings existed.
        print(
            f"settings: flush interval {args.flush_interval} s, broadcast interval "
            f"{settings.broadcast_interval_s} s, probe interval "
            f"{getattr(settings, 'outage_probe_interval_s', None)} s, heartbeat "
            f"{getattr(settings, 'consumer_heartbeat_interval_ms', None)}/"
            f"{getattr(settings, 'consumer_heartbeat_ttl_ms', None)} ms, "
            f"CLAIM_IDLE_MS {settings.claim_idle_ms}"
        )
        for down_s in args.redis_down:
            accepted, seen = [], []
            for _ in range(args.rounds):
                a, s = await redis_outage(stack, redis_srv, down_s)
                accepted.append(a)
                seen.append(s)
            print(
                f"Redis down {down_s:g} s: answering → 202 {summary(accepted)}; → SSE client {summary(seen)}"
            )
        for down_s in args.mongo_down:
            late = [await mongo_outage(settings, mongo_srv, redis, down_s) for _ in range(args.rounds)]
            print(f"MongoDB down {down_s:g} s: answering → newest position in MongoDB {summary(late)}")
        crashes = [await worker_crash(stack, redis, mongo[settings.mongo_db]) for _ in range(args.rounds)]
        print(
            f"worker killed holding {statistics.median(c[0] for c in crashes):g} entries: another worker "
            f"started → entries applied {summary([c[1] for c in crashes])}"
        )
    finally:
        await redis.aclose()
        await mongo.close()
        stack.close()
        redis_srv.stop()
        mongo_srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-down", type=float, nargs="*", default=[5.0, 8.0])
    parser.add_argument("--mongo-down", type=float, nargs="*", default=[26.0])
    parser.add_argument("--flush-interval", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
